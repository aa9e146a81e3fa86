package parallafka_test

import (
	"context"
	"errors"
	"fmt"
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
)

// obsRecorder is an Observer that records what it is told.
type obsRecorder struct {
	pipeline.Observer // ObserverFuncs{}.Observer(): the events it does not record
	mu                sync.Mutex
	polled            int
	started           int
	ended             int
	failed            int
	outcomes          map[pipeline.Outcome]int
	waits             map[string]time.Duration // the longest wait behind the key, per key
	commits           int
	assigned          int
	limit             int
	stalls            []pipeline.Stall
	unstalled         int
	batches           int
	batched           int
	paused            map[pipeline.TopicPartition]bool
	revoked           int
	lost              int
}

type ctxKey struct{}

func newObsRecorder() *obsRecorder {
	return &obsRecorder{Observer: pipeline.ObserverFuncs{}.Observer(), outcomes: map[pipeline.Outcome]int{}, waits: map[string]time.Duration{},
		paused: map[pipeline.TopicPartition]bool{}}
}

func (r *obsRecorder) MessagePolled(pipeline.MessageInfo) { r.mu.Lock(); r.polled++; r.mu.Unlock() }
func (r *obsRecorder) HandlerStarted(ctx context.Context, m pipeline.MessageInfo, w pipeline.Wait) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started++
	r.waits[string(m.Key)] = max(r.waits[string(m.Key)], w.BehindKey)
	return context.WithValue(ctx, ctxKey{}, m.Offset)
}
func (r *obsRecorder) HandlerEnded(ctx context.Context, m pipeline.MessageInfo, err error, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Value(ctxKey{}) != m.Offset {
		panic("HandlerEnded without HandlerStarted's context")
	}
	r.ended++
	if err != nil {
		r.failed++
	}
}
func (r *obsRecorder) BatchStarted(ctx context.Context, msgs []pipeline.MessageInfo) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches++
	r.batched += len(msgs)
	return context.WithValue(ctx, ctxKey{}, len(msgs))
}
func (r *obsRecorder) MessageSettled(_ pipeline.MessageInfo, o pipeline.Outcome) {
	r.mu.Lock()
	r.outcomes[o]++
	r.mu.Unlock()
}
func (r *obsRecorder) Committed(c pipeline.CommitInfo) {
	r.mu.Lock()
	if c.Err == nil {
		r.commits++
	}
	r.mu.Unlock()
}
func (r *obsRecorder) PartitionsAssigned(tps []pipeline.TopicPartition) {
	r.mu.Lock()
	r.assigned += len(tps)
	r.mu.Unlock()
}
func (r *obsRecorder) PartitionsPaused(tps []pipeline.TopicPartition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tp := range tps {
		r.paused[tp] = true
	}
}
func (r *obsRecorder) PartitionsResumed(tps []pipeline.TopicPartition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tp := range tps {
		delete(r.paused, tp)
	}
}
func (r *obsRecorder) PartitionsRevoked(tps []pipeline.TopicPartition) {
	r.mu.Lock()
	r.revoked += len(tps)
	r.mu.Unlock()
}
func (r *obsRecorder) PartitionsLost(tps []pipeline.TopicPartition) {
	r.mu.Lock()
	r.lost += len(tps)
	r.mu.Unlock()
}
func (r *obsRecorder) ConcurrencyLimitChanged(n int) { r.mu.Lock(); r.limit = n; r.mu.Unlock() }
func (r *obsRecorder) PartitionStalled(s pipeline.Stall) {
	r.mu.Lock()
	r.stalls = append(r.stalls, s)
	r.mu.Unlock()
}
func (r *obsRecorder) PartitionUnstalled(pipeline.TopicPartition, time.Duration) {
	r.mu.Lock()
	r.unstalled++
	r.mu.Unlock()
}

