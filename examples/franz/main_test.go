package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the example's test if it leaves a goroutine running: the
// example must close what it started, the broker included.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example runs to the end on the embedded broker.
func TestRun(t *testing.T) {
	if err := run("", 300); err != nil {
		t.Fatal(err)
	}
}
