package engine

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/sourcegraph/conc/pool"

	"github.com/parallafka/parallafka/pipeline"
)

// handlerPool is the handler pool stage: concurrency workers, each taking
// the next dispatched message, calling the handler, and passing the message
// on with its outcome in Message.Err. A handler's panic becomes that
// message's error (a *pipeline.PanicError, with the stack logged); it never
// takes a worker down.
//
// Without AfterHandle stages a worker applies the ack collector's verdict
// itself and sends the message straight back to the coordinator: one
// hand-off fewer per message. With them, it tells the coordinator that its
// handler is free (handlerEnd) and sends the message into the stages.
type handlerPool[K, V any] struct {
	concurrency int
	handler     pipeline.Handler[K, V]
	log         *slog.Logger
	collector   *collector[K, V] // applied by the workers when inline is true
	obs         observer

	dispatch   <-chan job[K, V]               // from the coordinator
	handled    chan<- *pipeline.Message[K, V] // into the AfterHandle stages (nil when inline)
	handlerEnd chan<- handlerEnded[K, V]      // to the coordinator (nil when inline)
	released   chan<- completion[K, V]        // to the coordinator (when inline)
	coordDone  <-chan struct{}
}

func (p *handlerPool[K, V]) inline() bool { return p.handled == nil }

// run handles messages until dispatch is closed, then returns once every
// worker is idle. Handlers get ctx, which is cancelled on a hard stop.
func (p *handlerPool[K, V]) run(ctx context.Context) error {
	if p.inline() {
		defer close(p.released)
	} else {
		defer close(p.handled)
		defer close(p.handlerEnd)
	}
	workers := pool.New().WithMaxGoroutines(p.concurrency)
	for range p.concurrency {
		workers.Go(func() { p.work(ctx) })
	}
	workers.Wait()
	return nil
}

func (p *handlerPool[K, V]) work(ctx context.Context) {
	for job := range p.dispatch {
		msg := job.msg
		// A hard stop (ctx), or the claim ended (job.ctx): what was not
		// handled stays uncommitted.
		stopped := job.ctx.Err() != nil
		quick := true
		var call handlerCall
		if !stopped && p.shouldHandle(msg) {
			msg.Attempt++
			hctx := job.ctx
			if p.obs.on() {
				hctx = p.obs.handlerStarted(hctx, pipeline.Info(msg), job.waited)
			}
			began := time.Now()
			msg.Err = p.handle(hctx, msg)
			call.ended = time.Now()
			call.took = call.ended.Sub(began)
			quick = call.took < quickHandler
			if p.obs.on() {
				p.obs.handlerEnded(hctx, pipeline.Info(msg), msg.Err, call.took)
			}
			stopped = job.ctx.Err() != nil && msg.Err != nil
			// A call cut short by a cancelled context (a hard stop, a
			// revoke timeout) says nothing about the downstream.
			call.ran, call.failed = !stopped, msg.Err != nil
		}
		if p.inline() {
			done := completion[K, V]{msg: msg, verdict: verdictAbandon, quick: quick, call: call}
			if !stopped {
				done = p.collector.verdict(job.ctx, msg)
				done.quick, done.call = quick, call
			}
			// Never blocks: the coordinator reads released until it is
			// closed, and it has room for every message out.
			p.released <- done
			continue
		}
		ended := handlerEnded[K, V]{quick: quick, call: call}
		if stopped && ctx.Err() == nil {
			ended.cancelled = msg // its claim ended: no stage may retry or dead-letter it
		}
		p.handlerEnd <- ended // never blocks: room for every message out
		if stopped {
			continue
		}
		select {
		case p.handled <- msg:
		case <-ctx.Done():
		}
	}
}

// shouldHandle is false for a message that a stage dropped and for one the
// source could not deserialize (it arrives failed, before any attempt).
func (p *handlerPool[K, V]) shouldHandle(msg *pipeline.Message[K, V]) bool {
	return !msg.Dropped() && !(msg.Attempt == 0 && msg.Err != nil)
}

// handle calls the handler, turning a panic into the message's error. A
// deferred recover rather than conc's panics.Try: Try's closure costs an
// allocation per message, a large share of the engine's own on a no-op
// handler.
func (p *handlerPool[K, V]) handle(ctx context.Context, msg *pipeline.Message[K, V]) (err error) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			p.log.Error("parallafka: handler panicked", "message", msg.String(), "panic", r, "stack", string(stack))
			err = &pipeline.PanicError{Value: r, Stack: stack}
		}
	}()
	return p.handler(ctx, msg)
}
