package parallafka_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const topic = "t"

func tp(p int32) pipeline.TopicPartition { return pipeline.TopicPartition{Topic: topic, Partition: p} }

// produce writes n messages over the partitions with keys drawn by key;
// values are "key/sequence-within-key" so a handler can check order.
func produce(src *memsource.Source[string, int], partitions, n int, key func(i int) int) {
	src.AddTopic(topic, partitions)
	for i := range n {
		k := key(i)
		src.Produce(topic, int32(k%partitions), fmt.Sprintf("k%d", k), i)
	}
}

// recorder checks per-key order and counts handling, as a handler.
type recorder struct {
	mu       sync.Mutex
	last     map[string]int64 // partition/key → last offset handled
	handled  map[string]int   // partition@offset → times handled
	active   map[string]bool  // partition/key → in a handler now
	errs     []string
	running  atomic.Int64
	maxSeen  atomic.Int64
	maxDelay time.Duration
}

func newRecorder(maxDelay time.Duration) *recorder {
	return &recorder{last: map[string]int64{}, handled: map[string]int{}, active: map[string]bool{}, maxDelay: maxDelay}
}

func (r *recorder) handle(ctx context.Context, msg *parallafka.Message[string, int]) error {
	n := r.running.Add(1)
	defer r.running.Add(-1)
	for {
		m := r.maxSeen.Load()
		if n <= m || r.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	key := fmt.Sprintf("%d/%s", msg.Partition, msg.Key)
	r.mu.Lock()
	if r.active[key] {
		r.errs = append(r.errs, "two handlers at once for "+key)
	}
	r.active[key] = true
	if last, ok := r.last[key]; ok && msg.Offset <= last {
		r.errs = append(r.errs, fmt.Sprintf("key %s: offset %d after %d", key, msg.Offset, last))
	}
	r.last[key] = msg.Offset
	r.handled[fmt.Sprintf("%d@%d", msg.Partition, msg.Offset)]++
	r.mu.Unlock()
	if r.maxDelay > 0 {
		time.Sleep(rand.N(r.maxDelay))
	}
	r.mu.Lock()
	r.active[key] = false
	r.mu.Unlock()
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.handled)
}

// consumeUntil runs Consume until cond holds, then cancels and returns Consume's error.
func consumeUntil(t *testing.T, p *parallafka.Parallafka[string, int], h parallafka.Handler[string, int], cond func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Consume(ctx, h) }()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		select {
		case err := <-done:
			cancel()
			return err
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("condition not met within 30s")
		}
	}
	cancel()
	return <-done
}

func TestConsumeAllInKeyOrder(t *testing.T) {
	src := memsource.New[string, int]()
	const n, partitions = 2000, 4
	produce(src, partitions, n, func(i int) int { return rand.N(50) })
	rec := newRecorder(time.Millisecond)
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(16), parallafka.WithLogger(quiet),
		parallafka.WithCommitInterval(10*time.Millisecond))
	require.NoError(t, err)
	err = consumeUntil(t, p, rec.handle, func() bool { return rec.count() == n })
	require.NoError(t, err)
	assert.Empty(t, rec.errs)
	for _, c := range rec.handled {
		assert.Equal(t, 1, c)
	}
	for _, part := range src.Partitions() {
		assert.Equal(t, src.Len(part), src.Committed(part), "partition %v", part)
	}
	st := p.Stats()
	assert.EqualValues(t, n, st.Polled)
	assert.EqualValues(t, n, st.Finished)
	assert.EqualValues(t, 0, st.InFlight)
}
