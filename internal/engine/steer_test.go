package engine

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// steeringHarness is a coordHarness with a window and the steering edge.
func steeringHarness(t *testing.T, concurrency, maxInFlight int) (*coordHarness, chan steering) {
	h := newCoordHarness(t, coordOptions{concurrency: concurrency, maxInFlight: maxInFlight})
	return h, h.steer
}

// lastSteering returns the newest steering the coordinator sent, giving it
// turns until it has nothing more to say; ok is false if it sent none.
func lastSteering(h *coordHarness, steer chan steering) (s steering, ok bool) {
	for {
		synctest.Wait()
		select {
		case s, ok = <-steer:
			h.committable() // a turn: a set it could not send goes now
		default:
			return s, ok
		}
	}
}

func partitionsOf(tps []pipeline.TopicPartition) []int32 {
	var ps []int32
	for _, tp := range tps {
		ps = append(ps, tp.Partition)
	}
	slices.Sort(ps)
	return ps
}

// pollKeys polls n messages of partition p from offset from, with key
// key(i) for the i-th.
func pollKeys(h *coordHarness, p int32, from, n int, key func(i int) string) {
	var offKeys []any
	for i := range n {
		offKeys = append(offKeys, from+i, key(i))
	}
	h.poll(p, offKeys...)
}

// TestSteeringReadsAShortHotChain: a key with half of its partition's
// window is a critical chain; while it is long nothing is paused for it;
// once it is short of messages (and the handlers have ready work), every
// other partition that holds a quarter of its share or more is paused, and
// once the chain has messages again they are read again.
func TestSteeringReadsAShortHotChain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Window 120 over 3 partitions: share 40, low below 10.
		// lowWater: max(2×2, 120/16) = 7.
		h, steer := steeringHarness(t, 2, 120)
		h.assign(0, 1, 2)
		// Each cold key twice: as many queued as ready, so no partition
		// has surplus ready work (which would pause it on its own).
		cold := func(p int32) func(int) string { return func(i int) string { return fmt.Sprint("cold", p, "-", i%15) } }
		pollKeys(h, 1, 0, 30, cold(1))
		pollKeys(h, 2, 0, 30, cold(2))
		pollKeys(h, 0, 0, 20, func(int) string { return "hot" })
		s, _ := lastSteering(h, steer)
		if len(s.pause) != 0 || s.starving {
			t.Fatalf("a long chain (19 queued) pauses %v (starving %v); want nothing", partitionsOf(s.pause), s.starving)
		}
		// Run the chain down: hot first (longest backlog), then cold ones.
		hotLeft := 20
		for hotLeft > 5 {
			for _, m := range h.dispatched() {
				if m.Key == "hot" {
					hotLeft--
				}
				h.complete(m, verdictFinish)
			}
		}
		s, ok := lastSteering(h, steer)
		if !ok || !s.starving || !slices.Equal(partitionsOf(s.pause), []int32{1, 2}) {
			t.Fatalf("short chain: steering %+v (sent %v); want partitions 1 and 2 paused, starving", s, ok)
		}
		// Its partition delivers: the chain is long again, and the others
		// are paused no more for it (the cold partitions may pause on their
		// own now, with more ready messages than queued: surplus).
		pollKeys(h, 0, 20, 20, func(int) string { return "hot" })
		s, ok = lastSteering(h, steer)
		if !ok || s.starving || slices.Contains(partitionsOf(s.pause), 0) {
			t.Fatalf("chain refilled: steering %+v (sent %v); want no starving", s, ok)
		}
		h.end()
	})
}

// TestSteeringKeepsLowPartitionsRead: while a chain starves, a partition
// below a quarter of its share of the window is not paused: it may hold a
// hot key nobody has seen yet.
func TestSteeringKeepsLowPartitionsRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, steer := steeringHarness(t, 2, 120)
		h.assign(0, 1, 2)
		pollKeys(h, 1, 0, 30, func(i int) string { return fmt.Sprint("a", i%15) })
		pollKeys(h, 2, 0, 5, func(i int) string { return fmt.Sprint("b", i) }) // low: 5 < 40/4
		pollKeys(h, 0, 0, 8, func(int) string { return "hot" })
		pollKeys(h, 0, 8, 12, func(int) string { return "hot" }) // 19 queued: critical, then run short
		hotLeft := 20
		for hotLeft > 5 {
			for _, m := range h.dispatched() {
				if m.Key == "hot" {
					hotLeft--
				}
				h.complete(m, verdictFinish)
			}
		}
		s, ok := lastSteering(h, steer)
		if !ok || !s.starving || !slices.Equal(partitionsOf(s.pause), []int32{1}) {
			t.Fatalf("steering %+v (sent %v); want only partition 1 paused (2 is low)", s, ok)
		}
		if !slices.Contains(partitionsOf(s.low), 2) {
			t.Fatalf("low partitions %v; want 2 among them", partitionsOf(s.low))
		}
		h.end()
	})
}

// TestSteeringIgnoresEvenKeys: with keys spread evenly (no key has half
// of its partition's window), nothing is critical and nothing is paused
// however short the chains run.
func TestSteeringIgnoresEvenKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, steer := steeringHarness(t, 2, 120)
		h.assign(0, 1)
		for p := range int32(2) {
			pollKeys(h, p, 0, 40, func(i int) string { return fmt.Sprint("k", p, "-", i%3) })
		}
		for range 20 {
			for _, m := range h.dispatched() {
				h.complete(m, verdictFinish)
			}
			if s, _ := lastSteering(h, steer); s.starving {
				t.Fatalf("even keys: starving, pausing %v", partitionsOf(s.pause))
			}
		}
		h.end()
	})
}

