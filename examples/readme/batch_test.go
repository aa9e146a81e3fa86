package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// fakeOrderDB is an OrderDB in memory that refuses the first write of
// every tenth order version, and records the writes of each committed
// transaction in commit order.
type fakeOrderDB struct {
	mu       sync.Mutex
	refused  map[Order]bool // versions refused once already
	upserts  int            // Upsert calls
	written  map[string][]int
	failOnce func(Order) bool
}

func (db *fakeOrderDB) Begin(context.Context) (OrderTx, error) { return &fakeOrderTx{db: db}, nil }

type fakeOrderTx struct {
	db      *fakeOrderDB
	pending []Order
	done    bool
}

func (tx *fakeOrderTx) Upsert(_ context.Context, o Order) error {
	tx.db.mu.Lock()
	defer tx.db.mu.Unlock()
	tx.db.upserts++
	if tx.db.failOnce(o) && !tx.db.refused[o] {
		tx.db.refused[o] = true
		return errors.New("simulated row failure")
	}
	tx.pending = append(tx.pending, o)
	return nil
}

func (tx *fakeOrderTx) Commit() error {
	tx.db.mu.Lock()
	defer tx.db.mu.Unlock()
	for _, o := range tx.pending {
		tx.db.written[o.ID] = append(tx.db.written[o.ID], o.Version)
	}
	tx.done = true
	return nil
}

func (tx *fakeOrderTx) Rollback() error { tx.done = true; return nil }

// The batch example with row failures and the retry stage: every order's
// versions are written exactly once each, in order. A handler that goes on
// writing a key's later messages after an earlier one of the batch failed
// writes version N+1 before the retried N, and writes N+1 again after it.
func TestBatchExampleWritesEachKeyInOrderDespiteFailures(t *testing.T) {
	const orders, versions = 10, 30
	src := memsource.New[string, Order]()
	src.AddTopic("orders", 2)
	for v := 1; v <= versions; v++ {
		for o := range orders {
			id := fmt.Sprintf("order-%d", o)
			src.Produce("orders", int32(o%2), id, Order{ID: id, Version: v, Status: "v" + fmt.Sprint(v)})
		}
	}
	db := &fakeOrderDB{
		refused: map[Order]bool{},
		written: map[string][]int{},
		// about one version in ten fails at its first write
		failOnce: func(o Order) bool { return (o.Version*7+len(o.ID)+int(o.ID[len(o.ID)-1]))%10 == 0 },
	}
	retry, err := stages.Retry[string, Order](stages.RetryConfig{
		MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := parallafka.New(src,
		parallafka.WithMaxConcurrency(4), parallafka.WithMaxBatchMessages(50),
		parallafka.WithLogger(slog.New(slog.DiscardHandler)),
		parallafka.WithAfterHandle("retry", retry))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() { // stop once every message finished
		for ctx.Err() == nil && p.Stats().Finished < orders*versions {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	if err := p.ConsumeBatch(ctx, writeOrders(db)); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats().Finished; got < orders*versions {
		t.Fatalf("handled %d of %d messages within a minute", got, orders*versions)
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if len(db.refused) == 0 {
		t.Fatal("no write failed: the test tests nothing")
	}
	for o := range orders {
		id := fmt.Sprintf("order-%d", o)
		got := db.written[id]
		for i, v := range got {
			if v != i+1 {
				t.Fatalf("%s: versions written in this order: %v; want 1 to %d, each once, in order", id, got, versions)
			}
		}
		if len(got) != versions {
			t.Fatalf("%s: %d versions written, want %d", id, len(got), versions)
		}
	}
	t.Logf("%d writes refused once, %d Upsert calls for %d messages", len(db.refused), db.upserts, orders*versions)
}
