package parallafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// BenchmarkPipelineNoop measures the pipeline's own cost per message: the
// in-memory source, 1,000 keys over 4 partitions, a handler that does nothing.
func BenchmarkPipelineNoop(b *testing.B) {
	for _, mode := range []struct {
		name     string
		ordering parallafka.Ordering
	}{{"key", parallafka.OrderByKey}, {"partition", parallafka.OrderByPartition}, {"unordered", parallafka.Unordered}} {
		b.Run(mode.name, func(b *testing.B) {
			src := memsource.New[string, int]()
			src.AddTopic(topic, 4)
			keys := make([]string, 1000)
			for i := range keys {
				keys[i] = "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			}
			for i := range b.N {
				src.Produce(topic, int32(i%4), keys[i%len(keys)], i)
			}
			var handled atomic.Int64
			p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithOrdering(mode.ordering))
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				done <- p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error {
					if handled.Add(1) == int64(b.N) {
						cancel()
					}
					return nil
				})
			}()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cancel()
			_ = time.Second
		})
	}
}

// BenchmarkPipelineBatchNoop is BenchmarkPipelineNoop with ConsumeBatch
// (batches of up to 100, no linger) in key mode, beside the single-message
// pipeline on the same workload: ns/op is per message, and cpu-µs/msg the
// process's CPU per message.
func BenchmarkPipelineBatchNoop(b *testing.B) {
	for _, batch := range []int{0, 100} {
		name := "single"
		if batch > 0 {
			name = "batch100"
		}
		b.Run(name, func(b *testing.B) {
			src := benchSource(b.N)
			var handled atomic.Int64
			opts := []parallafka.Option{parallafka.WithLogger(quiet)}
			if batch > 0 {
				opts = append(opts, parallafka.WithMaxBatchMessages(batch), parallafka.WithBatchLinger(0))
			}
			p, err := parallafka.New(src, opts...)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			if batch > 0 {
				err = p.ConsumeBatch(ctx, func(_ context.Context, msgs []*parallafka.Message[string, int]) error {
					if handled.Add(int64(len(msgs))) == int64(b.N) {
						cancel()
					}
					return nil
				})
			} else {
				err = p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error {
					if handled.Add(1) == int64(b.N) {
						cancel()
					}
					return nil
				})
			}
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
		})
	}
}
