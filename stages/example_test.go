package stages_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// Retry gives a failing message more attempts, with backoff, while its key
// keeps its order; here the second attempt succeeds.
func ExampleRetry() {
	src := memsource.New[string, string]()
	src.AddTopic("payments", 1)
	src.Produce("payments", 0, "alice", "pay 10")
	src.Produce("payments", 0, "alice", "pay 20")

	p, err := parallafka.New(src,
		parallafka.WithLogger(nil),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 3, InitialBackoff: time.Millisecond,
		}))))
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var done atomic.Int32
	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		if m.Value == "pay 10" && m.Attempt == 1 {
			return errors.New("payment service busy")
		}
		fmt.Printf("%s: %s (attempt %d)\n", m.Key, m.Value, m.Attempt)
		if done.Add(1) == 2 {
			stop()
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("retried:", p.Stats().Retried)
	// Output:
	// alice: pay 10 (attempt 2)
	// alice: pay 20 (attempt 1)
	// retried: 1
}
