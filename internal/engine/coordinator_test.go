package engine

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// coordHarness runs a coordinator on its own goroutine inside a synctest
// bubble and plays every stage around it: the poller (polled, room,
// rebalances), the handler pool (dispatch, handlerEnd) and the committer
// (offsets, final). Each step ends in synctest.Wait, so when it returns the
// coordinator has done everything the step made it do and waits in its
// select: what is on dispatch then is all it will dispatch.
type coordHarness struct {
	t     *testing.T
	c     *coordinator[string, string]
	stats *Stats

	polled     chan pollCycle[string, string]
	dispatch   chan job[string, string]
	handlerEnd chan handlerEnded[string, string]
	room       chan room
	rebalances chan rebalanceRequest
	offsets    chan offsetsQuery
	final      chan []claimOffset
	queries    chan revokedQuery
	draining   chan struct{}
	steer      chan steering // with coordOptions.maxInFlight

	cancel     context.CancelFunc
	done       chan struct{}
	endsClosed bool
	msgs       map[pipeline.Offset]*pipeline.Message[string, string]
	ctxs       map[*pipeline.Message[string, string]]context.Context // each dispatched message's handler context
}

type coordOptions struct {
	concurrency  int
	adaptiveMin  int // adaptive concurrency between adaptiveMin and concurrency; 0: fixed
	ordering     Ordering
	orderNilKeys bool
	batch        BatchLimits // batch mode (see batch_test.go)
	maxInFlight  int         // > 0: a window, and poll steering on h.steer
	heldTTL      time.Duration
	releases     *HeldKeyControl
	observer     pipeline.Observer
}

// newCoordHarness must be called inside synctest.Test. The coordinator's
// edges are sized as newFlow sizes them.
func newCoordHarness(t *testing.T, o coordOptions) *coordHarness {
	h := &coordHarness{
		t: t, stats: &Stats{},
		polled:     make(chan pollCycle[string, string], 4),
		dispatch:   make(chan job[string, string], 2*o.concurrency),
		handlerEnd: make(chan handlerEnded[string, string], 2*o.concurrency),
		room:       make(chan room, 1),
		rebalances: make(chan rebalanceRequest),
		offsets:    make(chan offsetsQuery),
		final:      make(chan []claimOffset, 1),
		queries:    make(chan revokedQuery),
		draining:   make(chan struct{}),
		done:       make(chan struct{}),
		msgs:       make(map[pipeline.Offset]*pipeline.Message[string, string]),
		ctxs:       make(map[*pipeline.Message[string, string]]context.Context),
	}
	if o.maxInFlight > 0 {
		h.steer = make(chan steering, 1)
	}
	h.c = newCoordinator(coordinatorConfig{
		concurrency: o.concurrency, minConcurrency: o.adaptiveMin, maxInFlight: o.maxInFlight,
		ordering: o.ordering, orderNilKeys: o.orderNilKeys, batch: o.batch,
		stats: h.stats, log: slog.New(slog.DiscardHandler),
		heldTTL: o.heldTTL, releases: o.releases, obs: testObserver(o.observer),
	}, coordinatorEdges[string, string]{
		polled: h.polled, dispatch: h.dispatch, handlerEnd: h.handlerEnd, room: h.room, steer: h.steer,
		rebalances: h.rebalances, offsets: h.offsets, final: h.final, queries: h.queries,
		drainingCh: h.draining,
	})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		if err := h.c.run(ctx); err != nil {
			t.Errorf("coordinator: %v", err)
		}
	}()
	t.Cleanup(cancel)
	return h
}

// testObserver is the engine's observer of o, as newFlow makes it.
func testObserver(o pipeline.Observer) observer {
	obs := observer{o: o, log: slog.New(slog.DiscardHandler)}
	obs.throttle, _ = o.(pipeline.ThrottleObserver)
	obs.holds, _ = o.(pipeline.KeyHoldObserver)
	return obs
}

func tp(p int32) pipeline.TopicPartition { return pipeline.TopicPartition{Topic: "t", Partition: p} }

// msg makes a message of partition p at offset off with key (nil for "").
func (h *coordHarness) msg(p int32, off int64, key string) *pipeline.Message[string, string] {
	m := &pipeline.Message[string, string]{Topic: "t", Partition: p, Offset: off, Key: key}
	if key != "" {
		m.RawKey = []byte(key)
	}
	h.msgs[pipeline.Offset{TopicPartition: tp(p), Offset: off}] = m
	return m
}

// get returns the latest message made at p, off.
func (h *coordHarness) get(p int32, off int64) *pipeline.Message[string, string] {
	m := h.msgs[pipeline.Offset{TopicPartition: tp(p), Offset: off}]
	if m == nil {
		h.t.Fatalf("no message at %d/%d", p, off)
	}
	return m
}

// poll sends one poll cycle: pairs of offset and key of partition p.
func (h *coordHarness) poll(p int32, offKeys ...any) []*pipeline.Message[string, string] {
	var batch []*pipeline.Message[string, string]
	for i := 0; i < len(offKeys); i += 2 {
		batch = append(batch, h.msg(p, int64(offKeys[i].(int)), offKeys[i+1].(string)))
	}
	h.polled <- cycleOf(batch)
	synctest.Wait()
	return batch
}

