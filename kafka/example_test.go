package kafka_test

import (
	"context"
	"log/slog"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
)

type Price struct {
	Symbol string
	Cents  int64
}

// The consumer comes from NewConsumer, which checks its settings; the source
// goes to parallafka.New, which drives it.
func Example() {
	logger := slog.Default()
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             "localhost:9092",
		"group.id":                      "prices",
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	}, kafka.WithLogger(logger))
	if err != nil {
		logger.Error("consumer", "error", err)
		return
	}
	src, err := kafka.NewSource(consumer, []string{"prices"}, kafka.String, kafka.JSON[Price](), kafka.WithLogger(logger))
	if err != nil {
		_ = consumer.Close()
		logger.Error("source", "error", err)
		return
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7))
	if err != nil {
		_ = src.Close()
		logger.Error("parallafka", "error", err)
		return
	}
	err = p.Consume(context.Background(), func(ctx context.Context, m *parallafka.Message[string, Price]) error {
		logger.Info("price", "symbol", m.Key, "cents", m.Value.Cents)
		return nil
	})
	if err != nil {
		logger.Error("consume", "error", err)
	}
}
