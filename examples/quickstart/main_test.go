package main

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestQuickstart runs the example end to end on a small workload, against
// the embedded broker (or KAFKA_BROKERS when set), over each client this
// build has.
func TestQuickstart(t *testing.T) {
	clients := []string{"franz"}
	if defaultClient == "confluent" {
		clients = append(clients, "confluent")
	}
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			logger := slog.New(slog.NewTextHandler(io.Discard, nil))
			err := run(logger, client, os.Getenv("KAFKA_BROKERS"), 1000, 20, 3, 7, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestQuickstartUnknownClient: a bad -client is a clear error.
func TestQuickstartUnknownClient(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := run(logger, "sarama", "", 10, 2, 1, 1, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "want confluent or franz") {
		t.Fatalf("got %v", err)
	}
}