// dispatched takes what the coordinator dispatched since the last look.
func (h *coordHarness) dispatched() []*pipeline.Message[string, string] {
	var out []*pipeline.Message[string, string]
	for {
		select {
		case j, ok := <-h.dispatch:
			if !ok {
				return out
			}
			for _, j := range jobMessages(j) {
				h.ctxs[j.msg] = j.ctx
				out = append(out, j.msg)
			}
		default:
			return out
		}
	}
}

// jobMessages is a single-message job, or a run's jobs.
func jobMessages[K, V any](j job[K, V]) []job[K, V] {
	if j.run != nil {
		return j.run
	}
	return []job[K, V]{j}
}

// expectDispatched checks that exactly these offsets (of any partition)
// were dispatched since the last look, in this order.
func (h *coordHarness) expectDispatched(offsets ...int64) {
	h.t.Helper()
	var got []int64
	for _, m := range h.dispatched() {
		got = append(got, m.Offset)
	}
	if !slices.Equal(got, offsets) {
		h.t.Fatalf("dispatched offsets %v; want %v", got, offsets)
	}
}

func (h *coordHarness) complete(m *pipeline.Message[string, string], v verdict) {
	h.handlerEnd <- handlerEnded[string, string]{done: completion[string, string]{msg: m, verdict: v}}
	synctest.Wait()
}

func (h *coordHarness) finish(p int32, off int64) { h.complete(h.get(p, off), verdictFinish) }

func (h *coordHarness) rebalance(kind rebalanceKind, tps ...pipeline.TopicPartition) chan []claimOffset {
	reply := make(chan []claimOffset, 1)
	h.rebalances <- rebalanceRequest{kind: kind, partitions: tps, reply: reply}
	synctest.Wait()
	return reply
}

func (h *coordHarness) assign(ps ...int32) {
	h.t.Helper()
	var tps []pipeline.TopicPartition
	for _, p := range ps {
		tps = append(tps, tp(p))
	}
	if _, ok := replied(h.rebalance(rebalanceAssign, tps...)); !ok {
		h.t.Fatal("assign not answered")
	}
}

// assignCommitted assigns partitions with their committed offsets, as a
// source read them.
func (h *coordHarness) assignCommitted(committed ...pipeline.Offset) {
	h.t.Helper()
	var tps []pipeline.TopicPartition
	for _, off := range committed {
		tps = append(tps, off.TopicPartition)
	}
	reply := make(chan []claimOffset, 1)
	h.rebalances <- rebalanceRequest{kind: rebalanceAssign, partitions: tps, committed: committed, reply: reply}
	synctest.Wait()
	if _, ok := replied(reply); !ok {
		h.t.Fatal("assign not answered")
	}
}

// replied returns a reply if there is one.
func replied(reply chan []claimOffset) ([]claimOffset, bool) {
	select {
	case offs := <-reply:
		return offs, true
	default:
		return nil, false
	}
}

// committable asks as the committer does between commits.
func (h *coordHarness) committable() map[int32]int64 { return offsetMap(h.committableOffsets()) }

func (h *coordHarness) committableOffsets() []claimOffset {
	reply := make(chan []claimOffset, 1)
	h.offsets <- offsetsQuery{reply: reply}
	return <-reply
}

func offsetMap(offs []claimOffset) map[int32]int64 {
	m := make(map[int32]int64)
	for _, o := range offs {
		if o.Topic != "t" {
			panic("topic " + o.Topic)
		}
		m[o.Partition] = o.Offset.Offset
	}
	return m
}

func (h *coordHarness) expectCommittable(want map[int32]int64) {
	h.t.Helper()
	if got := h.committable(); !mapsEqual(got, want) {
		h.t.Fatalf("committable %v; want %v", got, want)
	}
}

