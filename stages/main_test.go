package stages_test

import (
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
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

// newEnv returns an Env over src (nil for stages that do not use the source)
// with a fresh tracker and counters, and a function that begins draining.
func newEnv(src pipeline.Source[string, string]) (*stages.Env[string, string], func()) {
	draining := make(chan struct{})
	env := &stages.Env[string, string]{
		Source: src, Tracker: pipeline.NewTracker(), Counters: &pipeline.Counters{},
		Logger: quiet, Draining: draining,
	}
	return env, func() { close(draining) }
}

// newMsg returns a freshly polled message of partition p, tracked under the
// partition's claim (assigned first if needed).
func newMsg(env *stages.Env[string, string], p int32, offset int64, key []byte) *M {
	c := env.Tracker.Claim(tp(p))
	if c == nil {
		env.Tracker.Assign([]pipeline.TopicPartition{tp(p)})
		c = env.Tracker.Claim(tp(p))
	}
	m := &M{Topic: topic, Partition: p, Offset: offset, Key: string(key), RawKey: key}
	pipeline.Track(c, m)
	return m
}

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
