package stages_test

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// routerRun drives Router.Run directly over unbuffered channels, so that
// every dispatch is a hand-off the test takes part in.
type routerRun struct {
	t     *testing.T
	env   *stages.Env[string, string]
	drain func()
	r     *stages.Router[string, string]
	in    chan *M
	out   chan *M
	done  chan error
	stop  context.CancelFunc
}

func startRouter(t *testing.T, ordering stages.Ordering, orderNilKeys bool) *routerRun {
	env, drain := newEnv(nil)
	h := &routerRun{
		t: t, env: env, drain: drain, r: stages.NewRouter(env, ordering, orderNilKeys),
		in: make(chan *M), out: make(chan *M), done: make(chan error, 1),
	}
	require.Equal(t, ordering, h.r.Ordering)
	require.Equal(t, orderNilKeys, h.r.OrderNilKeys)
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.done <- h.r.Run(ctx, h.in, h.out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			require.NoError(t, err)
			h.done <- err
		case <-time.After(wait):
			t.Error("router did not return")
		}
	})
	return h
}

// route polls a message into the router.
func (h *routerRun) route(p int32, offset int64, key []byte) *M {
	h.t.Helper()
	m := newMsg(h.env, p, offset, key)
	send(h.t, h.in, m)
	return m
}

// next takes the next dispatched message and checks it is want.
func (h *routerRun) next(want *M) {
	h.t.Helper()
	got := recv(h.t, h.out)
	require.Same(h.t, want, got, "dispatched %v, want %v", got, want)
}

// finish hands a handled message back, as the ack collector does.
func (h *routerRun) finish(m *M) {
	h.t.Helper()
	pipeline.Finish(m)
	send(h.t, h.r.Released, m)
}

// barrier proves that nothing is dispatchable: the router reads in and
// dispatches in order, so once a message of a fresh key, routed now, is the
// next one dispatched, nothing routed before it was waiting to go out.
func (h *routerRun) barrier(p int32, offset int64) *M {
	h.t.Helper()
	b := h.route(p, offset, k("barrier"+string(rune('a'+offset%26))+string(rune('a'+p))))
	h.next(b)
	return b
}

func (h *routerRun) queued() int64 { return h.env.Counters.Queued.Load() }

func TestRouterSameKeyOneAtATime(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	a0, a1, a2 := h.route(0, 0, k("A")), h.route(0, 1, k("A")), h.route(0, 2, k("A"))
	h.next(a0)
	b := h.barrier(0, 3)
	require.EqualValues(t, 2, h.queued())
	require.EqualValues(t, 4, h.env.Tracker.InFlight())

	h.finish(b) // another key's release changes nothing for A
	h.barrier(0, 4)
	h.finish(a0)
	h.next(a1)
	require.EqualValues(t, 1, h.queued())
	h.barrier(0, 5)
	h.finish(a1)
	h.next(a2)
	require.EqualValues(t, 0, h.queued())
	h.finish(a2)
	// The key is free again: the next one goes at once.
	a6 := h.route(0, 6, k("A"))
	h.next(a6)
	h.finish(a6)
	require.EqualValues(t, 2, h.env.Tracker.InFlight(), "the barriers at 4 and 5")
}

// A released key's next message goes out before messages polled after it
// that are waiting for a handler already (oldest first): a hot key runs back
// to back instead of waiting behind all of them for each of its messages.
func TestRouterContinuesAReleasedKeyFirst(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	a0, a1, a2 := h.route(0, 0, k("A")), h.route(0, 1, k("A")), h.route(1, 0, k("A"))
	h.next(a0)
	h.next(a2) // partition 1's A is another key
	require.True(t, pipeline.KeyWaiting(a0), "a1 waits for a0: its worker lets the release through first")
	require.False(t, pipeline.KeyWaiting(a2))
	b, c := h.route(0, 2, k("B")), h.route(1, 1, k("C")) // waiting: no handler takes them yet
	h.finish(a0)
	h.next(a1)
	h.next(b) // then arrival order
	h.next(c)
	for _, m := range []*M{a1, a2, b, c} {
		h.finish(m)
	}
	require.Zero(t, h.queued())
}

