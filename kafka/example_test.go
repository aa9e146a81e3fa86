package kafka_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

type Price struct {
	Symbol string
	Cents  int64
}

// The consumer comes from NewConsumer, which checks its settings; the source
// goes to parallafka.New, which drives it. The broker here is the embedded
// one of kafkatest (or the one KAFKA_BROKERS names); in an application,
// NewConsumer gets a ConfigMap with your bootstrap.servers and group.id.
func Example() {
	ctx := context.Background()
	cluster, err := kafkatest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("prices")
	if err := cluster.CreateTopic(ctx, topic, 3); err != nil {
		log.Fatal(err)
	}
	var records []kafkatest.Record
	for i, symbol := range []string{"AAPL", "MSFT", "AAPL", "NVDA", "AAPL", "MSFT"} {
		value, _ := json.Marshal(Price{Symbol: symbol, Cents: int64(100 * (i + 1))})
		records = append(records, kafkatest.Record{Key: []byte(symbol), Value: value, Partition: kafkatest.AnyPartition})
	}
	if err := cluster.Produce(ctx, topic, records); err != nil {
		log.Fatal(err)
	}

	// ConsumerConfig holds bootstrap.servers, group.id and settings for
	// quick tests; kafka.NewConsumer refuses auto-commit and fills in the rest.
	consumer, err := kafka.NewConsumer(cluster.ConsumerConfig(kafkatest.UniqueTopic("prices-group")))
	if err != nil {
		log.Fatal(err)
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[Price]())
	if err != nil {
		_ = consumer.Close()
		log.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler) // reaches the source and librdkafka too
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7), parallafka.WithLogger(quiet))
	if err != nil {
		_ = src.Close() // closes the consumer too
		log.Fatal(err)
	}

	var mu sync.Mutex
	seen := map[string][]int64{} // symbol -> prices, in the order handled
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, Price]) error {
		mu.Lock()
		defer mu.Unlock()
		seen[m.Key] = append(seen[m.Key], m.Value.Cents)
		if n := len(seen["AAPL"]) + len(seen["MSFT"]) + len(seen["NVDA"]); n == len(records) {
			stop() // all handled: a graceful stop commits and leaves the group
		}
		return nil
	}) // Consume closes the source when it returns
	if err != nil {
		log.Fatal(err)
	}
	for _, symbol := range slices.Sorted(maps.Keys(seen)) {
		fmt.Println(symbol, seen[symbol])
	}
	// Output:
	// AAPL [100 300 500]
	// MSFT [200 600]
	// NVDA [400]
}

// A Deserializer sees the record's topic and headers, and its bytes: here a
// header says how the value is encoded.
func ExampleDeserializer() {
	var text kafka.Deserializer[string] = func(topic string, headers []pipeline.Header, data []byte) (string, error) {
		for _, h := range headers {
			if h.Key == "content-encoding" && string(h.Value) != "identity" {
				return "", fmt.Errorf("%s: unsupported encoding %q", topic, h.Value)
			}
		}
		return string(data), nil
	}
	// kafka.NewSource(consumer, topics, kafka.String, text) would use it.
	v, err := text("greetings", nil, []byte("hello"))
	fmt.Printf("%q %v\n", v, err)
	v, err = text("greetings", []pipeline.Header{{Key: "content-encoding", Value: []byte("gzip")}}, []byte{0x1f, 0x8b})
	fmt.Printf("%q %v\n", v, err)
	// Output:
	// "hello" <nil>
	// "" greetings: unsupported encoding "gzip"
}
