package pipeline_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
)

// windowOp is one step of a table test: add an offset, finish one (and
// expect Finish's answer), and then check the window.
type windowOp struct {
	add        *int64
	finish     *int64
	finishOK   bool
	commit     int64 // expected Committable offset (when commitOK)
	commitOK   bool
	pending    int
	skipChecks bool // only apply the op
}

func add(off int64, commit int64, pending int) windowOp {
	return windowOp{add: &off, commit: commit, commitOK: true, pending: pending}
}

func fin(off int64, ok bool, commit int64, pending int) windowOp {
	return windowOp{finish: &off, finishOK: ok, commit: commit, commitOK: true, pending: pending}
}

func TestOffsetWindowTable(t *testing.T) {
	tests := []struct {
		name string
		ops  []windowOp
	}{
		{"empty", nil},
		{"finish on empty window", []windowOp{
			{finish: ptr(int64(0)), finishOK: false, commitOK: false},
			{finish: ptr(int64(7)), finishOK: false, commitOK: false},
		}},
		{"in order", []windowOp{
			add(0, 0, 1), add(1, 0, 2), add(2, 0, 3),
			fin(0, true, 1, 2), fin(1, true, 2, 1), fin(2, true, 3, 0),
		}},
		{"starts at a high offset", []windowOp{
			add(1_000_000, 1_000_000, 1), fin(1_000_000, true, 1_000_001, 0),
			add(1_000_001, 1_000_001, 1),
		}},
		{"out of order", []windowOp{
			add(0, 0, 1), add(1, 0, 2), add(2, 0, 3), add(3, 0, 4),
			fin(2, true, 0, 4), fin(3, true, 0, 4), fin(1, true, 0, 4),
			fin(0, true, 4, 0),
		}},
		{"out of order, head last but one", []windowOp{
			add(0, 0, 1), add(1, 0, 2), add(2, 0, 3),
			fin(1, true, 0, 3), fin(0, true, 2, 1), fin(2, true, 3, 0),
		}},
		{"gaps from compaction and transaction markers", []windowOp{
			add(3, 3, 1), add(7, 3, 2), add(8, 3, 3), add(20, 3, 4),
			fin(7, true, 3, 4), fin(3, true, 8, 2),
			fin(4, false, 8, 2), // a gap: never added
			fin(8, true, 20, 1),
			fin(19, false, 20, 1),
			fin(20, true, 21, 0), // all finished: newest + 1, not the next gap
		}},
		{"all finished then more added", []windowOp{
			add(5, 5, 1), fin(5, true, 6, 0), add(9, 9, 1), add(10, 9, 2),
			fin(10, true, 9, 2), fin(9, true, 11, 0),
		}},
		{"duplicate finish returns false", []windowOp{
			add(0, 0, 1), add(1, 0, 2),
			fin(1, true, 0, 2), fin(1, false, 0, 2),
			fin(0, true, 2, 0), fin(0, false, 2, 0), fin(1, false, 2, 0),
		}},
		{"unknown offsets return false", []windowOp{
			add(10, 10, 1), add(12, 10, 2),
			fin(9, false, 10, 2), fin(11, false, 10, 2), fin(13, false, 10, 2), fin(-1, false, 10, 2),
			fin(12, true, 10, 2), fin(10, true, 13, 0),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w pipeline.OffsetWindow
			_, ok := w.Committable()
			require.False(t, ok, "Committable before any Add")
			require.Zero(t, w.Pending())
			for i, op := range tc.ops {
				switch {
				case op.add != nil:
					w.Add(*op.add)
				case op.finish != nil:
					require.Equal(t, op.finishOK, w.Finish(*op.finish), "op %d: Finish(%d)", i, *op.finish)
				}
				off, ok := w.Committable()
				require.Equal(t, op.commitOK, ok, "op %d: Committable ok", i)
				if op.commitOK {
					require.Equal(t, op.commit, off, "op %d: Committable", i)
				}
				require.Equal(t, op.pending, w.Pending(), "op %d: Pending", i)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestOffsetWindowAddOutOfOrderPanics(t *testing.T) {
	var w pipeline.OffsetWindow
	w.Add(5)
	assert.Panics(t, func() { w.Add(5) }, "the same offset twice")
	assert.Panics(t, func() { w.Add(4) }, "a lower offset")
	w.Add(6)
	require.True(t, w.Finish(5))
	require.True(t, w.Finish(6))
	// All finished (the window emptied its entries): order still enforced.
	assert.Panics(t, func() { w.Add(6) })
	w.Add(7)
	off, ok := w.Committable()
	require.True(t, ok)
	require.Equal(t, int64(7), off)
}

// TestOffsetWindowCompaction drives the window through the path that
// reclaims a finished prefix of more than 1024 entries while unfinished ones
// remain behind it, and checks every answer against the reference model.
func TestOffsetWindowCompaction(t *testing.T) {
	t.Run("head stuck then released", func(t *testing.T) {
		var w pipeline.OffsetWindow
		m := newWindowModel()
		const n = 3000
		for i := range int64(n) {
			w.Add(i * 2) // gaps everywhere
			m.add(i * 2)
		}
		// Finish everything but offset 0 and the last 500: the head stays put.
		for i := int64(1); i < n-500; i++ {
			require.True(t, w.Finish(i*2))
			m.finish(i * 2)
		}
		m.check(t, &w)
		require.Equal(t, n, w.Pending())
		// Releasing the head skips 2499 finished entries: compaction.
		require.True(t, w.Finish(0))
		m.finish(0)
		m.check(t, &w)
		require.Equal(t, 500, w.Pending())
		// Finished-and-compacted offsets are unknown now.
		require.False(t, w.Finish(2))
		require.False(t, w.Finish(0))
		// Keep adding and finishing around the compacted window.
		for i := int64(n); i < n+2000; i++ {
			w.Add(i * 2)
			m.add(i * 2)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		open := m.unfinished()
		rng.Shuffle(len(open), func(i, j int) { open[i], open[j] = open[j], open[i] })
		for _, off := range open {
			require.True(t, w.Finish(off))
			m.finish(off)
			m.check(t, &w)
		}
		off, ok := w.Committable()
		require.True(t, ok)
		require.Equal(t, int64((n+2000-1)*2+1), off)
		require.Zero(t, w.Pending())
	})
	t.Run("sliding window", func(t *testing.T) {
		// A steady stream: keep ~1500 offsets open, finish the oldest in
		// bursts, so the head passes 1024 while entries stay non-empty.
		var w pipeline.OffsetWindow
		m := newWindowModel()
		next := int64(0)
		rng := rand.New(rand.NewPCG(3, 4))
		for round := 0; round < 20; round++ {
			for range 700 {
				w.Add(next)
				m.add(next)
				next += 1 + rng.Int64N(3)
			}
			open := m.unfinished()
			// Finish the oldest 600 newest-first, so the head moves in one jump.
			k := min(600, len(open))
			for i := k - 1; i >= 0; i-- {
				require.True(t, w.Finish(open[i]))
				m.finish(open[i])
			}
			m.check(t, &w)
		}
	})
}

// windowModel is the obvious reference: the set of added offsets and the set
// of finished ones (as flags beside the sorted added offsets, with the index
// of the lowest unfinished one, so that long fuzz inputs stay fast).
type windowModel struct {
	added []int64 // increasing
	done  []bool  // done[i]: added[i] finished
	low   int     // index of the lowest unfinished offset; len(added) if none
}

func newWindowModel() *windowModel { return &windowModel{} }

func (m *windowModel) add(off int64) {
	m.added = append(m.added, off)
	m.done = append(m.done, false)
}

// finish reports what OffsetWindow.Finish must answer.
func (m *windowModel) finish(off int64) bool {
	i, found := slices.BinarySearch(m.added, off)
	if !found || m.done[i] {
		return false // never added, or finished already
	}
	m.done[i] = true
	for m.low < len(m.added) && m.done[m.low] {
		m.low++
	}
	return true
}

// unfinished returns the unfinished offsets, lowest first.
func (m *windowModel) unfinished() []int64 {
	var open []int64
	for i := m.low; i < len(m.added); i++ {
		if !m.done[i] {
			open = append(open, m.added[i])
		}
	}
	return open
}

// committable: the smallest added-and-unfinished offset, or the newest
// added + 1 when all finished; ok false before the first add. The third
// result is what Pending must say: the added offsets from the smallest
// unfinished one on.
func (m *windowModel) committable() (int64, bool, int) {
	switch {
	case len(m.added) == 0:
		return 0, false, 0
	case m.low == len(m.added):
		return m.added[len(m.added)-1] + 1, true, 0
	}
	return m.added[m.low], true, len(m.added) - m.low
}

// check compares w with the model. It uses plain comparisons, not testify:
// the fuzzer calls it after every operation, and testify's assertions (each
// calling t.Helper) would dominate its time.
func (m *windowModel) check(t testing.TB, w *pipeline.OffsetWindow) {
	want, wantOK, pending := m.committable()
	got, ok := w.Committable()
	if ok != wantOK || (wantOK && got != want) {
		t.Fatalf("Committable() = %d, %v; want %d, %v", got, ok, want, wantOK)
	}
	if got := w.Pending(); got != pending {
		t.Fatalf("Pending() = %d; want %d", got, pending)
	}
}

// FuzzOffsetWindow decodes the input into operations on an OffsetWindow and
// checks every answer against windowModel. Each operation is two bytes, an
// opcode and an argument:
//
//	0: add the next offset, a gap of 1..3 after the newest (the first one at arg%4)
//	1: finish the (arg mod n)-th unfinished offset (must report true)
//	2: finish an arbitrary offset near the window (duplicates, gaps, unknown)
//	3: query only
//	4: add arg*8 offsets at once (to reach the compaction path)
//	5: finish the oldest arg*8 unfinished offsets, newest first (the head jumps: compaction)
func FuzzOffsetWindow(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 1, 0, 2, 1, 0, 3, 0, 1, 1, 3, 0})
	f.Add([]byte{0, 3, 0, 0, 0, 2, 1, 2, 1, 1, 2, 0, 2, 1, 2, 5, 1, 0, 3, 0})
	f.Add([]byte{4, 200, 5, 140, 2, 0, 1, 0, 4, 255, 5, 255, 1, 3, 5, 100, 1, 0})
	f.Add([]byte{0, 1, 1, 0, 0, 2, 0, 0, 1, 1, 2, 4, 1, 0, 2, 7, 3, 0})
	f.Fuzz(fuzzOffsetWindow)
}

// maxFuzzOps and maxFuzzOffsets bound the work of one input, so that the
// fuzzer (and its minimizer) keep running thousands of inputs a second;
// 4096 offsets are plenty to reach the window's compaction (> 1024).
const maxFuzzOps, maxFuzzOffsets = 512, 4096

func fuzzOffsetWindow(t *testing.T, data []byte) {
	var w pipeline.OffsetWindow
	m := newWindowModel()
	next := int64(-1) // newest added offset; -1 before the first
	addNext := func(gap byte) {
		if next < 0 {
			next = int64(gap % 4)
		} else {
			next += 1 + int64(gap%3)
		}
		w.Add(next)
		m.add(next)
	}
	m.check(t, &w)
	for i := 0; i+1 < len(data) && i < 2*maxFuzzOps; i += 2 {
		op, arg := data[i]%6, data[i+1]
		switch op {
		case 0:
			addNext(arg)
		case 1:
			if m.low < len(m.added) {
				// The first unfinished offset at or after a position picked by arg.
				i := m.low + int(arg)*(len(m.added)-m.low)/256
				for m.done[i] {
					if i++; i == len(m.added) {
						i = m.low
					}
				}
				off := m.added[i]
				m.finish(off)
				if !w.Finish(off) {
					t.Fatalf("Finish(%d) of an unfinished offset = false", off)
				}
			}
		case 2:
			var off int64
			switch {
			case len(m.added) == 0:
				off = int64(arg % 8)
			case arg%2 == 0: // an added offset, perhaps finished already
				off = m.added[int(arg/2)%len(m.added)]
			default: // near one: perhaps a gap, below the first or past the newest
				off = m.added[int(arg/2)%len(m.added)] + int64(arg%8) - 4
			}
			if want, got := m.finish(off), w.Finish(off); got != want {
				t.Fatalf("Finish(%d) = %v; want %v", off, got, want)
			}
		case 3:
		case 4:
			for range min(int(arg)*8, maxFuzzOffsets-len(m.added)) {
				addNext(byte(len(m.added)) ^ arg)
			}
		case 5:
			// The oldest arg*8 unfinished offsets, newest first: the head
			// finishes last and moves past all of them at once.
			var oldest []int64
			for i := m.low; i < len(m.added) && len(oldest) < int(arg)*8; i++ {
				if !m.done[i] {
					oldest = append(oldest, m.added[i])
				}
			}
			for _, off := range slices.Backward(oldest) {
				m.finish(off)
				if !w.Finish(off) {
					t.Fatalf("Finish(%d) of an unfinished offset = false", off)
				}
			}
		}
		m.check(t, &w)
	}
}
