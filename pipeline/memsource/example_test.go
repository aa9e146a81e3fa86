package memsource_test

import (
	"context"
	"fmt"
	"log"
	"sync"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// A test of a handler without Kafka: records produced into two partitions,
// consumed by the pipeline, and the offsets it committed read back.
func Example() {
	src := memsource.New[string, string]()
	src.AddTopic("prices", 2)
	src.Produce("prices", 0, "AAPL", "187.20")
	src.Produce("prices", 1, "MSFT", "410.00")
	src.Produce("prices", 0, "AAPL", "187.25")
	src.Produce("prices", 0, "AAPL", "187.15")

	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(4))
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	var aapl []string // one key's values, in the order handled
	handled := 0
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		mu.Lock()
		defer mu.Unlock()
		if m.Key == "AAPL" {
			aapl = append(aapl, m.Value)
		}
		if handled++; handled == 4 {
			stop() // a graceful stop commits what finished
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("AAPL in order:", aapl)
	for _, tp := range []pipeline.TopicPartition{{Topic: "prices", Partition: 0}, {Topic: "prices", Partition: 1}} {
		_, end, _ := src.Watermarks(tp)
		fmt.Printf("%s[%d]: committed %d of %d\n", tp.Topic, tp.Partition, src.Committed(tp), end)
	}
	// Output:
	// AAPL in order: [187.20 187.25 187.15]
	// prices[0]: committed 3 of 3
	// prices[1]: committed 1 of 1
}
