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
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             "localhost:9092",
		"group.id":                      "stonks-autotrader",
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	})
	if err != nil {
		log.Fatal(err)
	}
	src, err := kafka.NewSource(consumer, []string{"ultimate-stonks-watchlist"}, kafka.String, kafka.JSON[StockPrice]())
	if err != nil {
		consumer.Close() // the Source owns the consumer once NewSource succeeded
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
		// Up to 7 messages are handled at the same time;
		// messages with the same key one at a time, in order.
		fmt.Printf("%s is $%.2f\n", msg.Value.TickerSymbol, msg.Value.Price)
		return nil
	}) // Consume commits, leaves the group and closes the source when it returns
	if err != nil {
		log.Fatal(err)
	}
}
