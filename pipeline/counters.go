package pipeline

import (
	"context"
	"sync/atomic"
)

// Counters are the pipeline's running totals, shared by its stages and read
// by Stats. All fields are safe for concurrent use.
type Counters struct {
	Handled      atomic.Int64 // finished successfully (including skipped failures and drops)
	Failed       atomic.Int64 // handling attempts that ended in an error or panic
	Skipped      atomic.Int64 // failed messages the error policy skipped
	Dropped      atomic.Int64 // messages a stage dropped (finished without handling)
	Retried      atomic.Int64 // attempts handed to the handler pool again at a stage's request (a retry cut short by a revoke or a stop is abandoned, not counted)
	Queued       atomic.Int64 // waiting behind a busy key in the router
	Pauses       atomic.Int64 // times back-pressure paused the assigned partitions
	Commits      atomic.Int64 // successful commit calls
	CommitErrors atomic.Int64 // failed commit calls
}

type drainingKey struct{}

// WithDraining returns a context that carries the pipeline's draining signal.
func WithDraining(ctx context.Context, draining <-chan struct{}) context.Context {
	return context.WithValue(ctx, drainingKey{}, draining)
}

// Draining returns a channel that is closed when a graceful shutdown begins:
// polling has stopped and the pipeline is finishing what handlers started.
// A stage that holds messages back (a retry waiting for its backoff, for
// example) should send them on at once when it closes, marked with
// Message.Retry, so that the pipeline can abandon them uncommitted instead of
// waiting for them. It returns nil (never closed) for a context that the
// pipeline did not make.
func Draining(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(drainingKey{}).(<-chan struct{})
	return ch
}
