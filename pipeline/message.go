package pipeline

import (
	"fmt"
	"time"
)

// TopicPartition names one partition of a topic.
type TopicPartition struct {
	Topic     string
	Partition int32
}

func (tp TopicPartition) String() string { return fmt.Sprintf("%s[%d]", tp.Topic, tp.Partition) }

// Offset is a commit position: the next offset to read in a partition, as
// Kafka defines a committed offset (last finished offset + 1).
type Offset struct {
	TopicPartition
	Offset int64
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Message is one Kafka record as it travels through the pipeline.
//
// A message is owned by exactly one stage at a time, so stages may read and
// change its exported fields without locking while they hold it.
type Message[K, V any] struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       K
	Value     V
	Headers   []Header
	Timestamp time.Time

	// RawKey is the key as Kafka stores it; nil for a record without a key.
	// Per-key ordering compares these bytes, so it matches Kafka's own notion
	// of "the same key" whatever K is.
	RawKey []byte
	// RawValue is the value as Kafka stores it (kept for dead-lettering and
	// for messages whose value could not be deserialized).
	RawValue []byte

	// Err is the outcome of the latest handling attempt: nil on success. A
	// source sets it before handling when the record could not be
	// deserialized (a poison pill); such a message never reaches the handler
	// and goes straight to the error policy. Stages after the handler pool
	// may read and change it (a retry stage clears it, for example).
	Err error
	// Attempt counts handling attempts: 1 during the first, 2 after one
	// Retry, and so on.
	Attempt int

	fate       fate
	claim      *Claim
	state      msgState
	abandoned  bool
	keyWaiting bool  // see SetKeyWaiting
	seq        int64 // see Sequence
}

// Sequence returns the message's place in the order the poll stage took
// messages in: 1 for the first message a Parallafka polled, 2 for the next,
// and so on, across partitions (0 before it was tracked). The router
// dispatches the oldest dispatchable message first.
func Sequence[K, V any](msg *Message[K, V]) int64 { return msg.seq }

// SetKeyWaiting records, as the router dispatches msg, whether a later
// message with the same key waits for it to finish. The handler pool then
// lets msg's release reach the router before its worker takes new work, so
// that the waiting message is the one it takes: a busy key runs back to
// back instead of missing a round of handlers for each of its messages.
func SetKeyWaiting[K, V any](msg *Message[K, V], waiting bool) { msg.keyWaiting = waiting }

// KeyWaiting reports what the router recorded with SetKeyWaiting.
func KeyWaiting[K, V any](msg *Message[K, V]) bool { return msg.keyWaiting }

// Abandoned reports whether the pipeline gave up on the message in this
// assignment (its partition was revoked, the pipeline stopped, or it failed
// and the error policy stopped the pipeline): it stays uncommitted, and
// Kafka delivers it again.
func (m *Message[K, V]) Abandoned() bool { return m.abandoned }

// msgState is where a message stands in its claim's bookkeeping.
type msgState uint8

const (
	stateUntracked msgState = iota // not tracked, or finished/abandoned already
	stateTracked                   // polled, counted in flight
	stateStarted                   // dispatched to the handler pool
)

func (m *Message[K, V]) offset() int64 { return m.Offset }

func (m *Message[K, V]) takeState() msgState {
	s := m.state
	m.state = stateUntracked
	return s
}

// fate records what a stage asked the pipeline to do with a message.
type fate uint8

const (
	fateHandle fate = iota // the default: handle, then finish
	fateDrop               // finish without (further) handling
	fateRetry              // hand back to the handler pool, keeping the key
)

// Drop marks the message as finished without (further) handling: the
// pipeline passes it through without calling the handler, and it counts as
// finished, so its offset can be committed. A stage that drops a message
// still sends it on to its out channel, so that the pipeline sees it.
func (m *Message[K, V]) Drop() { m.fate = fateDrop; m.Err = nil }

// Retry asks the pipeline to hand the message back to the handler pool once
// it reaches the ack collector, instead of finishing it. The message keeps
// its key while it waits, so later messages with the same key wait too; it
// stays uncommitted. During shutdown a message marked for retry is
// abandoned uncommitted (it will be redelivered), never skipped.
func (m *Message[K, V]) Retry() { m.fate = fateRetry }

// Dropped reports whether a stage called Drop on the message.
func (m *Message[K, V]) Dropped() bool { return m.fate == fateDrop }

// RetryRequested reports whether a stage called Retry since the last handling attempt.
func (m *Message[K, V]) RetryRequested() bool { return m.fate == fateRetry }

// ResetFate clears a Retry mark before the message is handled again. The
// pipeline calls it; stages need not.
func (m *Message[K, V]) ResetFate() { m.fate = fateHandle }

// TopicPartition returns the partition the message was read from.
func (m *Message[K, V]) TopicPartition() TopicPartition {
	return TopicPartition{Topic: m.Topic, Partition: m.Partition}
}

func (m *Message[K, V]) String() string {
	return fmt.Sprintf("%s[%d]@%d", m.Topic, m.Partition, m.Offset)
}

// Claim returns the assignment of the message's partition it was polled
// under (nil before the poll stage tracked it).
func (m *Message[K, V]) Claim() *Claim { return m.claim }
