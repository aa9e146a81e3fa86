package stages

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// TimeoutBatch is Timeout for batch handlers (ConsumeBatch, with
// WithBatchMiddleware): each call of the batch handler gets a deadline d
// after it started, or an error if d is not positive; it never panics.
//
// A failure returned after the deadline passed wraps both ErrTimeout and
// the handler's own error: the whole batch's error, or each error of a
// *pipeline.BatchError (the messages it does not name still finish). A
// handler that returns nil after the deadline succeeded. Like Timeout, it
// waits for the handler to return.
func TimeoutBatch[K, V any](d time.Duration) (pipeline.BatchMiddleware[K, V], error) {
	if d <= 0 {
		return nil, fmt.Errorf("stages: TimeoutBatch: the deadline must be positive, got %v", d)
	}
	return func(next pipeline.BatchHandler[K, V]) pipeline.BatchHandler[K, V] {
		return func(ctx context.Context, batch []*pipeline.Message[K, V]) error {
			callCtx, cancel := context.WithTimeoutCause(ctx, d, ErrTimeout)
			defer cancel()
			err := next(callCtx, batch)
			if err == nil || ctx.Err() != nil || !errors.Is(context.Cause(callCtx), ErrTimeout) {
				return err
			}
			var be *pipeline.BatchError[K, V]
			if !errors.As(err, &be) || be == nil {
				return fmt.Errorf("%w after %v: %w", ErrTimeout, d, err)
			}
			timedOut := &pipeline.BatchError[K, V]{}
			for msg, msgErr := range be.Errors {
				timedOut.Fail(msg, fmt.Errorf("%w after %v: %w", ErrTimeout, d, msgErr))
			}
			return timedOut.Err()
		}
	}, nil
}
