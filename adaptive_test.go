package parallafka_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// fakeDownstream is a service shared by the handlers, in synctest's fake
// time: a call takes base × max(1, calls in it / capacity) (it slows down
// as it is overloaded), and a call that finds more than twice capacity
// calls in it fails at once.
type fakeDownstream struct {
	base     time.Duration
	capacity atomic.Int64
	in       atomic.Int64
}

var errShed = errors.New("downstream shed the call")

func (d *fakeDownstream) call() error {
	n := d.in.Add(1)
	defer d.in.Add(-1)
	capacity := d.capacity.Load()
	if n > 2*capacity {
		return errShed
	}
	time.Sleep(time.Duration(float64(d.base) * max(1, float64(n)/float64(capacity))))
	return nil
}

// limitLog records every concurrency limit the pipeline published, with
// the fake time it was published at.
type limitLog struct {
	mu     sync.Mutex
	at     []time.Time
	limits []int
}

func (l *limitLog) record(limit int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.at = append(l.at, time.Now())
	l.limits = append(l.limits, limit)
}

// inForce returns the highest limit in force at the instant now: the last
// one published before it, and every one published at it. In a synctest
// bubble time stands still while any goroutine can run, so a handler that
// starts now was dispatched now, under one of these.
func (l *limitLog) inForce(now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	highest := 0
	for i, at := range l.at {
		switch {
		case at.Before(now):
			highest = l.limits[i] // the last one before now, so far
		case at.Equal(now):
			highest = max(highest, l.limits[i])
		}
	}
	return highest
}

// TestAdaptiveConcurrencyFollowsTheDownstream runs the pipeline against a
// downstream whose capacity drops from 16 to 4 and comes back, with key
// order, retries of the calls it sheds, and a revoke of one partition in
// the middle. No handler ever starts above the limit in force, the limit
// rises and falls within [min, max], every message is handled in key
// order, and the final commits cover every partition.
func TestAdaptiveConcurrencyFollowsTheDownstream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, partitions, minC, maxC = 6000, 4, 2, 64
		src := memsource.New[string, int]()
		produce(src, partitions, n, func(int) int { return rand.N(300) })
		ds := &fakeDownstream{base: 20 * time.Millisecond}
		ds.capacity.Store(16)
		limits := &limitLog{}
		p, err := parallafka.New(src,
			parallafka.WithAdaptiveConcurrency(minC, maxC),
			parallafka.WithObserver(pipeline.ObserverFuncs{ConcurrencyLimitChanged: limits.record}.Observer()),
			parallafka.WithAfterHandle("retry", must(stages.Retry[string, int](stages.RetryConfig{
				MaxAttempts: 1000, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
			}))),
			parallafka.WithLogger(quiet), parallafka.WithCommitInterval(50*time.Millisecond))
		require.NoError(t, err)

		rec := newRecorder(0)
		var running, overLimit, calls, shed atomic.Int64
		handler := func(ctx context.Context, msg *parallafka.Message[string, int]) error {
			r := running.Add(1)
			defer running.Add(-1)
			if r > int64(limits.inForce(time.Now())) {
				overLimit.Add(1)
			}
			calls.Add(1)
			if err := ds.call(); err != nil {
				shed.Add(1)
				return err
			}
			return rec.handle(ctx, msg)
		}

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Consume(ctx, handler) }()
		start := time.Now()
		revoked := false
		for rec.count() < n {
			time.Sleep(50 * time.Millisecond)
			switch elapsed := time.Since(start); {
			case elapsed > 10*time.Minute:
				t.Fatalf("handled %d of %d in 10 minutes of fake time", rec.count(), n)
			case elapsed > 6*time.Second:
				ds.capacity.Store(16)
			case elapsed > 3*time.Second:
				ds.capacity.Store(4)
				if !revoked { // one partition goes and comes back while the limit changes
					revoked = true
					src.Revoke(tp(1))
					src.Assign(tp(1))
				}
			}
			require.GreaterOrEqual(t, p.Stats().ConcurrencyLimit, minC)
			require.LessOrEqual(t, p.Stats().ConcurrencyLimit, maxC)
		}
		cancel()
		require.NoError(t, <-done)

		assert.Zero(t, overLimit.Load(), "handlers started above the limit in force")
		assert.Empty(t, rec.errs, "key order")
		assert.Len(t, rec.handled, n, "every message handled")
		for _, part := range src.Partitions() {
			assert.Equal(t, src.Len(part), src.Committed(part), "final commit of %v", part)
		}

		limits.mu.Lock()
		defer limits.mu.Unlock()
		assert.Equal(t, minC, limits.limits[0], "starts at min")
		assert.GreaterOrEqual(t, slices.Max(limits.limits), 16, "found the capacity")
		assert.GreaterOrEqual(t, slices.Min(limits.limits), minC)
		assert.LessOrEqual(t, slices.Max(limits.limits), maxC)
		fell := false
		for i := 1; i < len(limits.limits); i++ {
			fell = fell || limits.limits[i] < limits.limits[i-1]
		}
		assert.True(t, fell, "the limit came down when the capacity did")
		t.Logf("%d limit changes, %d calls, %d shed, limits %v…", len(limits.limits), calls.Load(), shed.Load(), limits.limits[:min(30, len(limits.limits))])
	})
}