func mapsEqual(a, b map[int32]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// takeRoom returns the in-flight slots freed since the last look. The
// coordinator publishes a count only while the edge is empty, and the
// rest on its next turn: after each count taken it is given a turn (a
// committer's question), until nothing more comes.
func (h *coordHarness) takeRoom() int {
	synctest.Wait()
	n := 0
	for {
		select {
		case k := <-h.room:
			n += k.msgs
			h.committable()
			synctest.Wait()
		default:
			return n
		}
	}
}

func (h *coordHarness) revokedChannel(p int32) <-chan struct{} {
	q := revokedQuery{tp: tp(p), reply: make(chan (<-chan struct{}), 1)}
	h.queries <- q
	return <-q.reply
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// stop ends the coordinator as the flow does on a hard stop: the context is
// cancelled, and the pool hands back what was out and closes handlerEnd. It
// returns the final offsets.
func (h *coordHarness) stop() map[int32]int64 {
	h.cancel()
	synctest.Wait()
	if h.c.batching() { // batch mode: the pool ends each batch
		for _, b := range h.batches() {
			ended := handlerEnded[string, string]{}
			for _, m := range b {
				ended.settled = append(ended.settled, completion[string, string]{msg: m, verdict: verdictAbandon})
			}
			h.handlerEnd <- ended
		}
		h.closeHandlerEnd()
		<-h.done
		return offsetMap(<-h.final)
	}
	for _, m := range h.dispatched() {
		h.handlerEnd <- handlerEnded[string, string]{done: completion[string, string]{msg: m, verdict: verdictAbandon}}
	}
	h.closeHandlerEnd()
	<-h.done
	return offsetMap(<-h.final)
}

// closeHandlerEnd closes handlerEnd as the pool does once its workers
// ended.
func (h *coordHarness) closeHandlerEnd() {
	if !h.endsClosed {
		h.endsClosed = true
		close(h.handlerEnd)
	}
}

// end makes the coordinator return if a test left it running (a failed
// one too: it runs deferred), so that the bubble ends.
func (h *coordHarness) end() {
	if !isDone(h.done) {
		h.stop()
	}
}

func coordTest(t *testing.T, o coordOptions, body func(h *coordHarness)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		h := newCoordHarness(t, o)
		defer h.end()
		body(h)
	})
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestCoordinatorSameKeyOneAtATime(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a")
		h.expectDispatched(0)
		if q := h.stats.Queued.Load(); q != 2 {
			t.Fatalf("Queued = %d; want 2", q)
		}
		h.finish(0, 0)
		h.expectDispatched(1)
		h.finish(0, 1)
		h.expectDispatched(2)
		h.finish(0, 2)
		h.expectDispatched()
		h.expectCommittable(map[int32]int64{0: 3})
		if n, q := h.stats.InFlight.Load(), h.stats.Queued.Load(); n != 0 || q != 0 {
			t.Fatalf("InFlight, Queued = %d, %d; want 0, 0", n, q)
		}
	})
}

func TestCoordinatorDifferentKeysAtOnce(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "b", 2, "c")
		h.poll(1, 0, "a") // the same key in another partition is another queue
		h.expectDispatched(0, 1, 2, 0)
	})
}

// TestCoordinatorDispatchLimit: while a message waits behind a busy key,
// no more messages are out than there are handlers, and one coming back
// lets exactly one more go; otherwise (or with quick handlers) as many
// again are queued for the handlers (dispatchLimit).
func TestCoordinatorDispatchLimit(t *testing.T) {
	t.Run("a key waits", func(t *testing.T) {
		coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
			h.assign(0)
			h.poll(0, 0, "a", 1, "a", 2, "b", 3, "c", 4, "d", 5, "e")
			h.expectDispatched(0, 2)
			h.finish(0, 2)
			h.expectDispatched(3)
			h.finish(0, 3)
			h.expectDispatched(4)
			// a's next message is ready and nothing waits any more: the
			// limit is two rounds, oldest first.
			h.finish(0, 0)
			h.expectDispatched(1, 5)
		})
	})
	t.Run("no key waits", func(t *testing.T) {
		coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
			h.assign(0)
			h.poll(0, 0, "a", 1, "b", 2, "c", 3, "d", 4, "e", 5, "f")
			h.expectDispatched(0, 1, 2, 3)
			h.finish(0, 1)
			h.expectDispatched(4)
			h.poll(0, 6, "a") // now a key waits: back to one per handler
			h.finish(0, 0)    // frees a: 6 is ready, nothing waits
			h.expectDispatched(5)
			h.finish(0, 2)
			h.expectDispatched(6)
		})
	})
}

// TestCoordinatorAdaptiveLimit: with adaptive concurrency the coordinator
// hands out no more messages than the limit allows (no second round, even
// with nothing waiting behind a key), and follows the limit as handler
// calls move it: up after a window of flat latency, down after one with a
// failure.
func TestCoordinatorAdaptiveLimit(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 8, adaptiveMin: 2}, func(h *coordHarness) {
		h.assign(0)
		var offKeys []any
		for i := range 100 {
			offKeys = append(offKeys, i, fmt.Sprintf("k%d", i))
		}
		h.poll(0, offKeys...)
		out := h.dispatched()
		if len(out) != 2 || h.stats.ConcurrencyLimit.Load() != 2 {
			h.t.Fatalf("dispatched %d at limit %d; want 2 at 2", len(out), h.stats.ConcurrencyLimit.Load())
		}
		clock := time.Now()
		// finish completes the oldest message out with a call of 1 ms.
		finish := func(failed bool) {
			m := out[0]
			out = out[1:]
			clock = clock.Add(minWindowTime / minWindow)
			h.handlerEnd <- handlerEnded[string, string]{done: completion[string, string]{msg: m, verdict: verdictFinish},
				call: handlerCall{ended: clock, took: time.Millisecond, failed: failed, ran: true}}
			synctest.Wait()
			out = append(out, h.dispatched()...)
		}
		for range minWindow + 1 { // one window of flat latency: slow start doubles
			finish(false)
		}
		if len(out) != 4 || h.stats.ConcurrencyLimit.Load() != 4 {
			h.t.Fatalf("%d out at limit %d; want 4 at 4", len(out), h.stats.ConcurrencyLimit.Load())
		}
		for i := range minWindow + 1 { // a window with a failed call: ×0.9, 3
			finish(i == 0)
		}
		if h.stats.ConcurrencyLimit.Load() != 3 {
			h.t.Fatalf("limit %d after a failure; want 3", h.stats.ConcurrencyLimit.Load())
		}
		if len(out) != 3 {
			h.t.Fatalf("%d out: the window's last call came back and none replaced it; want 3", len(out))
		}
		finish(false) // one back, one out
		if len(out) != 3 {
			h.t.Fatalf("%d out at limit 3", len(out))
		}
	})
}

