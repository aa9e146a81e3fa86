package pipeline

import (
	"context"

	"github.com/parallafka/parallafka/internal/signal"
)

// Draining returns a channel that is closed when a graceful shutdown begins:
// polling has stopped and the pipeline is finishing what handlers started.
// A stage that holds messages back (a retry waiting for its backoff, for
// example) should send them on at once when it closes, marked with
// Message.Retry, so that the pipeline can abandon them uncommitted instead of
// waiting for them. It returns nil (never closed) for a context that the
// pipeline did not make.
func Draining(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(signal.DrainingKey{}).(<-chan struct{})
	return ch
}

// Revoked returns a channel that is closed once the assignment msg's
// partition is in ends: the partition is revoked or lost, or the pipeline
// stops. A stage holding msg back (a retry waiting for its backoff) should
// then send it on at once: a revoke waits for every message of its
// partitions that is still on its way. The channel is closed already if the
// partition is no longer assigned, and nil (never closed) for a context that
// the pipeline did not make. Each call asks the pipeline's coordinator, so
// call it once per message held, not in a loop.
func Revoked[K, V any](ctx context.Context, msg *Message[K, V]) <-chan struct{} {
	revoked, _ := ctx.Value(signal.RevokedKey{}).(signal.Revoked)
	if revoked == nil {
		return nil
	}
	return revoked(msg.Topic, msg.Partition)
}
