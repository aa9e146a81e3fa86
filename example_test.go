package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// Consume a topic with seven concurrent handlers; prices of one ticker are
// handled one at a time, in order.
func Example() {
	src := memsource.New[string, float64]() // in production: kafka.NewSource(...)
	src.AddTopic("ultimate-stonks-watchlist", 2)
	src.Produce("ultimate-stonks-watchlist", 0, "AAPL", 187.20)
	src.Produce("ultimate-stonks-watchlist", 0, "AAPL", 187.35)
	src.Produce("ultimate-stonks-watchlist", 1, "MSFT", 411.10)

	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7), parallafka.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var handled atomic.Int64
	err = p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, float64]) error {
		// This handler code processes up to 7 messages at the same time.
		if handled.Add(1) == 3 {
			cancel() // a graceful stop: in-flight work finishes and is committed
		}
		return nil
	})
	fmt.Println("handled:", handled.Load(), "error:", err)
	fmt.Println("committed:", p.Stats().Committed)
	// Output:
	// handled: 3 error: <nil>
	// committed: map[ultimate-stonks-watchlist[0]:2 ultimate-stonks-watchlist[1]:1]
}

// Middleware wraps every handling attempt, here with a per-attempt deadline.
func ExampleWithMiddleware() {
	timeout := func(d time.Duration) parallafka.Middleware[string, string] {
		return func(next parallafka.Handler[string, string]) parallafka.Handler[string, string] {
			return func(ctx context.Context, msg *parallafka.Message[string, string]) error {
				ctx, cancel := context.WithTimeout(ctx, d)
				defer cancel()
				return next(ctx, msg)
			}
		}
	}
	src := memsource.New[string, string]()
	_, err := parallafka.New(src, parallafka.WithMiddleware(timeout(time.Second)))
	fmt.Println(err)
	// Output: <nil>
}

// A stage inserted after polling drops messages it does not want; they count
// as finished, so commits move past them.
func ExampleWithAfterPoll() {
	skipTombstones := func(ctx context.Context, in <-chan *parallafka.Message[string, []byte], out chan<- *parallafka.Message[string, []byte]) error {
		for msg := range in {
			if msg.RawValue == nil && msg.Value == nil {
				msg.Drop()
			}
			select {
			case out <- msg: // every message goes on, dropped or not
			case <-ctx.Done():
				return nil
			}
		}
		return nil
	}
	src := memsource.New[string, []byte]()
	_, err := parallafka.New(src, parallafka.WithAfterPoll("skip-tombstones", skipTombstones))
	fmt.Println(err)
	// Output: <nil>
}

// ConsumeBatch hands the handler many messages per call, a key's in offset
// order; a BatchError fails only the messages it names (with a retry stage
// they are handled again, the later messages of their key after them).
func ExampleParallafka_ConsumeBatch() {
	src := memsource.New[string, string]()
	src.AddTopic("orders", 1)
	for _, ev := range []struct{ order, status string }{
		{"o-1", "created"}, {"o-2", "created"}, {"o-1", "paid"}, {"o-2", "paid"}, {"o-1", "shipped"},
	} {
		src.Produce("orders", 0, ev.order, ev.status)
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(1), parallafka.WithMaxBatchMessages(100),
		parallafka.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	table := map[string]string{} // a sink: order → latest status
	var written int
	err = p.ConsumeBatch(ctx, func(ctx context.Context, batch []*parallafka.Message[string, string]) error {
		for _, msg := range batch { // in a transaction, in a real sink
			table[msg.Key] = msg.Value
		}
		if written += len(batch); written == 5 {
			cancel()
		}
		return nil
	})
	fmt.Println("error:", err, "table:", table, "mean batch:", p.Stats().MeanBatchSize)
	// Output: error: <nil> table: map[o-1:shipped o-2:paid] mean batch: 5
}

// Health reports where a Parallafka stands, for liveness and readiness
// probes: nil while it consumes, an error naming its state otherwise
// (ErrNotStarted, ErrStalled...; errors.Is tells them apart).
func ExampleParallafka_Health() {
	src := memsource.New[string, int]()
	p, err := parallafka.New(src, parallafka.WithStallTimeout(30*time.Second))
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Health(context.Background()))
	fmt.Println(errors.Is(p.Health(context.Background()), parallafka.ErrNotStarted))
	// Output:
	// parallafka: not started
	// true
}
