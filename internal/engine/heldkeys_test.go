package engine

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// holdRecorder is a pipeline.KeyHoldObserver that records its events.
type holdRecorder struct {
	pipeline.Observer
	mu     sync.Mutex
	events []string
}

func newHoldRecorder() *holdRecorder {
	return &holdRecorder{Observer: pipeline.ObserverFuncs{}.Observer()}
}

func (r *holdRecorder) KeyHeld(k pipeline.HeldKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "held "+k.TopicPartition.String()+" "+string(k.Key))
}

func (r *holdRecorder) KeyReleased(k pipeline.HeldKey, expired bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	how := "released "
	if expired {
		how = "expired "
	}
	r.events = append(r.events, how+k.TopicPartition.String()+" "+string(k.Key))
}

func (r *holdRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

func (h *coordHarness) expectEvents(r *holdRecorder, want ...string) {
	h.t.Helper()
	if got := r.take(); !slices.Equal(got, want) {
		h.t.Fatalf("observer events %q; want %q", got, want)
	}
}

// completeHolding ends m's handling as the collector does for a message a
// dead-letter stage dropped with HoldKey.
func (h *coordHarness) completeHolding(m *pipeline.Message[string, string]) {
	h.handlerEnd <- handlerEnded[string, string]{done: completion[string, string]{msg: m, verdict: verdictFinish, hold: true}}
	synctest.Wait()
}

// expectHeldBack checks that m was dispatched not to be handled: failed
// with a *pipeline.KeyHeldError naming behind, Attempt 0.
func expectHeldBack(t *testing.T, m *pipeline.Message[string, string], behind int64) {
	t.Helper()
	var held *pipeline.KeyHeldError
	if !errors.As(m.Err, &held) || held.Offset != behind || m.Attempt != 0 || toHandle(m) {
		t.Fatalf("%v: Err %v, Attempt %d; want held behind %d, not to handle", m, m.Err, m.Attempt, behind)
	}
}

func expectHandled(t *testing.T, m *pipeline.Message[string, string]) {
	t.Helper()
	if m.Err != nil || !toHandle(m) {
		t.Fatalf("%v: Err %v; want it handed to its handler", m, m.Err)
	}
}

func heldKeysOf(offs []claimOffset) []string {
	var keys []string
	for _, o := range offs {
		for _, h := range o.held {
			keys = append(keys, string(h.Key))
		}
	}
	return keys
}

// A message finishing with its key held makes the key's later messages go
// out, one at a time and in order, failed and not to be handled; the
// other keys go on, and so do the commits, which carry the held key.
func TestHeldKeyFollowers(t *testing.T) {
	rec := newHoldRecorder()
	coordTest(t, coordOptions{concurrency: 4, observer: rec}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b", 3, "a", 4, "b")
		h.expectDispatched(0, 2)
		h.completeHolding(h.get(0, 0)) // dead-lettered, key held
		h.expectEvents(rec, "held t[0] a")
		h.expectDispatched(1)
		expectHeldBack(t, h.get(0, 1), 0)
		if n := h.stats.HeldKeys.Load(); n != 1 {
			t.Fatalf("Stats.HeldKeys = %d; want 1", n)
		}
		h.finish(0, 2)
		h.expectDispatched(4)
		expectHandled(t, h.get(0, 4))
		// The follower dead-lettered too, with HoldKey: nothing more is
		// held; the next follower goes out behind it.
		h.completeHolding(h.get(0, 1))
		h.expectEvents(rec)
		h.expectDispatched(3)
		expectHeldBack(t, h.get(0, 3), 0)
		h.finish(0, 3)
		h.finish(0, 4)
		offs := h.committableOffsets()
		if got := offsetMap(offs); !mapsEqual(got, map[int32]int64{0: 5}) {
			t.Fatalf("committable %v; want 0: 5", got)
		}
		if keys := heldKeysOf(offs); !slices.Equal(keys, []string{"a"}) {
			t.Fatalf("held keys committed %q; want a", keys)
		}
		// Messages polled later: held back as they come.
		h.poll(0, 5, "a", 6, "c")
		h.expectDispatched(5, 6)
		expectHeldBack(t, h.get(0, 5), 0)
		expectHandled(t, h.get(0, 6))
		h.finish(0, 5)
		h.finish(0, 6)
		// The revoke's final commit carries it to the next owner.
		offs, ok := replied(h.rebalance(rebalanceRevoke, tp(0)))
		if !ok || !slices.Equal(heldKeysOf(offs), []string{"a"}) || offsetMap(offs)[0] != 7 {
			t.Fatalf("revoke answered %v (%v); want 0: 7 with key a held", offs, ok)
		}
		if n := h.stats.HeldKeys.Load(); n != 0 {
			t.Fatalf("Stats.HeldKeys = %d after the revoke; want 0", n)
		}
	})
}

