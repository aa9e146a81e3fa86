package otelparallafka

import (
	"context"
	"slices"
	"strings"

	"github.com/parallafka/parallafka/pipeline"
)

// headerCarrier adapts Kafka record headers to the propagators'
// TextMapCarrier. Keys compare case-insensitively (W3C trace context's are
// lower case); Set replaces every header of the key.
type headerCarrier struct{ headers *[]pipeline.Header }

func (c headerCarrier) Get(key string) string {
	for _, h := range *c.headers {
		if strings.EqualFold(h.Key, key) {
			return string(h.Value)
		}
	}
	return ""
}

func (c headerCarrier) Set(key, value string) {
	kept := (*c.headers)[:0:0]
	for _, h := range *c.headers {
		if !strings.EqualFold(h.Key, key) {
			kept = append(kept, h)
		}
	}
	*c.headers = append(kept, pipeline.Header{Key: key, Value: []byte(value)})
}

func (c headerCarrier) Keys() []string {
	keys := make([]string, len(*c.headers))
	for i, h := range *c.headers {
		keys[i] = h.Key
	}
	return keys
}

// Inject returns headers with ctx's trace context written in by the
// Observer's propagator (replacing any there), for a record to produce: a
// producer's span, or a handler's context to carry the trace on.
func (o *Observer) Inject(ctx context.Context, headers []pipeline.Header) []pipeline.Header {
	headers = slices.Clone(headers)
	o.prop.Inject(ctx, headerCarrier{headers: &headers})
	return headers
}

// Extract returns ctx with the trace context that headers carry, as the
// Observer's propagator reads it.
func (o *Observer) Extract(ctx context.Context, headers []pipeline.Header) context.Context {
	return o.prop.Extract(ctx, headerCarrier{headers: &headers})
}
