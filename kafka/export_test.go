package kafka

import (
	"context"
	"errors"

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