// A message not handled because its key is held stays unhandled whatever
// the stages do with it: a retry is not taken for a handling, an abandon
// drops the key's queue as ever.
func TestHeldKeyFollowerAbandoned(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 2}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a")
		h.expectDispatched(0)
		h.completeHolding(h.get(0, 0))
		h.expectDispatched(1)
		h.complete(h.get(0, 1), verdictAbandon) // the dead letter could not be written, and the policy stops
		h.expectDispatched()
		h.expectCommittable(map[int32]int64{0: 1})
	})
}

// ReleaseKey releases the key in every claim holding it: the key's next
// messages are handled again.
func TestHeldKeyRelease(t *testing.T) {
	rec := newHoldRecorder()
	var control HeldKeyControl
	if n := control.Release([]byte("a")); n != 0 {
		t.Fatalf("Release before the coordinator runs = %d; want 0", n)
	}
	coordTest(t, coordOptions{concurrency: 4, releases: &control, observer: rec}, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "a")
		h.poll(1, 0, "a", 1, "a")
		h.expectDispatched(0, 0)
		h.completeHolding(h.get(0, 0))
		h.completeHolding(h.get(1, 0))
		h.expectEvents(rec, "held t[0] a", "held t[1] a")
		h.expectDispatched(1, 1)
		if n := control.Release([]byte("b")); n != 0 {
			t.Fatalf("Release(b) = %d; want 0", n)
		}
		if n := control.Release([]byte("a")); n != 2 {
			t.Fatalf("Release(a) = %d; want 2", n)
		}
		evs := rec.take()
		slices.Sort(evs)
		if want := []string{"released t[0] a", "released t[1] a"}; !slices.Equal(evs, want) {
			t.Fatalf("events %q; want %q", evs, want)
		}
		if n := h.stats.HeldKeys.Load(); n != 0 {
			h.committable() // a turn to publish
			if n = h.stats.HeldKeys.Load(); n != 0 {
				t.Fatalf("Stats.HeldKeys = %d; want 0", n)
			}
		}
		// The followers out already go on to the dead-letter stage; the
		// next ones are handled.
		h.finish(0, 1)
		h.poll(0, 2, "a")
		h.expectDispatched(2)
		expectHandled(t, h.get(0, 2))
		if keys := heldKeysOf(h.committableOffsets()); len(keys) != 0 {
			t.Fatalf("held keys committed %q after the release; want none", keys)
		}
	})
	if n := control.Release([]byte("a")); n != 0 {
		t.Fatalf("Release after the coordinator ended = %d; want 0", n)
	}
}

// A held key is released once its TTL passed: when its next message comes
// up, or when the committer asks for the offsets.
func TestHeldKeyTTL(t *testing.T) {
	rec := newHoldRecorder()
	coordTest(t, coordOptions{concurrency: 4, heldTTL: time.Minute, observer: rec}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b")
		h.expectDispatched(0, 1)
		h.completeHolding(h.get(0, 0))
		h.completeHolding(h.get(0, 1))
		h.expectEvents(rec, "held t[0] a", "held t[0] b")
		time.Sleep(30 * time.Second)
		h.poll(0, 2, "a")
		h.expectDispatched(2)
		expectHeldBack(t, h.get(0, 2), 0)
		h.finish(0, 2)
		time.Sleep(31 * time.Second)
		h.poll(0, 3, "a")
		h.expectDispatched(3)
		expectHandled(t, h.get(0, 3))
		h.expectEvents(rec, "expired t[0] a")
		if keys := heldKeysOf(h.committableOffsets()); len(keys) != 0 {
			t.Fatalf("held keys committed %q past their TTL; want none", keys)
		}
		h.expectEvents(rec, "expired t[0] b")
	})
}

