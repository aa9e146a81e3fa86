package memsource_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func tp(topic string, p int32) pipeline.TopicPartition {
	return pipeline.TopicPartition{Topic: topic, Partition: p}
}

// goid returns the calling goroutine's id, to check on which goroutine a
// notification arrives.
func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	buf = bytes.TrimPrefix(buf, []byte("goroutine "))
	id, _ := strconv.ParseUint(string(buf[:bytes.IndexByte(buf, ' ')]), 10, 64)
	return id
}

type event struct {
	kind       string
	partitions []pipeline.TopicPartition
	goroutine  uint64
}

// listener records notifications; block, if set, is called inside each.
type listener struct {
	mu     sync.Mutex
	events []event
	block  func(kind string)
}

func (l *listener) record(kind string, tps []pipeline.TopicPartition) {
	l.mu.Lock()
	l.events = append(l.events, event{kind: kind, partitions: tps, goroutine: goid()})
	block := l.block
	l.mu.Unlock()
	if block != nil {
		block(kind)
	}
}

func (l *listener) PartitionsAssigned(committed []pipeline.Offset) {
	tps := make([]pipeline.TopicPartition, len(committed))
	for i, off := range committed {
		tps[i] = off.TopicPartition
	}
	l.record("assign", tps)
}
func (l *listener) PartitionsRevoked(tps []pipeline.TopicPartition) { l.record("revoke", tps) }
func (l *listener) PartitionsLost(tps []pipeline.TopicPartition)    { l.record("lost", tps) }

func (l *listener) take() []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.events
	l.events = nil
	return ev
}

func newSource(t *testing.T, partitions int) (*memsource.Source[string, string], *listener) {
	t.Helper()
	src := memsource.New[string, string]()
	src.AddTopic("t", partitions)
	l := &listener{}
	require.NoError(t, src.Subscribe(l))
	return src, l
}

// poll polls until a message arrives, within a generous deadline.
func poll(t *testing.T, src *memsource.Source[string, string]) *pipeline.Message[string, string] {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, err := src.Poll(100 * time.Millisecond)
		require.NoError(t, err)
		if m != nil {
			return m
		}
	}
	t.Fatal("no message within the deadline")
	return nil
}

// pollNone checks that a short Poll brings nothing (a poll timeout, not a
// sleep: nothing is on the way).
func pollNone(t *testing.T, src *memsource.Source[string, string]) {
	t.Helper()
	m, err := src.Poll(5 * time.Millisecond)
	require.NoError(t, err)
	require.Nil(t, m)
}

func TestPollRoundRobin(t *testing.T) {
	src, l := newSource(t, 3)
	for p := range int32(3) {
		for i := range 3 {
			src.Produce("t", p, "k"+strconv.Itoa(i), strconv.Itoa(int(p))+strconv.Itoa(i))
		}
	}
	src.Produce("t", 0, "extra", "03")
	var got []string
	for range 10 {
		m := poll(t, src)
		got = append(got, m.Value)
		assert.Equal(t, "t", m.Topic)
		assert.Equal(t, m.Value[:1], strconv.Itoa(int(m.Partition)))
		assert.Equal(t, m.Value[1:], strconv.FormatInt(m.Offset, 10))
	}
	require.Equal(t, []string{"00", "10", "20", "01", "11", "21", "02", "12", "22", "03"}, got)
	pollNone(t, src)

	ev := l.take()
	require.Len(t, ev, 1, "the first Poll assigns everything")
	require.Equal(t, "assign", ev[0].kind)
	require.Equal(t, []pipeline.TopicPartition{tp("t", 0), tp("t", 1), tp("t", 2)}, ev[0].partitions)
	require.Equal(t, goid(), ev[0].goroutine, "delivered on the polling goroutine")
}

