package stages_test

import (
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parallafka/parallafka/pipeline"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running: every stage must return, and wait for what it started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// M is the message type of these tests.
type M = pipeline.Message[string, string]

// wait bounds every wait for something that should happen promptly; it is
// generous, so that no test assumes how fast the machine is.
const wait = 30 * time.Second

const topic = "t"

var quiet = slog.New(slog.DiscardHandler)

func tp(p int32) pipeline.TopicPartition { return pipeline.TopicPartition{Topic: topic, Partition: p} }

func k(s string) []byte { return []byte(s) }

func send[T any](t *testing.T, ch chan<- T, v T) {
	t.Helper()
	select {
	case ch <- v:
	case <-time.After(wait):
		t.Fatal("send timed out")
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatal("receive timed out")
		var zero T
		return zero
	}
}

// eventually polls cond until it holds, failing the test after wait.
func eventually(t *testing.T, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(append([]any{"condition not met in time: "}, msgAndArgs...)...)
		}
		time.Sleep(time.Millisecond)
	}
}

// must returns v, failing with a panic if err is not nil: for stages built
// from configurations the tests know to be valid.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
