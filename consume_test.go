package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// TestPipelineProperties runs the whole pipeline over random workloads:
// uniform and skewed keys, random handler delays, concurrency 1..64, every
// ordering mode. Every message is handled exactly once, each key's offsets
// strictly increase, final commits are each partition's end, and in-flight
// never exceeds its limit.
func TestPipelineProperties(t *testing.T) {
	type workload struct {
		name        string
		ordering    parallafka.Ordering
		concurrency int
		maxInFlight int
		keys        func(r *rand.Rand) int
	}
	zipf := func(r *rand.Rand) int { return zipfKey(r, 1.1, 500) }
	var cases []workload
	for _, c := range []int{1, 4, 16, 64} {
		cases = append(cases,
			workload{fmt.Sprintf("key/uniform/c%d", c), parallafka.OrderByKey, c, 0, func(r *rand.Rand) int { return r.IntN(200) }},
			workload{fmt.Sprintf("key/zipf/c%d", c), parallafka.OrderByKey, c, 2 * c, zipf},
		)
	}
	cases = append(cases,
		workload{"key/one-key/c16", parallafka.OrderByKey, 16, 0, func(*rand.Rand) int { return 7 }},
		workload{"partition/c16", parallafka.OrderByPartition, 16, 50, zipf},
		workload{"unordered/c32", parallafka.Unordered, 32, 40, zipf},
	)
	for _, w := range cases {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			seed := rand.Uint64()
			r := rand.New(rand.NewPCG(seed, 0))
			t.Logf("seed %d", seed)
			const n, partitions = 1500, 3
			src := memsource.New[string, int]()
			produce(src, partitions, n, func(int) int { return w.keys(r) })
			rec := newRecorder(500 * time.Microsecond)
			opts := []parallafka.Option{parallafka.WithMaxConcurrency(w.concurrency), parallafka.WithOrdering(w.ordering),
				parallafka.WithLogger(quiet), parallafka.WithCommitInterval(5 * time.Millisecond)}
			limit := 20_000 /* WithMaxInFlight's default */
			if w.maxInFlight > 0 {
				limit = w.maxInFlight
				opts = append(opts, parallafka.WithMaxInFlight(w.maxInFlight))
			}
			p, err := parallafka.New(src, opts...)
			require.NoError(t, err)
			var overLimit atomic.Int64
			handler := func(ctx context.Context, msg *parallafka.Message[string, int]) error {
				if in := p.Stats().InFlight; in > int64(limit) {
					overLimit.Store(in)
				}
				if w.ordering != parallafka.OrderByKey {
					return nil
				}
				return rec.handle(ctx, msg)
			}
			var handled atomic.Int64
			counting := func(ctx context.Context, msg *parallafka.Message[string, int]) error {
				defer handled.Add(1)
				return handler(ctx, msg)
			}
			require.NoError(t, consumeUntil(t, p, counting, func() bool { return handled.Load() >= n }))
			assert.EqualValues(t, n, handled.Load(), "handled exactly once")
			assert.Zero(t, overLimit.Load(), "in flight above the limit")
			if w.ordering == parallafka.OrderByKey {
				assert.Empty(t, rec.errs)
				assert.Len(t, rec.handled, n)
				assert.LessOrEqual(t, rec.maxSeen.Load(), int64(w.concurrency))
			}
			for _, part := range memctl.Partitions(src) {
				if memctl.Len(src, part) > 0 {
					assert.Equal(t, memctl.Len(src, part), src.Committed(part), "final commit of %v", part)
				}
			}
		})
	}
}

// zipfKey draws a key in [0, n) with probability proportional to 1/(k+1)^s.
func zipfKey(r *rand.Rand, s float64, n int) int {
	z := rand.NewZipf(rand.New(rand.NewPCG(r.Uint64(), r.Uint64())), s, 1, uint64(n-1))
	return int(z.Uint64())
}

