package pipeline

import (
	"context"
	"errors"
	"fmt"
)

// BatchHandler handles a batch of messages in one call. Returning nil
// finishes every message of the batch; returning a *BatchError fails only
// the messages it names (the others finish); any other error, or a panic,
// fails every message. A failed message then goes through the same
// machinery as a message a Handler failed: the AfterHandle stages (retry,
// dead-letter), then the error policy.
//
// In key mode a batch may hold several messages with the same key, in
// offset order; a key is in at most one batch in flight at a time. When a
// message fails, the later messages of its key in the same batch are
// handled again after it (in a later batch), whatever the handler said of
// them, so per-key order holds across retries.
type BatchHandler[K, V any] func(ctx context.Context, batch []*Message[K, V]) error

// BatchMiddleware wraps a BatchHandler, for example to add a deadline or to
// filter duplicates out of the batch.
type BatchMiddleware[K, V any] func(next BatchHandler[K, V]) BatchHandler[K, V]

// BatchError is what a BatchHandler returns to fail some messages of its
// batch and finish the others: Errors maps each failed message (the
// pointer the handler was given) to its error. Messages it does not name
// finish; a name that is not in the batch is ignored. A BatchError that
// names nothing counts as success, but return Err() rather than a BatchError
// you filled nothing in: a nil *BatchError in a non-nil error is easy to
// return by mistake.
//
// Its type parameters must be the pipeline's: a *BatchError of other types
// is just an error, which fails the whole batch.
type BatchError[K, V any] struct {
	Errors map[*Message[K, V]]error
}

// Fail records that msg failed with err (an error saying so if err is nil).
func (e *BatchError[K, V]) Fail(msg *Message[K, V], err error) {
	if err == nil {
		err = errors.New("failed in its batch")
	}
	if e.Errors == nil {
		e.Errors = make(map[*Message[K, V]]error)
	}
	e.Errors[msg] = err
}

// Err returns e as an error if it names a failed message, and nil
// otherwise: `return failed.Err()` finishes the whole batch when nothing
// failed.
func (e *BatchError[K, V]) Err() error {
	if e == nil || len(e.Errors) == 0 {
		return nil
	}
	return e
}

func (e *BatchError[K, V]) Error() string {
	if e == nil || len(e.Errors) == 0 {
		return "parallafka: batch: no message failed"
	}
	var first *Message[K, V]
	for msg := range e.Errors {
		if first == nil || msg.Offset < first.Offset {
			first = msg
		}
	}
	return fmt.Sprintf("parallafka: %d message(s) of the batch failed, %s: %v", len(e.Errors), first, e.Errors[first])
}

// Unwrap returns the messages' errors, for errors.Is and errors.As.
func (e *BatchError[K, V]) Unwrap() []error {
	if e == nil {
		return nil
	}
	errs := make([]error, 0, len(e.Errors))
	for _, err := range e.Errors {
		errs = append(errs, err)
	}
	return errs
}

// BatchOutcome returns what err, returned by a BatchHandler for a batch
// holding msg, says of msg: nil if msg finished, otherwise its error. A
// BatchMiddleware uses it to act on each message's outcome (recording the
// ones that succeeded, for example).
func BatchOutcome[K, V any](err error, msg *Message[K, V]) error {
	if err == nil {
		return nil
	}
	var be *BatchError[K, V]
	if errors.As(err, &be) {
		if be == nil {
			return nil
		}
		return be.Errors[msg]
	}
	return err
}
