package engine

import (
	"context"
	"log/slog"

	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// collector is the ack collector: the end of every handling attempt's way.
// It decides what becomes of a message: finished (succeeded, dropped by a
// stage, or failed and skipped by the error policy: its offset may be
// committed), retried (a stage asked for it), or abandoned (failed and the
// policy stops the pipeline, or cancelled by a hard stop: it stays
// uncommitted and Kafka delivers it again). The coordinator then frees the
// message's key, dispatches it again, or drops its key's queue.
type collector[K, V any] struct {
	policy pipeline.ErrorPolicy
	failed chan<- error // to the lifecycle: begin a graceful stop that ends in this error
	stats  *Stats
	log    *slog.Logger
	obs    observer
	// staged holds what the AfterHandle stages produced, in a
	// transactional pipeline (nil otherwise): a message's go with its
	// verdict.
	staged *outbox.Stage[K, V]
}

// run collects the messages leaving the AfterHandle stages until in is
// closed, sending each with its verdict to the coordinator.
func (c *collector[K, V]) run(ctx context.Context, in <-chan *pipeline.Message[K, V], released chan<- completion[K, V], coordDone <-chan struct{}) error {
	defer close(released)
	for msg := range in {
		select {
		case released <- c.verdict(ctx, msg):
		case <-coordDone:
			return nil
		}
	}
	return nil
}

func (c *collector[K, V]) verdict(ctx context.Context, msg *pipeline.Message[K, V]) completion[K, V] {
	done, outcome := c.decide(ctx, msg)
	done.staged = c.staged.Take(msg)
	if c.obs.on() {
		c.obs.settled(msginfo.Of(msg), outcome)
	}
	return done
}

func (c *collector[K, V]) decide(ctx context.Context, msg *pipeline.Message[K, V]) (completion[K, V], pipeline.Outcome) {
	switch {
	case msg.RetryRequested():
		// The coordinator dispatches it again (and counts it as retried),
		// or abandons it if its partition is stopping.
		return completion[K, V]{msg: msg, verdict: verdictRetry}, pipeline.OutcomeRetried
	case msg.Dropped():
		c.stats.Dropped.Add(1)
		return completion[K, V]{msg: msg, verdict: verdictFinish, hold: msg.KeyHoldRequested()}, pipeline.OutcomeDropped
	case msg.Err == nil:
		c.stats.Handled.Add(1)
		return completion[K, V]{msg: msg, verdict: verdictFinish, hold: msg.KeyHoldRequested()}, pipeline.OutcomeHandled
	case ctx.Err() != nil:
		// A hard stop cancelled the handler: not a failure to act on.
		return completion[K, V]{msg: msg, verdict: verdictAbandon}, pipeline.OutcomeAbandoned
	}
	c.stats.Failed.Add(1)
	err := &pipeline.MessageError{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Attempt: msg.Attempt, Err: msg.Err}
	switch c.policy(err) {
	case pipeline.Skip:
		c.stats.Skipped.Add(1)
		c.log.Warn("parallafka: skipping failed message", "error", err)
		return completion[K, V]{msg: msg, verdict: verdictFinish}, pipeline.OutcomeSkipped
	case pipeline.HoldKey:
		c.stats.Skipped.Add(1)
		c.log.Warn("parallafka: skipping failed message and holding its key", "error", err)
		return completion[K, V]{msg: msg, verdict: verdictFinish, hold: true}, pipeline.OutcomeSkipped
	}
	c.log.Error("parallafka: message failed; stopping", "error", err)
	select {
	case c.failed <- err: // the key is not released: nothing later with it starts
	default: // a stop is asked already: the first error is the one returned
	}
	return completion[K, V]{msg: msg, verdict: verdictAbandon}, pipeline.OutcomeFailed
}
