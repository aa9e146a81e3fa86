package pipeline

import (
	"context"
	"errors"
)

// Record is an output record of a transactional pipeline: written to Kafka
// in the transaction that commits the message it was produced for as
// consumed (parallafka.WithTransactions, parallafka.Produce).
type Record struct {
	Topic string
	// Key and Value are the record's bytes (nil: a null key or value).
	Key, Value []byte
	Headers    []Header
	// Partition is the partition to write to; nil: the partition Kafka's
	// Java clients choose, murmur2 of Key (any partition for a nil Key).
	// Outputs of one key in one partition appear in the order of their
	// input messages.
	Partition *int32
}

// Transactor writes the outputs of finished messages and commits their
// offsets in one Kafka transaction: a read_committed reader sees all of
// it or none of it. The kafka and kafka/franz packages implement it over
// their clients (kafka.NewTransactor, franz.NewTransactor); memsource for
// tests.
//
// Transact is called by one goroutine at a time. It writes records in
// their order, and commits offsets (with their metadata, the pipeline's
// offset map) as the consumer group's member, with its generation, so that
// a member the group fenced cannot commit (KIP-447). It returns nil once
// the transaction committed. Any error means the transaction did not
// commit and none of it is visible: the pipeline tries again later with
// the same records and newer ones (the records of partitions it no longer
// owns left out). An error wrapping ErrTransactionFatal means the producer
// cannot go on (fenced by a newer producer with the same transactional
// id, or an outcome it cannot know): the pipeline stops, and a restart
// goes on from the last committed transaction.
type Transactor interface {
	Transact(ctx context.Context, records []Record, offsets []Offset) error
}

// ErrTransactionFatal marks a Transactor error the transactional producer
// cannot recover from.
var ErrTransactionFatal = errors.New("transactional producer failed")
