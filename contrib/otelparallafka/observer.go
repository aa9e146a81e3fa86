// Package otelparallafka exports a Parallafka pipeline's traces and metrics
// through OpenTelemetry, serves its health over HTTP, and registers its
// metrics with a Prometheus registry. It is a module of its own, so that
// the core module depends on no telemetry library; it builds on the core's
// hooks (parallafka.WithObserver) and on Stats.
//
//	obs, err := otelparallafka.New(otelparallafka.WithConsumerGroup("prices"))
//	p, err := parallafka.New(source, parallafka.WithObserver(obs))
//	reg, err := obs.RegisterGauges(p, source) // in flight, queued, lag, ...
//	defer reg.Unregister()
//	http.Handle("/healthz", otelparallafka.HealthHandler(p))
//
// Traces: one consumer span per handling attempt, "process <topic>", per
// OpenTelemetry's messaging conventions, the child of (and linked to) the
// producer's span whose W3C trace context the message's headers carry; the
// handler's context carries it. Dead letters get the trace context of the
// last attempt's span injected into their headers (DeadLetterWriter).
//
// Metrics: see the README's Observability section for every name, unit
// and attribute.
package otelparallafka

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/parallafka/parallafka/pipeline"
)

// instrumentationName names this package's tracer and meter.
const instrumentationName = "github.com/parallafka/parallafka/contrib/otelparallafka"

// Option configures New.
type Option func(*config)

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator
	group          string
}

// WithTracerProvider sets the tracer provider. Default: otel's global one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tracerProvider = tp }
}

// WithMeterProvider sets the meter provider. Default: otel's global one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.meterProvider = mp }
}

// WithPropagator sets how trace context is read from and written to
// message headers. Default: otel's global propagator (set it to
// propagation.TraceContext{} for W3C trace context).
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

// WithConsumerGroup sets the consumer group, recorded as
// messaging.consumer.group.name on spans and metrics. Default: none.
func WithConsumerGroup(group string) Option {
	return func(c *config) { c.group = group }
}

// Observer is a pipeline.Observer that traces handling attempts and
// records metrics. Make one with New; it is safe for concurrent use.
type Observer struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	group  string
	base   []attribute.KeyValue // messaging.system, and the group if set

	m instruments

	mu         sync.RWMutex
	partitions map[pipeline.TopicPartition]*partition
	limit      atomic.Int64

	// failedSpans holds the span context of a message's last failed
	// attempt until the message is settled, for DeadLetterWriter.
	failedSpans sync.Map // place → trace.SpanContext
}

// partition is what the Observer keeps per partition: its metric
// attributes, made once, and the next offset to read.
type partition struct {
	attrs   metric.MeasurementOption
	ok, err metric.MeasurementOption // attrs with parallafka.outcome
	set     attribute.Set
	// A consumer span's name and the attributes it shares with every
	// span of the partition.
	spanName  string
	spanAttrs trace.SpanStartEventOption
	next      atomic.Int64 // the offset after the last one polled; 0 before
	first     atomic.Int64 // the first offset polled in this assignment, plus 1; 0 before
	assigned  atomic.Bool
}

// place names one message.
type place struct {
	tp     pipeline.TopicPartition
	offset int64
}

var _ pipeline.Observer = (*Observer)(nil)

// PartitionsPaused, PartitionsResumed and PartitionUnstalled record
// nothing: pauses and stalls are read from Stats (RegisterGauges).
func (o *Observer) PartitionsPaused([]pipeline.TopicPartition)                {}
func (o *Observer) PartitionsResumed([]pipeline.TopicPartition)               {}
func (o *Observer) PartitionUnstalled(pipeline.TopicPartition, time.Duration) {}

