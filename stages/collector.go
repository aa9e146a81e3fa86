package stages

import (
	"context"
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// ErrorAction is what the pipeline does with a message whose handling failed.
type ErrorAction int

const (
	// Stop leaves the failed message uncommitted and stops the pipeline
	// gracefully; Consume returns the error. Nothing is lost: the message
	// and everything after it in its partition are delivered again.
	Stop ErrorAction = iota
	// Skip counts the failed message as finished, so its offset is
	// committed, and goes on.
	Skip
)

// ErrorPolicy decides, per failed message, whether to stop or skip. err is a
// *MessageError; use errors.As / errors.Is on it to look at the cause.
type ErrorPolicy func(err error) ErrorAction

// MessageError is the error of one message that failed: its handler returned
// an error or panicked (a *PanicError), or its record could not be
// deserialized.
type MessageError struct {
	Topic     string
	Partition int32
	Offset    int64
	Attempt   int
	Err       error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("parallafka: message %s[%d]@%d failed (attempt %d): %v", e.Topic, e.Partition, e.Offset, e.Attempt, e.Err)
}

func (e *MessageError) Unwrap() error { return e.Err }

// Collector is the ack collector stage: the end of every message's way. It
// finishes succeeded and dropped messages, so their offsets can be
// committed; applies the error policy to failed ones; and hands every
// message back to the router, which frees its key or, for a retry,
// dispatches it again.
type Collector[K, V any] struct {
	*Env[K, V]
	Router *Router[K, V]
	Policy ErrorPolicy
	// Stop begins a graceful shutdown that ends in err.
	Stop func(err error)
}

// Run collects messages from in until in is closed or ctx is done.
func (c *Collector[K, V]) Run(ctx context.Context, in <-chan *pipeline.Message[K, V]) error {
	for msg := range in {
		c.collect(ctx, msg)
		// Without blocking first: a select locks every channel it names, and
		// ctx's is shared by every stage (see Router.tryStep).
		select {
		case c.Router.Released <- msg:
			continue
		default:
		}
		select {
		case c.Router.Released <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func (c *Collector[K, V]) collect(ctx context.Context, msg *pipeline.Message[K, V]) {
	switch {
	case msg.RetryRequested():
		// The router dispatches it again (and counts it as retried), or
		// abandons it if its partition was revoked or the pipeline is
		// draining.
	case msg.Dropped():
		c.Counters.Dropped.Add(1)
		pipeline.Finish(msg)
	case msg.Err == nil:
		c.Counters.Handled.Add(1)
		pipeline.Finish(msg)
	case ctx.Err() != nil:
		// A hard stop cancelled the handler: not a failure to act on. It
		// stays uncommitted and is delivered again.
		pipeline.Abandon(msg)
	default:
		c.fail(msg)
	}
}

func (c *Collector[K, V]) fail(msg *pipeline.Message[K, V]) {
	c.Counters.Failed.Add(1)
	err := &MessageError{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Attempt: msg.Attempt, Err: msg.Err}
	if c.Policy(err) == Skip {
		c.Counters.Skipped.Add(1)
		c.Logger.Warn("parallafka: skipping failed message", "error", err)
		pipeline.Finish(msg)
		return
	}
	c.Logger.Error("parallafka: message failed; stopping", "error", err)
	c.Stop(err) // before the key is released: nothing later with its key starts
	pipeline.Abandon(msg)
}
