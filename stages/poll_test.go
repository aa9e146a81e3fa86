package stages_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// prefetchSource is a memsource that can behave like a real consumer in the
// ways the poll stage must cope with: it may keep delivering after Pause
// (prefetched messages), deliver a message of a partition it does not own,
// or fail.
type prefetchSource struct {
	*memsource.Source[string, string]

	mu          sync.Mutex
	ignorePause bool
	inject      []*M // returned by Poll before anything else
	pollErr     error
	pauseErr    error
	pauses      int
	resumes     int
	delivered   int // messages Poll returned
}

func (s *prefetchSource) Poll(timeout time.Duration) (*M, error) {
	s.mu.Lock()
	if len(s.inject) > 0 {
		m := s.inject[0]
		s.inject = s.inject[1:]
		s.mu.Unlock()
		return m, nil
	}
	err := s.pollErr
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	m, err := s.Source.Poll(timeout)
	if m != nil {
		s.mu.Lock()
		s.delivered++
		s.mu.Unlock()
	}
	return m, err
}

func (s *prefetchSource) Pause(tps []pipeline.TopicPartition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pauseErr != nil {
		return s.pauseErr
	}
	s.pauses++
	if s.ignorePause {
		return nil
	}
	return s.Source.Pause(tps)
}

func (s *prefetchSource) Resume(tps []pipeline.TopicPartition) error {
	s.mu.Lock()
	s.resumes++
	s.mu.Unlock()
	return s.Source.Resume(tps)
}

// pollRun is a poll stage with its rebalance listener over a memsource, and
// a router and committer that are not running (the listener only needs
// their Purge and CommitFinal).
type pollRun struct {
	src    *prefetchSource
	env    *stages.Env[string, string]
	drain  func()
	poller *stages.Poller[string, string]
	reb    *stages.Rebalancer[string, string]
	out    chan *M
	cancel context.CancelFunc
	done   chan error
}

func newPollRun(t *testing.T, partitions, maxInFlight int, ignorePause bool) *pollRun {
	t.Helper()
	src := &prefetchSource{Source: memsource.New[string, string](), ignorePause: ignorePause}
	src.AddTopic(topic, partitions)
	env, drain := newEnv(src)
	poller := &stages.Poller[string, string]{Env: env, MaxInFlight: maxInFlight, PollTimeout: 5 * time.Millisecond}
	reb := &stages.Rebalancer[string, string]{
		Poller:        poller,
		Router:        stages.NewRouter(env, stages.OrderByKey, false),
		Committer:     &stages.Committer[string, string]{Env: env, Interval: time.Hour, FinalTimeout: wait},
		RevokeTimeout: wait,
	}
	require.NoError(t, src.Subscribe(reb))
	return &pollRun{src: src, env: env, drain: drain, poller: poller, reb: reb, out: make(chan *M, 1000), done: make(chan error, 1)}
}

func (r *pollRun) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.poller.Run(ctx, r.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			r.done <- err
		case <-time.After(wait):
			t.Error("the poll stage did not return")
		}
	})
}

func (r *pollRun) produce(p int32, n int) {
	for range n {
		r.src.Produce(topic, p, "k", "v")
	}
}

func TestPollerBackPressure(t *testing.T) {
	for _, prefetch := range []bool{false, true} {
		name := map[bool]string{false: "source honours Pause", true: "source keeps delivering prefetched messages"}[prefetch]
		t.Run(name, func(t *testing.T) {
			const limit, n = 4, 40
			r := newPollRun(t, 2, limit, prefetch)
			r.produce(0, n/2)
			r.produce(1, n/2)
			r.start(t)

			next := map[int32]int64{}
			var inFlight []*M // handled oldest first, once the stage sits at the limit
			for range n {
				m := recv(t, r.out)
				require.LessOrEqual(t, r.env.Tracker.InFlight(), int64(limit), "over the in-flight limit")
				require.Equal(t, next[m.Partition], m.Offset, "each partition in order")
				next[m.Partition]++
				require.NotNil(t, m.Claim(), "tracked before it is sent on")
				inFlight = append(inFlight, m)
				if len(inFlight) == limit {
					// At the limit: the partitions get paused, and stay so
					// until the in-flight count is down to 3/4 of the limit.
					eventually(t, func() bool { return len(r.env.Tracker.Paused()) == 2 })
					pipeline.Finish(inFlight[0])
					inFlight = inFlight[1:]
				}
			}
			for _, m := range inFlight {
				pipeline.Finish(m)
			}
			require.Positive(t, r.env.Counters.Pauses.Load())
			eventually(t, func() bool {
				r.src.mu.Lock()
				defer r.src.mu.Unlock()
				return r.src.pauses > 0 && r.src.resumes > 0 && len(r.env.Tracker.Paused()) == 0
			}, "paused, and resumed once everything finished")
			require.EqualValues(t, n, r.env.Tracker.Polled())
		})
	}
}

