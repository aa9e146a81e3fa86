package engine

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// pollHarness runs a poller over a memsource inside a synctest bubble and
// plays the coordinator: it answers rebalance requests (revokes as told),
// takes the batches and hands back room.
type pollHarness struct {
	t          *testing.T
	src        *memsource.Source[string, string]
	p          *poller[string, string]
	stats      *Stats
	polled     chan pollCycle[string, string]
	room       chan room
	rebalances chan rebalanceRequest
	commits    chan commitRequest
	coordDone  chan struct{}
	commitDone chan struct{}
	draining   chan struct{}
	done       chan error
	got        []*pipeline.Message[string, string]
}

func newPollHarness(t *testing.T, maxInFlight, messages int) *pollHarness {
	h := &pollHarness{
		t: t, src: memsource.New[string, string](), stats: &Stats{},
		polled: make(chan pollCycle[string, string], 4), room: make(chan room, 1),
		rebalances: make(chan rebalanceRequest), commits: make(chan commitRequest),
		coordDone: make(chan struct{}), commitDone: make(chan struct{}), draining: make(chan struct{}),
		done: make(chan error, 1),
	}
	h.src.AddTopic("t", 1)
	for i := range messages {
		h.src.Produce("t", 0, fmt.Sprint("k", i%3), "v")
	}
	h.p = &poller[string, string]{
		pollerEdges: pollerEdges[string, string]{
			polled: h.polled, room: h.room, rebalances: h.rebalances, commits: h.commits,
			coordDone: h.coordDone, commitDone: h.commitDone, draining: h.draining,
		},
		source: h.src, log: slog.New(slog.DiscardHandler), stats: h.stats, maxInFlight: maxInFlight,
		pollTimeout: pollTimeout, pauseAfter: pauseAfter, revokeTimeout: time.Second,
	}
	if err := h.src.Subscribe(h.p); err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- h.p.run(context.Background()) }()
	return h
}

// serveRebalances answers every rebalance request at once until the
// coordinator is done.
func (h *pollHarness) serveRebalances() {
	go func() {
		for {
			select {
			case req := <-h.rebalances:
				req.reply <- nil
			case <-h.coordDone:
				return
			}
		}
	}()
}

// take lets the poller run for d (bubble time) and returns the offsets of
// the batches it sent meanwhile.
func (h *pollHarness) take(d time.Duration) []int64 {
	time.Sleep(d)
	synctest.Wait()
	var offs []int64
	for {
		select {
		case batch := <-h.polled:
			for _, m := range batch.msgs {
				offs = append(offs, m.Offset)
			}
			h.got = append(h.got, batch.msgs...)
		default:
			return offs
		}
	}
}

func (h *pollHarness) stop() {
	close(h.draining)
	if err := <-h.done; err != nil {
		h.t.Errorf("poller: %v", err)
	}
	close(h.coordDone)
	close(h.commitDone)
}

func span(from, to int64) []int64 {
	var s []int64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func equalInt64s(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPollerBackPressure: the poller polls up to its in-flight limit,
// waits pauseAfter for room, then pauses the partitions; room makes it
// hand over the message it holds first (offset order kept), and it
// resumes once a quarter of the limit is free.
func TestPollerBackPressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 8
		h := newPollHarness(t, limit, 40)
		h.serveRebalances()
		defer h.stop()
		tp0 := tp(0)
		if got := h.take(pauseAfter / 2); !equalInt64s(got, span(0, limit)) {
			t.Fatalf("polled %v; want the first %d", got, limit)
		}
		if memctl.Paused(h.src, tp0) {
			t.Fatal("paused before pauseAfter")
		}
		if got := h.take(pauseAfter); len(got) != 0 {
			t.Fatalf("polled %v without room", got)
		}
		if !memctl.Paused(h.src, tp0) || h.stats.Pauses.Load() != 1 {
			t.Fatalf("paused %v, Pauses %d after pauseAfter; want true, 1", memctl.Paused(h.src, tp0), h.stats.Pauses.Load())
		}
		if got := h.stats.Paused(); len(got) != 1 || got[0] != tp0 {
			t.Fatalf("Stats.Paused = %v", got)
		}
		if got := h.take(time.Second); len(got) != 0 {
			t.Fatalf("polled %v while paused", got)
		}
		h.room <- room{msgs: 1} // the held message (polled past the limit) goes first
		if got := h.take(50 * time.Millisecond); !equalInt64s(got, []int64{limit}) {
			t.Fatalf("polled %v; want the held %d", got, limit)
		}
		if !memctl.Paused(h.src, tp0) {
			t.Fatal("resumed with less than a quarter free")
		}
		h.room <- room{msgs: limit / 4}
		got := h.take(50 * time.Millisecond)
		if memctl.Paused(h.src, tp0) {
			t.Fatal("still paused with a quarter free")
		}
		if !equalInt64s(got, span(limit+1, limit+1+limit/4)) {
			t.Fatalf("polled %v after the resume", got)
		}
		h.room <- room{msgs: 100}
		h.take(time.Second)
		var all []int64
		for _, m := range h.got {
			all = append(all, m.Offset)
		}
		if !equalInt64s(all, span(0, 40)) {
			t.Fatalf("all batches %v; want every offset once, in order", all)
		}
		if n := h.stats.Polled.Load(); n != 40 {
			t.Fatalf("Polled = %d; want 40", n)
		}
	})
}

// TestPollerRevokeGiveUp: a revoke that the coordinator does not answer
// within the revoke timeout is given up (the same reply channel), and the
// offsets it then gets are committed before the listener returns.
func TestPollerRevokeGiveUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newPollHarness(t, 8, 0)
		committed := make(chan []claimOffset, 1)
		go func() { // the committer
			for {
				select {
				case req := <-h.commits:
					committed <- req.offsets
					req.reply <- nil
				case <-h.commitDone:
					return
				}
			}
		}()
		req := <-h.rebalances // the assignment, from the first Poll
		if req.kind != rebalanceAssign {
			t.Fatalf("first request %v; want an assignment", req.kind)
		}
		req.reply <- nil
		revoked := make(chan struct{})
		go func() {
			h.src.Revoke(tp(0))
			close(revoked)
		}()
		revoke := <-h.rebalances
		start := time.Now()
		if revoke.kind != rebalanceRevoke {
			t.Fatalf("request %v; want a revoke", revoke.kind)
		}
		giveUp := <-h.rebalances
		if giveUp.kind != rebalanceGiveUp || giveUp.reply != revoke.reply {
			t.Fatalf("request %v after the timeout; want a give-up on the revoke's reply", giveUp.kind)
		}
		if took := time.Since(start); took != h.p.revokeTimeout {
			t.Fatalf("gave up after %v; want %v", took, h.p.revokeTimeout)
		}
		revoke.reply <- []claimOffset{off(0, 3, 1)}
		<-revoked
		if got := offsetMap(<-committed); !mapsEqual(got, map[int32]int64{0: 3}) {
			t.Fatalf("committed %v; want 0: 3", got)
		}
		h.serveRebalances()
		h.stop()
	})
}
