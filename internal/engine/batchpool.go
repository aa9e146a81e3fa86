package engine

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/pool"

	"github.com/parallafka/parallafka/pipeline"
)

// batchPool is the handler pool stage in batch mode: concurrency workers,
// each taking the next dispatched batch, calling the batch handler once,
// and giving every message its own outcome in Message.Err (nil, the
// handler's error, or the one a *pipeline.BatchError names for it). A
// panic fails every message of the batch with a *pipeline.PanicError.
//
// After the call, a worker tells the coordinator that it is free
// (handlerEnd), with the messages that skip the AfterHandle stages
// settled: those requeued (the later messages of a failed message's key,
// and those of a batch cancelled because another partition's claim ended),
// those whose claim ended, and without stages every message, with the ack
// collector's verdict. Then it sends the others into the stages, one by
// one, like the single-message pool.
type batchPool[K, V any] struct {
	concurrency int
	handler     pipeline.BatchHandler[K, V]
	log         *slog.Logger
	collector   *collector[K, V]
	batches     *atomic.Int64 // Stats: batch handler calls
	batched     *atomic.Int64 // Stats: the messages they were given
	obs         observer

	dispatch   <-chan job[K, V]               // from the coordinator
	handled    chan<- *pipeline.Message[K, V] // into the AfterHandle stages; nil without them
	handlerEnd chan<- handlerEnded[K, V]      // to the coordinator
}

// run handles batches until dispatch is closed, then returns once every
// worker is idle. Handlers get the batch's context: ctx, cancelled on a
// hard stop, and cancelled too when a claim of the batch ends.
func (p *batchPool[K, V]) run(ctx context.Context) error {
	defer close(p.handlerEnd)
	if p.handled != nil {
		defer close(p.handled)
	}
	workers := pool.New().WithMaxGoroutines(p.concurrency)
	for range p.concurrency {
		workers.Go(func() { p.work(ctx) })
	}
	workers.Wait()
	return nil
}

func (p *batchPool[K, V]) work(ctx context.Context) {
	for job := range p.dispatch {
		p.handleBatch(ctx, job)
	}
}

func (p *batchPool[K, V]) handleBatch(ctx context.Context, job job[K, V]) {
	b := job.batch
	if b.release != nil {
		defer b.release()
	}
	msgs := b.msgs
	// The messages the handler gets: not those a stage dropped, nor those
	// that could not be deserialized, nor those whose claim ended already.
	call := make([]*pipeline.Message[K, V], 0, len(msgs))
	called := make([]bool, len(msgs))
	if job.ctx.Err() == nil {
		for i, msg := range msgs {
			if toHandle(msg) {
				msg.Attempt++
				call = append(call, msg)
				called[i] = true
			}
		}
	}
	var err error
	var sample handlerCall // one call, one sample for the adaptive limit, whatever its size
	if len(call) > 0 {
		p.batches.Add(1)
		p.batched.Add(int64(len(call)))
		hctx := job.ctx
		var infos []pipeline.MessageInfo
		if p.obs.on() {
			infos = make([]pipeline.MessageInfo, len(call))
			for i, msg := range call {
				infos[i] = pipeline.Info(msg)
			}
			hctx = p.obs.batchStarted(hctx, infos)
		}
		began := time.Now()
		err = p.handle(hctx, call)
		sample.ended = time.Now()
		sample.took = sample.ended.Sub(began)
		sample.ran, sample.failed = job.ctx.Err() == nil, err != nil
		if p.obs.on() {
			p.obs.batchEnded(hctx, infos, err, sample.took)
		}
		for _, msg := range call {
			msg.Err = pipeline.BatchOutcome(err, msg)
		}
	}
	// Each message's fate. A message fails (for its key's sake) if it
	// does not finish in this attempt: then the later messages of its key
	// in the batch are requeued behind it, whatever the handler said of
	// them.
	ended := handlerEnded[K, V]{call: sample, settled: make([]completion[K, V], 0, len(msgs))}
	blocked := make([]bool, len(msgs))
	onward := make([]bool, len(msgs)) // into the stages, or to the collector's verdict
	batchDone := job.ctx.Err() != nil
	var lastCtx context.Context // the claims' contexts come in runs: ask each run once
	claimDone := false
	for i, msg := range msgs {
		if ctx := b.claimCtx[i]; ctx != lastCtx {
			lastCtx, claimDone = ctx, ctx.Err() != nil
		}
		wasCalled := called[i]
		failed := wasCalled && msg.Err != nil || !wasCalled && !msg.Dropped() && (msg.Err != nil || batchDone)
		switch {
		case b.prev[i] >= 0 && blocked[b.prev[i]]:
			// An earlier message of its key failed: it waits behind it.
			blocked[i] = true
			if claimDone {
				ended.settled = append(ended.settled, completion[K, V]{msg: msg, verdict: verdictAbandon})
				continue
			}
			if wasCalled {
				msg.Attempt--
				msg.Err = nil
			}
			ended.settled = append(ended.settled, completion[K, V]{msg: msg, verdict: verdictRequeue})
		case claimDone && failed:
			// Its claim ended (or a hard stop): it stays uncommitted.
			blocked[i] = true
			ended.settled = append(ended.settled, completion[K, V]{msg: msg, verdict: verdictAbandon})
		case batchDone && failed:
			// Another partition's claim ended and cancelled the batch:
			// this one's is live, so it is handled again.
			blocked[i] = true
			if wasCalled {
				msg.Attempt--
				msg.Err = nil
			}
			ended.settled = append(ended.settled, completion[K, V]{msg: msg, verdict: verdictRequeue})
		default:
			blocked[i] = failed
			onward[i] = true
		}
	}
	// The requeued and abandoned go first: the coordinator must have them
	// back before the verdict of the message that failed ahead of them.
	if p.handled == nil {
		for i, msg := range msgs {
			if onward[i] {
				ended.settled = append(ended.settled, p.collector.verdict(ctx, msg))
			}
		}
	}
	p.handlerEnd <- ended // never blocks: room for every batch out
	if p.handled == nil {
		return
	}
	for i, msg := range msgs {
		if !onward[i] {
			continue
		}
		select {
		case p.handled <- msg:
		case <-ctx.Done():
			return
		}
	}
}

// toHandle is false for a message that a stage dropped and for one the
// source could not deserialize (it arrives failed, before any attempt).
func toHandle[K, V any](msg *pipeline.Message[K, V]) bool {
	return !msg.Dropped() && !(msg.Attempt == 0 && msg.Err != nil)
}

// handle calls the batch handler, turning a panic into an error that fails
// every message of the batch.
func (p *batchPool[K, V]) handle(ctx context.Context, msgs []*pipeline.Message[K, V]) (err error) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			p.log.Error("parallafka: batch handler panicked", "batch", len(msgs), "first", msgs[0].String(), "panic", r, "stack", string(stack))
			err = &pipeline.PanicError{Value: r, Stack: stack}
		}
	}()
	err = p.handler(ctx, msgs)
	var be *pipeline.BatchError[K, V]
	if errors.As(err, &be) && be == nil {
		err = nil // a nil *BatchError: nothing failed
	}
	return err
}
