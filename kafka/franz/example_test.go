package franz_test

import (
	"context"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
)

type price struct {
	Ticker string  `json:"ticker"`
	Cents  float64 `json:"cents"`
}

// Consume a topic with franz-go, eight handlers at a time, each ticker in
// order. Swap kgo.Balancers(kgo.RangeBalancer()) in for eager rebalancing, or
// kgo.ServerSideBalancer() for the KIP-848 consumer protocol.
func Example() {
	logger := slog.Default()
	client, err := franz.NewClient([]kgo.Opt{
		kgo.SeedBrokers("localhost:9092"),
		kgo.ConsumerGroup("prices"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, franz.WithLogger(logger))
	if err != nil {
		logger.Error("client", "error", err)
		return
	}
	src, err := franz.NewSource(client, []string{"prices"}, franz.String, franz.JSON[price]())
	if err != nil {
		client.Close()
		logger.Error("source", "error", err)
		return
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(8), parallafka.WithLogger(logger))
	if err != nil {
		_ = src.Close() // closes the client too
		logger.Error("pipeline", "error", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, price]) error {
		logger.Info("price", "ticker", m.Key, "cents", m.Value.Cents)
		return nil
	}) // Consume closes the source when it returns
	if err != nil {
		logger.Error("consume", "error", err)
	}
}