// The observer hears every message polled, every attempt's start and end
// (its context reaching the handler), every outcome, the commits, the
// assignment and the concurrency limit, matching Stats.
func TestObserverSeesWhatStatsCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 2, 100, func(i int) int { return i % 10 })
		rec := newObsRecorder()
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec),
			parallafka.WithErrorPolicy(parallafka.SkipOnError), parallafka.WithMaxConcurrency(4))
		require.NoError(t, err)
		var handled atomic.Int64
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if ctx.Value(ctxKey{}) != m.Offset {
				return errors.New("the handler did not get the observer's context")
			}
			time.Sleep(time.Millisecond)
			handled.Add(1)
			if m.Value%7 == 0 {
				return fmt.Errorf("value %d fails", m.Value)
			}
			return nil
		})
		for i := 0; handled.Load() < 100; i++ {
			require.Less(t, i, 1000, "handled %d, stats %+v", handled.Load(), p.Stats())
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(2 * time.Second) // a commit
		err, _ = stop()
		require.NoError(t, err)
		st := p.Stats()
		rec.mu.Lock()
		defer rec.mu.Unlock()
		assert.EqualValues(t, 100, st.Polled)
		assert.EqualValues(t, st.Polled, rec.polled)
		assert.Equal(t, 100, rec.started)
		assert.Equal(t, rec.started, rec.ended)
		assert.EqualValues(t, st.Failed, rec.failed)
		assert.EqualValues(t, st.Skipped, rec.outcomes[pipeline.OutcomeSkipped])
		assert.EqualValues(t, st.Finished-st.Skipped-st.Dropped, rec.outcomes[pipeline.OutcomeHandled])
		assert.NotZero(t, rec.outcomes[pipeline.OutcomeSkipped])
		assert.EqualValues(t, st.Commits, rec.commits)
		assert.Equal(t, 2, rec.assigned)
		assert.Equal(t, 4, rec.limit)
		// 10 keys of 5 messages per partition, 1 ms each: a key's later
		// messages waited behind it.
		assert.Greater(t, rec.waits["k3"], time.Millisecond)
	})
}

// In batch mode the observer hears every batch call, and its context
// reaches the batch handler.
func TestObserverSeesBatches(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 200, func(i int) int { return i % 13 })
	rec := newObsRecorder()
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec), parallafka.WithMaxBatch(10, 4<<20))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var handled, wrongCtx atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- p.ConsumeBatch(ctx, func(ctx context.Context, msgs []*parallafka.Message[string, int]) error {
			if ctx.Value(ctxKey{}) != len(msgs) {
				wrongCtx.Add(1)
			}
			handled.Add(int64(len(msgs)))
			return nil
		})
	}()
	eventually(t, func() bool { return handled.Load() == 200 })
	cancel()
	require.NoError(t, <-done)
	st := p.Stats()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Zero(t, wrongCtx.Load())
	assert.EqualValues(t, st.Batches, rec.batches)
	assert.Equal(t, 200, rec.batched)
	assert.Equal(t, 200, rec.outcomes[pipeline.OutcomeHandled])
	assert.Zero(t, rec.started, "no per-message handler calls in batch mode")
}

// With adaptive concurrency the observer hears the limit as it changes:
// the last one it heard is the one Stats reports.
func TestObserverHearsTheAdaptiveLimit(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 2000, func(i int) int { return i % 100 })
	rec := newObsRecorder()
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec),
		parallafka.WithAdaptiveConcurrency(2, 16))
	require.NoError(t, err)
	var handled atomic.Int64
	stop, _ := start(p, func(context.Context, *parallafka.Message[string, int]) error {
		time.Sleep(100 * time.Microsecond)
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 2000 })
	err, _ = stop()
	require.NoError(t, err)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.GreaterOrEqual(t, rec.limit, 2)
	assert.Equal(t, p.Stats().ConcurrencyLimit, rec.limit)
}

// The observer hears pauses and resumes (here Pause and Resume's), revokes
// and losses.
func TestObserverHearsPausesAndRebalances(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 3, 30, func(i int) int { return i })
	rec := newObsRecorder()
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec))
	require.NoError(t, err)
	stop, _ := start(p, func(context.Context, *parallafka.Message[string, int]) error { return nil })
	eventually(t, func() bool { return p.Stats().Finished == 30 })
	pausedN := func() int { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.paused) }
	p.Pause()
	eventually(t, func() bool { return pausedN() == 3 })
	p.Resume()
	eventually(t, func() bool { return pausedN() == 0 })
	src.Revoke(tp(0))
	src.Lose(tp(1))
	eventually(t, func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return rec.revoked == 1 && rec.lost == 1 })
	eventually(t, func() bool { return p.Stats().Assigned == 1 })
	err, _ = stop()
	require.NoError(t, err)
}

// panicky panics in every method.
type panicky struct{}