func TestPartitionOrderHoldsPerPartition(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 600
	produce(src, 3, n, func(i int) int { return i })
	var mu sync.Mutex
	last := map[int32]int64{}
	var bad []string
	var running [3]atomic.Int32
	var count atomic.Int64
	p, err := parallafka.New(src, parallafka.WithOrdering(parallafka.OrderByPartition), parallafka.WithLogger(quiet))
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		defer count.Add(1)
		if running[m.Partition].Add(1) > 1 {
			mu.Lock()
			bad = append(bad, "two handlers in one partition")
			mu.Unlock()
		}
		defer running[m.Partition].Add(-1)
		mu.Lock()
		if l, ok := last[m.Partition]; ok && m.Offset != l+1 {
			bad = append(bad, fmt.Sprintf("p%d: %d after %d", m.Partition, m.Offset, l))
		}
		last[m.Partition] = m.Offset
		mu.Unlock()
		return nil
	}
	require.NoError(t, consumeUntil(t, p, h, func() bool { return count.Load() == n }))
	assert.Empty(t, bad)
}

func TestNilKeys(t *testing.T) {
	for _, ordered := range []bool{false, true} {
		t.Run(fmt.Sprintf("ordered=%v", ordered), func(t *testing.T) {
			src := memsource.New[string, int]()
			src.AddTopic(topic, 1)
			const n = 40
			for i := range n {
				src.ProduceRecord(memsource.Record[string, int]{Topic: topic, NoKey: true, Value: i})
			}
			opts := []parallafka.Option{parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8)}
			if ordered {
				opts = append(opts, parallafka.WithOrderedNilKeys())
			}
			p, err := parallafka.New(src, opts...)
			require.NoError(t, err)
			var running, peak, count atomic.Int64
			h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
				defer count.Add(1)
				assert.Nil(t, m.RawKey)
				cur := running.Add(1)
				defer running.Add(-1)
				for {
					pk := peak.Load()
					if cur <= pk || peak.CompareAndSwap(pk, cur) {
						break
					}
				}
				time.Sleep(2 * time.Millisecond)
				return nil
			}
			require.NoError(t, consumeUntil(t, p, h, func() bool { return count.Load() == n }))
			if ordered {
				assert.EqualValues(t, 1, peak.Load(), "nil keys ordered per partition")
			} else {
				assert.Greater(t, peak.Load(), int64(1), "nil keys run in parallel")
			}
		})
	}
}

// A stuck message holds back its own partition's commit only, and never
// blocks other keys.
func TestStuckMessageHoldsOnlyItsPartition(t *testing.T) {
	src := memsource.New[string, int]()
	src.AddTopic(topic, 2)
	const perPartition = 200
	stuckOffset := int64(10)
	for p := range int32(2) {
		for i := range perPartition {
			src.Produce(topic, p, fmt.Sprintf("k%d", i%20), i)
		}
	}
	release := make(chan struct{})
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Partition == 0 && m.Offset == stuckOffset {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		handled.Add(1)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Consume(ctx, h) }()
	// Everything but the stuck key's messages (k10 in partition 0: offsets 10, 30, ...) finishes.
	want := int64(2*perPartition - perPartition/20)
	eventually(t, func() bool { return handled.Load() == want })
	eventually(t, func() bool { return src.Committed(tp(1)) == perPartition })
	assert.Equal(t, stuckOffset, src.Committed(tp(0)), "partition 0 commits up to the stuck message")
	assert.EqualValues(t, perPartition/20-1, p.Stats().Queued, "stuck key's later messages wait")
	close(release)
	eventually(t, func() bool { return src.Committed(tp(0)) == perPartition })
	cancel()
	require.NoError(t, <-done)
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 20*time.Second, time.Millisecond)
}

// start runs Consume in the background and returns a stop function that
// cancels it and returns its error and how long it took to return.
func start(p *parallafka.Parallafka[string, int], h parallafka.Handler[string, int]) (stop func() (error, time.Duration), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- p.Consume(ctx, h) }()
	return func() (error, time.Duration) {
		t0 := time.Now()
		cancel()
		err := <-ch
		return err, time.Since(t0)
	}, ch
}