// The held keys in the committed metadata are held again on assignment
// (the TTL counting from when they were held), and a release with nothing
// polled is committed at the committed offset.
func TestHeldKeyRestored(t *testing.T) {
	rec := newHoldRecorder()
	var control HeldKeyControl
	coordTest(t, coordOptions{concurrency: 4, heldTTL: time.Hour, releases: &control, observer: rec}, func(h *coordHarness) {
		now := time.Now().Unix()
		held := []offsetmap.Held{
			{Key: []byte("old"), Offset: 3, Since: now - 7200}, // its TTL passed
			{Key: []byte("a"), Offset: 7, Since: now - 60},
			{Key: []byte("b"), Offset: 8, Since: now - 30},
		}
		text, kept, keptHeld := offsetmap.EncodeHeld(10, []offsetmap.Run{{From: 12, To: 13}}, held, 4096)
		if kept != 1 || keptHeld != 3 {
			t.Fatalf("EncodeHeld kept %d runs, %d held keys", kept, keptHeld)
		}
		h.assignCommitted(pipeline.Offset{TopicPartition: tp(0), Offset: 10, Metadata: text},
			pipeline.Offset{TopicPartition: tp(1), Offset: 4, Metadata: text}) // stale for 1: ignored
		h.expectEvents(rec, "held t[0] a", "held t[0] b")
		h.committable()
		if n := h.stats.HeldKeys.Load(); n != 2 {
			t.Fatalf("Stats.HeldKeys = %d; want 2", n)
		}
		// The expired key was left out: the metadata is written again.
		if offs := h.committableOffsets(); len(offs) != 1 || offs[0].Offset.Offset != 10 ||
			!slices.Equal(heldKeysOf(offs), []string{"a", "b"}) || !slices.Equal(offs[0].runs, []offsetmap.Run{{From: 12, To: 13}}) {
			t.Fatalf("committable %+v; want 10, its map, a and b held", offs)
		}
		if n := control.Release([]byte("b")); n != 1 {
			t.Fatalf("Release(b) = %d; want 1", n)
		}
		if offs := h.committableOffsets(); len(offs) != 1 || offs[0].Offset.Offset != 10 || !slices.Equal(heldKeysOf(offs), []string{"a"}) {
			t.Fatalf("committable %+v; want 10 with a held", offs)
		}
		h.poll(0, 10, "a", 11, "b", 12, "a")
		h.expectDispatched(10, 11)
		expectHeldBack(t, h.get(0, 10), 7)
		expectHandled(t, h.get(0, 11))
		h.poll(1, 4, "a")
		h.expectDispatched(4)
		expectHandled(t, h.get(1, 4))
	})
}

// In batch mode a held key's message goes out alone in its batch, not
// handled, its key's queue behind it; other keys are batched as ever.
func TestBatchHeldKey(t *testing.T) {
	coordTest(t, batchOptions(2, 10, 0), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b")
		b := h.expectBatches([]int64{0, 1, 2})
		// 0 failed and is dead-lettered; 1 is requeued behind it.
		h.endBatch(done(b[0][1], verdictRequeue), done(b[0][2], verdictFinish))
		h.completeHolding(b[0][0])
		b = h.expectBatches([]int64{1})
		expectHeldBack(t, b[0][0], 0)
		h.poll(0, 3, "a", 4, "c", 5, "a")
		h.expectBatches([]int64{4})
		h.endBatch(done(b[0][0], verdictFinish))
		b = h.expectBatches([]int64{3})
		expectHeldBack(t, b[0][0], 0)
	})
}
