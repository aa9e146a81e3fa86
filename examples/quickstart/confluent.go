//go:build cgo

package main

import (
	"log/slog"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
)

// defaultClient is confluent-kafka-go where cgo is available.
const defaultClient = "confluent"

// confluentSource builds the consumer as an application would, with
// confluent-kafka-go, and wraps it in the Source that Parallafka drives.
func confluentSource(brokers, group, topic string, logger *slog.Logger) (parallafka.Source[string, StockPrice], error) {
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             brokers,
		"group.id":                      group,
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	}, kafka.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[StockPrice](), kafka.WithLogger(logger))
	if err != nil {
		consumer.Close()
		return nil, err
	}
	return src, nil
}