func TestRouterDifferentKeysDispatchImmediately(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	ms := []*M{
		h.route(0, 0, k("A")), h.route(0, 1, k("B")), h.route(0, 2, k("C")),
		h.route(1, 0, k("A")), // the same key in another partition is another key
		h.route(0, 3, k("a")), // keys are compared as bytes
	}
	for _, m := range ms {
		h.next(m)
	}
	require.Zero(t, h.queued())
	for _, m := range ms {
		h.finish(m)
	}
	require.Eventually(t, func() bool { return h.env.Tracker.InFlight() == 0 }, wait, time.Millisecond)
}

func TestRouterOrderByPartition(t *testing.T) {
	h := startRouter(t, stages.OrderByPartition, false)
	a := h.route(0, 0, k("A"))
	b := h.route(0, 1, k("B"))
	n := h.route(0, 2, nil)
	c := h.route(1, 0, k("C"))
	h.next(a)
	h.next(c) // partition 1 is not held up by partition 0
	require.EqualValues(t, 2, h.queued())
	h.finish(c)
	h.finish(a)
	h.next(b)
	h.finish(b)
	h.next(n)
	require.Zero(t, h.queued())
	h.finish(n)
}

func TestRouterUnordered(t *testing.T) {
	h := startRouter(t, stages.Unordered, true)
	ms := []*M{h.route(0, 0, k("A")), h.route(0, 1, k("A")), h.route(0, 2, nil), h.route(0, 3, nil)}
	for _, m := range ms {
		h.next(m)
	}
	require.Zero(t, h.queued())
	// Releasing in any order is fine.
	for i := len(ms) - 1; i >= 0; i-- {
		h.finish(ms[i])
	}
	off, moved := h.env.Tracker.Claim(tp(0)).Committable()
	require.True(t, moved)
	require.Equal(t, int64(4), off.Offset)
}

func TestRouterNilKeys(t *testing.T) {
	t.Run("unordered by default", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, false)
		n0, n1, n2 := h.route(0, 0, nil), h.route(0, 1, nil), h.route(0, 2, nil)
		h.next(n0)
		h.next(n1)
		h.next(n2)
		require.Zero(t, h.queued())
		h.finish(n1)
		h.finish(n0)
		h.finish(n2)
	})
	t.Run("ordered per partition with OrderNilKeys", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, true)
		n0, n1 := h.route(0, 0, nil), h.route(0, 1, nil)
		e := h.route(0, 2, []byte{}) // an empty key is a key, not a null one
		o := h.route(1, 0, nil)      // another partition's nil keys are another FIFO
		h.next(n0)
		h.next(e)
		h.next(o)
		require.EqualValues(t, 1, h.queued())
		h.barrier(0, 3)
		h.finish(n0)
		h.next(n1)
		h.finish(n1)
		h.finish(e)
		h.finish(o)
		require.Zero(t, h.queued())
	})
}

func TestRouterRetryKeepsTheKey(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	a0, a1 := h.route(0, 0, k("A")), h.route(0, 1, k("A"))
	h.next(a0)
	a0.Attempt = 1
	for attempt := 2; attempt <= 3; attempt++ {
		a0.Retry()
		send(t, h.r.Released, a0)
		h.next(a0) // again, before a1
		require.False(t, a0.RetryRequested(), "the fate is reset for the next attempt")
		a0.Attempt = attempt
		require.EqualValues(t, 1, h.queued())
	}
	h.barrier(0, 2)
	require.EqualValues(t, 2, h.env.Counters.Retried.Load())
	off, _ := h.env.Tracker.Claim(tp(0)).Committable()
	require.Equal(t, int64(0), off.Offset, "a retried message stays uncommitted")
	h.finish(a0)
	h.next(a1)
	h.finish(a1)
	require.Zero(t, h.queued())
}

