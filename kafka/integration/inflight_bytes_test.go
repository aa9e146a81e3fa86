package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// TestMaxInFlightBytesOnBroker consumes 200 records of 900 KiB (about 176
// MiB) with WithMaxInFlightBytes(16 MiB) and slow handlers: the bytes in
// flight, sampled every millisecond, never exceed the bound by more than
// one message. On a real broker the Go heap in use stays far below what the
// values would need if the pipeline held them all; on the embedded broker
// the broker's storage shares the heap, so the heap is only logged.
//
// The values are 900 KiB, not 1 MiB: a broker's default message.max.bytes
// (1,048,588, kfake's too) refuses a batch of one 1 MiB record, and so does
// kafkatest's producer (franz-go's default ProducerBatchMaxBytes, 1,000,012).
// librdkafka's consumer defaults fit them: max.partition.fetch.bytes (1 MiB)
// and fetch.max.bytes (50 MiB) bound what one fetch asks for but always
// return at least one record.
func TestMaxInFlightBytesOnBroker(t *testing.T) {
	const records, valueSize, partitions, keys = 200, 900 << 10, 4, 32
	const limit = 16 << 20
	const work = 5 * time.Millisecond
	const heapBound = 120 << 20 // the values alone are 176 MiB
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()

	// Incompressible values, each starting with its index.
	rng := rand.New(rand.NewChaCha8([32]byte{1}))
	produceStart := time.Now()
	const chunk = 10
	for i := 0; i < records; i += chunk {
		recs := make([]kafkatest.Record, chunk)
		for j := range recs {
			v := make([]byte, valueSize)
			for k := 0; k < len(v); k += 8 {
				u := rng.Uint64()
				for b := 0; b < 8; b++ {
					v[k+b] = byte(u >> (8 * b))
				}
			}
			copy(v, fmt.Sprintf("record %06d;", i+j))
			recs[j] = kafkatest.Record{Key: keyed.Key((i + j) % keys), Value: v, Partition: kafkatest.AnyPartition}
		}
		require.NoError(t, c.Produce(ctx, topic, recs))
	}
	produceTime := time.Since(produceStart)

	log := testLogger(t)
	src, err := newBytesSource(t, c, group, topic, nil, log)
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(log), parallafka.WithMaxConcurrency(2),
		parallafka.WithMaxInFlightBytes(limit))
	if err != nil {
		_ = src.Close()
		require.NoError(t, err)
	}

	// The handlers start once the window is full (or after a while), so
	// that the bound is reached however fast the broker serves the fetches
	// (the embedded one under the race detector is slower than 2 handlers
	// of 5 ms).
	message := int64(len(keyed.Key(0)) + valueSize) // key, value and headers (none)
	gate := make(chan struct{})
	var mu sync.Mutex
	seen := map[int]int{}
	var bad []string
	handler := func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
		var i int
		_, perr := fmt.Sscanf(string(msg.Value[:min(len(msg.Value), 14)]), "record %06d;", &i)
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		time.Sleep(work)
		mu.Lock()
		defer mu.Unlock()
		if perr != nil || len(msg.Value) != valueSize {
			bad = append(bad, fmt.Sprintf("%s: %d bytes, %v", msg, len(msg.Value), perr))
			return nil
		}
		seen[i]++
		return nil
	}
	handled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapInuse

	// Sample the bytes in flight and the heap every millisecond.
	var maxBytes, maxInFlight int64
	var maxHeap uint64
	samples := 0
	var gated time.Time // the handlers were let go
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		open := time.After(10 * time.Second)
		for {
			select {
			case <-stopSampling:
				return
			case <-open:
				close(gate)
				open, gated = nil, time.Now()
			case <-tick.C:
			}
			st := p.Stats()
			maxBytes, maxInFlight = max(maxBytes, st.InFlightBytes), max(maxInFlight, st.InFlight)
			if open != nil && st.InFlightBytes >= limit-message {
				close(gate)
				open, gated = nil, time.Now()
			}
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse)
			samples++
		}
	}()

	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	consumeStart := time.Now()
	go func() { done <- p.Consume(cctx, handler) }()
	waitFor(t, waitTimeout, fmt.Sprintf("all %d records handled", records), func() bool {
		select {
		case err := <-done:
			t.Fatalf("Consume returned early: %v", err)
		default:
		}
		return handled() == records
	})
	consumeTime := time.Since(consumeStart)
	cancel()
	require.NoError(t, <-done)
	close(stopSampling)
	<-sampled

	mu.Lock()
	assert.Empty(t, bad, "records received damaged")
	for i, n := range seen {
		assert.Equal(t, 1, n, "record %d handled %d times", i, n)
	}
	mu.Unlock()
	st := p.Stats()
	assert.Equal(t, int64(records), st.Finished)
	assert.Zero(t, st.InFlightBytes, "bytes in flight after the stop")

	assert.LessOrEqual(t, maxBytes, int64(limit)+message, "bytes in flight beyond the bound plus one message")
	assert.Greater(t, maxBytes, int64(limit)-2*message, "the bound was never reached: the test does not exercise it")
	mib := func(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	kind := "a real broker: asserted below " + mib(heapBound)
	if c.Embedded() {
		kind = "the embedded broker, whose storage is in the same heap: not asserted"
	} else {
		assert.Less(t, maxHeap, uint64(heapBound), "Go heap in use while consuming %s of values", mib(records*valueSize))
	}
	t.Logf("max in-flight bytes on the %s: %d records of %d KiB (%s) produced in %v, consumed in %v (the handlers waited %v for the window to fill) with 2 handlers of %v and WithMaxInFlightBytes(%s): at most %s in flight (%d messages; bound + one message: %s) over %d samples, %d pauses",
		brokerKind(c), records, valueSize>>10, mib(records*valueSize), produceTime.Round(time.Millisecond), consumeTime.Round(time.Millisecond),
		gated.Sub(consumeStart).Round(time.Millisecond), work, mib(limit), mib(uint64(maxBytes)), maxInFlight, mib(uint64(limit+message)), samples, st.Pauses)
	t.Logf("  Go heap in use: %s before consuming, at most %s while consuming (+%s), on %s",
		mib(heapBefore), mib(maxHeap), mib(maxHeap-min(maxHeap, heapBefore)), kind)
}
