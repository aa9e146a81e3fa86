package stages_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

func withID(id string) []pipeline.Header {
	return []pipeline.Header{{Key: stages.HeaderMessageID, Value: []byte(id)}}
}

// Duplicates (by message-id header) are dropped, counted as dropped and
// committed; messages without an id are always handled.
func TestDedupeDropsDuplicates(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic(topic, 2)
	const ids, copies = 50, 3
	for c := range copies {
		for i := range ids {
			id := "order-" + strconv.Itoa(i)
			key := "K" + strconv.Itoa(i%7) // a duplicate keeps its key, as producer retries do
			src.ProduceRecord(memsource.Record[string, string]{Topic: topic, Partition: int32(i % 2), Key: key, Value: id, Headers: withID(id)})
			if c == 0 {
				src.Produce(topic, int32(i%2), key, "no-id")
			}
		}
	}
	p := newPipeline(t, src, parallafka.WithMaxConcurrency(8),
		parallafka.WithMiddleware(stages.Dedupe(stages.DedupeConfig[string, string]{})))
	var mu sync.Mutex
	handled := map[string]int{}
	h := func(ctx context.Context, m *M) error {
		mu.Lock()
		handled[m.Value]++
		mu.Unlock()
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	assert.Len(t, handled, ids+1)
	for id, n := range handled {
		if id == "no-id" {
			assert.Equal(t, ids, n)
		} else {
			assert.Equal(t, 1, n, id)
		}
	}
	assert.EqualValues(t, ids*(copies-1), p.Stats().Dropped)
}

// An identity is recorded only after a success: a failed attempt's retry is
// handled, and so is a duplicate of a message that failed for good.
func TestDedupeRecordsOnlySuccesses(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic(topic, 1)
	for _, v := range []string{"retried", "retried", "failed", "failed"} {
		src.ProduceRecord(memsource.Record[string, string]{Topic: topic, Key: v, Value: v, Headers: withID(v)})
	}
	store := must(stages.NewMemoryDedupeStore(100, time.Hour))
	p := newPipeline(t, src,
		parallafka.WithMiddleware(stages.Dedupe(stages.DedupeConfig[string, string]{Store: store})),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 2, InitialBackoff: time.Millisecond,
		}))),
		parallafka.WithErrorPolicy(parallafka.SkipOnError))
	var mu sync.Mutex
	var calls []string
	h := func(ctx context.Context, m *M) error {
		mu.Lock()
		calls = append(calls, fmt.Sprint(m.Value, "@", m.Offset, "#", m.Attempt))
		mu.Unlock()
		if m.Value == "failed" || m.Attempt == 1 {
			return errTransient
		}
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	assert.ElementsMatch(t, []string{"retried@0#1", "retried@0#2", "failed@2#1", "failed@2#2", "failed@3#1", "failed@3#2"}, calls,
		"the retried duplicate at offset 1 was dropped; both failed copies were handled")
	seen, err := store.Seen(context.Background(), "failed")
	require.NoError(t, err)
	assert.False(t, seen)
	assert.EqualValues(t, 1, p.Stats().Dropped)
}

func TestDedupeCustomIDAndStoreErrors(t *testing.T) {
	errStore := errors.New("store down")
	store := &flakyStore{DedupeStore: must(stages.NewMemoryDedupeStore(10, time.Hour))}
	var recordErrs atomic.Int64
	dedupe := stages.Dedupe(stages.DedupeConfig[string, string]{
		ID:            func(m *M) (string, bool) { return m.Value, m.Value != "" },
		Store:         store,
		OnRecordError: func(*M, error) { recordErrs.Add(1) },
	})
	var calls int
	h := dedupe(func(context.Context, *M) error { calls++; return nil })
	ctx := context.Background()

	require.NoError(t, h(ctx, &M{Value: "a"}))
	dup := &M{Value: "a"}
	require.NoError(t, h(ctx, dup))
	assert.True(t, dup.Dropped())
	require.NoError(t, h(ctx, &M{}))
	require.NoError(t, h(ctx, &M{}))
	assert.Equal(t, 3, calls, "a message without an identity is always handled")

	store.seenErr = errStore
	err := h(ctx, &M{Value: "b"})
	require.ErrorIs(t, err, errStore, "a store that cannot answer fails the attempt")
	assert.Equal(t, 3, calls)

	store.seenErr, store.recordErr = nil, errStore
	require.NoError(t, h(ctx, &M{Value: "c"}), "handled: a failed record does not fail the message")
	assert.EqualValues(t, 1, recordErrs.Load())
	assert.Equal(t, 4, calls)
}

type flakyStore struct {
	stages.DedupeStore
	seenErr, recordErr error
}

func (s *flakyStore) Seen(ctx context.Context, id string) (bool, error) {
	if s.seenErr != nil {
		return false, s.seenErr
	}
	return s.DedupeStore.Seen(ctx, id)
}

func (s *flakyStore) Record(ctx context.Context, id string) error {
	if s.recordErr != nil {
		return s.recordErr
	}
	return s.DedupeStore.Record(ctx, id)
}

// The in-memory store never holds more than its limit, forgets the oldest
// first, and forgets an identity once its TTL passed.
func TestMemoryDedupeStoreBounds(t *testing.T) {
	ctx := context.Background()
	seen := func(s stages.DedupeStore, id string) bool {
		ok, err := s.Seen(ctx, id)
		require.NoError(t, err)
		return ok
	}
	t.Run("size", func(t *testing.T) {
		s := must(stages.NewMemoryDedupeStore(1000, time.Hour))
		for i := range 10_000 {
			require.NoError(t, s.Record(ctx, strconv.Itoa(i)))
			require.LessOrEqual(t, storeLen(s), 1000)
		}
		assert.Equal(t, 1000, storeLen(s))
		assert.False(t, seen(s, "0"))
		assert.False(t, seen(s, "8999"))
		assert.True(t, seen(s, "9000"))
		assert.True(t, seen(s, "9999"))
		// Recording again makes an identity the newest.
		require.NoError(t, s.Record(ctx, "9000"))
		require.NoError(t, s.Record(ctx, "new"))
		assert.True(t, seen(s, "9000"))
		assert.False(t, seen(s, "9001"), "the oldest went first")
	})
	t.Run("ttl", func(t *testing.T) {
		s := must(stages.NewMemoryDedupeStore(1000, 20*time.Millisecond))
		for i := range 100 {
			require.NoError(t, s.Record(ctx, strconv.Itoa(i)))
		}
		eventually(t, func() bool { return !seen(s, "99") }, "the newest identity expires")
		require.NoError(t, s.Record(ctx, "fresh"))
		assert.Equal(t, 1, storeLen(s), "expired identities are pruned")
		assert.True(t, seen(s, "fresh"))
	})
	t.Run("concurrent use", func(t *testing.T) {
		s := must(stages.NewMemoryDedupeStore(64, time.Hour))
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 2000 {
					id := strconv.Itoa((g*7919 + i) % 300)
					_, _ = s.Seen(ctx, id)
					_ = s.Record(ctx, id)
				}
			})
		}
		wg.Wait()
		assert.LessOrEqual(t, storeLen(s), 64)
	})
	_, err := stages.NewMemoryDedupeStore(0, time.Hour) // an error, not a panic
	require.ErrorContains(t, err, "must be positive")
	_, err = stages.NewMemoryDedupeStore(10, 0)
	require.ErrorContains(t, err, "must be positive")
}

// storeLen is the number of identities NewMemoryDedupeStore's store holds.
func storeLen(s stages.DedupeStore) int { return s.(interface{ Len() int }).Len() }