// New returns an Observer; pass it to parallafka.WithObserver. It returns
// an error if an instrument cannot be made.
func New(opts ...Option) (*Observer, error) {
	c := config{}
	for _, o := range opts {
		o(&c)
	}
	if c.tracerProvider == nil {
		c.tracerProvider = otel.GetTracerProvider()
	}
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	if c.propagator == nil {
		c.propagator = otel.GetTextMapPropagator()
	}
	o := &Observer{
		tracer:     c.tracerProvider.Tracer(instrumentationName),
		prop:       c.propagator,
		group:      c.group,
		base:       []attribute.KeyValue{attrSystemKafka},
		partitions: make(map[pipeline.TopicPartition]*partition),
	}
	if c.group != "" {
		o.base = append(o.base, attrGroup(c.group))
	}
	var err error
	o.m, err = newInstruments(c.meterProvider.Meter(instrumentationName), o.base)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// partition returns tp's state, making it on first use.
func (o *Observer) partition(tp pipeline.TopicPartition) *partition {
	o.mu.RLock()
	p := o.partitions[tp]
	o.mu.RUnlock()
	if p != nil {
		return p
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if p = o.partitions[tp]; p == nil {
		kvs := append(append([]attribute.KeyValue(nil), o.base...),
			attrDestination(tp.Topic), attrPartition(tp.Partition))
		p = &partition{set: attribute.NewSet(slices.Clone(kvs)...)}
		p.attrs = metric.WithAttributeSet(p.set)
		// NewSet sorts what it is given in place: each set gets a copy.
		p.ok = metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(kvs), outcomeOK)...))
		p.err = metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(kvs), outcomeError)...))
		p.spanName = "process " + tp.Topic
		p.spanAttrs = trace.WithAttributes(append(slices.Clone(kvs), attrOperationProcess, attrOperationNameProcess)...)
		o.partitions[tp] = p
	}
	return p
}

// MessagePolled counts the message and remembers the next offset to read.
func (o *Observer) MessagePolled(m pipeline.MessageInfo) {
	p := o.partition(m.TopicPartition())
	o.m.polled.Add(context.Background(), 1, p.attrs)
	if next := m.Offset + 1; next > p.next.Load() {
		if p.next.Load() == 0 {
			p.first.Store(next)
		}
		p.next.Store(next)
	}
}

// HandlerStarted starts the attempt's consumer span (see the package doc)
// and records the message's waits.
func (o *Observer) HandlerStarted(ctx context.Context, m pipeline.MessageInfo, w pipeline.Wait) context.Context {
	p := o.partition(m.TopicPartition())
	o.m.keyWait.Record(ctx, w.BehindKey.Seconds(), p.attrs)
	o.m.handlerWait.Record(ctx, w.ForHandler.Seconds(), p.attrs)
	// The producer's context, if the headers carry one, is the span's
	// parent and link; otherwise the span starts a trace of its own (not a
	// child of whatever span the context given to Consume held).
	extracted := o.prop.Extract(ctx, headerCarrier{headers: &m.Headers})
	producer := trace.SpanContextFromContext(extracted)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), p.spanAttrs}
	if producer.IsValid() && producer.IsRemote() {
		ctx = extracted
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: producer}))
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	ctx, span := o.tracer.Start(ctx, p.spanName, opts...)
	if span.IsRecording() { // the message's own attributes, only for a span kept
		span.SetAttributes(attrOffset(m.Offset),
			attribute.Int(AttemptKey, m.Attempt),
			attribute.Float64(WaitBehindKeyKey, w.BehindKey.Seconds()),
			attribute.Float64(WaitForHandlerKey, w.ForHandler.Seconds()))
		if m.Key != nil {
			span.SetAttributes(attrKey(m.Key))
		}
	}
	return ctx
}

// HandlerEnded ends the attempt's span (error status on failure) and
// records its duration and the message's end-to-end latency.
func (o *Observer) HandlerEnded(ctx context.Context, m pipeline.MessageInfo, err error, took time.Duration) {
	p := o.partition(m.TopicPartition())
	span := trace.SpanFromContext(ctx)
	outcome := p.ok
	if err != nil {
		outcome = p.err
		span.RecordError(err)
		span.SetStatus(codesError, err.Error())
		span.SetAttributes(attribute.String("error.type", errorType(err)))
		o.failedSpans.Store(place{m.TopicPartition(), m.Offset}, span.SpanContext())
	}
	span.End()
	o.m.handlerDuration.Record(ctx, took.Seconds(), outcome)
	if !m.Timestamp.IsZero() {
		o.m.endToEnd.Record(ctx, time.Since(m.Timestamp).Seconds(), p.attrs)
	}
}

// MessageSettled counts what became of the message.
func (o *Observer) MessageSettled(m pipeline.MessageInfo, outcome pipeline.Outcome) {
	p := o.partition(m.TopicPartition())
	ctx := context.Background()
	switch outcome {
	case pipeline.OutcomeHandled:
		o.m.handled.Add(ctx, 1, p.attrs)
	case pipeline.OutcomeDropped:
		o.m.dropped.Add(ctx, 1, p.attrs)
	case pipeline.OutcomeSkipped:
		o.m.failed.Add(ctx, 1, p.attrs)
		o.m.skipped.Add(ctx, 1, p.attrs)
	case pipeline.OutcomeFailed:
		o.m.failed.Add(ctx, 1, p.attrs)
	case pipeline.OutcomeRetried:
		o.m.retried.Add(ctx, 1, p.attrs)
		return // the next attempt may fail again: keep its span context
	}
	o.failedSpans.Delete(place{m.TopicPartition(), m.Offset})
}