func TestPollerStops(t *testing.T) {
	t.Run("on drain", func(t *testing.T) {
		r := newPollRun(t, 1, 10, false)
		r.start(t)
		r.produce(0, 1)
		pipeline.Finish(recv(t, r.out))
		r.drain()
		require.NoError(t, recv(t, r.done))
		r.done <- nil
	})
	t.Run("a message it cannot hand on is abandoned", func(t *testing.T) {
		r := newPollRun(t, 1, 10, false)
		r.out = make(chan *M) // nobody reads
		r.start(t)
		r.produce(0, 1)
		eventually(t, func() bool { return r.env.Tracker.InFlight() == 1 })
		r.cancel()
		require.NoError(t, recv(t, r.done))
		r.done <- nil
		require.Zero(t, r.env.Tracker.InFlight())
	})
	t.Run("a Poll error is returned", func(t *testing.T) {
		r := newPollRun(t, 1, 10, false)
		boom := errors.New("broker gone")
		r.src.pollErr = boom
		r.start(t)
		err := recv(t, r.done)
		require.ErrorIs(t, err, boom)
		r.done <- nil
	})
	t.Run("a Pause error is returned", func(t *testing.T) {
		r := newPollRun(t, 1, 1, false)
		boom := errors.New("cannot pause")
		r.src.pauseErr = boom
		r.produce(0, 2)
		r.start(t)
		m := recv(t, r.out)
		err := recv(t, r.done)
		require.ErrorIs(t, err, boom)
		r.done <- nil
		pipeline.Abandon(m)
	})
}

func TestPollerDropsMessagesOfUnassignedPartitions(t *testing.T) {
	r := newPollRun(t, 2, 10, false)
	r.src.inject = []*M{{Topic: topic, Partition: 7, Offset: 0}}
	r.produce(0, 1)
	r.start(t)
	m := recv(t, r.out)
	require.Equal(t, int32(0), m.Partition, "the message of partition 7 (not ours) is dropped")
	require.EqualValues(t, 1, r.env.Tracker.Polled())
	pipeline.Finish(m)
}

// scriptedSource delivers exactly the messages the test feeds it, blocking
// in Poll until one comes (or until it is closed), so that a test knows
// where the poll stage stands. Feeding nil is a Poll that timed out.
type scriptedSource struct {
	feed   chan *M
	closed chan struct{}
}

func (s *scriptedSource) Subscribe(pipeline.RebalanceListener) error { return nil }
func (s *scriptedSource) Poll(time.Duration) (*M, error) {
	select {
	case m := <-s.feed:
		return m, nil
	case <-s.closed:
		return nil, nil
	}
}
func (s *scriptedSource) Commit(context.Context, []pipeline.Offset) error { return nil }
func (s *scriptedSource) Pause([]pipeline.TopicPartition) error           { return nil }
func (s *scriptedSource) Resume([]pipeline.TopicPartition) error          { return nil }
func (s *scriptedSource) Close() error                                    { return nil }

// TestPollerKeepsPrefetchedMessagesInOrder: a message polled while earlier
// ones of its partition are held back (polled at the limit) must queue
// behind them, even when room freed up during the Poll that returned it;
// sent on first, it would overtake them (breaking per-key order, and the
// offset window's increasing adds).
func TestPollerKeepsPrefetchedMessagesInOrder(t *testing.T) {
	src := &scriptedSource{feed: make(chan *M), closed: make(chan struct{})}
	env, _ := newEnv(src)
	poller := &stages.Poller[string, string]{Env: env, MaxInFlight: 1, PollTimeout: time.Hour}
	reb := &stages.Rebalancer[string, string]{Poller: poller, Router: stages.NewRouter(env, stages.OrderByKey, false)}
	reb.PartitionsAssigned([]pipeline.TopicPartition{tp(0)}) // before Run: the listener shares its state
	out := make(chan *M, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- poller.Run(ctx, out) }()
	defer func() {
		cancel()
		close(src.closed)
		require.NoError(t, recv(t, done))
	}()
	msg := func(off int64) *M { return &M{Topic: topic, Partition: 0, Offset: off, Key: "k", RawKey: k("k")} }

	send(t, src.feed, msg(0))
	m0 := recv(t, out)
	send(t, src.feed, msg(1)) // at the limit: held
	waitForGoroutine(t, "(*scriptedSource).Poll", "(*Poller[...]).Run")
	pipeline.Finish(m0) // room frees while the poll stage waits in Poll ...
	send(t, src.feed, msg(2))
	m := recv(t, out) // ... and the held message must still go first
	require.Equal(t, int64(1), m.Offset, "offset %d overtook the held offset 1", m.Offset)
	pipeline.Finish(m)
	send(t, src.feed, nil) // a Poll timing out: the held message goes
	require.Equal(t, int64(2), recv(t, out).Offset)
}
