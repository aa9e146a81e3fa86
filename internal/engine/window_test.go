package engine

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/parallafka/parallafka/pipeline"
)

// testWindow is a window with the messages added to it by offset, so that
// a test names offsets and the window sees the very messages it holds.
type testWindow struct {
	w    window[string, string]
	msgs map[int64]*pipeline.Message[string, string]
}

func newTestWindow() *testWindow {
	return &testWindow{msgs: make(map[int64]*pipeline.Message[string, string])}
}

func (tw *testWindow) add(off int64) bool {
	msg := &pipeline.Message[string, string]{Topic: "t", Offset: off}
	if !tw.w.add(msg) {
		return false
	}
	tw.msgs[off] = msg
	return true
}

// settle finds off's message and settles it; it reports whether the window
// knew the message.
func (tw *testWindow) settle(off int64, state slotState) bool {
	msg := tw.msgs[off]
	if msg == nil {
		msg = &pipeline.Message[string, string]{Topic: "t", Offset: off}
	}
	s := tw.w.find(msg)
	if s == nil || s.state == slotFinished || s.state == slotAbandoned {
		return false
	}
	tw.w.settle(s, state)
	return true
}

// windowStep is one step of a table test: add, finish or abandon an offset
// (expecting ok from it), then expect committable to say commit (when
// commitOK).
type windowStep struct {
	op       byte // 'a' add, 'f' finish, 'x' abandon
	offset   int64
	ok       bool
	commit   int64
	commitOK bool
}

func add(off, commit int64) windowStep { return windowStep{'a', off, true, commit, true} }
func fin(off int64, ok bool, commit int64) windowStep {
	return windowStep{'f', off, ok, commit, true}
}
func abandon(off, commit int64) windowStep { return windowStep{'x', off, true, commit, true} }

func TestWindow(t *testing.T) {
	tests := []struct {
		name  string
		steps []windowStep
	}{
		{"empty", nil},
		{"finish on empty window", []windowStep{
			{op: 'f', offset: 0}, {op: 'f', offset: 7},
		}},
		{"in order", []windowStep{
			add(0, 0), add(1, 0), add(2, 0),
			fin(0, true, 1), fin(1, true, 2), fin(2, true, 3),
		}},
		{"starts at a high offset", []windowStep{
			add(1_000_000, 1_000_000), fin(1_000_000, true, 1_000_001),
			add(1_000_001, 1_000_001),
		}},
		{"out of order", []windowStep{
			add(0, 0), add(1, 0), add(2, 0), add(3, 0),
			fin(2, true, 0), fin(3, true, 0), fin(1, true, 0),
			fin(0, true, 4),
		}},
		{"out of order, head last but one", []windowStep{
			add(0, 0), add(1, 0), add(2, 0),
			fin(1, true, 0), fin(0, true, 2), fin(2, true, 3),
		}},
		{"gaps from compaction and transaction markers", []windowStep{
			add(3, 3), add(7, 3), add(8, 3), add(20, 3),
			fin(7, true, 3), fin(3, true, 8),
			fin(4, false, 8), // a gap: never added
			fin(8, true, 20),
			fin(19, false, 20),
			fin(20, true, 21), // all finished: newest + 1, not the next gap
		}},
		{"all finished then more added", []windowStep{
			add(5, 5), fin(5, true, 6), add(9, 9), add(10, 9),
			fin(10, true, 9), fin(9, true, 11),
		}},
		{"duplicate finish is refused", []windowStep{
			add(0, 0), add(1, 0),
			fin(1, true, 0), fin(1, false, 0),
			fin(0, true, 2), fin(0, false, 2), fin(1, false, 2),
		}},
		{"unknown offsets are not found", []windowStep{
			add(10, 10), add(12, 10),
			fin(9, false, 10), fin(11, false, 10), fin(13, false, 10), fin(-1, false, 10),
			fin(12, true, 10), fin(10, true, 13),
		}},
		{"an offset not above the newest is refused", []windowStep{
			add(5, 5), {'a', 5, false, 5, true}, {'a', 4, false, 5, true},
			add(6, 5), fin(5, true, 6), fin(6, true, 7),
			{'a', 6, false, 7, true}, // emptied: order still enforced
			add(7, 7),
		}},
		{"an abandoned head holds the commit", []windowStep{
			add(0, 0), add(1, 0), add(2, 0),
			abandon(0, 0), fin(1, true, 0), fin(2, true, 0),
			fin(0, false, 0), // settled already
			add(3, 0), fin(3, true, 0),
		}},
		{"an abandoned slot above the head holds it once reached", []windowStep{
			add(0, 0), add(1, 0), add(2, 0),
			abandon(1, 0), fin(2, true, 0), fin(0, true, 1),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tw := newTestWindow()
			if _, ok := tw.w.committable(); ok {
				t.Fatal("committable before any add: ok")
			}
			for i, st := range tc.steps {
				var ok bool
				switch st.op {
				case 'a':
					ok = tw.add(st.offset)
				case 'f':
					ok = tw.settle(st.offset, slotFinished)
				case 'x':
					ok = tw.settle(st.offset, slotAbandoned)
				}
				if ok != st.ok {
					t.Fatalf("step %d (%c %d): ok = %v; want %v", i, st.op, st.offset, ok, st.ok)
				}
				off, cok := tw.w.committable()
				if cok != st.commitOK || (cok && off != st.commit) {
					t.Fatalf("step %d (%c %d): committable() = %d, %v; want %d, %v", i, st.op, st.offset, off, cok, st.commit, st.commitOK)
				}
			}
		})
	}
}

