package pipeline

import (
	"context"
	"time"
)

// Observer is told of the pipeline's events, for tracing and metrics
// (package parallafka's WithObserver). Its methods are called on the
// goroutine where the event happens, several at once: they must be safe
// for concurrent use, return quickly and never block (record, count, hand
// off); a panic is recovered and logged, and the pipeline goes on. Slices
// it is given are its own to keep. ObserverFuncs makes one of plain
// functions, for a few events; a type that implements some methods can
// embed an Observer made by ObserverFuncs{}.Observer() for the rest.
type Observer interface {
	// MessagePolled: a message was polled and handed to the pipeline.
	MessagePolled(m MessageInfo)
	// HandlerStarted: a handling attempt begins (m.Attempt is its number,
	// from 1). waited is how long the message waited since it was routed:
	// behind an earlier message of its key, then for a free handler. The
	// context it returns is the handler's (a span's, for a tracer).
	HandlerStarted(ctx context.Context, m MessageInfo, waited Wait) context.Context
	// HandlerEnded: the attempt ended with err (nil: success), after took;
	// ctx is the one HandlerStarted returned.
	HandlerEnded(ctx context.Context, m MessageInfo, err error, took time.Duration)
	// BatchStarted: a batch handler call begins (ConsumeBatch) with these
	// messages (their Attempt counts this one). The context it returns is
	// the batch handler's. Each message's outcome follows through
	// MessageSettled; HandlerStarted and HandlerEnded are not called in
	// batch mode.
	BatchStarted(ctx context.Context, msgs []MessageInfo) context.Context
	// BatchEnded: the batch handler returned err (a *BatchError names the
	// messages that failed) after took; ctx is the one BatchStarted
	// returned.
	BatchEnded(ctx context.Context, msgs []MessageInfo, err error, took time.Duration)
	// MessageSettled: the ack collector decided what becomes of a message
	// after an attempt (and the stages after the handler).
	MessageSettled(m MessageInfo, outcome Outcome)
	// Committed: the committer made a commit request.
	Committed(c CommitInfo)
	// PartitionsPaused and PartitionsResumed: fetching stopped or went on
	// for these partitions (back-pressure, Pause, poll steering).
	PartitionsPaused(partitions []TopicPartition)
	PartitionsResumed(partitions []TopicPartition)
	// PartitionsAssigned, PartitionsRevoked and PartitionsLost: a
	// rebalance, after the pipeline acted on it.
	PartitionsAssigned(partitions []TopicPartition)
	PartitionsRevoked(partitions []TopicPartition)
	PartitionsLost(partitions []TopicPartition)
	// ConcurrencyLimitChanged: the number of handlers allowed to run at
	// once changed (reported once at the start).
	ConcurrencyLimitChanged(limit int)
	// PartitionStalled: a partition's committable offset has not moved
	// for the stall timeout while it had unfinished work.
	PartitionStalled(s Stall)
	// PartitionUnstalled: a stalled partition's committable offset moved
	// (or its unfinished work went, on a revoke).
	PartitionUnstalled(tp TopicPartition, stalledFor time.Duration)
}

// MessageInfo is what an Observer learns of a message: its place, raw key,
// headers, timestamp and attempt number.
type MessageInfo struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte // raw; nil for a record without a key
	Headers   []Header
	Timestamp time.Time
	Attempt   int // the handling attempt, from 1; 0 before the first
}

// TopicPartition returns the partition the message was read from.
func (m MessageInfo) TopicPartition() TopicPartition {
	return TopicPartition{Topic: m.Topic, Partition: m.Partition}
}

// Wait is how long a message waited between being routed and its
// handler's start.
type Wait struct {
	BehindKey  time.Duration // queued behind an earlier message with its key
	ForHandler time.Duration // ready, waiting for a free handler
}

// Outcome is what became of a message after a handling attempt.
type Outcome uint8

// Outcomes, as MessageSettled tells them.
const (
	OutcomeHandled   Outcome = iota // succeeded: finished
	OutcomeDropped                  // a stage dropped it (a dead letter written, a duplicate): finished
	OutcomeSkipped                  // failed, and the error policy skipped it: finished
	OutcomeRetried                  // a stage asked for another attempt
	OutcomeFailed                   // failed, and the error policy stops the pipeline: never committed here
	OutcomeAbandoned                // cancelled by a stop or revoke: delivered again
)

