package main

import (
	"log/slog"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
)

// franzSource builds the client as an application would, with franz-go (pure
// Go), and wraps it in the Source that Parallafka drives.
func franzSource(brokers, group, topic string, logger *slog.Logger) (parallafka.Source[string, StockPrice], error) {
	client, err := franz.NewClient([]kgo.Opt{
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, franz.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	src, err := franz.NewSource(client, []string{topic}, franz.String, franz.JSON[StockPrice](), franz.WithLogger(logger))
	if err != nil {
		client.Close()
		return nil, err
	}
	return src, nil
}
