package engine

import (
	"context"
	"errors"
	"time"

	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// handleBatch handles a batch: it calls the batch handler once and gives
// every message its own outcome in Message.Err (nil, the handler's error,
// or the one a *pipeline.BatchError names for it). A panic fails every
// message of the batch with a *pipeline.PanicError. A message that fails
// (for its key's sake: it does not finish in this attempt) has the later
// messages of its key in the batch requeued behind it, whatever the
// handler said of them; so are those of a batch cancelled because another
// partition's claim ended.
func (p *handlerPool[K, V]) handleBatch(ctx context.Context, job job[K, V]) {
	b := job.batch
	if b.release != nil {
		defer b.release()
	}
	called, sample, produced := p.callBatchHandler(job)
	p.settleBatch(ctx, job, called, sample, produced)
}

// callBatchHandler calls the batch handler with the batch's messages that
// are to be handled: not those a stage dropped, nor those that could not
// be deserialized, nor any if the batch's claims ended already. It
// reports which it called it with, and the call's sample for the adaptive
// limit (one call, one sample, whatever its size), and, in a
// transactional pipeline, the outputs of the messages that succeeded.
func (p *handlerPool[K, V]) callBatchHandler(job job[K, V]) (called []bool, sample handlerCall, produced []outbox.Produced[K, V]) {
	msgs := job.batch.msgs
	call := make([]*pipeline.Message[K, V], 0, len(msgs))
	called = make([]bool, len(msgs))
	if job.ctx.Err() == nil {
		for i, msg := range msgs {
			if toHandle(msg) {
				msg.Attempt++
				call = append(call, msg)
				called[i] = true
			}
		}
	}
	if len(call) > 0 {
		p.stats.Batches.Add(1)
		p.stats.Batched.Add(int64(len(call)))
		hctx := job.ctx
		var infos []pipeline.MessageInfo
		if p.obs.on() {
			infos = make([]pipeline.MessageInfo, len(call))
			for i, msg := range call {
				infos[i] = msginfo.Of(msg)
			}
			hctx = p.obs.batchStarted(hctx, infos)
		}
		var box *outbox.Call[K, V]
		if p.transactional {
			hctx, box = outbox.WithCall(hctx, call)
		}
		began := time.Now()
		err := callHandler(p.log, p.callBatch, hctx, call, describeBatch[K, V])
		sample.ended = time.Now()
		sample.took = sample.ended.Sub(began)
		sample.ran, sample.failed = job.ctx.Err() == nil, err != nil
		if p.obs.on() {
			p.obs.batchEnded(hctx, infos, err, sample.took)
		}
		for _, msg := range call {
			msg.Err = pipeline.BatchOutcome(err, msg)
		}
		produced = box.Seal()
	}
	return called, sample, produced
}

// settleBatch decides each message's fate after the call. A message fails
// (for its key's sake) if it does not finish in this attempt: then the
// later messages of its key in the batch are requeued behind it, whatever
// the handler said of them. It tells the coordinator that the handler is
// free, with the messages that skip the AfterHandle stages, and sends the
// others into the stages.
func (p *handlerPool[K, V]) settleBatch(ctx context.Context, job job[K, V], called []bool, sample handlerCall, produced []outbox.Produced[K, V]) {
	b := job.batch
	msgs := b.msgs
	ended := handlerEnded[K, V]{call: sample, settled: make([]completion[K, V], 0, len(msgs)), produced: produced}
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

// callBatch calls the batch handler: a nil *BatchError means that
// nothing failed.
func (p *handlerPool[K, V]) callBatch(ctx context.Context, msgs []*pipeline.Message[K, V]) error {
	err := p.batchHandler(ctx, msgs)
	var be *pipeline.BatchError[K, V]
	if errors.As(err, &be) && be == nil {
		return nil
	}
	return err
}
