package otelparallafka

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/parallafka/parallafka/pipeline"
)

// BatchStarted starts the batch's consumer span: "process <topic>" (or
// "process" for a batch of several topics), with
// messaging.batch.message_count, and a link to each message's producer
// context (with the message's partition and offset on the link). A batch
// has many parents, so its span starts a trace of its own.
func (o *Observer) BatchStarted(ctx context.Context, msgs []pipeline.MessageInfo) context.Context {
	links := make([]trace.Link, 0, len(msgs))
	topic := ""
	for i, m := range msgs {
		if i == 0 {
			topic = m.Topic
		} else if m.Topic != topic {
			topic = ""
		}
		sc := trace.SpanContextFromContext(o.prop.Extract(context.Background(), headerCarrier{headers: &msgs[i].Headers}))
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
				attrDestination(m.Topic), attrPartition(m.Partition), attrOffset(m.Offset),
			}})
		}
	}
	attrs := append(append([]attribute.KeyValue(nil), o.base...),
		attrOperationProcess, attrOperationNameProcess, attribute.Int(BatchSizeKey, len(msgs)))
	name := "process"
	if topic != "" {
		name += " " + topic
		attrs = append(attrs, attrDestination(topic))
	}
	ctx, _ = o.tracer.Start(ctx, name, trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attrs...), trace.WithLinks(links...))
	return ctx
}

// BatchEnded ends the batch's span (error status if the batch failed, in
// whole or in part), records its duration and each message's end-to-end
// latency.
func (o *Observer) BatchEnded(ctx context.Context, msgs []pipeline.MessageInfo, err error, took time.Duration) {
	span := trace.SpanFromContext(ctx)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codesError, err.Error())
		span.SetAttributes(attribute.String("error.type", errorType(err)))
	}
	span.End()
	batchAttrs := o.m.batchOK
	if err != nil {
		batchAttrs = o.m.batchErr
	}
	o.m.batchDuration.Record(ctx, took.Seconds(), batchAttrs)
	now := time.Now()
	for _, m := range msgs {
		if err != nil {
			o.failedSpans.Store(place{m.TopicPartition(), m.Offset}, span.SpanContext())
		}
		if !m.Timestamp.IsZero() {
			o.m.endToEnd.Record(ctx, now.Sub(m.Timestamp).Seconds(), o.partition(m.TopicPartition()).attrs)
		}
	}
}

// BatchSizeKey is the messaging conventions' attribute for the messages
// in a batch span.
const BatchSizeKey = "messaging.batch.message_count"