func TestGracefulShutdownFinishesInFlightAndDropsBacklog(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 100, func(i int) int { return i % 4 })
	started := make(chan struct{}, 100)
	release := make(chan struct{})
	var finished atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		started <- struct{}{}
		<-release // ignores ctx: graceful shutdown must wait for it
		finished.Add(1)
		return nil
	})
	for range 4 {
		<-started
	}
	go func() { time.Sleep(50 * time.Millisecond); close(release) }()
	err, _ = stop()
	require.NoError(t, err)
	// The 4 started (offsets 0..3) finished; the backlog behind them was
	// dropped, never handled and never committed.
	assert.LessOrEqual(t, finished.Load(), int64(8))
	assert.Equal(t, finished.Load(), src.Committed(tp(0)))
	assert.Less(t, src.Committed(tp(0)), int64(100))
}

func TestGracefulShutdownTimeoutCancelsHandlers(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 20, func(i int) int { return i })
	started := make(chan struct{}, 20)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(2),
		parallafka.WithShutdownTimeout(100*time.Millisecond))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset == 0 {
			started <- struct{}{}
			<-ctx.Done() // hung until cancelled
			return ctx.Err()
		}
		return nil
	})
	<-started
	<-started
	err, took := stop()
	require.ErrorIs(t, err, parallafka.ErrShutdownTimeout)
	assert.Less(t, took, 5*time.Second)
	for _, part := range memctl.Partitions(src) {
		assert.LessOrEqual(t, src.Committed(part), int64(0), "the hung message is not committed")
	}
}

func TestHardStopReturnsPromptly(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 200, func(i int) int { return i })
	var started atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8),
		parallafka.WithShutdownMode(parallafka.HardStop), parallafka.WithShutdownTimeout(time.Hour))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		started.Add(1)
		if m.Offset%2 == 0 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	eventually(t, func() bool { return started.Load() >= 8 })
	err, took := stop()
	require.NoError(t, err)
	assert.Less(t, took, 2*time.Second)
	for _, part := range memctl.Partitions(src) {
		assert.LessOrEqual(t, src.Committed(part), int64(0), "only finished work is committed: offset 0 never finished")
	}
}

func TestPanicStopsWithErrorAndLosesNothing(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 50, func(i int) int { return i % 5 })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Millisecond))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset == 17 {
			panic("boom")
		}
		return nil
	})
	var pe *pipeline.PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "boom", pe.Value)
	assert.NotEmpty(t, pe.Stack)
	var me *pipeline.MessageError
	require.ErrorAs(t, err, &me)
	assert.EqualValues(t, 17, me.Offset)
	assert.LessOrEqual(t, src.Committed(tp(0)), int64(17), "the failed message is not committed")
}

func TestHandlerErrorPolicies(t *testing.T) {
	boom := errors.New("boom")
	failing := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset%10 == 3 {
			return boom
		}
		return nil
	}
	t.Run("default stops", func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 50, func(i int) int { return i })
		p, err := parallafka.New(src, parallafka.WithLogger(quiet))
		require.NoError(t, err)
		err = p.Consume(context.Background(), failing)
		require.ErrorIs(t, err, boom)
		assert.LessOrEqual(t, src.Committed(tp(0)), int64(3))
	})
	t.Run("skip goes on", func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 50, func(i int) int { return i })
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithErrorPolicy(parallafka.SkipOnError))
		require.NoError(t, err)
		require.NoError(t, consumeUntil(t, p, failing, func() bool { return p.Stats().Finished == 50 }))
		assert.EqualValues(t, 50, src.Committed(tp(0)))
		assert.EqualValues(t, 5, p.Stats().Skipped)
	})
	t.Run("decide per error", func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 50, func(i int) int { return i })
		fatal := errors.New("fatal")
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithErrorPolicy(func(err error) pipeline.ErrorAction {
			if errors.Is(err, fatal) {
				return pipeline.Stop
			}
			return pipeline.Skip
		}))
		require.NoError(t, err)
		err = p.Consume(context.Background(), func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Offset == 40 {
				return fatal
			}
			return failing(ctx, m)
		})
		require.ErrorIs(t, err, fatal)
		assert.LessOrEqual(t, src.Committed(tp(0)), int64(40))
		assert.GreaterOrEqual(t, p.Stats().Skipped, int64(3))
	})
}

