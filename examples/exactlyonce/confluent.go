//go:build cgo

package main

import (
	"log/slog"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/kafka"
)

// defaultClient is confluent-kafka-go where cgo is available.
const defaultClient = "confluent"

func newMember(client, brokers, group, topic, txnID string, logger *slog.Logger) (*member, error) {
	if client == "franz" {
		return franzMember(brokers, group, topic, txnID, logger)
	}
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             brokers,
		"group.id":                      group,
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	}, kafka.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[Order](), kafka.WithLogger(logger))
	if err != nil {
		consumer.Close()
		return nil, err
	}
	tx, err := kafka.NewTransactor(src, &ckafka.ConfigMap{
		"bootstrap.servers": brokers,
		"transactional.id":  txnID,
	}, kafka.WithLogger(logger))
	if err != nil {
		src.Close()
		return nil, err
	}
	return &member{src: src, tx: tx}, nil
}