func TestMessageFields(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic("t", 1)
	require.NoError(t, src.Subscribe(&listener{}))
	poison := errors.New("cannot deserialize")
	hdr := []pipeline.Header{{Key: "h", Value: []byte("v")}}
	require.Equal(t, int64(0), src.Produce("t", 0, "a", "1"))
	require.Equal(t, int64(1), src.ProduceRecord(memsource.Record[string, string]{Topic: "t", Key: "ignored", NoKey: true, Value: "2"}))
	require.Equal(t, int64(2), src.ProduceRecord(memsource.Record[string, string]{Topic: "t", Key: "b", Err: poison, Headers: hdr}))
	require.Equal(t, int64(3), src.Produce("t", 0, "", "4"))

	m := poll(t, src)
	require.Equal(t, int64(0), m.Offset)
	require.Equal(t, "a", m.Key)
	require.Equal(t, []byte("a"), m.RawKey)
	require.NoError(t, m.Err)
	require.Zero(t, m.Attempt)
	require.False(t, m.Timestamp.IsZero())

	m = poll(t, src)
	require.Equal(t, int64(1), m.Offset)
	require.Nil(t, m.RawKey, "NoKey gives a nil RawKey")
	require.Equal(t, "2", m.Value)

	m = poll(t, src)
	require.Equal(t, int64(2), m.Offset)
	require.ErrorIs(t, m.Err, poison, "a poison record shows as Message.Err")
	require.Equal(t, hdr, m.Headers)

	m = poll(t, src)
	require.NotNil(t, m.RawKey, "an empty key is a key, not a null key")
	require.Empty(t, m.RawKey)
	require.Equal(t, int64(4), memctl.Len(src, tp("t", 0)))
}

func TestKeyEncoders(t *testing.T) {
	ints := memsource.New[int, string]()
	ints.AddTopic("t", 1)
	require.NoError(t, ints.Subscribe(&listener{}))
	ints.Produce("t", 0, 42, "v")
	m, err := ints.Poll(time.Second)
	require.NoError(t, err)
	require.Equal(t, []byte("42"), m.RawKey, "other keys are formatted with %v")

	raw := memsource.New[[]byte, string]()
	raw.AddTopic("t", 1)
	require.NoError(t, raw.Subscribe(&listener{}))
	raw.Produce("t", 0, []byte{0, 1}, "v")
	mb, err := raw.Poll(time.Second)
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1}, mb.RawKey)

	custom := memsource.New[int, string](memsource.WithKeyEncoder(func(k int) []byte { return []byte{byte(k)} }))
	custom.AddTopic("t", 1)
	require.NoError(t, custom.Subscribe(&listener{}))
	custom.Produce("t", 0, 7, "v")
	m, err = custom.Poll(time.Second)
	require.NoError(t, err)
	require.Equal(t, []byte{7}, m.RawKey)
}

func TestSubscribeAndMisuse(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic("t", 2)
	src.AddTopic("t", 2) // again: no-op
	src.AddTopic("b", 1)
	src.AddTopic("t", 3) // grows
	require.Equal(t, []pipeline.TopicPartition{tp("b", 0), tp("t", 0), tp("t", 1), tp("t", 2)}, memctl.Partitions(src))
	_, err := src.Poll(time.Millisecond)
	require.Error(t, err, "Poll before Subscribe")
	require.Error(t, src.Subscribe(nil))
	require.NoError(t, src.Subscribe(&listener{}))
	require.Error(t, src.Subscribe(&listener{}), "subscribed already")
	require.Panics(t, func() { src.Produce("t", 5, "k", "v") })
	require.Panics(t, func() { src.Produce("nope", 0, "k", "v") })
	require.Equal(t, int64(-1), src.Committed(tp("t", 0)))
	require.Zero(t, memctl.Len(src, tp("t", 0)))
}

func TestPollWakesOnProduce(t *testing.T) {
	src, _ := newSource(t, 1)
	pollNone(t, src) // assigns
	got := make(chan *pipeline.Message[string, string], 1)
	go func() {
		m, _ := src.Poll(time.Minute)
		got <- m
	}()
	src.Produce("t", 0, "k", "v")
	select {
	case m := <-got:
		require.NotNil(t, m)
		require.Equal(t, "v", m.Value)
	case <-time.After(10 * time.Second):
		t.Fatal("Poll did not wake up on Produce")
	}
}