func TestPoisonPillGoesThroughErrorPolicy(t *testing.T) {
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	bad := errors.New("cannot deserialize")
	for i := range 10 {
		r := memsource.Record[string, int]{Topic: topic, Key: "k", Value: i}
		if i == 4 {
			r.Err = bad
		}
		src.ProduceRecord(r)
	}
	var handled atomic.Int64
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		assert.NotEqualValues(t, 4, m.Offset, "a poison pill never reaches the handler")
		handled.Add(1)
		return nil
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	require.ErrorIs(t, p.Consume(context.Background(), h), bad)
	assert.EqualValues(t, 4, src.Committed(tp(0)))

	src2 := memsource.New[string, int]()
	src2.AddTopic(topic, 1)
	for i := range 10 {
		r := memsource.Record[string, int]{Topic: topic, Key: "k", Value: i}
		if i == 4 {
			r.Err = bad
		}
		src2.ProduceRecord(r)
	}
	handled.Store(0)
	p, err = parallafka.New(src2, parallafka.WithLogger(quiet), parallafka.WithErrorPolicy(parallafka.SkipOnError))
	require.NoError(t, err)
	require.NoError(t, consumeUntil(t, p, h, func() bool { return handled.Load() == 9 }))
	assert.EqualValues(t, 10, src2.Committed(tp(0)))
}

// A revoke waits for the partition's messages in a handler (offset 5, slow
// here), then commits every offset of the partition that finished: up to
// the first one not finished, with those finished above it in the offset
// map. A message still queued when the revoke arrives (offset 4, say, under
// load with 4 handlers) is dropped, not waited for: the next owner handles
// it.
func TestRevokeWaitsForInFlightAndCommits(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 40, func(i int) int { return i % 8 }) // keys 0,2,4,6 → p0; 1,3,5,7 → p1
	var slowStarted = make(chan struct{})
	var once sync.Once
	var slowReturned atomic.Bool
	var mu sync.Mutex
	finishedP0 := map[int64]bool{} // offsets of p0 whose handler returned
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Partition == 0 && m.Offset == 5 {
			once.Do(func() { close(slowStarted) })
			time.Sleep(200 * time.Millisecond) // in flight during the revoke
			defer slowReturned.Store(true)
		}
		if m.Partition == 0 {
			mu.Lock()
			finishedP0[m.Offset] = true
			mu.Unlock()
		}
		return nil
	})
	<-slowStarted
	t0 := time.Now()
	src.Revoke(tp(0))
	took := time.Since(t0)
	assert.True(t, slowReturned.Load(), "revoke waited for the in-flight message")
	assert.Less(t, took, 5*time.Second)
	mu.Lock()
	firstUnfinished := int64(0)
	for finishedP0[firstUnfinished] {
		firstUnfinished++
	}
	n := len(finishedP0)
	mu.Unlock()
	committed := src.Committed(tp(0))
	assert.Equal(t, firstUnfinished, committed, "the revoke commits up to the first offset not finished")
	if committed < 5 {
		runs, err := offsetmap.Decode(committed, memctl.Metadata(src, tp(0)))
		require.NoError(t, err)
		in := false
		for _, r := range runs {
			in = in || (r.From <= 5 && 5 < r.To)
		}
		assert.True(t, in, "offset 5 finished: its commit's offset map has it (%v above %d)", runs, committed)
	}
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	assert.Equal(t, n, len(finishedP0), "nothing of the revoked partition is dispatched after the revoke")
	mu.Unlock()
	eventually(t, func() bool { return src.Committed(tp(1)) == 20 })
	err, _ = stop()
	require.NoError(t, err)
}

