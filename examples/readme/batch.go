package main

import (
	"context"

	"github.com/parallafka/parallafka"
)

// Order is the value of the batch example's messages: one version of an
// order, keyed by its id.
type Order struct {
	ID      string `json:"id"`
	Version int    `json:"version"`
	Status  string `json:"status"`
}

// OrderDB is what the batch example writes to: a database with
// transactions (database/sql's *sql.DB behind a small adapter, say).
type OrderDB interface {
	Begin(ctx context.Context) (OrderTx, error)
}

// OrderTx is one transaction of an OrderDB.
type OrderTx interface {
	Upsert(ctx context.Context, o Order) error
	Commit() error
	Rollback() error
}

// The README's batch example (README.md, "Batch handlers", and
// docs/batch.md): writeOrders is compiled here, and batch_test.go runs it.

func writeOrders(db OrderDB) parallafka.BatchHandler[string, Order] {
	return func(ctx context.Context, batch []*parallafka.Message[string, Order]) error {
		tx, err := db.Begin(ctx) // one transaction per batch
		if err != nil {
			return err // every message of the batch fails (and is retried)
		}
		defer tx.Rollback()
		var failed parallafka.BatchError[string, Order]
		blocked := map[string]bool{} // keys with a failed message in this batch
		for _, msg := range batch {
			if blocked[msg.Key] {
				continue // comes again after the failed one: writing it now would be out of order
			}
			if err := tx.Upsert(ctx, msg.Value); err != nil {
				failed.Fail(msg, err) // only this one fails
				blocked[msg.Key] = true
			}
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		return failed.Err() // nil if no message failed
	}
}
