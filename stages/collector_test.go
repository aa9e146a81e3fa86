package stages_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// collectorRun runs a Collector alone; what it hands back to the router
// arrives on router.Released, which the test reads.
type collectorRun struct {
	env      *stages.Env[string, string]
	router   *stages.Router[string, string]
	c        *stages.Collector[string, string]
	in       chan *M
	done     chan error
	policyOf []error // errors the policy saw
	stops    []error // errors Stop was called with
	mu       sync.Mutex
}

func startCollector(t *testing.T, ctx context.Context, action stages.ErrorAction) *collectorRun {
	env, _ := newEnv(nil)
	h := &collectorRun{env: env, router: stages.NewRouter(env, stages.OrderByKey, false), in: make(chan *M), done: make(chan error, 1)}
	h.c = &stages.Collector[string, string]{
		Env: env, Router: h.router,
		Policy: func(err error) stages.ErrorAction {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.policyOf = append(h.policyOf, err)
			return action
		},
		Stop: func(err error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.stops = append(h.stops, err)
			// Stop comes before the key is released, with the message
			// still in flight (abandoned only afterwards).
			assert.Empty(t, h.router.Released, "Stop must come before the message goes back to the router")
			assert.EqualValues(t, 1, env.Tracker.InFlight())
		},
	}
	go func() { h.done <- h.c.Run(ctx, h.in) }()
	t.Cleanup(func() {
		close(h.in)
		require.NoError(t, recv(t, h.done))
	})
	return h
}

// collect sends m through the collector and returns what reached the router.
func (h *collectorRun) collect(t *testing.T, m *M) *M {
	t.Helper()
	send(t, h.in, m)
	got := recv(t, h.router.Released)
	require.Same(t, m, got, "every message goes back to the router")
	return got
}

func committableOffset(t *testing.T, env *stages.Env[string, string], p int32) int64 {
	t.Helper()
	off, _ := env.Tracker.Claim(tp(p)).Committable()
	return off.Offset
}

func TestCollectorOutcomes(t *testing.T) {
	h := startCollector(t, context.Background(), stages.Skip)
	c := h.env.Counters

	ok := newMsg(h.env, 0, 0, k("A"))
	h.collect(t, ok)
	require.EqualValues(t, 1, c.Handled.Load())
	require.Equal(t, int64(1), committableOffset(t, h.env, 0), "a success is finished")

	dropped := newMsg(h.env, 0, 1, k("A"))
	dropped.Err = errors.New("ignored")
	dropped.Drop()
	h.collect(t, dropped)
	require.EqualValues(t, 1, c.Dropped.Load())
	require.Equal(t, int64(2), committableOffset(t, h.env, 0), "a drop is finished")

	retried := newMsg(h.env, 0, 2, k("A"))
	retried.Err = errors.New("transient")
	retried.Retry()
	got := h.collect(t, retried)
	require.True(t, got.RetryRequested(), "the router sees the retry mark")
	require.Zero(t, c.Retried.Load(), "the router counts a retry when it dispatches it again")
	require.EqualValues(t, 1, h.env.Tracker.InFlight(), "a retry is not finished")
	require.Equal(t, int64(2), committableOffset(t, h.env, 0))
	pipeline.Finish(retried)

	require.Zero(t, c.Failed.Load())
	require.Empty(t, h.policyOf)
	require.Zero(t, h.env.Tracker.InFlight())
}

func TestCollectorSkip(t *testing.T) {
	h := startCollector(t, context.Background(), stages.Skip)
	cause := errors.New("bad data")
	m := newMsg(h.env, 3, 7, k("A"))
	m.Attempt, m.Err = 2, cause
	h.collect(t, m)

	require.Len(t, h.policyOf, 1)
	var me *stages.MessageError
	require.ErrorAs(t, h.policyOf[0], &me)
	require.Equal(t, stages.MessageError{Topic: topic, Partition: 3, Offset: 7, Attempt: 2, Err: cause}, *me)
	require.ErrorIs(t, h.policyOf[0], cause)
	require.Equal(t, "parallafka: message "+topic+"[3]@7 failed (attempt 2): bad data", me.Error())
	require.EqualValues(t, 1, h.env.Counters.Failed.Load())
	require.EqualValues(t, 1, h.env.Counters.Skipped.Load())
	require.Zero(t, h.env.Counters.Handled.Load())
	require.Equal(t, int64(8), committableOffset(t, h.env, 3), "a skipped failure is finished")
	require.Empty(t, h.stops)
}

