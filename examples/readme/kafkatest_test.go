package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// README.md's "Testing your code" (from the func line to its end).

func TestEveryPriceIsHandled(t *testing.T) {
	cluster := kafkatest.New(t) // an embedded broker (or KAFKA_BROKERS), closed by t.Cleanup
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	topic := kafkatest.UniqueTopic("prices")
	if err := cluster.CreateTopic(ctx, topic, 3); err != nil {
		t.Fatal(err)
	}
	const n = 100
	if _, err := cluster.ProduceKeyed(ctx, topic, n, 10); err != nil { // n records over 10 keys
		t.Fatal(err)
	}
	consumer, err := kafka.NewConsumer(cluster.ConsumerConfig(kafkatest.UniqueTopic("group")))
	if err != nil {
		t.Fatal(err)
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String)
	if err != nil {
		consumer.Close()
		t.Fatal(err)
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(8))
	if err != nil {
		src.Close()
		t.Fatal(err)
	}
	var handled atomic.Int64
	err = p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, string]) error {
		// call the code under test with msg here
		if handled.Add(1) == n {
			stop() // all handled: Consume commits, leaves the group and returns nil
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := handled.Load(); got != n {
		t.Fatalf("handled %d messages, want %d", got, n)
	}
}
