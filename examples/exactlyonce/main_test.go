package main

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestExactlyOnce runs the example end to end, against the embedded broker
// (or KAFKA_BROKERS when set), over each client this build has.
func TestExactlyOnce(t *testing.T) {
	clients := []string{"franz"}
	if defaultClient == "confluent" {
		clients = append(clients, "confluent")
	}
	for _, client := range clients {
		t.Run(client, func(t *testing.T) {
			logger := slog.New(slog.NewTextHandler(io.Discard, nil))
			if err := run(logger, client, os.Getenv("KAFKA_BROKERS"), 1500, 20, 3); err != nil {
				t.Fatal(err)
			}
		})
	}
}