func TestPauseResume(t *testing.T) {
	src, _ := newSource(t, 2)
	for i := range 2 {
		src.Produce("t", 0, "a", "0-"+strconv.Itoa(i))
		src.Produce("t", 1, "b", "1-"+strconv.Itoa(i))
	}
	pollNone := func() {
		t.Helper()
		m, err := src.Poll(5 * time.Millisecond)
		require.NoError(t, err)
		require.Nil(t, m)
	}
	// Pause before the assignment is fine too (the pipeline pauses new
	// partitions while at its limit).
	require.NoError(t, src.Pause([]pipeline.TopicPartition{tp("t", 0)}))
	require.True(t, memctl.Paused(src, tp("t", 0)))
	require.False(t, memctl.Paused(src, tp("t", 1)))
	require.Equal(t, "1-0", poll(t, src).Value)
	require.Equal(t, "1-1", poll(t, src).Value)
	pollNone()

	// Resume wakes a waiting Poll.
	got := make(chan string, 1)
	go func() {
		m, _ := src.Poll(time.Minute)
		if m != nil {
			got <- m.Value
		}
		close(got)
	}()
	require.NoError(t, src.Resume([]pipeline.TopicPartition{tp("t", 0)}))
	select {
	case v := <-got:
		require.Equal(t, "0-0", v)
	case <-time.After(10 * time.Second):
		t.Fatal("Poll did not wake up on Resume")
	}
	require.False(t, memctl.Paused(src, tp("t", 0)))
	require.Equal(t, "0-1", poll(t, src).Value)
	pollNone()
}

func TestCommit(t *testing.T) {
	src, _ := newSource(t, 2)
	ctx := context.Background()
	offs := []pipeline.Offset{{TopicPartition: tp("t", 0), Offset: 3}, {TopicPartition: tp("t", 1), Offset: 1}}
	require.NoError(t, src.Commit(ctx, offs))
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: tp("t", 0), Offset: 5}}))
	require.Equal(t, int64(5), src.Committed(tp("t", 0)))
	require.Equal(t, int64(1), src.Committed(tp("t", 1)))
	require.Equal(t, append(offs, pipeline.Offset{TopicPartition: tp("t", 0), Offset: 5}), memctl.Commits(src))

	// A failing hook fails the commit, which records nothing.
	refused := errors.New("refused")
	var seen [][]pipeline.Offset
	fails := 2
	memctl.SetCommitHook(src, func(o []pipeline.Offset) error {
		seen = append(seen, o)
		if fails > 0 {
			fails--
			return refused
		}
		return nil
	})
	next := []pipeline.Offset{{TopicPartition: tp("t", 0), Offset: 9}}
	require.ErrorIs(t, src.Commit(ctx, next), refused)
	require.ErrorIs(t, src.Commit(ctx, next), refused)
	require.Equal(t, int64(5), src.Committed(tp("t", 0)))
	require.Len(t, memctl.Commits(src), 3)
	require.NoError(t, src.Commit(ctx, next))
	require.Equal(t, int64(9), src.Committed(tp("t", 0)))
	require.Len(t, seen, 3)
	memctl.SetCommitHook(src, nil)

	// A done context fails the commit before the hook.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, src.Commit(cctx, []pipeline.Offset{{TopicPartition: tp("t", 0), Offset: 11}}), context.Canceled)
	require.Equal(t, int64(9), src.Committed(tp("t", 0)))

	// memctl.Commits returns a copy.
	c := memctl.Commits(src)
	c[0].Offset = 1000
	require.Equal(t, int64(3), memctl.Commits(src)[0].Offset)
}

// pollLoop polls on its own goroutine until stopped, recording its id and
// the messages.
type pollLoop struct {
	goroutine chan uint64
	msgs      chan *pipeline.Message[string, string]
	stop      chan struct{}
	done      chan struct{}
}

