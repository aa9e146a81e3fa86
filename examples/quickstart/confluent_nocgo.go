//go:build !cgo

package main

import (
	"errors"
	"log/slog"

	"github.com/parallafka/parallafka"
)

// defaultClient is franz-go in a build without cgo.
const defaultClient = "franz"

func confluentSource(string, string, string, *slog.Logger) (parallafka.Source[string, StockPrice], error) {
	return nil, errors.New("-client confluent needs cgo (confluent-kafka-go wraps librdkafka): build with CGO_ENABLED=1, or use -client franz")
}