func TestRevokeTimeoutCommitsWhatFinished(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 10, func(i int) int { return i })
	hung := make(chan struct{})
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithRevokeTimeout(50*time.Millisecond))
	require.NoError(t, err)
	var handled atomic.Int64
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset == 3 {
			select {
			case <-hung:
			case <-ctx.Done():
			}
		}
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 9 })
	src.Revoke(tp(0))
	assert.EqualValues(t, 3, src.Committed(tp(0)), "stops at the unfinished message")
	close(hung)
	eventually(t, func() bool { return handled.Load() == 10 })
	time.Sleep(20 * time.Millisecond)
	assert.EqualValues(t, 3, src.Committed(tp(0)), "a late finish never moves a revoked partition's commit")
	err, _ = stop()
	require.NoError(t, err)
}

func TestLostPartitionCommitsNothing(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 10, func(i int) int { return i })
	gate := make(chan struct{})
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Hour))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		<-gate
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return p.Stats().InFlight == 10 })
	src.Lose(tp(0))
	close(gate)
	err, _ = stop()
	require.NoError(t, err)
	assert.EqualValues(t, -1, src.Committed(tp(0)))
}

// After a revoke and a re-assign, the partition starts fresh from its
// committed offset, and everything is handled.
func TestReassignAfterRevokeStartsFresh(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 200, func(i int) int { return i % 10 })
	var handled atomic.Int64
	seen := sync.Map{}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		time.Sleep(100 * time.Microsecond)
		if _, dup := seen.LoadOrStore(m.Offset, true); !dup {
			handled.Add(1)
		}
		return nil
	})
	eventually(t, func() bool { return handled.Load() >= 50 })
	src.Revoke(tp(0))
	committed := src.Committed(tp(0))
	src.Assign(tp(0))
	eventually(t, func() bool { return handled.Load() == 200 })
	eventually(t, func() bool { return src.Committed(tp(0)) == 200 })
	assert.Greater(t, committed, int64(0))
	err, _ = stop()
	require.NoError(t, err)
}

func TestBackPressurePausesAndBoundsInFlight(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 12
	produce(src, 2, n, func(i int) int { return i })
	const limit = 4
	var peak atomic.Int64
	var sawPause atomic.Bool
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(2), parallafka.WithMaxInFlight(limit))
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		st := p.Stats()
		if st.InFlight > peak.Load() {
			peak.Store(st.InFlight)
		}
		if len(st.Paused) > 0 && memctl.Paused(src, tp(0)) {
			sawPause.Store(true)
		}
		// Slow: no slot frees for longer than the poller waits before it
		// pauses the partitions.
		time.Sleep(300 * time.Millisecond)
		handled.Add(1)
		return nil
	}
	require.NoError(t, consumeUntil(t, p, h, func() bool { return handled.Load() == n }))
	assert.LessOrEqual(t, peak.Load(), int64(limit))
	assert.True(t, sawPause.Load(), "partitions were paused at the limit")
	assert.Positive(t, p.Stats().Pauses)
	assert.False(t, memctl.Paused(src, tp(0)))
}

// With handlers that free room quickly, the poller waits for room instead of
// pausing (a Kafka consumer drops its prefetched messages on pause).
func TestBackPressureWithFastHandlersBoundsInFlight(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	produce(src, 2, n, func(i int) int { return i })
	const limit = 10
	var peak, handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4), parallafka.WithMaxInFlight(limit))
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if in := p.Stats().InFlight; in > peak.Load() {
			peak.Store(in)
		}
		handled.Add(1)
		return nil
	}
	require.NoError(t, consumeUntil(t, p, h, func() bool { return handled.Load() == n }))
	assert.LessOrEqual(t, peak.Load(), int64(limit))
	t.Logf("pauses with fast handlers: %d", p.Stats().Pauses)
}