func startPolling(t *testing.T, src *memsource.Source[string, string]) *pollLoop {
	p := &pollLoop{goroutine: make(chan uint64, 1), msgs: make(chan *pipeline.Message[string, string], 100),
		stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.goroutine <- goid()
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			m, err := src.Poll(5 * time.Millisecond)
			assert.NoError(t, err)
			if m != nil {
				p.msgs <- m
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

func (p *pollLoop) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func TestRebalanceNotifications(t *testing.T) {
	src, l := newSource(t, 3)
	for p := range int32(3) {
		for i := range 4 {
			src.Produce("t", p, "k", strconv.Itoa(i))
		}
	}
	// Offsets 0 and 1 of partition 0 were handled and committed.
	require.NoError(t, src.Commit(context.Background(), []pipeline.Offset{{TopicPartition: tp("t", 0), Offset: 2}}))

	entered := make(chan string, 10)
	release := make(chan struct{})
	l.block = func(kind string) {
		if kind == "revoke" {
			entered <- kind
			<-release
		}
	}
	loop := startPolling(t, src)
	poller := <-loop.goroutine
	for range 10 {
		<-loop.msgs
	}

	// Revoke blocks until the listener returned.
	revoked := make(chan struct{})
	go func() {
		src.Revoke(tp("t", 0), tp("t", 9)) // 9: not a partition; ignored
		close(revoked)
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the revoke never reached the listener")
	}
	select {
	case <-revoked:
		t.Fatal("Revoke returned while the listener was still running")
	default:
	}
	close(release)
	select {
	case <-revoked:
	case <-time.After(10 * time.Second):
		t.Fatal("Revoke did not return")
	}

	// A revoked partition is no longer delivered; others still are.
	src.Produce("t", 0, "k", "late-0")
	src.Produce("t", 1, "k", "late-1")
	m := <-loop.msgs
	require.Equal(t, "late-1", m.Value)
	require.Equal(t, int32(1), m.Partition)

	// Revoking an unassigned partition notifies nobody, but returns.
	src.Revoke(tp("t", 0))
	src.Lose(tp("t", 2))
	src.Lose(tp("t", 2))

	// Assign again: from the committed offset (2), not from where it was.
	src.Assign(tp("t", 0), tp("t", 1)) // 1 is assigned already: not repeated
	var values []string
	for range 3 {
		m := <-loop.msgs
		require.Equal(t, int32(0), m.Partition)
		values = append(values, strconv.FormatInt(m.Offset, 10)+":"+m.Value)
	}
	require.Equal(t, []string{"2:2", "3:3", "4:late-0"}, values)
	loop.halt()

	ev := l.take()
	require.Len(t, ev, 4)
	want := []event{
		{kind: "assign", partitions: []pipeline.TopicPartition{tp("t", 0), tp("t", 1), tp("t", 2)}},
		{kind: "revoke", partitions: []pipeline.TopicPartition{tp("t", 0)}},
		{kind: "lost", partitions: []pipeline.TopicPartition{tp("t", 2)}},
		{kind: "assign", partitions: []pipeline.TopicPartition{tp("t", 0)}},
	}
	for i, e := range ev {
		assert.Equal(t, want[i].kind, e.kind, "event %d", i)
		assert.Equal(t, want[i].partitions, e.partitions, "event %d", i)
		assert.Equal(t, poller, e.goroutine, "event %d delivered on the polling goroutine", i)
	}
}

func TestRevokeClearsPause(t *testing.T) {
	src, _ := newSource(t, 1)
	src.Produce("t", 0, "k", "v")
	require.NoError(t, src.Pause([]pipeline.TopicPartition{tp("t", 0)}))
	loop := startPolling(t, src)
	src.Revoke(tp("t", 0))
	require.False(t, memctl.Paused(src, tp("t", 0)), "a revoked partition is not paused any more")
	src.Assign(tp("t", 0))
	m := <-loop.msgs
	require.Equal(t, "v", m.Value)
}

func TestCloseAndResubscribe(t *testing.T) {
	src, l := newSource(t, 2)
	for i := range 3 {
		src.Produce("t", 0, "k", strconv.Itoa(i))
		src.Produce("t", 1, "k", strconv.Itoa(i))
	}
	for range 4 {
		poll(t, src)
	}
	require.NoError(t, src.Commit(context.Background(), []pipeline.Offset{
		{TopicPartition: tp("t", 0), Offset: 1},
		{TopicPartition: tp("t", 1), Offset: 2},
	}))
	require.NoError(t, src.Pause([]pipeline.TopicPartition{tp("t", 1)}))
	l.take()

	// Close revokes the assignment, on the calling goroutine.
	require.NoError(t, src.Close())
	ev := l.take()
	require.Len(t, ev, 1)
	require.Equal(t, "revoke", ev[0].kind)
	require.Equal(t, []pipeline.TopicPartition{tp("t", 0), tp("t", 1)}, ev[0].partitions)
	require.Equal(t, goid(), ev[0].goroutine)
	require.False(t, memctl.Paused(src, tp("t", 1)))
	_, err := src.Poll(time.Millisecond)
	require.Error(t, err, "closed: not subscribed any more")
	require.NoError(t, src.Close(), "closing twice is harmless")
	require.Empty(t, l.take())

	// Consumed again: everything is assigned from the committed offsets.
	l2 := &listener{}
	require.NoError(t, src.Subscribe(l2))
	var got []string
	for range 3 {
		m := poll(t, src)
		got = append(got, m.TopicPartition().String()+"@"+strconv.FormatInt(m.Offset, 10))
	}
	require.ElementsMatch(t, []string{"t[0]@1", "t[0]@2", "t[1]@2"}, got)
	pollNone(t, src)
	ev = l2.take()
	require.Len(t, ev, 1)
	require.Equal(t, "assign", ev[0].kind)
	require.Equal(t, []pipeline.TopicPartition{tp("t", 0), tp("t", 1)}, ev[0].partitions)
	require.Empty(t, l.take(), "the old listener hears nothing more")
	require.NoError(t, src.Close())
}

// waitBlockedIn waits until some goroutine's stack shows fn, that is, until
// a call of fn is under way (blocked, for the callers here).
func waitBlockedIn(t *testing.T, fn string) {
	t.Helper()
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte(fn))
	}, 10*time.Second, time.Millisecond, "no goroutine in %s", fn)
}