// TestCoordinatorQuickRaisesLimit: quickRun quick handlers in a row lift
// the limit to two rounds even while a key waits; a slow one lowers it.
func TestCoordinatorQuickRaisesLimit(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		offKeys := []any{0, "a", 1, "a"} // 1 waits behind 0 for the whole test
		for i := 2; i < quickRun+8; i++ {
			offKeys = append(offKeys, i, fmt.Sprint("k", i))
		}
		h.poll(0, offKeys...)
		h.expectDispatched(0, 2)
		quick := func(off int64) {
			h.handlerEnd <- handlerEnded[string, string]{done: completion[string, string]{msg: h.get(0, off), verdict: verdictFinish}, quick: true}
			synctest.Wait()
		}
		cur := int64(2)
		for range quickRun - 1 {
			quick(cur)
			cur++
			h.expectDispatched(cur)
		}
		quick(cur) // the quickRun-th in a row: two rounds
		h.expectDispatched(cur+1, cur+2, cur+3)
		h.finish(0, cur+1) // slow: one round again, and three are out
		h.expectDispatched()
		h.finish(0, cur+2)
		h.expectDispatched()
		h.finish(0, cur+3)
		h.expectDispatched(cur + 4)
	})
}

// TestCoordinatorReleasedKeyFirst: a busy key's next message, older than
// the messages polled after it, goes before them (oldest first).
func TestCoordinatorReleasedKeyFirst(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 1}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a", 3, "b", 4, "c")
		h.expectDispatched(0)
		h.finish(0, 0)
		h.expectDispatched(1) // before 3 and 4, ready since the poll
		h.finish(0, 1)        // nothing waits now: two rounds, oldest first
		h.expectDispatched(2, 3)
		h.finish(0, 2)
		h.expectDispatched(4)
	})
}

func TestCoordinatorOrderByPartition(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4, ordering: OrderByPartition}, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "b", 2, "")
		h.poll(1, 0, "a", 1, "b")
		h.expectDispatched(0, 0) // one per partition
		h.finish(0, 0)
		h.expectDispatched(1)
		h.finish(1, 0)
		h.expectDispatched(1)
		h.finish(0, 1)
		h.expectDispatched(2)
	})
}

func TestCoordinatorUnordered(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2, ordering: Unordered}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a", 3, "", 4, "a")
		h.expectDispatched(0, 1, 2, 3) // nothing ever waits: two rounds
		h.finish(0, 2)
		h.expectDispatched(4)
	})
}

func TestCoordinatorNilKeys(t *testing.T) {
	t.Run("unordered by default", func(t *testing.T) {
		coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
			h.assign(0)
			h.poll(0, 0, "", 1, "", 2, "a", 3, "")
			h.expectDispatched(0, 1, 2, 3)
		})
	})
	t.Run("orderNilKeys", func(t *testing.T) {
		coordTest(t, coordOptions{concurrency: 4, orderNilKeys: true}, func(h *coordHarness) {
			h.assign(0)
			h.poll(0, 0, "", 1, "", 2, "a", 3, "")
			h.expectDispatched(0, 2) // one keyless queue per partition
			h.finish(0, 0)
			h.expectDispatched(1)
			h.finish(0, 1)
			h.expectDispatched(3)
		})
	})
}

// TestCoordinatorRetryKeepsKey: a retried message goes out again with its
// key held; the next message with the key waits until it finished.
func TestCoordinatorRetryKeepsKey(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a")
		h.expectDispatched(0)
		h.complete(h.get(0, 0), verdictRetry)
		h.expectDispatched(0)
		if r := h.stats.Retried.Load(); r != 1 {
			t.Fatalf("Retried = %d; want 1", r)
		}
		h.expectCommittable(map[int32]int64{})
		h.finish(0, 0)
		h.expectDispatched(1)
		h.finish(0, 1)
		h.expectCommittable(map[int32]int64{0: 2})
	})
}

// TestCoordinatorRetryBeforeNewer: a retry goes before messages polled
// after it.
func TestCoordinatorRetryBeforeNewer(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 1}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b")
		h.expectDispatched(0)
		h.complete(h.get(0, 0), verdictRetry)
		h.expectDispatched(0)
	})
}

// TestCoordinatorRetryWhileStopping: a retry of a stopping claim's message
// is abandoned, with its key's queue.
func TestCoordinatorRetryWhileStopping(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 1}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "a")
		h.expectDispatched(0)
		reply := h.rebalance(rebalanceRevoke, tp(0)) // 1 and 2 are abandoned
		h.complete(h.get(0, 0), verdictRetry)
		h.expectDispatched()
		offs, ok := replied(reply)
		if !ok || len(offs) != 0 {
			t.Fatalf("revoke answered %v, %v; want nothing committable, at once", offs, ok)
		}
		if r := h.stats.Retried.Load(); r != 0 {
			t.Fatalf("Retried = %d; want 0", r)
		}
	})
}

