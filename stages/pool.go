package stages

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/sourcegraph/conc/panics"
	"github.com/sourcegraph/conc/pool"

	"github.com/parallafka/parallafka/pipeline"
)

// HandlerPool is the handler pool stage: Concurrency workers, each taking the
// next dispatched message, calling the handler, and passing the message on
// with its outcome in Message.Err. A handler's panic becomes that message's
// error (a *PanicError, with the stack logged); it never takes a worker down.
type HandlerPool[K, V any] struct {
	*Env[K, V]
	Concurrency int
	Handler     pipeline.Handler[K, V]

	busy atomic.Int32 // workers in a handler
}

// PanicError is the error of a message whose handler panicked.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the panicking goroutine's stack
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error { err, _ := e.Value.(error); return err }

// Run handles messages from in until in is closed, then returns once every
// worker is idle. Handlers get ctx, which is cancelled on a hard stop.
func (p *HandlerPool[K, V]) Run(ctx context.Context, in <-chan *pipeline.Message[K, V], out chan<- *pipeline.Message[K, V]) error {
	workers := pool.New().WithMaxGoroutines(p.Concurrency)
	for range p.Concurrency {
		workers.Go(func() { p.work(ctx, in, out) })
	}
	workers.Wait()
	return nil
}

func (p *HandlerPool[K, V]) work(ctx context.Context, in <-chan *pipeline.Message[K, V], out chan<- *pipeline.Message[K, V]) {
	for msg := range in {
		if ctx.Err() != nil {
			return // hard stop: what was not handled stays uncommitted
		}
		othersBusy := int32(-1) // workers in a handler when this one left its own
		switch {
		case !msg.Claim().Admits(msg.Offset):
			// Its partition was revoked (or lost) since it was dispatched,
			// and it is no gap filler: not handled here. Handing it back
			// as a retry makes the router abandon it uncommitted.
			msg.Retry()
		case p.shouldHandle(msg):
			msg.Attempt++
			p.busy.Add(1)
			msg.Err = p.handle(ctx, msg)
			othersBusy = p.busy.Add(-1)
		}
		// Read before msg leaves this worker.
		yield := othersBusy > 0 && pipeline.KeyWaiting(msg)
		// Without blocking first: a select locks every channel it names, and
		// ctx's is shared by every stage (see Router.tryStep).
		select {
		case out <- msg:
		default:
			select {
			case out <- msg:
			case <-ctx.Done():
				return
			}
		}
		if yield {
			// Other workers are busy, and the router would hand this one
			// another message before the key's release reaches it (handlers
			// of equal length end together): yielding lets the stages after
			// the pool and the router run first, so the key's next message
			// is what this worker, or the next one free, takes. Without
			// other busy workers, whoever is idle takes it anyway.
			runtime.Gosched()
		}
	}
}

// shouldHandle is false for a message that a stage dropped and for one the
// source could not deserialize (it arrives failed, before any attempt).
func (p *HandlerPool[K, V]) shouldHandle(msg *pipeline.Message[K, V]) bool {
	return !msg.Dropped() && !(msg.Attempt == 0 && msg.Err != nil)
}

func (p *HandlerPool[K, V]) handle(ctx context.Context, msg *pipeline.Message[K, V]) (err error) {
	if r := panics.Try(func() { err = p.Handler(ctx, msg) }); r != nil {
		p.Logger.Error("parallafka: handler panicked", "message", msg.String(),
			"panic", r.Value, "stack", string(r.Stack))
		return &PanicError{Value: r.Value, Stack: r.Stack}
	}
	return err
}
