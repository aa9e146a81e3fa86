package main

import (
	"log"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/kafka/franz"
)

// franzSource: README.md "Use it against your own cluster", the source on
// franz-go; the rest of main is the same.
func franzSource() *franz.Source[string, StockPrice] {
	client, err := franz.NewClient([]kgo.Opt{
		kgo.SeedBrokers("localhost:9092"),
		kgo.ConsumerGroup("stonks-autotrader"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	})
	if err != nil {
		log.Fatal(err)
	}
	src, err := franz.NewSource(client, []string{"ultimate-stonks-watchlist"}, franz.String, franz.JSON[StockPrice]())
	if err != nil {
		client.Close() // the Source owns the client once NewSource succeeded
		log.Fatal(err)
	}
	return src
}

var _ = franzSource
