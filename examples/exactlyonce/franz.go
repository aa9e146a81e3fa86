package main

import (
	"log/slog"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/kafka/franz"
)

func franzMember(brokers, group, topic, txnID string, logger *slog.Logger) (*member, error) {
	seeds := kgo.SeedBrokers(strings.Split(brokers, ",")...)
	client, err := franz.NewClient([]kgo.Opt{seeds, kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, franz.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	src, err := franz.NewSource(client, []string{topic}, franz.String, franz.JSON[Order](), franz.WithLogger(logger))
	if err != nil {
		client.Close()
		return nil, err
	}
	tx, err := franz.NewTransactor(src, []kgo.Opt{seeds, kgo.TransactionalID(txnID)}, franz.WithLogger(logger))
	if err != nil {
		src.Close()
		return nil, err
	}
	return &member{src: src, tx: tx}, nil
}