// TestWindowFindOtherMessage: a message polled under an earlier assignment
// at the same offset is not the one in the window.
func TestWindowFindOtherMessage(t *testing.T) {
	tw := newTestWindow()
	for off := range int64(4) {
		tw.add(off * 3) // gaps too: find searches
	}
	for off := range int64(4) {
		other := &pipeline.Message[string, string]{Topic: "t", Offset: off * 3}
		if s := tw.w.find(other); s != nil {
			t.Fatalf("find(another message at %d) = %+v; want nil", off*3, s)
		}
		if s := tw.w.find(tw.msgs[off*3]); s == nil || s.offset != off*3 {
			t.Fatalf("find(the message at %d) = %+v", off*3, s)
		}
	}
}

func TestWindowEach(t *testing.T) {
	tw := newTestWindow()
	for _, off := range []int64{1, 2, 5, 6} {
		tw.add(off)
	}
	tw.settle(1, slotFinished)
	tw.settle(5, slotFinished)
	var got []int64
	tw.w.each(func(s *slot[string, string]) { got = append(got, s.offset) })
	if want := []int64{2, 5, 6}; !slices.Equal(got, want) {
		t.Fatalf("each visited %v; want %v", got, want)
	}
}

// TestWindowCompaction drives the window through the path that reclaims a
// finished prefix of more than 1024 slots while unfinished ones remain
// behind it, and checks every answer against the reference model.
func TestWindowCompaction(t *testing.T) {
	t.Run("head stuck then released", func(t *testing.T) {
		tw, m := newTestWindow(), &windowModel{}
		const n = 3000
		for i := range int64(n) {
			tw.add(i * 2) // gaps everywhere
			m.add(i * 2)
		}
		// Finish everything but offset 0 and the last 500: the head stays put.
		for i := int64(1); i < n-500; i++ {
			if !tw.settle(i*2, slotFinished) {
				t.Fatalf("finish %d refused", i*2)
			}
			m.finish(i * 2)
		}
		m.check(t, &tw.w)
		// Releasing the head skips 2499 finished slots: compaction.
		tw.settle(0, slotFinished)
		m.finish(0)
		m.check(t, &tw.w)
		if got := len(tw.w.slots) - tw.w.head; got != 500 {
			t.Fatalf("%d slots live after compaction; want 500", got)
		}
		if tw.w.head != 0 {
			t.Fatalf("head = %d after compaction; want 0", tw.w.head)
		}
		// Compacted offsets are unknown now.
		if tw.settle(2, slotFinished) || tw.settle(0, slotFinished) {
			t.Fatal("a compacted offset was found")
		}
		for i := int64(n); i < n+2000; i++ {
			tw.add(i * 2)
			m.add(i * 2)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		open := m.unfinished()
		rng.Shuffle(len(open), func(i, j int) { open[i], open[j] = open[j], open[i] })
		for _, off := range open {
			if !tw.settle(off, slotFinished) {
				t.Fatalf("finish %d refused", off)
			}
			m.finish(off)
			m.check(t, &tw.w)
		}
		if off, _ := tw.w.committable(); off != (n+2000-1)*2+1 {
			t.Fatalf("committable() = %d at the end", off)
		}
	})
	t.Run("sliding window", func(t *testing.T) {
		// A steady stream: keep ~1500 offsets open, finish the oldest in
		// bursts, so the head passes 1024 while slots stay live.
		tw, m := newTestWindow(), &windowModel{}
		next := int64(0)
		rng := rand.New(rand.NewPCG(3, 4))
		for range 20 {
			for range 700 {
				tw.add(next)
				m.add(next)
				next += 1 + rng.Int64N(3)
			}
			open := m.unfinished()
			k := min(600, len(open))
			for i := k - 1; i >= 0; i-- { // newest first: the head jumps
				if !tw.settle(open[i], slotFinished) {
					t.Fatalf("finish %d refused", open[i])
				}
				m.finish(open[i])
			}
			m.check(t, &tw.w)
		}
	})
}

// windowModel is the obvious reference: the added offsets and which of them
// finished, with the index of the lowest unfinished one.
type windowModel struct {
	added []int64 // increasing
	done  []bool
	low   int
}

func (m *windowModel) add(off int64) {
	m.added = append(m.added, off)
	m.done = append(m.done, false)
}

func (m *windowModel) finish(off int64) {
	i, found := slices.BinarySearch(m.added, off)
	if !found {
		return
	}
	m.done[i] = true
	for m.low < len(m.added) && m.done[m.low] {
		m.low++
	}
}

func (m *windowModel) unfinished() []int64 {
	var open []int64
	for i := m.low; i < len(m.added); i++ {
		if !m.done[i] {
			open = append(open, m.added[i])
		}
	}
	return open
}

func (m *windowModel) committable() (int64, bool) {
	switch {
	case len(m.added) == 0:
		return 0, false
	case m.low == len(m.added):
		return m.added[len(m.added)-1] + 1, true
	}
	return m.added[m.low], true
}

// check compares w with the model (plain comparisons: the fuzzer calls it
// after every operation).
func (m *windowModel) check(t testing.TB, w *window[string, string]) {
	want, wantOK := m.committable()
	got, ok := w.committable()
	if ok != wantOK || (wantOK && got != want) {
		t.Fatalf("committable() = %d, %v; want %d, %v", got, ok, want, wantOK)
	}
}

// FuzzWindow decodes the input into operations on a window and checks
// every answer against windowModel: whatever the order in which offsets
// finish, committable never passes an unfinished one. Each operation is
// two bytes, an opcode and an argument:
//
//	0: add the next offset, a gap of 1..3 after the newest (the first one at arg%4)
//	1: finish the (arg-picked) unfinished offset
//	2: look up a message near the window that is not in it (must be nil)
//	3: add arg*8 offsets at once (to reach the compaction path)
//	4: finish the oldest arg*8 unfinished offsets, newest first (the head jumps)
func FuzzWindow(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 1, 0, 2, 1, 0, 2, 0, 1, 1, 2, 3})
	f.Add([]byte{0, 3, 0, 0, 0, 2, 1, 2, 1, 1, 2, 0, 2, 1, 2, 5, 1, 0})
	f.Add([]byte{3, 200, 4, 140, 2, 0, 1, 0, 3, 255, 4, 255, 1, 3, 4, 100, 1, 0})
	f.Add([]byte{3, 255, 1, 0, 4, 160, 1, 7, 3, 50, 4, 255})
	f.Fuzz(fuzzWindow)
}

