package main

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBatchSink runs the example end to end on a small workload, flaky
// rows included, against the embedded broker (or KAFKA_BROKERS when set).
func TestBatchSink(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := run(logger, options{
		brokers: os.Getenv("KAFKA_BROKERS"), events: 3000, orders: 300, partitions: 3,
		concurrency: 4, batch: 200, flaky: 0.05, compare: true, dir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
}
