package pipeline

import (
	"context"
	"errors"
	"time"
)

// ErrNotOwned is matched (errors.Is) by a Source's commit error when none of
// the offsets could be committed because this member no longer owns their
// partitions (a rebalance moved them on). Retrying cannot help: the
// committer gives up on them, and the new owner redoes what was not
// committed.
var ErrNotOwned = errors.New("partitions not owned by this member")

// ErrMetadataTooLarge is matched (errors.Is) by a Source's commit error when
// the broker refused an offset's metadata as too large (Kafka's
// offset.metadata.max.bytes is lower than the pipeline's offset map limit).
// The committer then halves the offset map's limit and retries.
var ErrMetadataTooLarge = errors.New("commit metadata larger than the broker accepts")

// Source is a one-message-at-a-time Kafka consumer, as the pipeline drives it.
// The Kafka adapter (package kafka) wraps confluent-kafka-go's consumer; the
// in-memory source (package memsource) serves tests.
//
// All methods but Commit are called from one goroutine, the poll stage's
// (Close from the goroutine that ran Consume, after the poll stage stopped).
// Commit may be called from the committer goroutine concurrently with Poll.
type Source[K, V any] interface {
	// Subscribe starts consumption and registers the listener that receives
	// rebalance notifications. It is called once, before the first Poll.
	Subscribe(l RebalanceListener) error
	// Poll returns the next message, or nil if none arrived within timeout.
	// Rebalance notifications are delivered to the listener from inside Poll,
	// on the calling goroutine, before Poll returns (as librdkafka does). A
	// returned error is fatal to the pipeline; a source reports transient
	// conditions by logging them and returning (nil, nil).
	Poll(timeout time.Duration) (*Message[K, V], error)
	// Commit stores the given offsets (each the next offset to read), with
	// their metadata, as the group's committed offsets, synchronously. An
	// error that matches ErrNotOwned is not retried.
	Commit(ctx context.Context, offsets []Offset) error
	// Pause stops fetching from the partitions; Poll keeps serving
	// rebalance notifications. Resume undoes Pause.
	Pause(partitions []TopicPartition) error
	Resume(partitions []TopicPartition) error
	// Close leaves the consumer group. A source may deliver a last
	// PartitionsRevoked notification from inside Close.
	Close() error
}

// WatermarkSource is implemented by sources that know a partition's
// watermarks without a request to the broker (a Kafka client caches them
// from its fetch responses). The pipeline asks for them once per poll
// cycle at most, to tell a partition with messages left to read from one
// that has none; a source without them is read as if every partition had.
type WatermarkSource interface {
	// Watermarks returns the partition's low watermark (its first offset)
	// and high watermark (the offset of the next message produced to it),
	// as last heard; ok is false while nothing has been heard of it.
	Watermarks(tp TopicPartition) (low, high int64, ok bool)
}

// RebalanceListener receives a Source's rebalance notifications. Its methods
// block until the pipeline has acted on the notification; for a revoke that
// includes committing the partitions' final offsets.
type RebalanceListener interface {
	// PartitionsAssigned: the member now owns these partitions (in addition
	// to those it had, for incremental assignment). Each comes with the
	// group's committed offset and its metadata, as the source read them
	// when the partition was assigned; Offset is negative when nothing is
	// committed or the source could not read it (the pipeline then knows
	// of no finished work past the position the source starts from).
	PartitionsAssigned(committed []Offset)
	// PartitionsRevoked: the member is about to give these partitions up in
	// an orderly rebalance. The pipeline stops dispatching them, waits a
	// bounded time for their in-flight handlers, commits their final
	// offsets through Source.Commit, and drops their backlog.
	PartitionsRevoked(partitions []TopicPartition)
	// PartitionsLost: the member already lost these partitions (session
	// timeout, fenced): their backlog is dropped and nothing is committed,
	// since another member may own them by now.
	PartitionsLost(partitions []TopicPartition)
}

// Handler handles one message. An error (or a panic) fails the message; what
// happens then is up to the retry stages and the error policy.
type Handler[K, V any] func(ctx context.Context, msg *Message[K, V]) error

// Middleware wraps a Handler, for example to add a timeout or tracing.
type Middleware[K, V any] func(next Handler[K, V]) Handler[K, V]

// Stage is a user-insertable step of the pipeline. It runs on its own
// goroutine, reads messages from in until in is closed, and must send every
// message it receives on to out exactly once: immediately, later (a delay),
// or marked with Message.Drop (finished, commits advance) or Message.Retry
// (handled again, keeping its key). A stage must never swallow a message:
// an unfinished message holds back its partition's commits. Every send to out
// should select on ctx.Done(), which is closed on a hard stop. The pipeline
// closes out once the stage returns; a returned error (or a panic) stops the
// pipeline.
type Stage[K, V any] func(ctx context.Context, in <-chan *Message[K, V], out chan<- *Message[K, V]) error

// BatchSource is implemented by sources that can hand over a poll cycle's
// messages at once (as io.WriterTo is by readers that can write
// themselves). The poll stage uses PollBatch when the source has it, and
// Poll otherwise, so a user-written source may implement Poll alone;
// PollBatch only saves the per-message interface call and lets an adapter
// drain its client's buffer in one go.
//
// PollBatch appends up to max messages to dst and returns the extended
// slice, waiting up to timeout for the first one only: once it has a
// message it takes only what is ready now, and returns. With maxBytes > 0
// it also stops once the messages it appended hold maxBytes or more (key,
// value and headers as received: the one that reaches the budget is
// included), so that a source does not move more into memory than the
// pipeline's byte window has room for. It must not retain dst, and should
// not allocate beyond the messages themselves (dst has room for max more).
// Everything Poll's contract says holds for each message: partition
// order, rebalance notifications delivered from inside PollBatch before it
// returns (a revoked partition's messages are not in the returned slice
// after its PartitionsRevoked returned), and a returned error is fatal
// (the messages appended before it may be returned with it; the pipeline
// ignores them). max is at least 1. A source that may deliver a rebalance
// after it appended messages in the same call must leave out the appended
// messages of the partitions that rebalance revoked or lost.
//
// As with io.WriterTo, a wrapper that embeds a source and overrides Poll
// must override PollBatch too (or embed the Source interface, which hides
// it): else the embedded PollBatch is promoted and bypasses the wrapper.
type BatchSource[K, V any] interface {
	PollBatch(timeout time.Duration, dst []*Message[K, V], max int, maxBytes int64) ([]*Message[K, V], error)
}