// While the handlers are quick the poller keeps the window small (4,096
// messages with 4 handlers, not the 20,000 allowed); slow handlers get the
// whole window back.
func TestQuickHandlersKeepTheWindowSmall(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 80000
	produce(src, 4, n, func(i int) int { return i % 500 })
	var peak, handled atomic.Int64
	var slow atomic.Bool
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4))
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		// The first fill of the window comes before any handler ran; count
		// from the second one on.
		nth := handled.Add(1) // its own count: another handler may count between two loads
		if nth > 30000 && !slow.Load() {
			if in := p.Stats().InFlight; in > peak.Load() {
				peak.Store(in)
			}
		}
		if nth == 50000 {
			slow.Store(true)
		}
		if slow.Load() {
			time.Sleep(50 * time.Microsecond)
		}
		return nil
	}
	var slowPeak atomic.Int64
	require.NoError(t, consumeUntil(t, p, h, func() bool {
		if slow.Load() {
			if in := p.Stats().InFlight; in > slowPeak.Load() {
				slowPeak.Store(in)
			}
		}
		return handled.Load() == n
	}))
	assert.LessOrEqual(t, peak.Load(), int64(4096), "quick handlers: the window stays at 4,096")
	assert.Greater(t, slowPeak.Load(), int64(4096), "slow handlers: the whole window")
	t.Logf("peak in flight: %d with quick handlers, %d with slow ones", peak.Load(), slowPeak.Load())
}

func TestFailingCommitsAreRetriedWithoutBlockingHandling(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 100, func(i int) int { return i })
	var failures atomic.Int64
	memctl.SetCommitHook(src, func([]pipeline.Offset) error {
		if failures.Add(1) <= 3 {
			return errors.New("broker said no")
		}
		return nil
	})
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(20*time.Millisecond))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 100 })
	eventually(t, func() bool { return src.Committed(tp(0)) == 100 })
	assert.GreaterOrEqual(t, p.Stats().CommitErrors, int64(3))
	err, _ = stop()
	require.NoError(t, err)
}

func TestConsumeMisuse(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 1, func(int) int { return 0 })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	require.ErrorContains(t, p.Consume(context.Background(), nil), "nil handler")
	require.ErrorIs(t, p.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil }), parallafka.ErrConsumed,
		"a nil handler consumes the Parallafka too (its source is closed)")

	p, err = parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error { return nil }), "a requested stop, before the start")
	require.ErrorIs(t, p.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil }), parallafka.ErrConsumed)

	p2, err := parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet))
	require.NoError(t, err)
	stop, _ := start(p2, func(context.Context, *parallafka.Message[string, int]) error { return nil })
	time.Sleep(10 * time.Millisecond)
	require.ErrorIs(t, p2.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil }), parallafka.ErrConsumed)
	err, _ = stop()
	require.NoError(t, err)
}

