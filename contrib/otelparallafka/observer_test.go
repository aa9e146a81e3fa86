package otelparallafka_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/contrib/otelparallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const topic = "orders"

var quiet = slog.New(slog.DiscardHandler)

// telemetry is an in-memory span recorder and metric reader, and an
// Observer that reports to them.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	obs    *otelparallafka.Observer
}

func newTelemetry(t testing.TB) *telemetry {
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		_ = tel.tp.Shutdown(context.Background())
		_ = tel.mp.Shutdown(context.Background())
	})
	var err error
	tel.obs, err = otelparallafka.New(otelparallafka.WithTracerProvider(tel.tp), otelparallafka.WithMeterProvider(tel.mp),
		otelparallafka.WithPropagator(propagation.TraceContext{}), otelparallafka.WithConsumerGroup("billing"))
	require.NoError(t, err)
	return tel
}

// metrics collects and returns every data point's sum (counters, gauges
// summed over partitions; histograms: their counts), by metric name, and
// the points of each per-partition metric.
func (tel *telemetry) metrics(t *testing.T) (totals map[string]float64, partitions map[string]map[string]float64) {
	var rm metricdata.ResourceMetrics
	require.NoError(t, tel.reader.Collect(context.Background(), &rm))
	totals, partitions = map[string]float64{}, map[string]map[string]float64{}
	add := func(name string, attrs attribute.Set, v float64) {
		totals[name] += v
		if o, ok := attrs.Value(otelparallafka.OutcomeKey); ok {
			totals[name+"|"+o.AsString()] += v
		}
		if p, ok := attrs.Value("messaging.destination.partition.id"); ok {
			if partitions[name] == nil {
				partitions[name] = map[string]float64{}
			}
			partitions[name][p.AsString()] += v
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, float64(p.Value))
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, float64(p.Value))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, float64(p.Count))
				}
			}
		}
	}
	return totals, partitions
}

// memWriter keeps the dead letters written.
type memWriter struct {
	mu      sync.Mutex
	letters []pipeline.DeadLetter
}

func (w *memWriter) WriteDeadLetter(_ context.Context, dl pipeline.DeadLetter) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.letters = append(w.letters, dl)
	return nil
}