// TestCoordinatorAbandonDropsKeyQueue: an abandoned message takes its key's
// queue with it, never commits, and holds its partition's commit.
func TestCoordinatorAbandonDropsKeyQueue(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 1}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a", 3, "b")
		h.expectDispatched(0)
		h.complete(h.get(0, 0), verdictAbandon)
		h.expectDispatched(3)
		h.finish(0, 3)
		h.expectDispatched()
		h.expectCommittable(map[int32]int64{0: 0}) // offset 0 holds the commit (3 is in its map)
		if n, q := h.stats.InFlight.Load(), h.stats.Queued.Load(); n != 0 || q != 0 {
			t.Fatalf("InFlight, Queued = %d, %d; want 0, 0", n, q)
		}
		// The key is free again: a newer message with it starts.
		h.poll(0, 4, "a")
		h.expectDispatched(4)
	})
}

// TestCoordinatorRevoke: a revoke answers once the claim's handlers came
// back, with the committable offset and the offset map of what finished
// above it; the backlog (queued and ready alike) is abandoned at once,
// nothing more is dispatched for the claim.
func TestCoordinatorRevoke(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0, 1)
		revoked := h.revokedChannel(0)
		if isClosed(revoked) {
			t.Fatal("revoked channel closed while assigned")
		}
		h.poll(0, 0, "a", 1, "a", 2, "b", 3, "c", 4, "d", 5, "a")
		h.expectDispatched(0, 2)
		h.finish(0, 2)
		h.expectDispatched(3) // 1 waits behind a
		reply := h.rebalance(rebalanceRevoke, tp(0))
		if !isClosed(revoked) {
			t.Fatal("revoked channel open after the revoke")
		}
		if !isClosed(h.revokedChannel(0)) {
			t.Fatal("a stopping claim's revoked channel is open")
		}
		if _, ok := replied(reply); ok {
			t.Fatal("revoke answered with messages in flight")
		}
		if q := h.stats.Queued.Load(); q != 0 {
			t.Fatalf("Queued = %d; want 0 (the backlog is abandoned)", q)
		}
		h.poll(0, 6, "e")     // polled after the revoke began: dropped
		h.poll(1, 0, "a")     // another partition goes on
		h.expectDispatched(0) // partition 1
		h.finish(0, 3)
		if _, ok := replied(reply); ok {
			t.Fatal("revoke answered with a handler running")
		}
		h.finish(0, 0)
		offs, ok := replied(reply)
		if !ok {
			t.Fatal("revoke not answered once its handlers came back")
		}
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{0: 1}) {
			t.Fatalf("revoke offsets %v; want 0: 1", got)
		}
		if len(offs) != 1 || offs[0].claim == 0 {
			t.Fatalf("revoke offsets %+v: want one, with its claim", offs)
		}
		if want := []offsetmap.Run{{From: 2, To: 4}}; !slices.Equal(offs[0].runs, want) {
			t.Fatalf("offset map %v; want %v (2 and 3 finished above 1)", offs[0].runs, want)
		}
		h.expectDispatched() // 1, 4 and 5 were abandoned
		if n := h.stats.InFlight.Load(); n != 1 {
			t.Fatalf("InFlight = %d; want 1 (partition 1's message)", n)
		}
		h.expectCommittable(map[int32]int64{}) // partition 1 not past its start
		h.finish(1, 0)
		h.expectCommittable(map[int32]int64{1: 1})
	})
}

// TestCoordinatorInheritedMap: a claim assigned with an offset map skips
// the offsets it marks finished (they count as finished at once), commits
// past them, and carries the part of the map not yet polled into its own
// commits.
func TestCoordinatorInheritedMap(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		text, kept := offsetmap.Encode(10, []offsetmap.Run{{From: 11, To: 13}, {From: 14, To: 15}, {From: 20, To: 22}}, 4096)
		if kept != 3 {
			t.Fatalf("kept %d runs", kept)
		}
		h.assignCommitted(pipeline.Offset{TopicPartition: tp(0), Offset: 10, Metadata: text})
		h.poll(0, 10, "a", 11, "b", 12, "c", 13, "d", 14, "e", 15, "f")
		h.expectDispatched(10, 13, 15)
		if n := h.stats.FinishedBefore.Load(); n != 3 {
			t.Fatalf("FinishedBefore = %d; want 3 (11, 12, 14)", n)
		}
		h.finish(0, 10)
		h.finish(0, 13)
		offs := h.committableOffsets()
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{0: 15}) {
			t.Fatalf("committable %v; want 0: 15", got)
		}
		if want := []offsetmap.Run{{From: 20, To: 22}}; !slices.Equal(offs[0].runs, want) {
			t.Fatalf("offset map %v; want the inherited %v not yet polled", offs[0].runs, want)
		}
		h.finish(0, 15)
		// Everything polled finished and the map continues right after:
		// nothing in between is known finished, so the commit stays at 16.
		if got := h.committable(); !mapsEqual(got, map[int32]int64{0: 16}) {
			t.Fatalf("committable %v; want 0: 16", got)
		}
	})
}

// TestCoordinatorForeignMetadata: metadata that is not an offset map of
// ours is ignored: nothing is skipped.
func TestCoordinatorForeignMetadata(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assignCommitted(pipeline.Offset{TopicPartition: tp(0), Offset: 0, Metadata: "written by someone else"})
		h.poll(0, 0, "a", 1, "b")
		h.expectDispatched(0, 1)
		if n := h.stats.FinishedBefore.Load(); n != 0 {
			t.Fatalf("FinishedBefore = %d; want 0", n)
		}
	})
}