// TestSteeringQuickHandlersIgnoreShortChains: while the handlers are
// quick, a key with a few dozen messages queued (a worker descheduled for
// a moment leaves such queues on any workload) does not make its claim
// critical, which would give up the small window; a chain of
// minQuickChain does.
func TestSteeringQuickHandlersIgnoreShortChains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, steer := steeringHarness(t, 2, 2000)
		h.assign(0, 1)
		pollKeys(h, 1, 0, quickRun, func(i int) string { return fmt.Sprint("cold", i) })
		for quick := 0; quick < quickRun; {
			for _, m := range h.dispatched() {
				h.handlerEnd <- handlerEnded[string, string]{quick: true, done: completion[string, string]{msg: m, verdict: verdictFinish}}
				synctest.Wait()
				quick++
			}
		}
		if s, ok := lastSteering(h, steer); !ok || !s.quick {
			h.end()
			t.Fatalf("after %d quick handlers: steering %+v (sent %v); want the small window", quickRun, s, ok)
		}
		hot := func(int) string { return "hot" }
		pollKeys(h, 0, 0, 60, hot)                                           // 59 queued, of 60: a chain, but a short one
		if s, ok := lastSteering(h, steer); ok && (!s.quick || s.starving) { // none sent: unchanged
			h.end()
			t.Fatalf("a chain of 59 with quick handlers: steering %+v; want the small window kept", s)
		}
		pollKeys(h, 0, 60, minQuickChain, hot)
		if s, ok := lastSteering(h, steer); !ok || s.quick {
			h.end()
			t.Fatalf("a chain of %d with quick handlers: steering %+v (sent %v); want the claim critical (the whole window)", 59+minQuickChain, s, ok)
		}
		h.end()
	})
}

// TestPollerPausesOverPartitionsWhileALowOneHasMore: the poller pauses the
// partitions that are over their share while a low partition has messages
// left to read, by the source's watermarks, and resumes them when it has
// none.
func TestPollerPausesOverPartitionsWhileALowOneHasMore(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic("t", 2)
	for i := range 10 {
		src.Produce("t", 0, fmt.Sprint("k", i), "v")
		src.Produce("t", 1, fmt.Sprint("k", i), "v")
	}
	p := &poller[string, string]{
		source: src, log: slog.New(slog.DiscardHandler), stats: &Stats{},
		assigned:   map[pipeline.TopicPartition]bool{tp(0): true, tp(1): true},
		watermarks: src, sourcePaused: map[pipeline.TopicPartition]bool{},
		over: setOf([]pipeline.TopicPartition{tp(1)}), low: setOf([]pipeline.TopicPartition{tp(0)}),
	}
	p.setNext(tp(0), 4) // partition 0 has offsets 4-9 left
	p.checkHungry()
	if err := p.reconcile(); err != nil {
		t.Fatal(err)
	}
	if !memctl.Paused(src, tp(1)) || memctl.Paused(src, tp(0)) {
		t.Fatalf("paused: 0 %v, 1 %v; want only 1 while 0 has messages left", memctl.Paused(src, tp(0)), memctl.Paused(src, tp(1)))
	}
	p.setNext(tp(0), 10) // read to its end
	p.checkHungry()
	if err := p.reconcile(); err != nil {
		t.Fatal(err)
	}
	if memctl.Paused(src, tp(1)) {
		t.Fatal("partition 1 still paused after the low partition was read to its end")
	}
	// A source without watermarks: nothing is hungry.
	p.watermarks = nil
	p.setNext(tp(0), 4)
	p.checkHungry()
	if p.hungry {
		t.Fatal("hungry without watermarks")
	}
}

// TestReadyPromote: a fresh message promoted goes by its backlog, ahead of
// older fresh ones with none; the others keep their order.
func TestReadyPromote(t *testing.T) {
	var r ready[string, string]
	for seq := range uint64(5) {
		r.pushFresh(entry[string, string]{seq: seq + 1, msg: &pipeline.Message[string, string]{Offset: int64(seq)}})
	}
	if r.promote(func(e *entry[string, string]) bool { return e.msg.Offset == 9 }, 16) {
		t.Fatal("promoted a message that is not there")
	}
	if !r.promote(func(e *entry[string, string]) bool { return e.msg.Offset == 3 }, 16) {
		t.Fatal("did not promote offset 3")
	}
	backlog := func(e *entry[string, string]) int { return e.backlog }
	var got []int64
	for r.len() > 0 {
		got = append(got, r.pop(backlog).msg.Offset)
	}
	if want := []int64{3, 0, 1, 2, 4}; !slices.Equal(got, want) {
		t.Fatalf("popped %v; want %v", got, want)
	}
}

// TestReadyPromoteAgain: a message in the later heap promoted with a
// larger backlog moves ahead of those with smaller ones.
func TestReadyPromoteAgain(t *testing.T) {
	var r ready[string, string]
	for i, b := range []int{40, 30, 20, 16} {
		r.pushLater(entry[string, string]{seq: uint64(i + 1), backlog: b, msg: &pipeline.Message[string, string]{Offset: int64(i)}})
	}
	hot := func(e *entry[string, string]) bool { return e.msg.Offset == 3 }
	if !r.promote(hot, 8) || !r.promote(hot, 64) {
		t.Fatal("did not find offset 3 in the later heap")
	}
	backlog := func(e *entry[string, string]) int { return e.backlog }
	var got []int64
	for r.len() > 0 {
		got = append(got, r.pop(backlog).msg.Offset)
	}
	if want := []int64{3, 0, 1, 2}; !slices.Equal(got, want) {
		t.Fatalf("popped %v; want %v (a smaller backlog leaves it where it is, a larger one moves it up)", got, want)
	}
}