func TestAdaptiveConcurrencyOptions(t *testing.T) {
	src := memsource.New[string, int]()
	for _, tc := range []struct {
		name string
		opts []parallafka.Option
		want string
	}{
		{"min below 1", []parallafka.Option{parallafka.WithAdaptiveConcurrency(0, 8)}, "min must be at least 1"},
		{"max below min", []parallafka.Option{parallafka.WithAdaptiveConcurrency(8, 4)}, "max (4) must be at least min (8)"},
		{"with a fixed concurrency", []parallafka.Option{parallafka.WithAdaptiveConcurrency(1, 8), parallafka.WithMaxConcurrency(4)}, "cannot be combined"},
		{"window below max", []parallafka.Option{parallafka.WithAdaptiveConcurrency(1, 100), parallafka.WithMaxInFlight(50)}, "max in-flight (50) must be at least the max concurrency (100)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parallafka.New(src, tc.opts...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	p, err := parallafka.New(src, parallafka.WithAdaptiveConcurrency(1, 1))
	require.NoError(t, err, "min = max is a fixed limit")
	assert.Zero(t, p.Stats().ConcurrencyLimit, "0 before Consume")
}

// TestConcurrencyLimitReportedWhenFixed: Stats and the observer report the
// fixed concurrency too.
func TestConcurrencyLimitReportedWhenFixed(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 10, func(i int) int { return i })
	var reported atomic.Int64
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7), parallafka.WithLogger(quiet),
		parallafka.WithObserver(pipeline.ObserverFuncs{ConcurrencyLimitChanged: func(n int) { reported.Store(int64(n)) }}.Observer()))
	require.NoError(t, err)
	var handled atomic.Int64
	require.NoError(t, consumeUntil(t, p, func(context.Context, *parallafka.Message[string, int]) error {
		handled.Add(1)
		return nil
	}, func() bool { return handled.Load() == 10 }))
	assert.EqualValues(t, 7, reported.Load())
	assert.Equal(t, 7, p.Stats().ConcurrencyLimit)
}

// TestAdaptiveConcurrencyWithBatches: with ConsumeBatch the limit counts
// batch calls; each call is one sample, whatever its size. Batches never
// run above the limit in force, the limit moves, and every message is
// handled once, in key order, and committed.
func TestAdaptiveConcurrencyWithBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, partitions = 4000, 2
		src := memsource.New[string, int]()
		produce(src, partitions, n, func(int) int { return rand.N(400) })
		ds := &fakeDownstream{base: 10 * time.Millisecond}
		ds.capacity.Store(6)
		limits := &limitLog{}
		p, err := parallafka.New(src,
			parallafka.WithAdaptiveConcurrency(1, 32), parallafka.WithMaxBatchMessages(20),
			parallafka.WithObserver(pipeline.ObserverFuncs{ConcurrencyLimitChanged: limits.record}.Observer()),
			parallafka.WithAfterHandle("retry", must(stages.Retry[string, int](stages.RetryConfig{
				MaxAttempts: 1000, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
			}))),
			parallafka.WithLogger(quiet), parallafka.WithCommitInterval(50*time.Millisecond))
		require.NoError(t, err)

		rec := newRecorder(0)
		var running, overLimit atomic.Int64
		handler := func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
			r := running.Add(1)
			defer running.Add(-1)
			if r > int64(limits.inForce(time.Now())) {
				overLimit.Add(1)
			}
			if err := ds.call(); err != nil {
				return err // the whole batch fails, and is retried
			}
			for _, msg := range batch {
				if err := rec.handle(ctx, msg); err != nil {
					return err
				}
			}
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.ConsumeBatch(ctx, handler) }()
		start := time.Now()
		for rec.count() < n {
			time.Sleep(50 * time.Millisecond)
			require.Less(t, time.Since(start), 10*time.Minute, "handled %d of %d", rec.count(), n)
		}
		cancel()
		require.NoError(t, <-done)

		assert.Zero(t, overLimit.Load(), "batches started above the limit in force")
		assert.Empty(t, rec.errs, "key order")
		assert.Len(t, rec.handled, n)
		for _, part := range src.Partitions() {
			assert.Equal(t, src.Len(part), src.Committed(part), "final commit of %v", part)
		}
		limits.mu.Lock()
		defer limits.mu.Unlock()
		assert.Equal(t, 1, limits.limits[0], "starts at min")
		assert.Greater(t, slices.Max(limits.limits), 1, "the limit grew")
		assert.LessOrEqual(t, slices.Max(limits.limits), 32)
	})
}