// TestCoordinatorRevokeIdle: a claim with nothing in flight is answered at
// once; one whose messages all finished gets its offset.
func TestCoordinatorRevokeIdle(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0, 1, 2)
		h.poll(1, 10, "a")
		h.expectDispatched(10)
		h.finish(1, 10)
		offs, ok := replied(h.rebalance(rebalanceRevoke, tp(0), tp(1), tp(3)))
		if !ok {
			t.Fatal("revoke of idle claims not answered")
		}
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{1: 11}) {
			t.Fatalf("revoke offsets %v; want 1: 11", got)
		}
		if !isClosed(h.revokedChannel(1)) || !isClosed(h.revokedChannel(7)) {
			t.Fatal("revoked channel open for a revoked or unknown partition")
		}
		if isClosed(h.revokedChannel(2)) {
			t.Fatal("revoked channel closed for a partition still assigned")
		}
	})
}

// TestCoordinatorRevokeGiveUp: a revoke that timed out is answered at once
// with what is committable; the handlers of its messages still out are
// cancelled, and their completions, coming back later, are ignored.
func TestCoordinatorRevokeGiveUp(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "c")
		h.expectDispatched(0, 1, 2)
		h.finish(0, 0)
		reply := h.rebalance(rebalanceRevoke, tp(0))
		if _, ok := replied(reply); ok {
			t.Fatal("revoke answered with messages in flight")
		}
		if err := h.ctxs[h.get(0, 1)].Err(); err != nil {
			t.Fatalf("handler context done (%v) before the revoke gave up", err)
		}
		h.rebalances <- rebalanceRequest{kind: rebalanceGiveUp, reply: reply}
		synctest.Wait()
		offs, ok := replied(reply)
		if !ok {
			t.Fatal("give-up not answered at once")
		}
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{0: 1}) {
			t.Fatalf("give-up offsets %v; want 0: 1", got)
		}
		if err := h.ctxs[h.get(0, 1)].Err(); err == nil {
			t.Fatal("handler context of a given-up claim not cancelled")
		}
		if n := h.stats.InFlight.Load(); n != 2 {
			t.Fatalf("InFlight = %d; want 2 (still out)", n)
		}
		h.finish(0, 1)
		h.complete(h.get(0, 2), verdictAbandon)
		if n := h.stats.InFlight.Load(); n != 0 {
			t.Fatalf("InFlight = %d after they came back; want 0", n)
		}
		h.expectCommittable(map[int32]int64{})
		if got := h.takeRoom(); got != 3 {
			t.Fatalf("room freed %d; want 3", got)
		}
	})
}

// TestCoordinatorLost: a lost claim ends at once without offsets; its
// messages' later completions move nothing, not even a new claim's at the
// same offsets, and the in-flight count still returns to 0.
func TestCoordinatorLost(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "a", 2, "b")
		h.poll(1, 0, "a")
		h.expectDispatched(0, 2)
		h.finish(0, 2)
		h.expectDispatched(0) // partition 1's
		h.finish(1, 0)
		h.expectCommittable(map[int32]int64{0: 0, 1: 1}) // 0 at its start, with 2 in its map
		oldZero := h.get(0, 0)
		revoked := h.revokedChannel(0)
		if offs, ok := replied(h.rebalance(rebalanceLost, tp(0))); !ok || offs != nil {
			t.Fatalf("lost answered %v, %v; want nil at once", offs, ok)
		}
		if !isClosed(revoked) {
			t.Fatal("revoked channel open after the loss")
		}
		if h.ctxs[oldZero].Err() == nil {
			t.Fatal("handler context of a lost claim not cancelled")
		}
		h.expectCommittable(map[int32]int64{1: 1})
		if n, q := h.stats.InFlight.Load(), h.stats.Queued.Load(); n != 1 || q != 0 {
			t.Fatalf("InFlight, Queued = %d, %d; want 1 (offset 0 still out), 0", n, q)
		}
		// Assigned again, from the same offset: new messages at the same
		// offsets, a new claim.
		h.assign(0)
		if isClosed(h.revokedChannel(0)) {
			t.Fatal("the new claim's revoked channel is closed")
		}
		h.poll(0, 0, "a", 1, "b")
		h.expectDispatched(0, 1)
		newZero := h.get(0, 0)
		h.finish(0, 1)
		h.complete(oldZero, verdictFinish)               // the lost claim's: ignored
		h.expectCommittable(map[int32]int64{0: 0, 1: 1}) // 0 at its start, 1 in its map
		h.expectDispatched()
		if n := h.stats.InFlight.Load(); n != 1 {
			t.Fatalf("InFlight = %d; want 1 (the new offset 0)", n)
		}
		h.complete(newZero, verdictFinish)
		h.expectCommittable(map[int32]int64{0: 2, 1: 1})
		if n := h.stats.InFlight.Load(); n != 0 {
			t.Fatalf("InFlight = %d; want 0", n)
		}
	})
}

