package stages_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

func TestTimeoutFailsTheAttempt(t *testing.T) {
	timeout := must(stages.Timeout[string, string](5 * time.Millisecond))
	blocking := func(ctx context.Context, m *M) error {
		<-ctx.Done()
		return ctx.Err()
	}
	err := timeout(blocking)(context.Background(), &M{})
	require.ErrorIs(t, err, stages.ErrTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the handler's own error is kept")
	require.ErrorContains(t, err, "after 5ms")

	t.Run("a success after the deadline is a success", func(t *testing.T) {
		late := func(ctx context.Context, m *M) error {
			<-ctx.Done()
			return nil
		}
		require.NoError(t, timeout(late)(context.Background(), &M{}))
	})
	t.Run("a cancelled parent is not a timeout", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := timeout(blocking)(ctx, &M{})
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, stages.ErrTimeout)
	})
	t.Run("an error before the deadline is the handler's", func(t *testing.T) {
		boom := errors.New("boom")
		err := timeout(func(context.Context, *M) error { return boom })(context.Background(), &M{})
		require.Same(t, boom, err)
	})
	t.Run("each attempt gets its own deadline", func(t *testing.T) {
		var deadlines []time.Time
		h := timeout(func(ctx context.Context, m *M) error {
			d, ok := ctx.Deadline()
			require.True(t, ok)
			deadlines = append(deadlines, d)
			return nil
		})
		require.NoError(t, h(context.Background(), &M{}))
		time.Sleep(time.Millisecond) // distinct start times, so distinct deadlines
		require.NoError(t, h(context.Background(), &M{}))
		require.True(t, deadlines[1].After(deadlines[0]))
	})
	_, err = stages.Timeout[string, string](0) // issue 26: an error, not a panic
	require.ErrorContains(t, err, "stages: Timeout: the deadline must be positive")
}

// In a pipeline a timed-out attempt is a failure like any other: Retry gives
// it another attempt, with a fresh deadline.
func TestTimeoutWithRetry(t *testing.T) {
	src := memsource.New[string, string]()
	fillTopic(src, 2, 20, func(i int) string { return "k" })
	p := newPipeline(t, src,
		parallafka.WithMiddleware(must(stages.Timeout[string, string](10*time.Millisecond))),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 3, InitialBackoff: time.Millisecond,
		}))))
	var slowAttempts, handled atomic.Int64
	h := func(ctx context.Context, m *M) error {
		if m.Value == "7" && m.Attempt < 3 {
			slowAttempts.Add(1)
			<-ctx.Done() // too slow: waits out the deadline
			return ctx.Err()
		}
		handled.Add(1)
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	assert.EqualValues(t, 2, slowAttempts.Load())
	assert.EqualValues(t, 20, handled.Load())
	assert.EqualValues(t, 2, p.Stats().Retried)
}
