package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
)

type StockPrice struct {
	TickerSymbol string  `json:"ticker"`
	Price        float64 `json:"price"`
}

func main() {
	src, err := consumerForTopic[StockPrice]("ultimate-stonks-watchlist")
	if err != nil {
		log.Fatal(err)
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7))
	if err != nil {
		src.Close() // closes the consumer too
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, StockPrice]) error {
		// This handler code processes up to 7 messages at the same time;
		// messages with the same key, one at a time, in order.
		fmt.Printf("%s is $%.2f\n", msg.Value.TickerSymbol, msg.Value.Price)
		return nil
	}) // Consume closes the source when it returns
	if err != nil {
		log.Fatal(err)
	}
}

func consumerForTopic[T any](topic string) (*kafka.Source[string, T], error) {
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             "localhost:9092",
		"group.id":                      "stonks-autotrader",
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	})
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[T]())
	if err != nil {
		consumer.Close() // the Source owns the consumer only once NewSource succeeded
		return nil, err
	}
	return src, nil
}
