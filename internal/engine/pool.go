package engine

import (
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sourcegraph/conc/pool"

	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// handlerPool is the handler pool stage: concurrency workers, each taking
// the next dispatched job, calling the handler (or, in batch mode, the
// batch handler once for the job's batch, see batchpool.go), and giving
// every message its outcome in Message.Err. A handler's panic becomes the
// error of the messages it was given (a *pipeline.PanicError, with the
// stack logged); it never takes a worker down.
//
// After the call a worker tells the coordinator, on handlerEnd, that its
// handler is free: the one way a handler's end reaches the coordinator.
// With it go the messages that skip the AfterHandle stages, settled: those
// whose claim ended, those requeued (batch mode), and without stages every
// message, with the ack collector's verdict applied by the worker itself
// (one hand-off fewer per message). Then it sends the others into the
// stages, one by one.
type handlerPool[K, V any] struct {
	concurrency  int
	handler      pipeline.Handler[K, V]      // single-message mode
	batchHandler pipeline.BatchHandler[K, V] // batch mode, instead
	log          *slog.Logger
	collector    *collector[K, V] // its verdicts on the messages that skip the stages
	stats        *Stats           // Batches and Batched
	obs          observer
	// transactional: each call's context carries an outbox (outbox.go),
	// and what it produced goes to the coordinator on handlerEnd.
	transactional bool

	// epoch is when run began: handler calls are timed on the monotonic
	// clock alone, from it (time.Now reads the wall clock too).
	epoch time.Time

	dispatch   <-chan job[K, V]               // from the coordinator
	handlerEnd chan<- handlerEnded[K, V]      // to the coordinator, once per job
	handled    chan<- *pipeline.Message[K, V] // into the AfterHandle stages; nil without them
}

// run handles jobs until dispatch is closed, then returns once every
// worker is idle. Handlers get the job's context: ctx, cancelled on a hard
// stop, and cancelled too when the claim of a message of the job ends.
func (p *handlerPool[K, V]) run(ctx context.Context) error {
	defer close(p.handlerEnd)
	if p.handled != nil {
		defer close(p.handled)
	}
	p.epoch = time.Now()
	workers := pool.New().WithMaxGoroutines(p.concurrency)
	for range p.concurrency {
		workers.Go(func() {
			for job := range p.dispatch {
				if job.batch != nil {
					p.handleBatch(ctx, job)
				} else {
					p.handleMessage(ctx, job)
				}
			}
		})
	}
	workers.Wait()
	return nil
}

// handleMessage handles a single message.
func (p *handlerPool[K, V]) handleMessage(ctx context.Context, job job[K, V]) {
	if job.run != nil {
		p.handleRun(ctx, job)
		return
	}
	ended := handlerEnded[K, V]{quick: true}
	done, staged := p.handleOne(ctx, job, &ended)
	ended.done = done
	// Never blocks: the coordinator reads handlerEnd until it is closed,
	// and it has room for every job out.
	p.handlerEnd <- ended
	if staged {
		p.stage(ctx, job.msg)
	}
}

// handleRun handles a run of quick messages in a row, then tells the
// coordinator once: one hand-off each way for the whole run. The messages
// that go into the AfterHandle stages go after the handler's end, as in
// handleMessage.
func (p *handlerPool[K, V]) handleRun(ctx context.Context, run job[K, V]) {
	ended := handlerEnded[K, V]{quick: true, settled: run.ends, run: run.run}
	var toStage []*pipeline.Message[K, V]
	for _, j := range run.run {
		done, staged := p.handleOne(ctx, j, &ended)
		if done.msg != nil {
			ended.settled = append(ended.settled, done)
		}
		if staged {
			toStage = append(toStage, j.msg)
		}
	}
	p.handlerEnd <- ended
	for _, msg := range toStage {
		p.stage(ctx, msg)
	}
}

// handleOne calls the handler for job's message, unless it is not to be
// handled, and records the call in ended (its sample, whether it was
// quick, what it produced). It returns the message's completion if the
// message skips the AfterHandle stages (done.msg nil otherwise), and
// whether it goes into them.
func (p *handlerPool[K, V]) handleOne(ctx context.Context, job job[K, V], ended *handlerEnded[K, V]) (done completion[K, V], staged bool) {
	msg := job.msg
	// A hard stop (ctx), or the claim ended (job.ctx): what was not
	// handled stays uncommitted.
	stopped := job.ctx.Err() != nil
	if !stopped && toHandle(msg) {
		msg.Attempt++
		hctx := job.ctx
		if p.obs.on() {
			hctx = p.obs.handlerStarted(hctx, msginfo.Of(msg), job.waited)
		}
		var box *outbox.Call[K, V]
		if p.transactional {
			hctx, box = outbox.WithCall(hctx, []*pipeline.Message[K, V]{msg})
		}
		began := time.Since(p.epoch)
		msg.Err = callHandler(p.log, p.handler, hctx, msg, describeMessage[K, V])
		end := time.Since(p.epoch)
		if sealed := box.Seal(); ended.produced == nil {
			ended.produced = sealed
		} else {
			ended.produced = append(ended.produced, sealed...)
		}
		call := &ended.call
		call.ended, call.took = p.epoch.Add(end), end-began
		ended.quick = ended.quick && call.took < quickHandler
		if p.obs.on() {
			p.obs.handlerEnded(hctx, msginfo.Of(msg), msg.Err, call.took)
		}
		stopped = job.ctx.Err() != nil && msg.Err != nil
		// A call cut short by a cancelled context (a hard stop, a
		// revoke timeout) says nothing about the downstream.
		call.ran, call.failed = !stopped, msg.Err != nil
	}
	switch {
	case stopped && (p.handled == nil || ctx.Err() == nil):
		// Its claim ended: no stage may retry or dead-letter it.
		done = completion[K, V]{msg: msg, verdict: verdictAbandon}
	case p.handled == nil:
		done = p.collector.verdict(job.ctx, msg)
	default:
		return completion[K, V]{}, !stopped
	}
	done.origin = job.origin
	return done, false
}

// stage sends a handled message into the AfterHandle stages.
func (p *handlerPool[K, V]) stage(ctx context.Context, msg *pipeline.Message[K, V]) {
	select {
	case p.handled <- msg:
	case <-ctx.Done():
	}
}

// toHandle is false for a message that a stage dropped and for one the
// source could not deserialize (it arrives failed, before any attempt).
func toHandle[K, V any](msg *pipeline.Message[K, V]) bool {
	return !msg.Dropped() && !(msg.Attempt == 0 && msg.Err != nil)
}

// callHandler calls handler with what it handles (a message or a batch),
// turning a panic into the error, logged with its stack and with what
// describe says of arg. A deferred recover rather than conc's panics.Try:
// Try's closure costs an allocation per call, a large share of the
// engine's own on a no-op handler.
func callHandler[A any](log *slog.Logger, handler func(context.Context, A) error, ctx context.Context, arg A, describe func(A) []any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			log.Error("parallafka: handler panicked", append(describe(arg), "panic", r, stackAttr(stack))...)
			err = &pipeline.PanicError{Value: r, Stack: stack}
		}
	}()
	return handler(ctx, arg)
}

func describeMessage[K, V any](msg *pipeline.Message[K, V]) []any {
	return []any{"message", msg.String()}
}

func describeBatch[K, V any](msgs []*pipeline.Message[K, V]) []any {
	return []any{"batch", len(msgs), "first", msgs[0].String()}
}

// stackAttr is a goroutine's stack as a log attribute of one line per
// frame line: a log handler shows it as lines (a JSON array, for one),
// not as one string of escaped newlines.
func stackAttr(stack []byte) slog.Attr {
	lines := strings.Split(strings.TrimRight(string(stack), "\n"), "\n")
	for i, line := range lines {
		lines[i] = strings.TrimLeft(line, "\t")
	}
	return slog.Any("stack", lines)
}