func TestNewRejectsBadOptions(t *testing.T) {
	src := memsource.New[string, int]()
	cases := map[string][]parallafka.Option{
		"zero concurrency":          {parallafka.WithMaxConcurrency(0)},
		"negative in-flight":        {parallafka.WithMaxInFlight(-1)},
		"in-flight below conc":      {parallafka.WithMaxConcurrency(10), parallafka.WithMaxInFlight(5)},
		"bad ordering":              {parallafka.WithOrdering(parallafka.Ordering(9))},
		"zero commit interval":      {parallafka.WithCommitInterval(0)},
		"bad shutdown mode":         {parallafka.WithShutdownMode(parallafka.ShutdownMode(5))},
		"negative shutdown timeout": {parallafka.WithShutdownTimeout(-time.Second)},
		"zero revoke timeout":       {parallafka.WithRevokeTimeout(0)},
		"nil policy":                {parallafka.WithErrorPolicy(nil)},
		"nil option":                {nil},
		"nil middleware":            {parallafka.WithMiddleware[string, int](nil)},
		"nil stage":                 {parallafka.WithAfterPoll[string, int]("x", nil)},
		"middleware of other types": {parallafka.WithMiddleware(func(h parallafka.Handler[int, int]) parallafka.Handler[int, int] { return h })},
		"stage of other types":      {parallafka.WithAfterHandle("x", passThrough[int, string])},
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			p, err := parallafka.New(src, opts...)
			require.Error(t, err)
			assert.Nil(t, p)
			assert.Contains(t, err.Error(), "parallafka:")
		})
	}
	_, err := parallafka.New[string, int](nil)
	require.ErrorContains(t, err, "nil source")
	var never *memsource.Source[string, int] // a typed nil in the interface
	_, err = parallafka.New[string, int](never)
	require.ErrorContains(t, err, "nil source")
	_, err = parallafka.New(src, parallafka.WithLogger(nil))
	require.NoError(t, err, "a nil logger discards")
	_, err = parallafka.New(src)
	require.NoError(t, err, "defaults are valid")
}

func passThrough[K, V any](ctx context.Context, in <-chan *parallafka.Message[K, V], out chan<- *parallafka.Message[K, V]) error {
	for m := range in {
		select {
		case out <- m:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func TestStatsSnapshot(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 100, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Millisecond))
	require.NoError(t, err)
	assert.Zero(t, p.Stats().Polled)
	require.NoError(t, consumeUntil(t, p, func(context.Context, *parallafka.Message[string, int]) error { return nil },
		func() bool { st := p.Stats(); return st.Committed[tp(0)] == 50 && st.Committed[tp(1)] == 50 }))
	st := p.Stats()
	assert.EqualValues(t, 100, st.Polled)
	assert.EqualValues(t, 100, st.Finished)
	assert.Zero(t, st.Failed)
	assert.Positive(t, st.Commits)
}

// After a failure that stops the pipeline, no later message with the failed
// message's key starts: its order is kept for the redelivery.
func TestStopKeepsTheFailedKeyBlocked(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 50, func(int) int { return 1 })
	var maxHandled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(ctx context.Context, m *parallafka.Message[string, int]) error {
		maxHandled.Store(m.Offset)
		if m.Offset == 3 {
			return errors.New("boom")
		}
		return nil
	})
	require.Error(t, err)
	assert.EqualValues(t, 3, maxHandled.Load())
	assert.EqualValues(t, 3, src.Committed(tp(0)))
}

func countingHandler(seen *sync.Map, total *atomic.Int64, maxDelay time.Duration) parallafka.Handler[string, int] {
	return func(ctx context.Context, m *parallafka.Message[string, int]) error {
		time.Sleep(rand.N(maxDelay))
		n, _ := seen.LoadOrStore(fmt.Sprintf("%d@%d", m.Partition, m.Offset), new(atomic.Int64))
		if n.(*atomic.Int64).Add(1) == 1 {
			total.Add(1)
		}
		return nil
	}
}

// A graceful stop lets the running handlers finish, drops the rest and
// commits the offset map: a restart redoes nothing and loses nothing, even
// with skewed keys.
func TestGracefulRestartRedoesNothing(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	r := rand.New(rand.NewPCG(1, 2))
	produce(src, 3, n, func(int) int { return zipfKey(r, 1.2, 100) })
	var seen sync.Map
	var total atomic.Int64
	for run := 0; total.Load() < n; run++ {
		require.Less(t, run, 20)
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(16), parallafka.WithMaxInFlight(200))
		require.NoError(t, err)
		stop, _ := start(p, countingHandler(&seen, &total, time.Millisecond))
		target := min(int64(n), total.Load()+700)
		eventually(t, func() bool { return total.Load() >= target })
		err, _ = stop()
		require.NoError(t, err)
		for _, part := range memctl.Partitions(src) {
			committed := src.Committed(part)
			for off := int64(0); off < committed; off++ {
				_, ok := seen.Load(fmt.Sprintf("%d@%d", part.Partition, off))
				require.True(t, ok, "committed past unhandled %v@%d", part, off)
			}
		}
	}
	assert.Zero(t, handledTwice(&seen), "redone after a graceful restart")
	for _, part := range memctl.Partitions(src) {
		assert.Equal(t, memctl.Len(src, part), src.Committed(part))
	}
}

