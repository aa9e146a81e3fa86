package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example runs to its OK on the embedded broker (or KAFKA_BROKERS) and
// leaves no goroutine behind.
func TestExample(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), &out, slog.New(slog.DiscardHandler), os.Getenv("KAFKA_BROKERS"), 300, 3, 8)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
}
