package otelparallafka_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/contrib/otelparallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// discard is a span exporter that drops what it is given.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// BenchmarkObserver measures the pipeline's cost per message with the
// OpenTelemetry Observer attached (every span sampled and batched to an
// exporter that drops them; metrics into a manual reader), to compare with
// the root module's BenchmarkObserver (no observer, a no-op one): the same
// in-memory workload, 1,000 keys over 4 partitions, a no-op handler.
func BenchmarkObserver(b *testing.B) {
	for _, bc := range []struct {
		name   string
		traces bool
	}{{"otel-metrics", false}, {"otel-traces-and-metrics", true}} {
		b.Run(bc.name, func(b *testing.B) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
			if !bc.traces {
				tp = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
			}
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			defer func() {
				_ = tp.Shutdown(context.Background())
				_ = mp.Shutdown(context.Background())
			}()
			obs, err := otelparallafka.New(otelparallafka.WithTracerProvider(tp), otelparallafka.WithMeterProvider(mp),
				otelparallafka.WithPropagator(propagation.TraceContext{}))
			if err != nil {
				b.Fatal(err)
			}
			src := memsource.New[string, int]()
			src.AddTopic(topic, 4)
			for i := range b.N {
				src.Produce(topic, int32(i%4), fmt.Sprintf("k%d", i%1000), i)
			}
			var handled atomic.Int64
			p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(obs))
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

// cpuTime is the process's CPU time (user and system) so far: per message,
// it is steadier than the wall clock on a machine shared with other work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
