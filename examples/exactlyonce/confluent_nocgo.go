//go:build !cgo

package main

import (
	"errors"
	"log/slog"
)

// defaultClient is franz-go in a build without cgo.
const defaultClient = "franz"

func newMember(client, brokers, group, topic, txnID string, logger *slog.Logger) (*member, error) {
	if client == "franz" {
		return franzMember(brokers, group, topic, txnID, logger)
	}
	return nil, errors.New("-client confluent needs cgo (confluent-kafka-go wraps librdkafka): build with CGO_ENABLED=1, or use -client franz")
}