// A revoke waits for the running handlers, commits the offset and its map,
// and the next owner (here: the same member, assigned again) skips what
// finished: nothing redone, nothing lost.
func TestRevokeHandsOverWithoutDuplicates(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	r := rand.New(rand.NewPCG(3, 4))
	produce(src, 3, n, func(int) int { return zipfKey(r, 1.2, 100) })
	var seen sync.Map
	var total atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(16), parallafka.WithMaxInFlight(200))
	require.NoError(t, err)
	stop, _ := start(p, countingHandler(&seen, &total, time.Millisecond))
	for round := int64(1); total.Load() < n; round++ {
		target := min(int64(n), round*400)
		eventually(t, func() bool { return total.Load() >= target })
		part := tp(int32(round % 3))
		src.Revoke(part)
		src.Assign(part)
	}
	err, _ = stop()
	require.NoError(t, err)
	assert.Zero(t, handledTwice(&seen), "redone after a revoke")
	for _, part := range memctl.Partitions(src) {
		assert.Equal(t, memctl.Len(src, part), src.Committed(part))
	}
}

// Issue 26: Consume(ctx, nil) closes the source like every other early
// return, and marks the Parallafka consumed; so does ConsumeBatch.
func TestNilHandlerClosesSource(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) {
			src := &closeCounting{Source: memsource.New[string, int]()}
			p, err := parallafka.New[string, int](src, parallafka.WithLogger(quiet))
			require.NoError(t, err)
			if batch {
				require.ErrorContains(t, p.ConsumeBatch(context.Background(), nil), "nil handler")
			} else {
				require.ErrorContains(t, p.Consume(context.Background(), nil), "nil handler")
			}
			assert.EqualValues(t, 1, src.closed.Load(), "the source is closed")
			require.ErrorIs(t, p.Health(t.Context()), parallafka.ErrStopped)
			require.ErrorIs(t, p.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil }), parallafka.ErrConsumed)
			assert.EqualValues(t, 1, src.closed.Load(), "closed once")
		})
	}
}

// Issue 26: a context cancelled just before Consume and one cancelled a
// moment after give one answer: nil, a requested stop. The source is
// closed either way.
func TestCancelledContextOneAnswer(t *testing.T) {
	handler := func(context.Context, *parallafka.Message[string, int]) error { return nil }
	batchHandler := func(context.Context, []*parallafka.Message[string, int]) error { return nil }
	for _, batch := range []bool{false, true} {
		for _, after := range []time.Duration{-1, 0, time.Millisecond, 20 * time.Millisecond} {
			t.Run(fmt.Sprintf("batch=%v/cancel-after=%v", batch, after), func(t *testing.T) {
				src := &closeCounting{Source: memsource.New[string, int]()}
				produce(src.Source, 1, 10, func(i int) int { return i })
				p, err := parallafka.New[string, int](src, parallafka.WithLogger(quiet))
				require.NoError(t, err)
				ctx, cancel := context.WithCancel(context.Background())
				if after < 0 {
					cancel()
				} else {
					time.AfterFunc(after, cancel)
				}
				defer cancel()
				if batch {
					err = p.ConsumeBatch(ctx, batchHandler)
				} else {
					err = p.Consume(ctx, handler)
				}
				require.NoError(t, err)
				assert.EqualValues(t, 1, src.closed.Load(), "the source is closed")
			})
		}
	}
}