func (o Outcome) String() string {
	switch o {
	case OutcomeHandled:
		return "handled"
	case OutcomeDropped:
		return "dropped"
	case OutcomeSkipped:
		return "skipped"
	case OutcomeRetried:
		return "retried"
	case OutcomeFailed:
		return "failed"
	case OutcomeAbandoned:
		return "abandoned"
	}
	return "unknown"
}

// CommitInfo is one commit request.
type CommitInfo struct {
	Offsets []Offset // each the next offset to read, with its metadata
	Final   bool     // a revoke's or the shutdown's commit
	Took    time.Duration
	Err     error
	// Transaction: a transactional pipeline's commit (WithTransactions),
	// a Kafka transaction that wrote Records output records with the
	// offsets; Err non-nil means it was aborted (or never began).
	Transaction bool
	Records     int
}

// ThrottleObserver is an optional interface of an Observer: a rate limit
// (WithRateLimit) held back a ready message, for about wait, before it was
// dispatched. perKey says which limit: its key's, or the global one. It is
// called on the coordinator's goroutine: keep it quick.
type ThrottleObserver interface {
	MessageThrottled(m MessageInfo, wait time.Duration, perKey bool)
}

// HeldKey is a key held in its partition (Message.HoldKey, the error
// policy's HoldKey): its messages there are not handled, but fail with a
// *KeyHeldError, until it is released.
type HeldKey struct {
	TopicPartition
	Key    []byte    // the raw key
	Offset int64     // the offset of the message whose failure held it
	Since  time.Time // when it was held (to the second, once read back from a commit's metadata)
}

// KeyHoldObserver is an optional interface of an Observer. KeyHeld: a key
// was held in its partition, or this member took over a partition whose
// committed metadata holds it. KeyReleased: Parallafka.ReleaseKey released
// it, or (expired) its WithHeldKeyTTL passed. They are called on the
// coordinator's goroutine: keep them quick, and do not call ReleaseKey
// from them.
type KeyHoldObserver interface {
	KeyHeld(k HeldKey)
	KeyReleased(k HeldKey, expired bool)
}

// Stall describes a stalled partition: its committable offset has not
// moved for Since while it had unfinished work, held back by the message
// at Offset (its first unfinished one).
type Stall struct {
	TopicPartition
	Offset int64
	Key    []byte        // the blocking message's raw key
	Since  time.Duration // how long the committable offset has not moved
	// State says what the blocking message is doing: "handling" (handed
	// to the handler pool Running ago: its handler has run for about that
	// long; "handling, or handed to the pool behind busy handlers" while
	// more messages are out than handlers), "waiting behind its key",
	// "waiting for a handler" or "in the AfterPoll stages".
	State   string
	Running time.Duration
}

// ObserverFuncs is an Observer made of functions, one per event, for a
// program told of a few events only (a commit, a rebalance, a limit
// change); the zero value observes nothing. Its Observer method returns the
// Observer to give WithObserver. A nil function ignores its event; a
// HandlerStarted or BatchStarted left nil keeps the context as it is. The
// functions are called as Observer's methods are: concurrently, and they
// must return quickly.
type ObserverFuncs struct {
	MessagePolled           func(m MessageInfo)
	HandlerStarted          func(ctx context.Context, m MessageInfo, waited Wait) context.Context
	HandlerEnded            func(ctx context.Context, m MessageInfo, err error, took time.Duration)
	BatchStarted            func(ctx context.Context, msgs []MessageInfo) context.Context
	BatchEnded              func(ctx context.Context, msgs []MessageInfo, err error, took time.Duration)
	MessageSettled          func(m MessageInfo, outcome Outcome)
	Committed               func(c CommitInfo)
	PartitionsPaused        func(partitions []TopicPartition)
	PartitionsResumed       func(partitions []TopicPartition)
	PartitionsAssigned      func(partitions []TopicPartition)
	PartitionsRevoked       func(partitions []TopicPartition)
	PartitionsLost          func(partitions []TopicPartition)
	ConcurrencyLimitChanged func(limit int)
	PartitionStalled        func(s Stall)
	PartitionUnstalled      func(tp TopicPartition, stalledFor time.Duration)
}