func header(hs []pipeline.Header, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// A trace goes on from the producer's span to each handling attempt's
// consumer span (its child, linked to it, carried by the handler's
// context) and to the dead letter's producer span, whose context the dead
// letter's headers carry.
func TestTraceFromProducerToHandlerToDeadLetter(t *testing.T) {
	tel := newTelemetry(t)
	producerCtx, producerSpan := tel.tp.Tracer("producer").Start(context.Background(), "send orders",
		trace.WithSpanKind(trace.SpanKindProducer))
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	src.ProduceRecord(memsource.Record[string, int]{Topic: topic, Key: "good", Value: 1, Headers: tel.obs.Inject(producerCtx, nil)})
	src.ProduceRecord(memsource.Record[string, int]{Topic: topic, Key: "bad", Value: 2, Headers: tel.obs.Inject(producerCtx, nil)})
	producerSpan.End()
	dlq := &memWriter{}
	retry, err := stages.Retry[string, int](stages.RetryConfig{MaxAttempts: 2, InitialBackoff: time.Millisecond})
	require.NoError(t, err)
	deadLetter, err := stages.DeadLetterQueue[string, int](stages.DeadLetterConfig{Writer: tel.obs.DeadLetterWriter(dlq)})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs),
		parallafka.WithAfterHandle("retry", retry),
		parallafka.WithAfterHandle("dlq", deadLetter),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	var wrongTrace atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if trace.SpanContextFromContext(ctx).TraceID() != producerSpan.SpanContext().TraceID() {
				wrongTrace.Add(1)
			}
			if m.Key == "bad" {
				return errors.New("bad order")
			}
			return nil
		})
	}()
	require.Eventually(t, func() bool { return src.Committed(pipeline.TopicPartition{Topic: topic}) == 2 }, 10*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.Zero(t, wrongTrace.Load(), "the handler's context carries the producer's trace")

	var consumer []sdktrace.ReadOnlySpan
	var send sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		switch s.Name() {
		case "process orders":
			consumer = append(consumer, s)
		case "send orders.dlq":
			send = s
		}
	}
	require.Len(t, consumer, 3, "good once, bad twice")
	var lastBad sdktrace.ReadOnlySpan
	for _, s := range consumer {
		a := attrs(s)
		assert.Equal(t, trace.SpanKindConsumer, s.SpanKind())
		assert.Equal(t, producerSpan.SpanContext().SpanID(), s.Parent().SpanID(), "child of the producer's span")
		assert.True(t, s.Parent().IsRemote())
		require.Len(t, s.Links(), 1)
		assert.Equal(t, producerSpan.SpanContext().SpanID(), s.Links()[0].SpanContext.SpanID(), "linked to the producer's span")
		assert.Equal(t, "kafka", a["messaging.system"].AsString())
		assert.Equal(t, "process", a["messaging.operation.type"].AsString())
		assert.Equal(t, "orders", a["messaging.destination.name"].AsString())
		assert.Equal(t, "0", a["messaging.destination.partition.id"].AsString())
		assert.Equal(t, "billing", a["messaging.consumer.group.name"].AsString())
		assert.Contains(t, a, attribute.Key("parallafka.wait.behind_key"))
		switch a["messaging.kafka.message.key"].AsString() {
		case "good":
			assert.EqualValues(t, 0, a["messaging.kafka.offset"].AsInt64())
			assert.EqualValues(t, 1, a["parallafka.attempt"].AsInt64())
			assert.Equal(t, codes.Unset, s.Status().Code)
		case "bad":
			assert.EqualValues(t, 1, a["messaging.kafka.offset"].AsInt64())
			assert.Equal(t, codes.Error, s.Status().Code)
			assert.Equal(t, "bad order", s.Status().Description)
			assert.Equal(t, "*errors.errorString", a["error.type"].AsString())
			if a["parallafka.attempt"].AsInt64() == 2 {
				lastBad = s
			}
		default:
			t.Errorf("span without a key: %v", a)
		}
	}
	require.NotNil(t, lastBad, "the second attempt has its span")
	require.NotNil(t, send, "the dead letter has a producer span")
	assert.Equal(t, trace.SpanKindProducer, send.SpanKind())
	assert.Equal(t, lastBad.SpanContext().SpanID(), send.Parent().SpanID(), "the dead letter's span is the last attempt's child")
	assert.Equal(t, producerSpan.SpanContext().TraceID(), send.SpanContext().TraceID())
	assert.Equal(t, "send", attrs(send)["messaging.operation.type"].AsString())

	require.Len(t, dlq.letters, 1)
	var tc propagation.TraceContext
	dlCtx := tc.Extract(context.Background(), propagation.MapCarrier{"traceparent": header(dlq.letters[0].Headers, "traceparent")})
	sc := trace.SpanContextFromContext(dlCtx)
	assert.Equal(t, producerSpan.SpanContext().TraceID(), sc.TraceID(), "the dead letter carries the trace on")
	assert.Equal(t, send.SpanContext().SpanID(), sc.SpanID(), "as the send span's child")
	n := 0
	for _, h := range dlq.letters[0].Headers {
		if h.Key == "traceparent" {
			n++
		}
	}
	assert.Equal(t, 1, n, "the original record's traceparent is replaced")
}

// A message without trace context starts a trace of its own, with no
// link.
func TestMessageWithoutTraceContextStartsATrace(t *testing.T) {
	tel := newTelemetry(t)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	src.Produce(topic, 0, "k", 1)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs))
	require.NoError(t, err)
	outer, span := tel.tp.Tracer("app").Start(context.Background(), "app")
	defer span.End()
	ctx, cancel := context.WithCancel(outer)
	err = p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error { cancel(); return nil })
	require.NoError(t, err)
	spans := tel.spans.Ended()
	require.Len(t, spans, 1)
	assert.False(t, spans[0].Parent().IsValid(), "a root span")
	assert.Empty(t, spans[0].Links())
}

