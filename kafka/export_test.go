package kafka

import (
	"context"
	"errors"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/pipeline"
)

// BeginAndProduce begins a transaction and produces records in it, and
// leaves it open: what a process that dies before it commits leaves.
func BeginAndProduce(t *Transactor, records []pipeline.Record) error {
	if err := t.producer.BeginTransaction(); err != nil {
		return err
	}
	for _, r := range records {
		if err := t.produce(context.Background(), r); err != nil {
			return err
		}
	}
	if left := t.producer.Flush(10_000); left > 0 {
		return errors.New("records not flushed")
	}
	return nil
}

// TransactAs is Transact with the group metadata md instead of the
// consumer's current one: a member that kept the metadata it had.
func TransactAs(t *Transactor, md *ckafka.ConsumerGroupMetadata, records []pipeline.Record, offsets []pipeline.Offset) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := t.producer.BeginTransaction(); err != nil {
		return err
	}
	for _, r := range records {
		if err := t.produce(ctx, r); err != nil {
			return t.failed(ctx, "producing", err)
		}
	}
	if err := t.producer.SendOffsetsToTransaction(ctx, toKafkaOffsets(offsets), md); err != nil {
		return t.failed(ctx, "sending the consumed offsets", err)
	}
	if err := t.producer.CommitTransaction(ctx); err != nil {
		return t.failed(ctx, "committing", err)
	}
	return nil
}