// TestCoordinatorCommittable: the periodic answer skips stopping claims
// (their revoke commits them), and has nothing for a claim where nothing
// finished: no commit at assignment (issue 11 item 7).
func TestCoordinatorCommittable(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.expectCommittable(map[int32]int64{})
		h.assign(0, 1, 2)
		h.expectCommittable(map[int32]int64{}) // nothing polled
		h.poll(0, 100, "a", 101, "b")
		h.poll(1, 5, "a")
		h.poll(2, 7, "a")
		h.expectDispatched(100, 101, 5, 7)
		h.expectCommittable(map[int32]int64{}) // nothing finished
		h.finish(0, 101)
		offs := h.committableOffsets() // the start, 100, unfinished: committed with 101 in its map
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{0: 100}) || !slices.Equal(offs[0].runs, []offsetmap.Run{{From: 101, To: 102}}) {
			t.Fatalf("committable %+v; want 0: 100 with 101 in its map", offs)
		}
		h.finish(0, 100)
		h.finish(1, 5)
		h.expectCommittable(map[int32]int64{0: 102, 1: 6})
		h.finish(2, 7)
		reply := h.rebalance(rebalanceRevoke, tp(1))
		if _, ok := replied(reply); !ok {
			t.Fatal("idle revoke not answered")
		}
		h.poll(0, 102, "a")
		reply = h.rebalance(rebalanceRevoke, tp(0)) // stopping while 102 is out
		h.expectCommittable(map[int32]int64{2: 8})
		h.expectDispatched(102)
		h.finish(0, 102)
		if offs, ok := replied(reply); !ok || !mapsEqual(offsetMap(offs), map[int32]int64{0: 103}) {
			t.Fatalf("revoke answered %v, %v; want 0: 103", offs, ok)
		}
	})
}

// TestCoordinatorDrain: a graceful stop abandons the backlog but lets what
// is out finish; the coordinator closes dispatch once
// nothing is in flight and the poller closed polled, and hands the final
// offsets, stopping claims included, to the committer.
func TestCoordinatorDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCoordHarness(t, coordOptions{concurrency: 1})
		defer h.end()
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "a", 2, "b", 3, "c")
		h.expectDispatched(0)
		revoked := h.revokedChannel(1)
		close(h.draining)
		synctest.Wait()
		if !isClosed(revoked) {
			t.Fatal("revoked channel open after a drain began")
		}
		h.assign(2) // an assignment during the drain starts stopped
		if !isClosed(h.revokedChannel(2)) {
			t.Fatal("revoked channel open for a claim assigned while draining")
		}
		h.poll(1, 0, "a") // polled after the drain began: dropped
		close(h.polled)
		synctest.Wait()
		if isDone(h.done) {
			t.Fatal("coordinator ended with a message out")
		}
		h.finish(0, 0)
		if _, ok := <-h.dispatch; ok {
			t.Fatal("dispatch not closed once idle")
		}
		if n := h.stats.InFlight.Load(); n != 0 {
			t.Fatalf("InFlight = %d; want 0", n)
		}
		h.closeHandlerEnd()
		<-h.done
		if got := offsetMap(<-h.final); !mapsEqual(got, map[int32]int64{0: 1}) {
			t.Fatalf("final offsets %v; want 0: 1", got)
		}
	})
}

// TestCoordinatorHardStop: cancelling the context closes dispatch at once;
// what comes back is abandoned; the final offsets
// hold what finished.
func TestCoordinatorHardStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCoordHarness(t, coordOptions{concurrency: 2})
		defer h.end()
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b", 3, "c", 4, "d", 5, "e")
		h.expectDispatched(0, 2)
		h.finish(0, 2)
		h.expectDispatched(3) // 1 waits behind a
		h.cancel()
		synctest.Wait()
		if _, ok := <-h.dispatch; ok {
			t.Fatal("dispatch not closed at once")
		}
		if h.ctxs[h.get(0, 0)].Err() == nil {
			t.Fatal("handler context not cancelled by the hard stop")
		}
		h.finish(0, 0)
		h.complete(h.get(0, 3), verdictAbandon)
		h.closeHandlerEnd()
		<-h.done
		if got := offsetMap(<-h.final); !mapsEqual(got, map[int32]int64{0: 1}) {
			t.Fatalf("final offsets %v; want 0: 1", got)
		}
		if n := h.stats.InFlight.Load(); n != 0 {
			t.Fatalf("InFlight = %d; want 0", n)
		}
	})
}

// TestCoordinatorRoom: every tracked message frees its slot once it
// finished or was abandoned, and so does every message dropped on arrival
// (not ours, polled out of order); counts that the poller has not read yet
// add up.
func TestCoordinatorRoom(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "c")
		if got := h.takeRoom(); got != 0 {
			t.Fatalf("room %d before anything finished", got)
		}
		h.poll(5, 0, "a") // not assigned: freed at once
		if got := h.takeRoom(); got != 1 {
			t.Fatalf("room %d for an unassigned partition's message; want 1", got)
		}
		h.polled <- cycleOf([]*pipeline.Message[string, string]{{Topic: "t", Offset: 1}}) // out of offset order: dropped
		if got := h.takeRoom(); got != 1 {
			t.Fatalf("room %d for a message out of order; want 1", got)
		}
		h.expectDispatched(0, 1, 2)
		h.finish(0, 0)
		h.finish(0, 1) // the room edge is full: the count waits
		h.complete(h.get(0, 2), verdictAbandon)
		if got := len(h.room); got != 1 {
			t.Fatalf("%d counts on the room edge; want 1", got)
		}
		if total := h.takeRoom(); total != 3 {
			t.Fatalf("room %d; want 3", total)
		}
		h.expectCommittable(map[int32]int64{0: 2})
	})
}

