package pipeline_test

import (
	"math/rand/v2"
	"testing"

	"github.com/parallafka/parallafka/pipeline"
)

// Offset tracking, per message: what the poll stage (Track), the router
// (Start) and the ack collector (Finish) do to a partition's bookkeeping,
// and the OffsetWindow underneath. benchWindow messages are in flight.

const benchWindow = 1000

// BenchmarkOffsetWindow adds one offset and finishes one per op, with
// benchWindow offsets pending: in order, in random order within the
// window, and behind a head that never finishes (the window then grows by
// one entry per op, and Finish searches it).
func BenchmarkOffsetWindow(b *testing.B) {
	b.Run("in-order", func(b *testing.B) {
		var w pipeline.OffsetWindow
		for i := range int64(benchWindow) {
			w.Add(i)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range int64(b.N) {
			w.Add(i + benchWindow)
			w.Finish(i)
		}
	})
	b.Run("random", func(b *testing.B) {
		var w pipeline.OffsetWindow
		pending := make([]int64, benchWindow)
		for i := range pending {
			pending[i] = int64(i)
			w.Add(int64(i))
		}
		rng := rand.New(rand.NewPCG(1, 2))
		picks := make([]int, 1<<16)
		for i := range picks {
			picks[i] = rng.IntN(benchWindow)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			j := picks[i&(len(picks)-1)]
			w.Finish(pending[j])
			pending[j] = int64(i + benchWindow)
			w.Add(pending[j])
		}
	})
	b.Run("stuck-head", func(b *testing.B) {
		var w pipeline.OffsetWindow
		w.Add(0) // never finishes
		b.ReportAllocs()
		b.ResetTimer()
		for i := range int64(b.N) {
			w.Add(i + 1)
			w.Finish(i + 1)
		}
		if off, _ := w.Committable(); off != 0 {
			b.Fatalf("committable %d past the stuck head", off)
		}
	})
}

// BenchmarkClaim tracks, starts and finishes one message per op on a
// partition's claim, with benchWindow messages in flight, and asks for the
// committable offset every 1,000 messages as the committer would.
func BenchmarkClaim(b *testing.B) {
	tracker := pipeline.NewTracker()
	tp := pipeline.TopicPartition{Topic: "bench", Partition: 0}
	tracker.Assign([]pipeline.TopicPartition{tp})
	claim := tracker.Claim(tp)
	ring := make([]*pipeline.Message[string, int], benchWindow)
	for i := range ring {
		ring[i] = &pipeline.Message[string, int]{Topic: "bench", Offset: int64(i)}
		pipeline.Track(claim, ring[i])
		pipeline.Start(ring[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m := ring[i%benchWindow]
		pipeline.Finish(m)
		m.Offset += benchWindow
		pipeline.Track(claim, m)
		pipeline.Start(m)
		if i%1000 == 0 {
			claim.Committable()
		}
	}
	b.StopTimer()
	if n := tracker.InFlight(); n != benchWindow {
		b.Fatalf("%d in flight, want %d", n, benchWindow)
	}
}