func (panicky) MessagePolled(pipeline.MessageInfo) { panic("polled") }
func (panicky) HandlerStarted(context.Context, pipeline.MessageInfo, pipeline.Wait) context.Context {
	panic("started")
}
func (panicky) HandlerEnded(context.Context, pipeline.MessageInfo, error, time.Duration) {
	panic("ended")
}
func (panicky) BatchStarted(context.Context, []pipeline.MessageInfo) context.Context {
	panic("batch started")
}
func (panicky) BatchEnded(context.Context, []pipeline.MessageInfo, error, time.Duration) {
	panic("batch ended")
}
func (panicky) MessageSettled(pipeline.MessageInfo, pipeline.Outcome)     { panic("settled") }
func (panicky) Committed(pipeline.CommitInfo)                             { panic("committed") }
func (panicky) PartitionsPaused([]pipeline.TopicPartition)                { panic("paused") }
func (panicky) PartitionsResumed([]pipeline.TopicPartition)               { panic("resumed") }
func (panicky) PartitionsAssigned([]pipeline.TopicPartition)              { panic("assigned") }
func (panicky) PartitionsRevoked([]pipeline.TopicPartition)               { panic("revoked") }
func (panicky) PartitionsLost([]pipeline.TopicPartition)                  { panic("lost") }
func (panicky) ConcurrencyLimitChanged(int)                               { panic("limit") }
func (panicky) PartitionStalled(pipeline.Stall)                           { panic("stalled") }
func (panicky) PartitionUnstalled(pipeline.TopicPartition, time.Duration) { panic("unstalled") }

// An observer's panics are logged and recovered: the pipeline goes on.
func TestObserverPanicsDoNotStopThePipeline(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 50, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(panicky{}),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	var handled atomic.Int64
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return src.Committed(tp(0)) == 25 && src.Committed(tp(1)) == 25 })
	err, _ = stop()
	require.NoError(t, err)
	assert.EqualValues(t, 50, handled.Load())
}

// A partition whose first unfinished message hangs is reported stalled
// within the stall timeout plus one check, with the message named, in
// Stats, Health and the observer; it clears once the message finishes.
// Other partitions are not stalled.
func TestStallDetectedAndCleared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 4 * time.Second
		src := memsource.New[string, int]()
		produce(src, 2, 20, func(i int) int { return i % 4 })
		rec := newObsRecorder()
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec),
			parallafka.WithStallTimeout(timeout))
		require.NoError(t, err)
		require.ErrorIs(t, p.Health(t.Context()), parallafka.ErrNotStarted)
		release := make(chan struct{})
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Partition == 0 && m.Offset == 2 {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		require.NoError(t, p.Health(t.Context()), "consuming")
		time.Sleep(timeout - 200*time.Millisecond)
		synctest.Wait()
		assert.Zero(t, p.Stats().Stalled, "not before the timeout")
		time.Sleep(200*time.Millisecond + timeout/4)
		synctest.Wait()
		st := p.Stats()
		require.EqualValues(t, 1, st.Stalled, "within the timeout plus one check")
		assert.EqualValues(t, 1, st.Stalls)
		require.Len(t, st.StalledPartitions, 1)
		stall := st.StalledPartitions[0]
		assert.Equal(t, tp(0), stall.TopicPartition)
		assert.EqualValues(t, 2, stall.Offset)
		assert.Equal(t, "k0", string(stall.Key))
		assert.Equal(t, "handling", stall.State)
		assert.GreaterOrEqual(t, stall.Running, timeout-timeout/4)
		herr := p.Health(t.Context())
		require.ErrorIs(t, herr, parallafka.ErrStalled)
		assert.Contains(t, herr.Error(), "offset 2")
		rec.mu.Lock()
		assert.Len(t, rec.stalls, 1)
		rec.mu.Unlock()
		time.Sleep(3 * timeout) // still stalled: counted once
		synctest.Wait()
		assert.EqualValues(t, 1, p.Stats().Stalls)

		close(release)
		time.Sleep(timeout / 4)
		synctest.Wait()
		assert.Zero(t, p.Stats().Stalled, "cleared within one check")
		require.NoError(t, p.Health(t.Context()))
		rec.mu.Lock()
		assert.Equal(t, 1, rec.unstalled)
		rec.mu.Unlock()
		err, _ = stop()
		require.NoError(t, err)
		assert.ErrorIs(t, p.Health(t.Context()), parallafka.ErrStopped)
	})
}

