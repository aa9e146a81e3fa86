package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// testConfig is a small flow's configuration over src.
func testConfig(src pipeline.Source[string, string], handler pipeline.Handler[string, string]) *Config[string, string] {
	return &Config[string, string]{
		Source: src, Handler: handler, Concurrency: 2, MaxInFlight: 100,
		CommitInterval: 10 * time.Millisecond, ShutdownTimeout: time.Second, RevokeTimeout: time.Second,
		Logger: slog.New(slog.DiscardHandler), ErrorPolicy: func(error) pipeline.ErrorAction { return pipeline.Stop },
	}
}

// brokenSource fails its first Poll.
type brokenSource struct {
	*memsource.Source[string, string]
	err error
}

func (s brokenSource) Poll(time.Duration) (*pipeline.Message[string, string], error) {
	return nil, s.err
}

// PollBatch hides memsource's: a wrapper that overrides Poll must override
// PollBatch too.
func (s brokenSource) PollBatch(_ time.Duration, dst []*pipeline.Message[string, string], _ int, _ int64) ([]*pipeline.Message[string, string], error) {
	return dst, s.err
}

// A source's error reaches the caller in the user's words: no internal
// stage names, and errors.Is finds it.
func TestRunSourceErrorText(t *testing.T) {
	errUnknown := errors.New("kafka: unknown topic")
	src := memsource.New[string, string]()
	src.AddTopic("t", 1)
	cfg := testConfig(brokenSource{Source: src, err: errUnknown}, func(context.Context, *pipeline.Message[string, string]) error { return nil })
	err := Run(context.Background(), cfg, &Stats{})
	if !errors.Is(err, errUnknown) {
		t.Fatalf("Run: %v; want it to wrap %v", err, errUnknown)
	}
	if got, want := err.Error(), "parallafka: kafka: unknown topic"; got != want {
		t.Errorf("Run: %q; want %q", got, want)
	}
}

// A handler's panic is logged with its stack as lines, not as one string of
// escaped newlines.
func TestHandlerPanicStackLogged(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logged, nil))
	dispatch := make(chan job[string, string], 1)
	ends := make(chan handlerEnded[string, string], 1)
	p := &handlerPool[string, string]{
		concurrency: 1, log: log, stats: &Stats{}, dispatch: dispatch, handlerEnd: ends,
		handler: func(context.Context, *pipeline.Message[string, string]) error { panic("bug") },
		collector: &collector[string, string]{policy: func(error) pipeline.ErrorAction { return pipeline.Skip }, failed: make(chan error, 1),
			stats: &Stats{}, log: slog.New(slog.DiscardHandler)},
	}
	dispatch <- job[string, string]{ctx: context.Background(), msg: &pipeline.Message[string, string]{Topic: "t"}}
	close(dispatch)
	if err := p.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var pe *pipeline.PanicError
	if ended := <-ends; !errors.As(ended.done.msg.Err, &pe) {
		t.Fatalf("message error %v; want a *pipeline.PanicError", ended.done.msg.Err)
	}
	var record struct {
		Msg   string
		Stack []string
	}
	if err := json.Unmarshal(logged.Bytes(), &record); err != nil {
		t.Fatalf("the log record %s: %v; want its stack as a list of lines", logged.String(), err)
	}
	if len(record.Stack) < 2 {
		t.Fatalf("stack %q; want one line per line of the stack", record.Stack)
	}
	for _, line := range record.Stack {
		if strings.Contains(line, "\n") {
			t.Fatalf("stack line %q holds a newline", line)
		}
	}
	if !strings.HasPrefix(record.Stack[0], "goroutine ") {
		t.Errorf("stack begins %q; want the goroutine line", record.Stack[0])
	}
}

// UserPause keeps the user's latest wish for the poller, never blocking.
func TestUserPauseLatestWish(t *testing.T) {
	var u UserPause
	u.Set(true)
	u.Set(false)
	u.Set(true)
	select {
	case paused := <-u.edge():
		if !paused {
			t.Fatal("the poller read resume; want the latest wish, pause")
		}
	default:
		t.Fatal("no wish to read")
	}
	select {
	case paused := <-u.edge():
		t.Fatalf("a second wish %v; want only the latest", paused)
	default:
	}
	var none *UserPause
	if none.edge() != nil {
		t.Fatal("a nil UserPause has an edge; want none (never paused)")
	}
}
