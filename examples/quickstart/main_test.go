package main

import (
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestQuickstart runs the example end to end on a small workload, against
// the embedded broker (or KAFKA_BROKERS when set).
func TestQuickstart(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := run(logger, os.Getenv("KAFKA_BROKERS"), 1000, 20, 3, 7, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
}