func TestRouterPurge(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	tr := h.env.Tracker
	a0 := h.route(0, 0, k("A"))
	b0 := h.route(1, 0, k("B"))
	h.route(0, 1, k("A"))
	h.route(0, 2, k("A"))
	b1 := h.route(1, 1, k("B"))
	h.next(a0)
	h.next(b0)
	h.route(0, 3, k("C")) // dispatchable, not taken yet: it waits in the ready list
	require.EqualValues(t, 3, h.queued())
	require.EqualValues(t, 6, tr.InFlight())

	// Partition 0 is revoked: its claim stops, and the router drops its backlog.
	stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
	h.r.Purge(stopped)
	eventually(t, func() bool { return tr.InFlight() == 3 }, "a1, a2 and c3 abandoned")
	require.EqualValues(t, 1, h.queued(), "b1 still queued")
	require.False(t, pipeline.WaitIdle(stopped, 0), "a0 still runs")

	// Partition 1 goes on; a0 comes back late and releases nothing.
	h.finish(a0)
	h.finish(b0)
	h.next(b1)
	h.barrier(1, 2)
	require.True(t, pipeline.WaitIdle(stopped, wait))
	off, moved := stopped[0].Committable()
	require.True(t, moved)
	require.Equal(t, int64(1), off.Offset, "a0 finished; a1 was abandoned")
	h.finish(b1)
	require.Zero(t, h.queued())
	require.EqualValues(t, 1, tr.InFlight(), "the barrier")
}

func TestRouterStoppedClaim(t *testing.T) {
	t.Run("a message of a stopped claim is abandoned on arrival", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, false)
		tr := h.env.Tracker
		tr.Assign([]pipeline.TopicPartition{tp(0)})
		m := newMsg(h.env, 0, 0, k("A"))
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
		send(t, h.in, m)
		h.barrier(1, 0)
		require.EqualValues(t, 1, tr.InFlight(), "only the barrier")
		require.True(t, pipeline.WaitIdle(stopped, wait))
	})
	t.Run("a retry of a stopped claim is abandoned with what queued behind it", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, false)
		tr := h.env.Tracker
		a0 := h.route(0, 0, k("A"))
		h.route(0, 1, k("A"))
		h.route(0, 2, k("A"))
		h.next(a0)
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0)}) // no purge (yet)
		a0.Retry()
		send(t, h.r.Released, a0)
		eventually(t, func() bool { return tr.InFlight() == 0 })
		require.Zero(t, h.queued())
		require.True(t, pipeline.WaitIdle(stopped, wait))
		off, _ := stopped[0].Committable()
		require.Equal(t, int64(0), off.Offset, "never skipped: delivered again")
		require.Zero(t, h.env.Counters.Retried.Load(), "abandoned, not retried")
		h.barrier(1, 0)
	})
}

func TestRouterDraining(t *testing.T) {
	for _, finishLast := range []bool{true, false} {
		name := map[bool]string{true: "last handler finishes", false: "last handler asks for a retry"}[finishLast]
		t.Run(name, func(t *testing.T) {
			h := startRouter(t, stages.OrderByKey, false)
			tr := h.env.Tracker
			a0 := h.route(0, 0, k("A"))
			h.route(0, 1, k("A")) // queued
			h.route(0, 2, k("B")) // ready
			h.route(1, 0, k("C")) // ready
			h.next(a0)
			require.EqualValues(t, 4, tr.InFlight())
			require.EqualValues(t, 1, h.queued())

			h.drain()
			eventually(t, func() bool { return tr.InFlight() == 1 }, "the backlog is abandoned")
			require.Zero(t, h.queued())
			late := h.route(1, 1, k("D"))
			eventually(t, func() bool { return tr.InFlight() == 1 }, "a late arrival is abandoned")
			require.False(t, late.Claim().Stopping(), "abandoned for the drain, not a revoke")

			close(h.in)
			select {
			case <-h.done:
				t.Fatal("the router returned while a0 was still out")
			default:
			}
			if finishLast {
				h.finish(a0)
			} else {
				a0.Retry()
				send(t, h.r.Released, a0)
			}
			select {
			case err := <-h.done:
				require.NoError(t, err)
				h.done <- err // for the cleanup
			case <-time.After(wait):
				t.Fatal("the router did not return once everything came back")
			}
			require.Zero(t, tr.InFlight())
			off, _ := tr.Claim(tp(0)).Committable()
			want := map[bool]int64{true: 1, false: 0}[finishLast]
			require.Equal(t, want, off.Offset, "a retry while draining is abandoned, never skipped")
			h.r.Purge(nil) // a no-op once the router returned
		})
	}
}

func TestRouterHardStop(t *testing.T) {
	h := startRouter(t, stages.OrderByKey, false)
	a0 := h.route(0, 0, k("A"))
	h.next(a0)
	h.stop() // returns at once, though a0 is still out
	select {
	case err := <-h.done:
		require.NoError(t, err)
		h.done <- err
	case <-time.After(wait):
		t.Fatal("the router did not return on a hard stop")
	}
}

