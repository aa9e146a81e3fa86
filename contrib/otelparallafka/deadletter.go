package otelparallafka

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// DeadLetterWriter wraps w so that the trace goes on into the dead-letter
// topic: each write is a producer span, "send <dead-letter topic>", the
// child of the span of the message's last failed attempt (or, if the
// Observer saw none, of the trace context the original headers carry),
// and its trace context is injected into the dead letter's headers in
// place of the original record's.
func (o *Observer) DeadLetterWriter(w stages.DeadLetterWriter) stages.DeadLetterWriter {
	return &deadLetterWriter{o: o, w: w}
}

type deadLetterWriter struct {
	o *Observer
	w stages.DeadLetterWriter
}

func (d *deadLetterWriter) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	o := d.o
	if sc, ok := o.failedSpans.Load(place{dl.Original, dl.Offset}); ok {
		ctx = trace.ContextWithSpanContext(ctx, sc.(trace.SpanContext))
	} else {
		ctx = o.Extract(ctx, dl.Headers)
	}
	attrs := append(append([]attribute.KeyValue(nil), o.base...),
		attrOperationSend, attrOperationNameSend, attrDestination(dl.Topic),
		attribute.String("parallafka.dead_letter.original.topic", dl.Original.Topic),
		attribute.Int("parallafka.dead_letter.original.partition", int(dl.Original.Partition)),
		attribute.Int64("parallafka.dead_letter.original.offset", dl.Offset),
		attribute.Int(AttemptKey, dl.Attempts),
	)
	if dl.Key != nil {
		attrs = append(attrs, attrKey(dl.Key))
	}
	ctx, span := o.tracer.Start(ctx, "send "+dl.Topic, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	defer span.End()
	dl.Headers = o.Inject(ctx, dl.Headers)
	err := d.w.WriteDeadLetter(ctx, dl)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codesError, err.Error())
		span.SetAttributes(attribute.String("error.type", errorType(err)))
	}
	return err
}