func TestCollectorStop(t *testing.T) {
	h := startCollector(t, context.Background(), stages.Stop)
	cause := errors.New("fatal")
	m := newMsg(h.env, 0, 0, k("A"))
	m.Attempt, m.Err = 1, cause
	h.collect(t, m)

	require.Len(t, h.stops, 1)
	require.Same(t, h.policyOf[0], h.stops[0], "Stop gets the policy's error")
	require.ErrorIs(t, h.stops[0], cause)
	require.EqualValues(t, 1, h.env.Counters.Failed.Load())
	require.Zero(t, h.env.Counters.Skipped.Load())
	require.Zero(t, h.env.Tracker.InFlight(), "abandoned")
	off, moved := h.env.Tracker.Claim(tp(0)).Committable()
	require.Equal(t, int64(0), off.Offset, "a stopping failure stays uncommitted")
	require.True(t, moved, "(offset 0 is the claim's start)")
}

func TestCollectorHardStopAbandonsFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := startCollector(t, ctx, stages.Skip)
	m := newMsg(h.env, 0, 0, k("A"))
	m.Attempt, m.Err = 1, context.Canceled
	send(t, h.in, m)
	// Whether or not it still reaches the router (the context is done), it
	// was abandoned, not put to the policy.
	eventually(t, func() bool { return h.env.Tracker.InFlight() == 0 })
	require.Empty(t, h.policyOf)
	require.Zero(t, h.env.Counters.Failed.Load())
	require.Equal(t, int64(0), committableOffset(t, h.env, 0))
	// A success during a hard stop still counts.
	ok := newMsg(h.env, 0, 1, k("B"))
	select {
	case h.in <- ok:
		eventually(t, func() bool { return h.env.Tracker.InFlight() == 0 })
		require.EqualValues(t, 1, h.env.Counters.Handled.Load())
	case err := <-h.done:
		// The collector returned after the first message (its context is
		// done): that is fine too.
		require.NoError(t, err)
		h.done <- err
		pipeline.Abandon(ok)
	}
}