// After a known workload the metrics match Stats, lag is 0 on every
// partition, and the gauges read the pipeline's state.
func TestMetricsMatchStats(t *testing.T) {
	tel := newTelemetry(t)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 3)
	const n = 300
	for i := range n {
		src.Produce(topic, int32(i%3), fmt.Sprintf("k%d", i%17), i)
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs),
		parallafka.WithMaxConcurrency(5), parallafka.WithErrorPolicy(parallafka.SkipOnError),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	reg, err := tel.obs.RegisterGauges(p, src)
	require.NoError(t, err)
	defer func() { require.NoError(t, reg.Unregister()) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(ctx, func(_ context.Context, m *parallafka.Message[string, int]) error {
			if m.Value%10 == 0 {
				return errors.New("every tenth fails")
			}
			return nil
		})
	}()
	require.Eventually(t, func() bool {
		for part := range int32(3) {
			if src.Committed(pipeline.TopicPartition{Topic: topic, Partition: part}) != n/3 {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond)
	totals, parts := tel.metrics(t)
	st := p.Stats()
	assert.EqualValues(t, n, st.Polled)
	assert.EqualValues(t, st.Polled, totals[otelparallafka.MetricPolled])
	assert.EqualValues(t, st.Finished, totals[otelparallafka.MetricHandled]+totals[otelparallafka.MetricSkipped]+totals[otelparallafka.MetricDropped])
	assert.EqualValues(t, st.Failed, totals[otelparallafka.MetricFailed])
	assert.EqualValues(t, st.Skipped, totals[otelparallafka.MetricSkipped])
	assert.EqualValues(t, n/10, totals[otelparallafka.MetricSkipped])
	assert.EqualValues(t, n, totals[otelparallafka.MetricHandlerDuration], "one attempt each")
	assert.EqualValues(t, n/10, totals[otelparallafka.MetricHandlerDuration+"|error"])
	assert.EqualValues(t, n-n/10, totals[otelparallafka.MetricHandlerDuration+"|ok"])
	assert.EqualValues(t, n, totals[otelparallafka.MetricKeyWait])
	assert.EqualValues(t, n, totals[otelparallafka.MetricEndToEnd])
	assert.EqualValues(t, st.Commits, totals[otelparallafka.MetricCommits])
	assert.EqualValues(t, st.Commits+st.CommitErrors, totals[otelparallafka.MetricCommitDuration])
	assert.EqualValues(t, 0, totals[otelparallafka.MetricInFlight])
	assert.EqualValues(t, 3, totals[otelparallafka.MetricAssigned])
	assert.EqualValues(t, 5, totals[otelparallafka.MetricLimit])
	assert.Equal(t, map[string]float64{"0": 0, "1": 0, "2": 0}, parts[otelparallafka.MetricLag], "lag reaches 0")
	assert.Equal(t, map[string]float64{"0": 0, "1": 0, "2": 0}, parts[otelparallafka.MetricUnread])
	assert.Equal(t, map[string]float64{"0": n / 3, "1": n / 3, "2": n / 3}, parts[otelparallafka.MetricPolled])
	cancel()
	require.NoError(t, <-done)
}

// A stall is counted and shown by the gauge, which clears with it.
func TestStallMetrics(t *testing.T) {
	tel := newTelemetry(t)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	src.Produce(topic, 0, "slow", 0)
	src.Produce(topic, 0, "fast", 1)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs),
		parallafka.WithStallTimeout(100*time.Millisecond))
	require.NoError(t, err)
	reg, err := tel.obs.RegisterGauges(p, src)
	require.NoError(t, err)
	defer func() { require.NoError(t, reg.Unregister()) }()
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Key == "slow" {
				<-release
			}
			return nil
		})
	}()
	require.Eventually(t, func() bool { return p.Stats().Stalled == 1 }, 10*time.Second, time.Millisecond)
	totals, parts := tel.metrics(t)
	assert.EqualValues(t, 1, totals[otelparallafka.MetricStalls])
	assert.EqualValues(t, 1, totals[otelparallafka.MetricStalled])
	assert.EqualValues(t, 2, parts[otelparallafka.MetricLag]["0"], "nothing committed: both messages count")
	assert.EqualValues(t, 0, parts[otelparallafka.MetricUnread]["0"])
	close(release)
	require.Eventually(t, func() bool { return p.Stats().Stalled == 0 }, 10*time.Second, time.Millisecond)
	totals, _ = tel.metrics(t)
	assert.EqualValues(t, 0, totals[otelparallafka.MetricStalled])
	cancel()
	require.NoError(t, <-done)
}

type healthFunc func(context.Context) error

func (f healthFunc) Health(ctx context.Context) error { return f(ctx) }

// heldHealth is healthy, with held keys.
type heldHealth struct{ held int64 }

func (heldHealth) Health(context.Context) error { return nil }
func (h heldHealth) Stats() parallafka.Stats    { return parallafka.Stats{HeldKeys: h.held} }

func TestHealthHandler(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		body string
	}{
		{nil, http.StatusOK, "ok\n"},
		{fmt.Errorf("%w: orders[0] offset 2", parallafka.ErrStalled), http.StatusServiceUnavailable, "parallafka: stalled: orders[0] offset 2\n"},
	} {
		rec := httptest.NewRecorder()
		otelparallafka.HealthHandler(healthFunc(func(context.Context) error { return tc.err })).
			ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		assert.Equal(t, tc.code, rec.Code)
		assert.Equal(t, tc.body, rec.Body.String())
	}
	for held, body := range map[int64]string{0: "ok\n", 2: "ok: 2 keys held (their messages go to the dead-letter topic unhandled until released)\n"} {
		rec := httptest.NewRecorder()
		otelparallafka.HealthHandler(heldHealth{held}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		assert.Equal(t, http.StatusOK, rec.Code, "held keys are not unhealthy")
		assert.Equal(t, body, rec.Body.String())
	}
}