const maxFuzzOps, maxFuzzOffsets = 512, 4096

func fuzzWindow(t *testing.T, data []byte) {
	tw, m := newTestWindow(), &windowModel{}
	next := int64(-1)
	addNext := func(gap byte) {
		if next < 0 {
			next = int64(gap % 4)
		} else {
			next += 1 + int64(gap%3)
		}
		if !tw.add(next) {
			t.Fatalf("add(%d) refused", next)
		}
		m.add(next)
	}
	finish := func(off int64) {
		if !tw.settle(off, slotFinished) {
			t.Fatalf("finishing unfinished offset %d: not found", off)
		}
		m.finish(off)
	}
	m.check(t, &tw.w)
	for i := 0; i+1 < len(data) && i < 2*maxFuzzOps; i += 2 {
		op, arg := data[i]%5, data[i+1]
		switch op {
		case 0:
			addNext(arg)
		case 1:
			if m.low < len(m.added) {
				j := m.low + int(arg)*(len(m.added)-m.low)/256
				for m.done[j] {
					if j++; j == len(m.added) {
						j = m.low
					}
				}
				finish(m.added[j])
			}
		case 2:
			off := int64(arg%8) - 4
			if len(m.added) > 0 {
				off += m.added[int(arg)%len(m.added)]
			}
			if s := tw.w.find(&pipeline.Message[string, string]{Topic: "t", Offset: off}); s != nil {
				t.Fatalf("find(a foreign message at %d) = %+v", off, s)
			}
		case 3:
			for range min(int(arg)*8, maxFuzzOffsets-len(m.added)) {
				addNext(byte(len(m.added)) ^ arg)
			}
		case 4:
			var oldest []int64
			for j := m.low; j < len(m.added) && len(oldest) < int(arg)*8; j++ {
				if !m.done[j] {
					oldest = append(oldest, m.added[j])
				}
			}
			for _, off := range slices.Backward(oldest) {
				finish(off)
			}
		}
		m.check(t, &tw.w)
		// committable never passes an unfinished offset.
		if off, ok := tw.w.committable(); ok {
			for _, u := range m.unfinished() {
				if u < off {
					t.Fatalf("committable() = %d passes unfinished %d", off, u)
				}
				break
			}
		}
	}
}
