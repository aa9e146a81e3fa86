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
	// Metadata is the commit's metadata string, stored by Kafka with the
	// offset. The pipeline writes its offset map there: the offsets above
	// Offset that already finished, so that the next owner skips them.
	Metadata string
}

// Header is one Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Message is one Kafka record as it travels through the pipeline.
//
// A message is owned by exactly one stage at a time, so stages may read and
// change its exported fields without locking while they hold it. It carries
// no pipeline state: the engine keeps its own books on every message.
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
	// Attempt counts handling attempts: 1 during the first, 2 during the
	// second, and so on; 0 before the first.
	Attempt int

	fate        fate
	fateAttempt int  // Attempt when Retry was called
	holdKey     bool // HoldKey was called
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
// it reaches the end of the stages, instead of finishing it. The message
// keeps its key while it waits, so later messages with the same key wait
// too; it stays uncommitted. During shutdown or after its partition was
// revoked a message marked for retry is abandoned uncommitted (Kafka
// delivers it again), never skipped.
func (m *Message[K, V]) Retry() { m.fate, m.fateAttempt = fateRetry, m.Attempt }

// HoldKey asks the pipeline to hold the message's key in its partition
// once the message finishes (dropped, or handled): from then on the key's
// later messages in the partition are not handled but fail at once, in
// order, with a *KeyHeldError, so that a dead-letter stage writes them
// after this one, until the key is released (Parallafka.ReleaseKey, or
// WithHeldKeyTTL). Other keys go on. stages.DeadLetterQueue calls it for
// every message it dead-letters when its HoldKey is set. It does nothing
// for a message without a key (RawKey nil), for one that does not finish
// (retried, abandoned), and for one that failed because its key was held
// already.
func (m *Message[K, V]) HoldKey() { m.holdKey = true }

// KeyHoldRequested reports whether a stage called HoldKey on the message.
func (m *Message[K, V]) KeyHoldRequested() bool { return m.holdKey }

// Dropped reports whether a stage called Drop on the message.
func (m *Message[K, V]) Dropped() bool { return m.fate == fateDrop }

// RetryRequested reports whether a stage called Retry since the latest
// handling attempt began.
func (m *Message[K, V]) RetryRequested() bool {
	return m.fate == fateRetry && m.fateAttempt == m.Attempt
}

// TopicPartition returns the partition the message was read from.
func (m *Message[K, V]) TopicPartition() TopicPartition {
	return TopicPartition{Topic: m.Topic, Partition: m.Partition}
}

// String returns the message's place, topic[partition]@offset.
func (m *Message[K, V]) String() string {
	return fmt.Sprintf("%s[%d]@%d", m.Topic, m.Partition, m.Offset)
}