// The Prometheus meter provider exports to a client_golang registry under
// Prometheus's names.
func TestPrometheusMeterProvider(t *testing.T) {
	reg := prometheus.NewRegistry()
	mp, err := otelparallafka.PrometheusMeterProvider(reg)
	require.NoError(t, err)
	defer func() { require.NoError(t, mp.Shutdown(context.Background())) }()
	obs, err := otelparallafka.New(otelparallafka.WithMeterProvider(mp))
	require.NoError(t, err)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	src.Produce(topic, 0, "k", 1)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(obs))
	require.NoError(t, err)
	r, err := obs.RegisterGauges(p, src)
	require.NoError(t, err)
	defer func() { require.NoError(t, r.Unregister()) }()
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error { cancel(); return nil }))
	srv := httptest.NewServer(promHandler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, name := range []string{
		`parallafka_messages_polled_total{messaging_destination_name="orders",messaging_destination_partition_id="0",messaging_system="kafka"} 1`,
		"parallafka_handler_duration_seconds_bucket{",
		"parallafka_message_wait_behind_key_seconds_count",
		"parallafka_partitions_stalled{",
	} {
		assert.True(t, strings.Contains(string(body), name), "%s in\n%s", name, body)
	}
}

func promHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// In batch mode each batch call is one consumer span with a link to each
// message's producer context, and the batch handler's context carries it.
func TestBatchSpanLinksEveryMessage(t *testing.T) {
	tel := newTelemetry(t)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 1)
	producers := map[trace.SpanID]bool{}
	for i := range 6 {
		ctx, span := tel.tp.Tracer("producer").Start(context.Background(), "send orders")
		producers[span.SpanContext().SpanID()] = true
		src.ProduceRecord(memsource.Record[string, int]{Topic: topic, Key: fmt.Sprint("k", i), Value: i, Headers: tel.obs.Inject(ctx, nil)})
		span.End()
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs),
		parallafka.WithMaxBatch(100, 4<<20), parallafka.WithBatchLinger(50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	var noSpan atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- p.ConsumeBatch(ctx, func(ctx context.Context, msgs []*parallafka.Message[string, int]) error {
			if !trace.SpanContextFromContext(ctx).IsValid() {
				noSpan.Store(true)
			}
			if handled.Add(int64(len(msgs))) == 6 {
				cancel()
			}
			return nil
		})
	}()
	require.NoError(t, <-done)
	assert.False(t, noSpan.Load(), "the batch handler's context carries the batch span")
	linked := 0
	var batches int64
	for _, s := range tel.spans.Ended() {
		if s.Name() != "process orders" {
			continue
		}
		batches++
		assert.Equal(t, trace.SpanKindConsumer, s.SpanKind())
		assert.False(t, s.Parent().IsValid())
		a := attrs(s)
		assert.EqualValues(t, len(s.Links()), a["messaging.batch.message_count"].AsInt64())
		for _, l := range s.Links() {
			assert.True(t, producers[l.SpanContext.SpanID()])
			linked++
		}
	}
	assert.Equal(t, 6, linked, "every message linked once")
	assert.Equal(t, p.Stats().Batches, batches)
}

// In a transactional pipeline each transaction is a span, with its output
// records, and parallafka.transaction.records counts them.
func TestTransactionSpans(t *testing.T) {
	tel := newTelemetry(t)
	src := memsource.New[string, int]()
	src.AddTopic(topic, 2)
	const n = 200
	for i := range n {
		src.Produce(topic, int32(i%2), fmt.Sprint("k", i%10), i)
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(tel.obs),
		parallafka.WithTransactions(src), parallafka.WithCommitInterval(10*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			return parallafka.Produce(ctx, m, pipeline.Record{Topic: "out", Key: m.RawKey})
		})
	}()
	require.Eventually(t, func() bool { return len(src.Produced()) == n }, 20*time.Second, time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	var records int64
	for _, s := range tel.spans.Ended() {
		if s.Name() != otelparallafka.TransactionSpan {
			continue
		}
		assert.Equal(t, trace.SpanKindInternal, s.SpanKind())
		records += attrs(s)[otelparallafka.TransactionRecordsKey].AsInt64()
	}
	assert.EqualValues(t, n, records, "the transaction spans' records: each output once")
}
