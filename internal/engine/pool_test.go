package engine

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"github.com/parallafka/parallafka/pipeline"
)

// A run is handled in its order on one handler, and comes back in one
// handler end: every message's completion in order (a message of an ended
// claim abandoned, not handled), and the messages for the AfterHandle
// stages sent after that end.
func TestHandlerPoolRun(t *testing.T) {
	for _, stages := range []bool{false, true} {
		name := "without stages"
		if stages {
			name = "with stages"
		}
		t.Run(name, func(t *testing.T) {
			dispatch := make(chan job[string, string], 1)
			ends := make(chan handlerEnded[string, string], 1)
			var handled chan *pipeline.Message[string, string]
			if stages {
				handled = make(chan *pipeline.Message[string, string], 4)
			}
			var order []int64
			errBoom := errors.New("boom")
			p := &handlerPool[string, string]{
				concurrency: 1, log: slog.New(slog.DiscardHandler), stats: &Stats{}, dispatch: dispatch, handlerEnd: ends, handled: handled,
				handler: func(_ context.Context, m *pipeline.Message[string, string]) error {
					order = append(order, m.Offset)
					if m.Offset == 3 {
						return errBoom
					}
					return nil
				},
				collector: &collector[string, string]{policy: func(error) pipeline.ErrorAction { return pipeline.Skip }, failed: make(chan error, 1),
					stats: &Stats{}, log: slog.New(slog.DiscardHandler)},
			}
			ended, cancel := context.WithCancel(context.Background())
			cancel()
			var run []job[string, string]
			for off := range int64(4) {
				ctx := context.Background()
				if off == 1 {
					ctx = ended // its claim ended: not handled
				}
				run = append(run, job[string, string]{ctx: ctx, msg: &pipeline.Message[string, string]{Topic: "t", Offset: off},
					origin: origin[string, string]{offset: off}})
			}
			dispatch <- job[string, string]{run: run, ends: make([]completion[string, string], 0, len(run))}
			close(dispatch)
			if err := p.run(context.Background()); err != nil {
				t.Fatal(err)
			}
			if want := []int64{0, 2, 3}; !slices.Equal(order, want) {
				t.Fatalf("handled %v; want %v, in order, on one handler", order, want)
			}
			end, ok := <-ends
			if !ok {
				t.Fatal("no handler end")
			}
			if _, more := <-ends; more {
				t.Fatal("a second handler end; want one for the run")
			}
			if end.done.msg != nil || len(end.run) != len(run) {
				t.Fatalf("end %+v; want the run's, with its jobs handed back", end)
			}
			var got []int64
			for _, d := range end.settled {
				if d.origin.offset != d.msg.Offset {
					t.Fatalf("completion of %d with origin %d", d.msg.Offset, d.origin.offset)
				}
				got = append(got, d.msg.Offset)
				if d.msg.Offset == 1 && d.verdict != verdictAbandon {
					t.Fatalf("the ended claim's message: verdict %v; want abandoned", d.verdict)
				}
			}
			want := []int64{0, 1, 2, 3}
			var staged []int64
			if stages {
				want = []int64{1} // the others go into the stages, after the end
				for m := range handled {
					staged = append(staged, m.Offset)
				}
				if w := []int64{0, 2, 3}; !slices.Equal(staged, w) {
					t.Fatalf("into the stages %v; want %v", staged, w)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("settled %v; want %v", got, want)
			}
		})
	}
}

// Runs only while the handlers are quick, the concurrency fixed and no key
// chain critical, sharing the ready set among the jobs that may go out.
func TestRunLength(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      dispatchPolicy[string, string]
		ready  int
		length int
	}{
		{"quick, plenty ready", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun}, 1000, maxRun},
		{"quick, a few ready", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun}, 100, 3},
		{"quick, fewer than the jobs", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun}, 20, 1},
		{"not quick yet", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun - 1}, 1000, 1},
		{"a critical chain", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun, criticals: 1}, 1000, 1},
		{"adaptive concurrency", dispatchPolicy[string, string]{concurrency: 16, quick: quickRun, limiter: newLimiter(1, 16)}, 1000, 1},
	} {
		if got := tc.p.runLength(tc.ready); got != tc.length {
			t.Errorf("%s: run length %d; want %d", tc.name, got, tc.length)
		}
	}
}
