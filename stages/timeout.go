package stages

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// ErrTimeout is wrapped by the error of a handling attempt that outlived
// the deadline set by Timeout.
var ErrTimeout = errors.New("stages: handling attempt timed out")

// Timeout returns a middleware that gives each handling attempt a deadline:
// the handler's context is done d after the attempt started, or an error
// if d is not positive; it never panics.
//
// A handler that returns an error after its deadline passed fails with an
// error that wraps both ErrTimeout and the handler's own error, so retry,
// dead-letter stages and the error policy treat a timeout like any other
// failure. A handler that still returns nil after the deadline succeeded:
// its work is done.
//
// The handler must honour its context: Timeout waits for it to return,
// because a handler abandoned while still running would break per-key
// order (the next message with its key would start beside it).
//
// Timeout is a Middleware rather than a stage because the deadline belongs
// on the handler's context; with WithMiddleware(dedupe, timeout), the
// deadline covers the handler only.
func Timeout[K, V any](d time.Duration) (pipeline.Middleware[K, V], error) {
	if d <= 0 {
		return nil, fmt.Errorf("stages: Timeout: the deadline must be positive, got %v", d)
	}
	return func(next pipeline.Handler[K, V]) pipeline.Handler[K, V] {
		return func(ctx context.Context, msg *pipeline.Message[K, V]) error {
			attemptCtx, cancel := context.WithTimeoutCause(ctx, d, ErrTimeout)
			defer cancel()
			err := next(attemptCtx, msg)
			if err != nil && ctx.Err() == nil && errors.Is(context.Cause(attemptCtx), ErrTimeout) {
				return fmt.Errorf("%w after %v: %w", ErrTimeout, d, err)
			}
			return err
		}
	}, nil
}