func TestRouterQueuedCounterUnderLoad(t *testing.T) {
	// Many keys, a handful of fake handlers releasing in random order: the
	// per-key FIFO holds and Queued ends at zero.
	env, _ := newEnv(nil)
	r := stages.NewRouter(env, stages.OrderByKey, true)
	in, out := make(chan *M, 16), make(chan *M, 16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, in, out) }()

	const n, keys = 3000, 17
	type state struct{ running, last int64 }
	var mu sync.Mutex
	per := map[string]*state{}
	var handlers sync.WaitGroup
	for w := range 4 {
		handlers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for m := range out {
				key := string(m.RawKey) + "/" + m.TopicPartition().String()
				if m.RawKey == nil {
					key = "nil/" + m.TopicPartition().String()
				}
				mu.Lock()
				s := per[key]
				if s == nil {
					s = &state{last: -1}
					per[key] = s
				}
				s.running++
				if s.running != 1 || m.Offset <= s.last {
					mu.Unlock()
					t.Errorf("key %s: %d running, offset %d after %d", key, s.running, m.Offset, s.last)
					return
				}
				s.last = m.Offset
				mu.Unlock()
				if rng.IntN(4) == 0 {
					runtime.Gosched()
				}
				mu.Lock()
				s.running--
				mu.Unlock()
				pipeline.Finish(m)
				r.Released <- m
			}
		})
	}
	rng := rand.New(rand.NewPCG(5, 5))
	last := map[int32]int64{}
	for i := range n {
		p := int32(rng.IntN(3))
		last[p] = int64(i)
		var key []byte
		if rng.IntN(10) > 0 {
			key = []byte{byte('a' + rng.IntN(keys))}
		}
		in <- newMsg(env, p, int64(i), key)
		require.GreaterOrEqual(t, env.Counters.Queued.Load(), int64(0))
	}
	close(in)
	require.NoError(t, recv(t, done))
	close(out)
	handlers.Wait()
	require.Zero(t, env.Counters.Queued.Load())
	require.Zero(t, env.Tracker.InFlight())
	require.Len(t, env.Tracker.Claims(), len(last))
	for _, c := range env.Tracker.Claims() {
		off, moved := c.Committable()
		require.True(t, moved)
		require.Equal(t, last[c.TopicPartition().Partition]+1, off.Offset, "all finished")
	}
}

// TestRouterFinishesItsBacklogWhenInCloses: a stage must never swallow a
// message. When in closes without a drain (the stage before the router
// simply ended), what is queued behind a key, or handed back for a retry, is
// still dispatched; the router returns once all of it came back.
func TestRouterFinishesItsBacklogWhenInCloses(t *testing.T) {
	// nextOrReturned fails at once if the router returns instead of
	// dispatching want.
	nextOrReturned := func(t *testing.T, h *routerRun, want *M) {
		t.Helper()
		select {
		case got := <-h.out:
			require.Same(t, want, got)
		case err := <-h.done:
			h.done <- err
			t.Fatalf("the router returned (abandoning %v) instead of dispatching it; in flight: %d",
				want, h.env.Tracker.InFlight())
		case <-time.After(wait):
			t.Fatal("receive timed out")
		}
	}
	returned := func(t *testing.T, h *routerRun) {
		t.Helper()
		err := recv(t, h.done)
		require.NoError(t, err)
		h.done <- err
	}
	t.Run("queued behind a key", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, false)
		a0, a1 := h.route(0, 0, k("A")), h.route(0, 1, k("A"))
		h.next(a0)
		close(h.in)
		h.finish(a0)
		nextOrReturned(t, h, a1)
		h.finish(a1)
		returned(t, h)
		require.Zero(t, h.env.Tracker.InFlight())
		off, _ := h.env.Tracker.Claim(tp(0)).Committable()
		require.Equal(t, int64(2), off.Offset)
	})
	t.Run("retried", func(t *testing.T) {
		h := startRouter(t, stages.OrderByKey, false)
		a0 := h.route(0, 0, k("A"))
		h.next(a0)
		close(h.in)
		a0.Retry()
		send(t, h.r.Released, a0)
		nextOrReturned(t, h, a0)
		h.finish(a0)
		returned(t, h)
		require.Zero(t, h.env.Tracker.InFlight())
	})
}
