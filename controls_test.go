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
	"github.com/parallafka/parallafka/pipeline/memsource"
)

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