// Committed records the commit's latency and counts it (or its error); a
// transaction (WithTransactions) is counted the same way, with its output
// records, and is a span of its own ("parallafka transaction", internal,
// from its start to its end, with its record and partition counts, an
// error status if it was aborted).
func (o *Observer) Committed(c pipeline.CommitInfo) {
	ctx := context.Background()
	attrs := metric.WithAttributes(o.base...)
	if c.Err != nil {
		o.m.commitErrors.Add(ctx, 1, attrs)
	} else {
		o.m.commits.Add(ctx, 1, attrs)
		if c.Transaction {
			o.m.txnRecords.Record(ctx, float64(c.Records), attrs)
		}
	}
	o.m.commitDuration.Record(ctx, c.Took.Seconds(), attrs)
	if c.Transaction {
		end := time.Now()
		_, span := o.tracer.Start(ctx, TransactionSpan, trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindInternal),
			trace.WithTimestamp(end.Add(-c.Took)), trace.WithAttributes(o.base...),
			trace.WithAttributes(attribute.Int(TransactionRecordsKey, c.Records), attribute.Int(TransactionPartitionsKey, len(c.Offsets)),
				attribute.Bool(TransactionFinalKey, c.Final)))
		if c.Err != nil {
			span.RecordError(c.Err)
			span.SetStatus(codesError, c.Err.Error())
		}
		span.End(trace.WithTimestamp(end))
	}
}

// The transaction span's name and attributes.
const (
	TransactionSpan          = "parallafka transaction"
	TransactionRecordsKey    = "parallafka.transaction.records"    // output records it wrote
	TransactionPartitionsKey = "parallafka.transaction.partitions" // partitions whose offsets it committed
	TransactionFinalKey      = "parallafka.transaction.final"      // a revoke's or the shutdown's
)

// PartitionsAssigned marks the partitions assigned: their lag is reported.
func (o *Observer) PartitionsAssigned(tps []pipeline.TopicPartition) {
	for _, tp := range tps {
		p := o.partition(tp)
		p.assigned.Store(true)
	}
}

// PartitionsRevoked stops reporting the partitions' lag.
func (o *Observer) PartitionsRevoked(tps []pipeline.TopicPartition) { o.unassign(tps) }

// PartitionsLost stops reporting the partitions' lag.
func (o *Observer) PartitionsLost(tps []pipeline.TopicPartition) { o.unassign(tps) }

func (o *Observer) unassign(tps []pipeline.TopicPartition) {
	gone := make(map[pipeline.TopicPartition]bool, len(tps))
	for _, tp := range tps {
		p := o.partition(tp)
		p.assigned.Store(false)
		p.next.Store(0)
		p.first.Store(0)
		gone[tp] = true
	}
	o.failedSpans.Range(func(k, _ any) bool {
		if gone[k.(place).tp] {
			o.failedSpans.Delete(k)
		}
		return true
	})
}

// ConcurrencyLimitChanged records the limit for its gauge.
func (o *Observer) ConcurrencyLimitChanged(limit int) { o.limit.Store(int64(limit)) }

// PartitionStalled counts the stall.
func (o *Observer) PartitionStalled(s pipeline.Stall) {
	o.m.stalls.Add(context.Background(), 1, o.partition(s.TopicPartition).attrs)
}

// Attribute keys of this package, beside the messaging conventions'.
const (
	AttemptKey        = "parallafka.attempt"          // the handling attempt, from 1
	WaitBehindKeyKey  = "parallafka.wait.behind_key"  // seconds queued behind an earlier message of the key
	WaitForHandlerKey = "parallafka.wait.for_handler" // seconds ready, waiting for a free handler
	OutcomeKey        = "parallafka.outcome"          // "ok" or "error", on parallafka.handler.duration
)

var (
	outcomeOK    = attribute.String(OutcomeKey, "ok")
	outcomeError = attribute.String(OutcomeKey, "error")
)

func partitionID(p int32) string { return strconv.FormatInt(int64(p), 10) }
