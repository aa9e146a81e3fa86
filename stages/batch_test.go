package stages_test

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
	"github.com/parallafka/parallafka/stages"
)

func batchOf(n int) []*M {
	batch := make([]*M, n)
	for i := range batch {
		batch[i] = &M{Topic: topic, Partition: int32(i), Offset: int64(i), RawKey: k(fmt.Sprint(i)),
			Headers: []pipeline.Header{{Key: stages.HeaderMessageID, Value: []byte(fmt.Sprintf("id-%d", i))}}}
	}
	return batch
}

func TestTimeoutBatch(t *testing.T) {
	timeout := must(stages.TimeoutBatch[string, string](10 * time.Millisecond))
	batch := batchOf(3)
	slow := func(ctx context.Context, b []*M) error {
		<-ctx.Done()
		var failed pipeline.BatchError[string, string]
		failed.Fail(b[1], ctx.Err())
		return failed.Err()
	}
	err := timeout(slow)(context.Background(), batch)
	assert.NoError(t, pipeline.BatchOutcome(err, batch[0]))
	assert.ErrorIs(t, pipeline.BatchOutcome(err, batch[1]), stages.ErrTimeout)
	assert.ErrorIs(t, pipeline.BatchOutcome(err, batch[1]), context.DeadlineExceeded)

	whole := func(ctx context.Context, b []*M) error { <-ctx.Done(); return errors.New("db gone") }
	err = timeout(whole)(context.Background(), batch)
	assert.ErrorIs(t, err, stages.ErrTimeout)
	assert.ErrorIs(t, pipeline.BatchOutcome(err, batch[2]), stages.ErrTimeout)

	quick := func(ctx context.Context, b []*M) error { return nil }
	assert.NoError(t, timeout(quick)(context.Background(), batch))
	_, err = stages.TimeoutBatch[string, string](0) // issue 26: an error, not a panic
	assert.ErrorContains(t, err, "stages: TimeoutBatch: the deadline must be positive")
}

func TestDedupeBatch(t *testing.T) {
	store := must(stages.NewMemoryDedupeStore(100, time.Hour))
	dedupe := stages.DedupeBatch(stages.DedupeConfig[string, string]{Store: store})
	var calls [][]*M
	handler := dedupe(func(ctx context.Context, b []*M) error {
		calls = append(calls, b)
		var failed pipeline.BatchError[string, string]
		for _, msg := range b {
			if msg.Offset == 1 {
				failed.Fail(msg, errors.New("row refused"))
			}
		}
		return failed.Err()
	})
	first := batchOf(3)
	err := handler(context.Background(), first)
	assert.NoError(t, pipeline.BatchOutcome(err, first[0]))
	assert.Error(t, pipeline.BatchOutcome(err, first[1]))
	assert.Equal(t, 2, storeLen(store), "only the messages that succeeded are recorded")

	again := batchOf(3)
	err = handler(context.Background(), again)
	require.Len(t, calls, 2)
	assert.Equal(t, []*M{again[1]}, calls[1], "duplicates left out of the call")
	assert.True(t, again[0].Dropped())
	assert.True(t, again[2].Dropped())
	assert.Error(t, pipeline.BatchOutcome(err, again[1]))

	// All duplicates: the handler is not called.
	dup := []*M{batchOf(1)[0]}
	assert.NoError(t, handler(context.Background(), dup))
	assert.Len(t, calls, 2)
	assert.True(t, dup[0].Dropped())
}

// Retry, dead-letter, dedupe and timeout in batch mode, end to end: a row
// that keeps failing is dead-lettered after its attempts, rows failing
// once succeed on a retry, and per key order holds throughout.
func TestStagesInBatchMode(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic(topic, 2)
	const n = 400
	for i := range n {
		src.ProduceRecord(memsource.Record[string, string]{Topic: topic, Partition: int32(i % 2), Key: fmt.Sprintf("k%d", i%13),
			Value: fmt.Sprint(i), Headers: []pipeline.Header{{Key: stages.HeaderMessageID, Value: []byte(fmt.Sprint(i % 390))}}})
	}
	var mu sync.Mutex
	last := map[string]int64{}
	succeeded := map[string]bool{}
	finishes := map[string]int{}
	var bad []string
	var finished atomic.Int64
	// The last stage sees every message that finishes (dropped or not):
	// per key, in offset order, each once.
	record := func(ctx context.Context, in <-chan *M, out chan<- *M) error {
		for msg := range in {
			if msg.Err == nil && !msg.RetryRequested() {
				mu.Lock()
				key := fmt.Sprintf("%d/%s", msg.Partition, msg.Key)
				if l, ok := last[key]; ok && msg.Offset <= l {
					bad = append(bad, fmt.Sprintf("%s: %d finished after %d", key, msg.Offset, l))
				}
				last[key] = msg.Offset
				finishes[msg.String()]++
				if !msg.Dropped() && !succeeded[msg.String()] {
					bad = append(bad, fmt.Sprintf("%s finished without succeeding", msg))
				}
				mu.Unlock()
				finished.Add(1)
			}
			select {
			case out <- msg:
			case <-ctx.Done():
				return nil
			}
		}
		return nil
	}
	dlq := &memDLQ{}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
		parallafka.WithMaxBatchMessages(32), parallafka.WithCommitInterval(5*time.Millisecond),
		parallafka.WithBatchMiddleware(
			stages.DedupeBatch(stages.DedupeConfig[string, string]{}),
			must(stages.TimeoutBatch[string, string](5*time.Second)),
		),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}))),
		parallafka.WithAfterHandle("dead-letter", must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq"}))),
		parallafka.WithAfterHandle("record", record),
	)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- p.ConsumeBatch(ctx, func(ctx context.Context, batch []*parallafka.Message[string, string]) error {
			mu.Lock()
			defer mu.Unlock()
			var failed parallafka.BatchError[string, string]
			for _, msg := range batch {
				switch {
				case msg.Value == "7": // fails for good
					failed.Fail(msg, errors.New("poison row"))
				case msg.Offset%10 == 3 && msg.Attempt == 1:
					failed.Fail(msg, errors.New("lock timeout"))
				default:
					succeeded[msg.String()] = true
				}
			}
			return failed.Err()
		})
	}()
	eventually(t, func() bool {
		return src.Committed(tp(0)) == src.Len(tp(0)) && src.Committed(tp(1)) == src.Len(tp(1))
	})
	cancel()
	require.NoError(t, <-done)
	mu.Lock()
	assert.Empty(t, bad)
	mu.Unlock()
	st := p.Stats()
	require.Len(t, dlq.written(), 1)
	assert.EqualValues(t, n, finished.Load(), "every message finished once")
	assert.Len(t, finishes, n)
	assert.Positive(t, st.Dropped-1, "duplicates dropped (ids repeat from message 390 on)")
	assert.Greater(t, st.MeanBatchSize, 1.0)
	assert.Equal(t, "3", header(dlq.written()[0], stages.HeaderAttempts))
}
