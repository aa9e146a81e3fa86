package main

import (
	"context"
	"encoding/json"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

// exactlyOnceTotals: docs/exactly-once.md, "Use".
func exactlyOnceTotals(ctx context.Context, src parallafka.Source[string, Order], tx pipeline.Transactor) error {
	p, err := parallafka.New(src, parallafka.WithTransactions(tx))
	if err != nil {
		return err
	}
	return p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, Order]) error {
		total := apply(m.Value)
		return parallafka.Produce(ctx, m, pipeline.Record{
			Topic: "customer-totals", Key: m.RawKey, Value: encode(total),
		})
	})
}

// confluentTransactor and franzTransactor: docs/exactly-once.md, "Use".
func confluentTransactor(src *kafka.Source[string, Order], brokers, hostname string) (*kafka.Transactor, error) {
	// confluent-kafka-go
	tx, err := kafka.NewTransactor(src, &ckafka.ConfigMap{
		"bootstrap.servers": brokers,
		"transactional.id":  "totals-" + hostname, // stable per instance
	})
	return tx, err // tx.Close() after Consume returned
}

func franzTransactor(src *franz.Source[string, Order], brokers, hostname string) (*franz.Transactor, error) {
	// franz-go
	tx, err := franz.NewTransactor(src, []kgo.Opt{
		kgo.SeedBrokers(brokers),
		kgo.TransactionalID("totals-" + hostname),
	})
	return tx, err // tx.Close() after Consume returned
}

// apply and encode stand for the user's transformation.
func apply(o Order) int64 { return int64(len(o.ID)) }

func encode(total int64) []byte { b, _ := json.Marshal(total); return b }