func TestHandlerPool(t *testing.T) {
	t.Run("outcomes", func(t *testing.T) {
		env, _ := newEnv(nil)
		failure := errors.New("handler failed")
		var calls atomic.Int64
		pool := &stages.HandlerPool[string, string]{Env: env, Concurrency: 1, Handler: func(ctx context.Context, m *M) error {
			calls.Add(1)
			switch m.Key {
			case "fail":
				return failure
			case "panic":
				panic("kaboom")
			case "panic-error":
				panic(failure)
			}
			return nil
		}}
		in, out := make(chan *M), make(chan *M)
		done := make(chan error, 1)
		go func() { done <- pool.Run(context.Background(), in, out) }()
		through := func(m *M) *M {
			t.Helper()
			send(t, in, m)
			got := recv(t, out)
			require.Same(t, m, got)
			return got
		}

		m := through(newMsg(env, 0, 0, k("ok")))
		require.NoError(t, m.Err)
		require.Equal(t, 1, m.Attempt)

		m = through(newMsg(env, 0, 1, k("fail")))
		require.ErrorIs(t, m.Err, failure)
		require.Equal(t, 1, m.Attempt)

		// A panic is the message's error; the one worker survives it.
		m = through(newMsg(env, 0, 2, k("panic")))
		var pe *stages.PanicError
		require.ErrorAs(t, m.Err, &pe)
		require.Equal(t, "kaboom", pe.Value)
		require.Equal(t, "handler panicked: kaboom", pe.Error())
		require.NotEmpty(t, pe.Stack)
		require.Contains(t, string(pe.Stack), "stages_test.TestHandlerPool", "the panicking handler's stack")
		require.NoError(t, pe.Unwrap(), "a non-error panic value unwraps to nothing")

		m = through(newMsg(env, 0, 3, k("panic-error")))
		require.ErrorAs(t, m.Err, &pe)
		require.ErrorIs(t, m.Err, failure, "an error panic value unwraps")

		m = through(newMsg(env, 0, 4, k("ok")))
		require.NoError(t, m.Err, "the worker survived both panics")

		// A retry after a failure is handled again: attempt 2.
		m = newMsg(env, 0, 5, k("fail"))
		through(m)
		m.ResetFate()
		through(m)
		require.Equal(t, 2, m.Attempt)
		require.EqualValues(t, 7, calls.Load())

		// Not handled: a poison pill (failed before any attempt), a dropped
		// message, and one whose claim stopped since its dispatch.
		poison := newMsg(env, 0, 6, k("ok"))
		poison.Err = errors.New("cannot deserialize")
		through(poison)
		require.Zero(t, poison.Attempt)
		require.EqualError(t, poison.Err, "cannot deserialize")

		dropped := newMsg(env, 0, 7, k("ok"))
		dropped.Drop()
		through(dropped)
		require.Zero(t, dropped.Attempt)

		revoked := newMsg(env, 1, 0, k("ok"))
		env.Tracker.Stop([]pipeline.TopicPartition{tp(1)})
		through(revoked)
		require.True(t, revoked.RetryRequested(), "handed back as a retry, so that the router abandons it")
		require.Zero(t, revoked.Attempt)
		require.EqualValues(t, 7, calls.Load())

		close(in)
		require.NoError(t, recv(t, done))
	})

	t.Run("concurrency and hard stop", func(t *testing.T) {
		env, _ := newEnv(nil)
		const n = 4
		entered := make(chan struct{}, n)
		pool := &stages.HandlerPool[string, string]{Env: env, Concurrency: n, Handler: func(ctx context.Context, m *M) error {
			entered <- struct{}{}
			<-ctx.Done() // handlers honour their context
			return ctx.Err()
		}}
		in, out := make(chan *M, n+1), make(chan *M, n+1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- pool.Run(ctx, in, out) }()
		for i := range n + 1 {
			in <- newMsg(env, 0, int64(i), k(strings.Repeat("x", i+1)))
		}
		for range n {
			recv(t, entered) // n handlers run at once
		}
		cancel()
		// A hard stop: each worker hands its message on or, as its context
		// is done, just returns; what it did not hand on stays uncommitted.
		close(in) // the fifth is not handled once the context is done
		returned := make(chan error, 1)
		go func() { returned <- recv(t, done) }()
		outcomes := 0
		for {
			select {
			case m := <-out:
				require.ErrorIs(t, m.Err, context.Canceled)
				require.Less(t, m.Offset, int64(n), "the fifth message was never handled")
				outcomes++
				continue
			case err := <-returned:
				require.NoError(t, err)
			}
			break
		}
		require.LessOrEqual(t, outcomes, n)
		require.Empty(t, entered)
	})
}

// TestPanicThroughCollector: a panicking handler's message reaches the error
// policy as a *MessageError wrapping the *PanicError.
func TestPanicThroughCollector(t *testing.T) {
	h := startCollector(t, context.Background(), stages.Skip)
	pool := &stages.HandlerPool[string, string]{Env: h.env, Concurrency: 2, Handler: func(context.Context, *M) error {
		panic("handler bug")
	}}
	in, out := make(chan *M), make(chan *M)
	done := make(chan error, 1)
	go func() { done <- pool.Run(context.Background(), in, out) }()
	m := newMsg(h.env, 0, 0, k("A"))
	send(t, in, m)
	h.collect(t, recv(t, out))
	close(in)
	require.NoError(t, recv(t, done))

	require.Len(t, h.policyOf, 1)
	var pe *stages.PanicError
	require.ErrorAs(t, h.policyOf[0], &pe)
	require.Equal(t, "handler bug", pe.Value)
	require.NotEmpty(t, pe.Stack)
	require.EqualValues(t, 1, h.env.Counters.Skipped.Load())
	require.Equal(t, int64(1), committableOffset(t, h.env, 0))
}