func TestCloseReleasesPendingNotifications(t *testing.T) {
	src, l := newSource(t, 2)
	pollNone(t, src) // assigned
	l.take()
	// A revoke requested while nobody polls waits for a Poll ...
	revoked := make(chan struct{})
	go func() {
		src.Revoke(tp("t", 0))
		close(revoked)
	}()
	waitBlockedIn(t, "memsource.(*Source[...]).notify")
	select {
	case <-revoked:
		t.Fatal("Revoke returned before any Poll")
	default:
	}
	// ... or for Close, which revokes the whole assignment itself and
	// releases the pending one unapplied.
	require.NoError(t, src.Close())
	select {
	case <-revoked:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not release the pending Revoke")
	}
	ev := l.take()
	require.Len(t, ev, 1)
	require.Equal(t, "revoke", ev[0].kind)
	require.Equal(t, []pipeline.TopicPartition{tp("t", 0), tp("t", 1)}, ev[0].partitions)
}

func TestWatermarks(t *testing.T) {
	s := memsource.New[string, string]()
	s.AddTopic("t", 2)
	s.Produce("t", 1, "k", "a")
	s.Produce("t", 1, "k", "b")
	for _, c := range []struct {
		tp        pipeline.TopicPartition
		high      int64
		wantKnown bool
	}{
		{pipeline.TopicPartition{Topic: "t", Partition: 0}, 0, true},
		{pipeline.TopicPartition{Topic: "t", Partition: 1}, 2, true},
		{pipeline.TopicPartition{Topic: "t", Partition: 2}, 0, false},
	} {
		low, high, ok := s.Watermarks(c.tp)
		if low != 0 || high != c.high || ok != c.wantKnown {
			t.Errorf("Watermarks(%v) = %d, %d, %v; want 0, %d, %v", c.tp, low, high, ok, c.high, c.wantKnown)
		}
	}
}
