package engine

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// observer calls the user's pipeline.Observer where events happen, each
// call guarded: a panic is logged and recovered, never taken into the
// engine. Without an observer (o nil) every method is one comparison, so
// the hooks cost nothing when unused.
type observer struct {
	o        pipeline.Observer
	throttle pipeline.ThrottleObserver // o, if it implements it
	log      *slog.Logger
}

func (o observer) throttled(m pipeline.MessageInfo, wait time.Duration, perKey bool) {
	defer o.recover("MessageThrottled")
	o.throttle.MessageThrottled(m, wait, perKey)
}

func (o observer) on() bool { return o.o != nil }

func (o observer) recover(event string) {
	if r := recover(); r != nil {
		o.log.Error("parallafka: observer panicked", "event", event, "panic", r)
	}
}

func (o observer) polled(m pipeline.MessageInfo) {
	defer o.recover("MessagePolled")
	o.o.MessagePolled(m)
}

// handlerStarted returns the handler's context: ctx if the observer
// panicked or returned nil.
func (o observer) handlerStarted(ctx context.Context, m pipeline.MessageInfo, waited pipeline.Wait) (out context.Context) {
	out = ctx
	defer o.recover("HandlerStarted")
	if got := o.o.HandlerStarted(ctx, m, waited); got != nil {
		out = got
	}
	return out
}

func (o observer) handlerEnded(ctx context.Context, m pipeline.MessageInfo, err error, took time.Duration) {
	defer o.recover("HandlerEnded")
	o.o.HandlerEnded(ctx, m, err, took)
}

// batchStarted returns the batch handler's context: ctx if the observer
// panicked or returned nil.
func (o observer) batchStarted(ctx context.Context, msgs []pipeline.MessageInfo) (out context.Context) {
	out = ctx
	defer o.recover("BatchStarted")
	if got := o.o.BatchStarted(ctx, msgs); got != nil {
		out = got
	}
	return out
}

func (o observer) batchEnded(ctx context.Context, msgs []pipeline.MessageInfo, err error, took time.Duration) {
	defer o.recover("BatchEnded")
	o.o.BatchEnded(ctx, msgs, err, took)
}

func (o observer) settled(m pipeline.MessageInfo, outcome pipeline.Outcome) {
	defer o.recover("MessageSettled")
	o.o.MessageSettled(m, outcome)
}

func (o observer) committed(c pipeline.CommitInfo) {
	if o.o == nil {
		return
	}
	defer o.recover("Committed")
	o.o.Committed(c)
}

// partitions tells one of the partition events.
func (o observer) partitions(event string, tps []pipeline.TopicPartition) {
	if o.o == nil || len(tps) == 0 {
		return
	}
	defer o.recover(event)
	tps = slices.Clone(tps)
	switch event {
	case "PartitionsPaused":
		o.o.PartitionsPaused(tps)
	case "PartitionsResumed":
		o.o.PartitionsResumed(tps)
	case "PartitionsAssigned":
		o.o.PartitionsAssigned(tps)
	case "PartitionsRevoked":
		o.o.PartitionsRevoked(tps)
	case "PartitionsLost":
		o.o.PartitionsLost(tps)
	}
}

func (o observer) limitChanged(limit int) {
	if o.o == nil {
		return
	}
	defer o.recover("ConcurrencyLimitChanged")
	o.o.ConcurrencyLimitChanged(limit)
}

func (o observer) stalled(s pipeline.Stall) {
	if o.o == nil {
		return
	}
	defer o.recover("PartitionStalled")
	o.o.PartitionStalled(s)
}

func (o observer) unstalled(tp pipeline.TopicPartition, d time.Duration) {
	if o.o == nil {
		return
	}
	defer o.recover("PartitionUnstalled")
	o.o.PartitionUnstalled(tp, d)
}
