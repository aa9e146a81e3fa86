package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// evenOnly is a user-written AfterPoll stage: it drops messages with odd
// values. Dropped messages still flow on, marked, so the pipeline counts them
// finished and commits advance past them.
func evenOnly(ctx context.Context, in <-chan *parallafka.Message[string, int], out chan<- *parallafka.Message[string, int]) error {
	for msg := range in {
		if msg.Value%2 == 1 {
			msg.Drop()
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// retryOnce is a user-written AfterHandle stage: a failed message is handed
// back for one more attempt after a delay, without blocking the stage loop.
// While it waits, it keeps its key: later messages with that key wait too.
func retryOnce(delay time.Duration) pipeline.Stage[string, int] {
	return func(ctx context.Context, in <-chan *parallafka.Message[string, int], out chan<- *parallafka.Message[string, int]) error {
		var wg sync.WaitGroup
		defer wg.Wait()
		send := func(msg *parallafka.Message[string, int]) {
			select {
			case out <- msg:
			case <-ctx.Done():
			}
		}
		for msg := range in {
			if msg.Err == nil || msg.Attempt > 1 {
				send(msg)
				continue
			}
			msg.Retry()
			wg.Go(func() {
				select {
				case <-time.After(delay):
				case <-pipeline.Draining(ctx):
				}
				send(msg)
			})
		}
		return nil
	}
}

func TestStagesDropDelayAndResubmitKeepingKeyOrder(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 400
	produce(src, 2, n, func(i int) int { return i % 10 })
	var failedOnce sync.Map
	var mu sync.Mutex
	lastByKey := map[string]int64{}
	var disorder []string
	var handledEven atomic.Int64
	var seenOdd atomic.Int64
	var afterHandleSaw atomic.Int64
	metrics := func(ctx context.Context, in <-chan *parallafka.Message[string, int], out chan<- *parallafka.Message[string, int]) error {
		for msg := range in {
			afterHandleSaw.Add(1)
			select {
			case out <- msg:
			case <-ctx.Done():
				return nil
			}
		}
		return nil
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8),
		parallafka.WithCommitInterval(5*time.Millisecond),
		parallafka.WithAfterPoll("even-only", evenOnly),
		parallafka.WithAfterHandle("retry-once", retryOnce(5*time.Millisecond)),
		parallafka.WithAfterHandle("metrics", metrics),
	)
	require.NoError(t, err)
	h := func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Value%2 == 1 {
			seenOdd.Add(1)
		}
		key := fmt.Sprintf("%d/%s", m.Partition, m.Key)
		mu.Lock()
		if last, ok := lastByKey[key]; ok && m.Offset < last {
			disorder = append(disorder, fmt.Sprintf("%s: %d after %d", key, m.Offset, last))
		}
		lastByKey[key] = m.Offset
		mu.Unlock()
		// Every fifth even message fails once, then succeeds on its retry.
		if m.Value%5 == 0 {
			if _, again := failedOnce.LoadOrStore(m.Value, true); !again {
				return errors.New("transient")
			}
		}
		handledEven.Add(1)
		return nil
	}
	require.NoError(t, consumeUntil(t, p, h, func() bool {
		return src.Committed(tp(0)) == src.Len(tp(0)) && src.Committed(tp(1)) == src.Len(tp(1))
	}))
	assert.EqualValues(t, n/2, handledEven.Load())
	assert.Zero(t, seenOdd.Load(), "dropped messages never reach the handler")
	assert.Empty(t, disorder)
	st := p.Stats()
	assert.EqualValues(t, n/2, st.Dropped)
	assert.EqualValues(t, n/10, st.Retried)
	assert.EqualValues(t, n+n/10, afterHandleSaw.Load(), "AfterHandle sees every attempt")
}

// A message waiting for a retry is abandoned uncommitted on shutdown, never
// skipped, and the shutdown does not wait for its backoff.
func TestPendingRetryIsAbandonedOnShutdown(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 10, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Millisecond),
		parallafka.WithAfterHandle("retry-once", retryOnce(time.Hour)))
	require.NoError(t, err)
	var handled atomic.Int64
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		handled.Add(1)
		if m.Offset == 4 {
			return errors.New("fails")
		}
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 10 && src.Committed(tp(0)) == 4 })
	err, took := stop()
	require.NoError(t, err)
	assert.Less(t, took, 5*time.Second)
	assert.EqualValues(t, 4, src.Committed(tp(0)), "the message waiting for its retry stays uncommitted")
}

func TestMiddlewareWrapsInOrder(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 5, func(i int) int { return i })
	var mu sync.Mutex
	var trace []string
	tag := func(name string) parallafka.Middleware[string, int] {
		return func(next parallafka.Handler[string, int]) parallafka.Handler[string, int] {
			return func(ctx context.Context, m *parallafka.Message[string, int]) error {
				mu.Lock()
				trace = append(trace, name)
				mu.Unlock()
				return next(ctx, m)
			}
		}
	}
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1),
		parallafka.WithMiddleware(tag("outer"), tag("inner")))
	require.NoError(t, err)
	require.NoError(t, consumeUntil(t, p, func(context.Context, *parallafka.Message[string, int]) error {
		handled.Add(1)
		return nil
	}, func() bool { return handled.Load() == 5 }))
	assert.Equal(t, []string{"outer", "inner"}, trace[:2])
}

// A stage that panics or fails stops the pipeline with its error; nothing hangs.
func TestFailingStageStopsThePipeline(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 5, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet),
		parallafka.WithAfterPoll("explosive", func(ctx context.Context, in <-chan *parallafka.Message[string, int], out chan<- *parallafka.Message[string, int]) error {
			<-in
			panic("stage bug")
		}))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil })
	require.ErrorContains(t, err, "stage explosive")
	require.ErrorContains(t, err, "stage bug")
}