// TestCoordinatorHold: while held (Parallafka.Pause) nothing is dispatched.
func TestCoordinatorHold(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		if _, ok := replied(h.rebalance(rebalanceHold)); !ok {
			t.Fatal("hold not answered")
		}
		h.poll(0, 0, "a", 1, "b")
		h.expectDispatched()
		if _, ok := replied(h.rebalance(rebalanceUnhold)); !ok {
			t.Fatal("unhold not answered")
		}
		h.expectDispatched(0, 1)
	})
}

// cycleOf makes a poll cycle of msgs, sized as the poller sizes them.
func cycleOf(msgs []*pipeline.Message[string, string]) pollCycle[string, string] {
	sizes := make([]int32, len(msgs))
	for i, m := range msgs {
		sizes[i] = messageBytes(m)
	}
	return pollCycle[string, string]{msgs: msgs, sizes: sizes}
}

// TestCoordinatorLongestBacklogFirst: of the ready messages, the one whose
// key has more messages queued behind it now goes first, a key that has not
// started included (its backlog grew while its first message waited), so
// no key starves behind keys that keep going; equal backlogs go oldest
// first.
func TestCoordinatorLongestBacklogFirst(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 1}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "a", 3, "b", 4, "b", 5, "c")
		h.expectDispatched(0)
		h.finish(0, 0) // a's next (2, nothing behind it) against b (1, two behind it)
		h.expectDispatched(1)
		h.finish(0, 1) // b's next (3, one behind) against a's 2 and c's 5 (none behind)
		h.expectDispatched(3)
		h.finish(0, 3) // nothing queued any more: equal backlogs go oldest first (two out: nothing waits behind a key)
		h.expectDispatched(2, 4)
		h.finish(0, 2)
		h.finish(0, 4)
		h.expectDispatched(5)
	})
}

// TestCoordinatorQuickRuns: once the handlers are quick, ready messages go
// out in runs (one job, one handler end for many), oldest first, and one
// slow call brings single messages back.
func TestCoordinatorQuickRuns(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		var offKeys []any
		for i := range 300 {
			offKeys = append(offKeys, i, fmt.Sprint("k", i))
		}
		h.poll(0, offKeys...)
		jobs := func() (out []job[string, string]) {
			for {
				select {
				case j := <-h.dispatch:
					out = append(out, j)
				default:
					return out
				}
			}
		}
		end := func(j job[string, string], quick bool) {
			ended := handlerEnded[string, string]{quick: quick}
			if j.run == nil {
				ended.done = completion[string, string]{msg: j.msg, origin: j.origin, verdict: verdictFinish}
			} else {
				ended.settled, ended.run = j.ends, j.run
				for _, r := range j.run {
					ended.settled = append(ended.settled, completion[string, string]{msg: r.msg, origin: r.origin, verdict: verdictFinish})
				}
			}
			h.handlerEnd <- ended
			synctest.Wait()
		}
		next := int64(0)
		expectOffsets := func(j job[string, string], n int) {
			t.Helper()
			msgs := jobMessages(j)
			if len(msgs) != n {
				t.Fatalf("a job of %d messages; want %d", len(msgs), n)
			}
			for _, m := range msgs {
				if m.msg.Offset != next {
					t.Fatalf("offset %d dispatched; want %d (oldest first)", m.msg.Offset, next)
				}
				next++
			}
		}
		out := jobs()
		for _, j := range out {
			expectOffsets(j, 1) // not known to be quick yet: one message a job
		}
		for range quickRun - 1 {
			end(out[0], true)
			out = append(out[1:], jobs()...)
			expectOffsets(out[len(out)-1], 1)
		}
		end(out[0], true) // the quickRun-th quick call in a row: runs
		out = out[1:]
		runs := jobs()
		if len(runs) != 1 {
			t.Fatalf("%d jobs after the quick calls; want 1 (four out)", len(runs))
		}
		expectOffsets(runs[0], maxRun)
		oldest := out[0].msg.Offset
		end(out[0], true)
		out = out[1:]
		runs = append(runs, jobs()...)
		expectOffsets(runs[1], maxRun)
		end(runs[0], true) // a run ends: its messages' keys are free, and a run goes in its place
		more := jobs()
		if len(more) != 1 {
			t.Fatalf("%d jobs after a run ended; want 1", len(more))
		}
		expectOffsets(more[0], maxRun)
		if got, want := h.committable()[0], oldest+1; got != want {
			t.Fatalf("committable %d; want %d (the oldest message out)", got, want)
		}
		end(out[0], false) // slow: one message a job again
		expectOffsets(jobs()[0], 1)
		if got, want := h.stats.InFlight.Load(), int64(300-quickRun-2-maxRun); got != want {
			t.Fatalf("in flight %d; want %d (a run's messages finished)", got, want)
		}
	})
}
