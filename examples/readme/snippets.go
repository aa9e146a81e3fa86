package main

// The code blocks of README.md and docs/*.md that are not whole files live
// here, in functions that give them the variables they use, so that the
// build compiles them; snippets_test.go checks that every ```go block of
// the documentation is a run of lines of a Go file of this package (or of
// an example module, compiled by its own test). Edit a snippet here and in
// the document together.

import (
	"context"
	"log/slog"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// Price and Payment are the values of the stage and middleware snippets.
type (
	Price   struct{ Amount float64 }
	Payment struct{ Cents int64 }
)

// consumeOrders: README.md "Batch handlers", docs/batch.md.
func consumeOrders(ctx context.Context, src parallafka.Source[string, Order], db OrderDB) error {
	retry, err := stages.Retry[string, Order](stages.RetryConfig{})
	if err != nil {
		return err
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(8), parallafka.WithMaxBatch(500, 4<<20),
		parallafka.WithAfterHandle("retry", retry))
	if err != nil {
		return err
	}
	return p.ConsumeBatch(ctx, writeOrders(db))
}

// adaptive: docs/adaptive-concurrency.md.
func adaptive(src parallafka.Source[string, Price]) (*parallafka.Parallafka[string, Price], error) {
	p, err := parallafka.New(src,
		parallafka.WithAdaptiveConcurrency(1, 256),
		parallafka.WithObserver(pipeline.ObserverFuncs{
			ConcurrencyLimitChanged: func(n int) { slog.Info("handler limit", "limit", n) },
		}.Observer()),
	)
	return p, err
}

// timeoutMiddleware: docs/stages.md.
func timeoutMiddleware() parallafka.Option {
	timeout := parallafka.WithMiddleware(func(next parallafka.Handler[string, Price]) parallafka.Handler[string, Price] {
		return func(ctx context.Context, msg *parallafka.Message[string, Price]) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return next(ctx, msg)
		}
	})
	return timeout
}

// skipTombstones: docs/stages.md.
func skipTombstones(ctx context.Context, in <-chan *parallafka.Message[string, []byte], out chan<- *parallafka.Message[string, []byte]) error {
	for msg := range in {
		if msg.RawValue == nil {
			msg.Drop()
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func withSkipTombstones(src parallafka.Source[string, []byte]) (*parallafka.Parallafka[string, []byte], error) {
	p, err := parallafka.New(src, parallafka.WithAfterPoll("skip-tombstones", skipTombstones))
	return p, err
}

// paymentsPipeline: docs/stages.md.
func paymentsPipeline(src parallafka.Source[string, Payment], brokers string) error {
	dlq, err := kafka.NewDeadLetterWriter(&ckafka.ConfigMap{"bootstrap.servers": brokers}) // acks=all, idempotent
	if err != nil {
		return err
	}
	defer dlq.Close()
	timeout, err := stages.Timeout[string, Payment](5 * time.Second)
	if err != nil {
		return err
	}
	retry, err := stages.Retry[string, Payment](stages.RetryConfig{
		MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, Jitter: 0.2,
	})
	if err != nil {
		return err
	}
	deadLetter, err := stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{Writer: dlq, Topic: "payments.dlq"})
	if err != nil {
		return err
	}
	p, err := parallafka.New(src,
		// outermost first: a duplicate is dropped before the clock starts
		parallafka.WithMiddleware(stages.Dedupe(stages.DedupeConfig[string, Payment]{}), timeout),
		// AfterHandle stages run in the order given, after every attempt
		parallafka.WithAfterHandle("retry", retry),
		parallafka.WithAfterHandle("dead-letter", deadLetter),
	)
	if err != nil {
		return err
	}
	_ = p
	return nil
}

// outcomes counts what countOutcomes sees (a metrics library's counters in
// a real program).
type counter struct{ n int64 }

func (c *counter) Inc() { c.n++ }

var retries, failures counter

// countOutcomes: docs/stages.md.
func countOutcomes(ctx context.Context, in <-chan *parallafka.Message[string, Payment], out chan<- *parallafka.Message[string, Payment]) error {
	for msg := range in {
		switch {
		case msg.RetryRequested():
			retries.Inc()
		case msg.Err != nil:
			failures.Inc() // after Retry: failed for good
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

var _, _, _, _, _, _ = consumeOrders, adaptive, timeoutMiddleware, withSkipTombstones, paymentsPipeline, countOutcomes

// floodGuarded: docs/controls.md "Dead-letter flood guard".
func floodGuarded(w stages.DeadLetterWriter) (pipeline.Stage[string, Payment], error) {
	cfg := stages.DeadLetterConfig{Writer: w, Topic: "orders.dlq",
		Flood: &stages.FloodGuard{MaxShare: 0.1, Window: 1000, MaxInARow: 50}}
	return stages.DeadLetterQueue[string, Payment](cfg)
}

// floodHold: docs/controls.md "Hold instead of stop".
func floodHold(src parallafka.Source[string, Payment], w stages.DeadLetterWriter) (*parallafka.Parallafka[string, Payment], *stages.FloodGuard, error) {
	guard := &stages.FloodGuard{MaxInARow: 50, Pause: true}
	dlq, err := stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{Writer: w, Topic: "payments.dlq", Flood: guard})
	if err != nil {
		return nil, nil, err
	}
	p, err := parallafka.New(src, parallafka.WithAfterHandle("dead-letter", dlq),
		parallafka.WithHealthCheck(guard.Flooding)) // Health: ErrUnhealthy wrapping ErrDeadLetterFlood
	return p, guard, err
}

// resumeAfterFlood: the same section.
func resumeAfterFlood(guard *stages.FloodGuard) {
	// ... once the cause is fixed (an admin endpoint, say):
	guard.Resume()
}

var _, _ = floodHold, resumeAfterFlood

// holdKeys: docs/controls.md "A poison message holds its key, not its
// partition".
func holdKeys(ctx context.Context, src parallafka.Source[string, Payment], w stages.DeadLetterWriter, handle parallafka.Handler[string, Payment]) error {
	deadLetter, err := stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{
		Writer: w, Topic: "payments.dlq", HoldKey: true, // a dead-lettered message's key is held
	})
	if err != nil {
		return err
	}
	p, err := parallafka.New(src, parallafka.WithAfterHandle("dead-letter", deadLetter))
	if err != nil {
		return err
	}
	return p.Consume(ctx, handle)
}

// releaseKey: docs/controls.md, the same section.
func releaseKey(p *parallafka.Parallafka[string, Payment]) int {
	n := p.ReleaseKey([]byte("customer-42")) // in how many of this member's partitions it was held
	return n
}
