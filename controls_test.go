package parallafka_test

import (
	"context"
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

type throttleRec struct {
	pipeline.Observer
	perKey, global atomic.Int64
}

func (r *throttleRec) MessageThrottled(m pipeline.MessageInfo, wait time.Duration, perKey bool) {
	if perKey {
		r.perKey.Add(1)
	} else {
		r.global.Add(1)
	}
}

// A draining shutdown handles everything polled, the backlog behind busy
// keys too, then commits to the end of what was polled; a graceful one
// (the default) drops that backlog.
func TestDrainShutdownHandlesPolledBacklog(t *testing.T) {
	for _, mode := range []parallafka.ShutdownMode{parallafka.Drain, parallafka.Graceful} {
		synctest.Test(t, func(t *testing.T) {
			src := memsource.New[string, int]()
			produce(src, 1, 100, func(i int) int { return i % 4 })
			var handled atomic.Int64
			p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
				parallafka.WithShutdownMode(mode), parallafka.WithShutdownTimeout(time.Hour))
			require.NoError(t, err)
			stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
				time.Sleep(time.Second)
				handled.Add(1)
				return nil
			})
			time.Sleep(1500 * time.Millisecond) // the first 4 done, 4 more running, the rest queued
			synctest.Wait()
			err, _ = stop()
			require.NoError(t, err)
			st := p.Stats()
			switch mode {
			case parallafka.Drain:
				assert.Equal(t, st.Polled, handled.Load(), "everything polled was handled")
				assert.Equal(t, st.Polled, src.Committed(tp(0)), "committed to the end of what was polled")
				assert.Greater(t, st.Polled, int64(8))
			default:
				assert.EqualValues(t, 8, handled.Load(), "the backlog was dropped")
				assert.EqualValues(t, 8, src.Committed(tp(0)))
			}
		})
	}
}

// Past the shutdown timeout a draining shutdown cancels the handlers as
// a graceful one does, and commits only what finished.
func TestDrainShutdownTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 100, func(i int) int { return i % 4 })
		var handled atomic.Int64
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
			parallafka.WithShutdownMode(parallafka.Drain), parallafka.WithShutdownTimeout(5*time.Second+time.Second/2))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return ctx.Err()
			}
			handled.Add(1)
			return nil
		})
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		err, took := stop()
		require.ErrorIs(t, err, parallafka.ErrShutdownTimeout)
		assert.Less(t, took, 6*time.Second)
		assert.EqualValues(t, 4*7, handled.Load(), "7 rounds of 4 keys finished before the timeout")
		assert.Equal(t, handled.Load(), src.Committed(tp(0)))
	})
}

func TestDrainIsAValidShutdownMode(t *testing.T) {
	_, err := parallafka.New(memsource.New[string, int](), parallafka.WithShutdownMode(parallafka.ShutdownMode(9)))
	require.Error(t, err)
	_, err = parallafka.New(memsource.New[string, int](), parallafka.WithShutdownMode(parallafka.Drain))
	require.NoError(t, err)
}

// A global limit of 100 records/s holds over 5 s of virtual time.
func TestRateLimitGlobalHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 2, 2000, func(i int) int { return i })
		var handled atomic.Int64
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8),
			parallafka.WithRateLimit(parallafka.RateLimit{Records: 100}))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			handled.Add(1)
			return nil
		})
		time.Sleep(5 * time.Second)
		synctest.Wait()
		n := handled.Load()
		assert.InDelta(t, 500, n, 15, "100/s over 5 s, plus the burst (10)")
		assert.Positive(t, p.Stats().Throttled)
		err, _ = stop()
		require.NoError(t, err)
	})
}

// A key over its per-key limit waits without holding a handler: with 2
// handlers, the other keys' messages all go through at once.
func TestRateLimitPerKeyDoesNotSlowOtherKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 400, func(i int) int {
			if i%2 == 0 {
				return 0 // the hot key, k0
			}
			return i
		})
		var hot, cold atomic.Int64
		obs := &throttleRec{Observer: pipeline.ObserverFuncs{}.Observer()}
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(2),
			parallafka.WithRateLimit(parallafka.RateLimit{PerKey: 2}), parallafka.WithObserver(obs))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Key == "k0" {
				hot.Add(1)
			} else {
				cold.Add(1)
			}
			return nil
		})
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		assert.EqualValues(t, 200, cold.Load(), "the other keys ran at full speed")
		assert.EqualValues(t, 1, hot.Load())
		time.Sleep(5 * time.Second)
		synctest.Wait()
		assert.InDelta(t, 11, hot.Load(), 1, "2/s on the hot key")
		assert.Positive(t, obs.perKey.Load(), "the observer saw the throttling")
		assert.Zero(t, obs.global.Load())
		assert.Equal(t, p.Stats().Throttled, obs.perKey.Load())
		err, _ = stop()
		require.NoError(t, err)
	})
}

// SetRateLimit changes the limit while consuming, and the zero RateLimit
// removes it; invalid limits are refused.
func TestRateLimitChangedAtRunTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 1000, func(i int) int { return i })
		var handled atomic.Int64
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
			parallafka.WithRateLimit(parallafka.RateLimit{Records: 10}))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			handled.Add(1)
			return nil
		})
		time.Sleep(2 * time.Second)
		synctest.Wait()
		first := handled.Load()
		assert.InDelta(t, 21, first, 2, "10/s")
		require.NoError(t, p.SetRateLimit(parallafka.RateLimit{Records: 100}))
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.InDelta(t, 200, handled.Load()-first, 15, "100/s")
		require.Error(t, p.SetRateLimit(parallafka.RateLimit{Records: -1}))
		require.NoError(t, p.SetRateLimit(parallafka.RateLimit{}))
		time.Sleep(time.Millisecond)
		synctest.Wait()
		assert.EqualValues(t, 1000, handled.Load(), "unlimited")
		err, _ = stop()
		require.NoError(t, err)
	})
}

func TestRateLimitInvalid(t *testing.T) {
	_, err := parallafka.New(memsource.New[string, int](), parallafka.WithRateLimit(parallafka.RateLimit{PerKey: -2}))
	require.Error(t, err)
}