// A stalled partition that is revoked is no longer stalled; with one
// handler, a partition whose first message waits for it is stalled too
// and says it waits behind busy handlers.
func TestStallBehindBusyHandlersAndClearedByARevoke(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 2 * time.Second
		src := memsource.New[string, int]()
		produce(src, 2, 4, func(i int) int { return i })
		rec := newObsRecorder()
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(rec),
			parallafka.WithStallTimeout(timeout), parallafka.WithMaxConcurrency(1),
			parallafka.WithRevokeTimeout(time.Second))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Partition == 0 {
				<-ctx.Done() // hangs until its claim ends
				return ctx.Err()
			}
			return nil
		})
		time.Sleep(timeout + timeout/4 + 10*time.Millisecond)
		synctest.Wait()
		st := p.Stats()
		require.EqualValues(t, 2, st.Stalled, "%+v", st.StalledPartitions)
		states := map[int32]string{}
		for _, s := range st.StalledPartitions {
			states[s.Partition] = s.State
		}
		// One handler, two messages out: the coordinator cannot tell
		// which one runs, and says so.
		assert.Equal(t, "handling, or handed to the pool behind busy handlers", states[0])
		assert.Equal(t, "handling, or handed to the pool behind busy handlers", states[1])

		src.Revoke(tp(0))
		time.Sleep(2 * time.Second) // the revoke times out and cancels the hung handler
		synctest.Wait()
		time.Sleep(timeout / 4)
		synctest.Wait()
		assert.Zero(t, p.Stats().Stalled, "the revoked partition's stall went with it, and partition 1 moved")
		rec.mu.Lock()
		assert.Equal(t, 2, rec.unstalled)
		rec.mu.Unlock()
		err, _ = stop()
		require.NoError(t, err)
	})
}

// A stall timeout of 0 turns stall detection off.
func TestStallTimeoutZeroIsOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 3, func(i int) int { return 0 })
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithStallTimeout(0))
		require.NoError(t, err)
		release := make(chan struct{})
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		})
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		assert.Zero(t, p.Stats().Stalled)
		require.NoError(t, p.Health(t.Context()))
		close(release)
		err, _ = stop()
		require.NoError(t, err)
	})
}

func TestNewRejectsANegativeStallTimeout(t *testing.T) {
	_, err := parallafka.New(memsource.New[string, int](), parallafka.WithStallTimeout(-time.Second))
	require.ErrorContains(t, err, "stall timeout")
}

// BenchmarkObserver measures what the hooks cost per message: no observer,
// and an observer that does nothing (every hook called, each guarded by a
// recover). contrib/otelparallafka benchmarks its OpenTelemetry observer
// the same way.
func BenchmarkObserver(b *testing.B) {
	for _, bc := range []struct {
		name string
		obs  pipeline.Observer
	}{{"unused", nil}, {"nop", pipeline.ObserverFuncs{}.Observer()}} {
		b.Run(bc.name, func(b *testing.B) {
			src := benchSource(b.N)
			var handled atomic.Int64
			opts := []parallafka.Option{parallafka.WithLogger(quiet)}
			if bc.obs != nil {
				opts = append(opts, parallafka.WithObserver(bc.obs))
			}
			p, err := parallafka.New(src, opts...)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			defer func() { b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op") }()
			err = p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error {
				if handled.Add(1) == int64(b.N) {
					cancel()
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

// A WithHealthCheck check makes Health report ErrUnhealthy, wrapping its
// error, while consuming (and ahead of a stall it may cause); it is not
// asked before Consume or after it. A nil check is refused.
func TestHealthCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errDown := errors.New("downstream down")
		var down atomic.Bool
		var asked atomic.Int32
		check := func(context.Context) error {
			asked.Add(1)
			if down.Load() {
				return errDown
			}
			return nil
		}
		src := memsource.New[string, int]()
		produce(src, 1, 10, func(i int) int { return i })
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithHealthCheck(check))
		require.NoError(t, err)
		require.ErrorIs(t, p.Health(t.Context()), parallafka.ErrNotStarted)
		assert.Zero(t, asked.Load(), "not asked before Consume")
		stop, _ := start(p, func(context.Context, *parallafka.Message[string, int]) error { return nil })
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		require.NoError(t, p.Health(t.Context()))
		down.Store(true)
		herr := p.Health(t.Context())
		require.ErrorIs(t, herr, parallafka.ErrUnhealthy)
		require.ErrorIs(t, herr, errDown)
		assert.Equal(t, "parallafka: unhealthy: downstream down", herr.Error())
		err, _ = stop()
		require.NoError(t, err)
		n := asked.Load()
		assert.ErrorIs(t, p.Health(t.Context()), parallafka.ErrStopped)
		assert.Equal(t, n, asked.Load(), "not asked after Consume returned")

		_, err = parallafka.New(memsource.New[string, int](), parallafka.WithHealthCheck(nil))
		require.ErrorContains(t, err, "WithHealthCheck: nil check")
	})
}
