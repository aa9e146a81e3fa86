package stages

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/parallafka/parallafka/pipeline"
)

// The router and ack collector in isolation, through their Run methods and
// channels as the pipeline wires them: ns/op and allocs/op are per message
// (each benchmark message allocates one pipeline.Message, as a source does).

type benchMsg = pipeline.Message[string, int]

const benchTopic = "bench"

// benchEnv returns an Env over a fresh tracker with partitions assigned.
func benchEnv(partitions int) (*Env[string, int], []*pipeline.Claim) {
	tracker := pipeline.NewTracker()
	tps := make([]pipeline.TopicPartition, partitions)
	for p := range tps {
		tps[p] = pipeline.TopicPartition{Topic: benchTopic, Partition: int32(p)}
	}
	tracker.Assign(tps)
	claims := make([]*pipeline.Claim, partitions)
	for p, tp := range tps {
		claims[p] = tracker.Claim(tp)
	}
	env := &Env[string, int]{
		Tracker: tracker, Counters: &pipeline.Counters{},
		Logger: slog.New(slog.DiscardHandler), Draining: make(chan struct{}),
	}
	return env, claims
}

// benchFeed polls n messages into in, round robin over the claims' partitions
// with keys from a set of benchKeys, as the poll stage does.
type benchFeed struct {
	claims []*pipeline.Claim
	keys   [][]byte
	next   []int64
}

func newBenchFeed(claims []*pipeline.Claim, keys int) *benchFeed {
	f := &benchFeed{claims: claims, keys: make([][]byte, keys), next: make([]int64, len(claims))}
	for k := range f.keys {
		f.keys[k] = fmt.Appendf(nil, "key-%05d", k)
	}
	return f
}

func (f *benchFeed) message(i int) *benchMsg {
	p := i % len(f.claims)
	m := &benchMsg{Topic: benchTopic, Partition: int32(p), Offset: f.next[p], RawKey: f.keys[i%len(f.keys)]}
	f.next[p]++
	pipeline.Track(f.claims[p], m)
	return m
}

// BenchmarkRouter runs Router.Run between an input channel fed by the
// benchmark and 16 stand-in handlers that finish each message and hand it
// back on Released, as the handler pool and the ack collector do: the cost
// of routing, dispatch and release, hand-offs included, without handling.
func BenchmarkRouter(b *testing.B) {
	for _, mode := range []struct {
		name     string
		ordering Ordering
	}{{"key", OrderByKey}, {"partition", OrderByPartition}, {"unordered", Unordered}} {
		b.Run(mode.name, func(b *testing.B) {
			env, claims := benchEnv(4)
			r := NewRouter(env, mode.ordering, false)
			in, out := make(chan *benchMsg, 16), make(chan *benchMsg, 16)
			done := make(chan error, 1)
			go func() { done <- r.Run(context.Background(), in, out) }()
			var handlers sync.WaitGroup
			for range 16 {
				handlers.Go(func() {
					for m := range out {
						pipeline.Finish(m)
						r.Released <- m
					}
				})
			}
			feed := newBenchFeed(claims, 1000)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				in <- feed.message(i)
			}
			close(in)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			close(out)
			handlers.Wait()
			if n := env.Tracker.InFlight(); n != 0 {
				b.Fatalf("%d messages still in flight", n)
			}
		})
	}
}

// BenchmarkCollector runs Collector.Run on handled messages: it finishes
// each one (offset tracking) and hands it back to the router, whose
// Released channel a stand-in router drains.
func BenchmarkCollector(b *testing.B) {
	env, claims := benchEnv(4)
	r := NewRouter(env, OrderByKey, false)
	c := &Collector[string, int]{Env: env, Router: r, Policy: func(error) ErrorAction { return Skip }, Stop: func(error) {}}
	in := make(chan *benchMsg, 16)
	released := make(chan struct{})
	go func() {
		defer close(released)
		for range b.N {
			<-r.Released
		}
	}()
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background(), in) }()
	feed := newBenchFeed(claims, 1000)
	msgs := make([]*benchMsg, b.N)
	for i := range msgs {
		msgs[i] = feed.message(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for _, m := range msgs {
		in <- m
	}
	<-released
	b.StopTimer()
	close(in)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if n := env.Tracker.InFlight(); n != 0 {
		b.Fatalf("%d messages still in flight", n)
	}
}