// Observer returns an Observer that calls f's functions.
func (f ObserverFuncs) Observer() Observer { return funcObserver{f} }

// funcObserver is ObserverFuncs as an Observer (a struct cannot have a
// field and a method of one name).
type funcObserver struct{ f ObserverFuncs }

func (f funcObserver) MessagePolled(m MessageInfo) {
	if f.f.MessagePolled != nil {
		f.f.MessagePolled(m)
	}
}

func (f funcObserver) HandlerStarted(ctx context.Context, m MessageInfo, waited Wait) context.Context {
	if f.f.HandlerStarted != nil {
		return f.f.HandlerStarted(ctx, m, waited)
	}
	return ctx
}

func (f funcObserver) HandlerEnded(ctx context.Context, m MessageInfo, err error, took time.Duration) {
	if f.f.HandlerEnded != nil {
		f.f.HandlerEnded(ctx, m, err, took)
	}
}

func (f funcObserver) BatchStarted(ctx context.Context, msgs []MessageInfo) context.Context {
	if f.f.BatchStarted != nil {
		return f.f.BatchStarted(ctx, msgs)
	}
	return ctx
}

func (f funcObserver) BatchEnded(ctx context.Context, msgs []MessageInfo, err error, took time.Duration) {
	if f.f.BatchEnded != nil {
		f.f.BatchEnded(ctx, msgs, err, took)
	}
}

func (f funcObserver) MessageSettled(m MessageInfo, outcome Outcome) {
	if f.f.MessageSettled != nil {
		f.f.MessageSettled(m, outcome)
	}
}

func (f funcObserver) Committed(c CommitInfo) {
	if f.f.Committed != nil {
		f.f.Committed(c)
	}
}

func (f funcObserver) PartitionsPaused(partitions []TopicPartition) {
	if f.f.PartitionsPaused != nil {
		f.f.PartitionsPaused(partitions)
	}
}

func (f funcObserver) PartitionsResumed(partitions []TopicPartition) {
	if f.f.PartitionsResumed != nil {
		f.f.PartitionsResumed(partitions)
	}
}

func (f funcObserver) PartitionsAssigned(partitions []TopicPartition) {
	if f.f.PartitionsAssigned != nil {
		f.f.PartitionsAssigned(partitions)
	}
}

func (f funcObserver) PartitionsRevoked(partitions []TopicPartition) {
	if f.f.PartitionsRevoked != nil {
		f.f.PartitionsRevoked(partitions)
	}
}

func (f funcObserver) PartitionsLost(partitions []TopicPartition) {
	if f.f.PartitionsLost != nil {
		f.f.PartitionsLost(partitions)
	}
}

func (f funcObserver) ConcurrencyLimitChanged(limit int) {
	if f.f.ConcurrencyLimitChanged != nil {
		f.f.ConcurrencyLimitChanged(limit)
	}
}

func (f funcObserver) PartitionStalled(s Stall) {
	if f.f.PartitionStalled != nil {
		f.f.PartitionStalled(s)
	}
}

func (f funcObserver) PartitionUnstalled(tp TopicPartition, stalledFor time.Duration) {
	if f.f.PartitionUnstalled != nil {
		f.f.PartitionUnstalled(tp, stalledFor)
	}
}

// ConnectivitySource is implemented by sources that know whether they
// reach their brokers (package kafka's Source). Parallafka's Health reports
// a source that does not as unreachable, and the pipeline starts no handler
// while its membership is in doubt.
type ConnectivitySource interface {
	// Unreachable returns an error while no broker has been reachable
	// since the client last said so, nil otherwise. It is safe to call
	// from any goroutine.
	Unreachable() error
	// MembershipInDoubt reports whether the source cannot tell if its
	// group still assigns it its partitions: from the time no broker was
	// reachable while it had partitions until the group coordinator
	// answered it again. The broker may have expired the member's session
	// and given its partitions to another member meanwhile, and a member
	// hears of that only when it reaches the coordinator. It is safe to
	// call from any goroutine.
	MembershipInDoubt() bool
}
