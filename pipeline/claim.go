package pipeline

import (
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Claim is the pipeline's state for one partition during one assignment,
// from PartitionsAssigned until PartitionsRevoked or PartitionsLost. Every
// message carries the claim it was polled under, so that a message that
// finishes after its partition was revoked (and perhaps assigned again) can
// never move the new assignment's commits.
//
// A Claim is safe for concurrent use.
type Claim struct {
	tp      TopicPartition
	tracker *Tracker

	mu         sync.Mutex
	window     OffsetWindow
	tracked    int           // polled under the claim, not yet finished or abandoned
	committed  int64         // last committed offset, -1 before the first commit
	dispatched atomic.Int64  // highest offset handed to the handler pool, -1 before
	stopping   atomic.Bool   // revoked, lost or ended: start only gap fillers
	frozen     atomic.Bool   // ended: nothing starts, finishing no longer moves commits
	idle       chan struct{} // closed once stopping and tracked == 0
}

// TopicPartition returns the partition claimed.
func (c *Claim) TopicPartition() TopicPartition { return c.tp }

// Stopping reports whether the claim is being revoked or has ended.
func (c *Claim) Stopping() bool { return c.stopping.Load() }

// Admits reports whether a message of the claim at offset may start in a
// handler. While the claim lives, any may. Once it is stopping (a revoke or a
// graceful shutdown), only gap fillers may: messages below the highest
// offset already handed to the handler pool. Finishing them lets the final
// commit reach past everything that was handled, so the next owner redoes
// nothing; messages above it are dropped, uncommitted. Once the claim is
// frozen, none may.
func (c *Claim) Admits(offset int64) bool {
	switch {
	case c.frozen.Load():
		return false
	case c.stopping.Load():
		return offset <= c.dispatched.Load()
	}
	return true
}

// Wants reports whether a message of the claim at offset, not yet handed to
// the handler pool, may still be: always while the claim lives; once it is
// stopping, only below the highest dispatched offset (a gap filler).
func (c *Claim) Wants(offset int64) bool {
	switch {
	case c.frozen.Load():
		return false
	case c.stopping.Load():
		return offset < c.dispatched.Load()
	}
	return true
}

// Below reports whether offset lies below the highest offset of the claim
// handed to the handler pool so far: a message there that is not handled
// holds the partition's commit back below messages that were.
func (c *Claim) Below(offset int64) bool { return offset < c.dispatched.Load() }

// Dispatched records that msg was handed to the handler pool.
func Dispatched[K, V any](msg *Message[K, V]) {
	c := msg.claim
	for {
		high := c.dispatched.Load()
		if msg.Offset <= high || c.dispatched.CompareAndSwap(high, msg.Offset) {
			return
		}
	}
}

// Track adds a freshly polled message to its partition's claim: from now on
// the message is in flight, and its offset holds back the partition's
// commits until it finishes.
func Track[K, V any](c *Claim, msg *Message[K, V]) {
	msg.claim, msg.state = c, stateTracked
	c.mu.Lock()
	c.window.Add(msg.Offset)
	c.tracked++
	c.mu.Unlock()
	c.tracker.inFlight.Add(1)
	msg.seq = c.tracker.polled.Add(1)
}

// Start records that msg is ready to be dispatched to the handler pool. It
// reports false, and records nothing, if the claim no longer wants it (see
// Claim.Wants): the message must then be abandoned.
func Start[K, V any](msg *Message[K, V]) bool {
	if !msg.claim.Wants(msg.Offset) {
		return false
	}
	msg.state = stateStarted
	return true
}

// Finish records that msg finished (handled, skipped, or dropped by a
// stage): its offset may now be committed. Finishing a message whose claim
// ended only releases it: it can no longer move that assignment's commits.
func Finish[K, V any](msg *Message[K, V]) { msg.claim.release(msg, true) }

// Abandon records that msg will never finish in this assignment (its
// backlog was dropped on shutdown or revoke, or it failed and the pipeline
// stops): it stays uncommitted, so Kafka delivers it again.
func Abandon[K, V any](msg *Message[K, V]) {
	if msg.state != stateUntracked {
		msg.abandoned = true
	}
	msg.claim.release(msg, false)
}

func (c *Claim) release(msg interface {
	offset() int64
	takeState() msgState
}, finished bool) {
	state := msg.takeState()
	if state == stateUntracked {
		return // released already
	}
	c.mu.Lock()
	if finished && !c.frozen.Load() {
		c.window.Finish(msg.offset())
	}
	c.tracked--
	if c.tracked == 0 && c.stopping.Load() {
		closeOnce(c.idle)
	}
	c.mu.Unlock()
	c.tracker.released()
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// Committable returns the offset to commit for the claim and whether it
// moved past the last committed one.
func (c *Claim) Committable() (Offset, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	off, ok := c.window.Committable()
	return Offset{TopicPartition: c.tp, Offset: off}, ok && off > c.committed
}

// Committed records a successful commit of offset.
func (c *Claim) Committed(offset int64) {
	c.mu.Lock()
	if offset > c.committed {
		c.committed = offset
	}
	c.mu.Unlock()
	c.tracker.mu.Lock()
	c.tracker.committed[c.tp] = offset
	c.tracker.mu.Unlock()
}

// LastCommitted returns the last committed offset, or -1.
func (c *Claim) LastCommitted() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.committed
}

// stop marks the claim stopping: from now on only gap fillers start (see
// Admits), while messages already handed to handlers may still finish and
// move its commits.
func (c *Claim) stop() {
	c.mu.Lock()
	c.stopping.Store(true)
	if c.tracked == 0 {
		closeOnce(c.idle)
	}
	c.mu.Unlock()
}

// Freeze ends the claim for good: from now on finishing one of its messages
// no longer moves its commit position (the partition may belong to another
// member by now).
func (c *Claim) Freeze() {
	c.mu.Lock()
	c.frozen.Store(true)
	c.mu.Unlock()
}

// Tracker holds the claims of the current assignment and the counters that
// drive back-pressure. It is safe for concurrent use.
type Tracker struct {
	mu        sync.Mutex
	claims    map[TopicPartition]*Claim
	paused    map[TopicPartition]bool
	committed map[TopicPartition]int64 // last commit of every partition ever committed

	inFlight  atomic.Int64 // polled, not yet finished or abandoned
	polled    atomic.Int64
	roomBelow atomic.Int64  // AwaitRoom's limit while it waits, else 0
	room      chan struct{} // signalled when in-flight drops below roomBelow
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{
		claims:    make(map[TopicPartition]*Claim),
		paused:    make(map[TopicPartition]bool),
		committed: make(map[TopicPartition]int64),
		room:      make(chan struct{}, 1),
	}
}

// AwaitRoom waits until fewer than limit messages are in flight. It reports
// false if timeout passed or stop closed first.
func (t *Tracker) AwaitRoom(limit int64, timeout time.Duration, stop <-chan struct{}) bool {
	t.roomBelow.Store(limit) // before the check: a release after it signals
	defer t.roomBelow.Store(0)
	if t.inFlight.Load() < limit {
		return true
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-t.room:
			if t.inFlight.Load() < limit {
				return true
			}
		case <-timer.C:
			return false
		case <-stop:
			return false
		}
	}
}

func (t *Tracker) released() {
	n := t.inFlight.Add(-1)
	if limit := t.roomBelow.Load(); limit > 0 && n < limit {
		select {
		case t.room <- struct{}{}:
		default:
		}
	}
}

// SetPaused records that the partitions were paused or resumed.
func (t *Tracker) SetPaused(partitions []TopicPartition, paused bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tp := range partitions {
		if paused {
			t.paused[tp] = true
		} else {
			delete(t.paused, tp)
		}
	}
}

// Committed returns the last offset committed for each partition this
// tracker ever committed, including partitions since revoked.
func (t *Tracker) Committed() map[TopicPartition]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.committed)
}

// Paused returns the paused partitions.
func (t *Tracker) Paused() []TopicPartition {
	t.mu.Lock()
	defer t.mu.Unlock()
	tps := make([]TopicPartition, 0, len(t.paused))
	for tp := range t.paused {
		tps = append(tps, tp)
	}
	return tps
}

// Assign starts a fresh claim for each partition. A partition that is
// already claimed keeps its claim.
func (t *Tracker) Assign(partitions []TopicPartition) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tp := range partitions {
		if _, ok := t.claims[tp]; !ok {
			c := &Claim{tp: tp, tracker: t, committed: -1, idle: make(chan struct{})}
			c.dispatched.Store(-1)
			t.claims[tp] = c
		}
	}
}

// Claim returns the live claim of a partition, or nil if it is not assigned.
func (t *Tracker) Claim(tp TopicPartition) *Claim {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.claims[tp]
}

// Claims returns the live claims, ordered by topic and partition.
func (t *Tracker) Claims() []*Claim {
	t.mu.Lock()
	cs := make([]*Claim, 0, len(t.claims))
	for _, c := range t.claims {
		cs = append(cs, c)
	}
	t.mu.Unlock()
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].tp.Topic != cs[j].tp.Topic {
			return cs[i].tp.Topic < cs[j].tp.Topic
		}
		return cs[i].tp.Partition < cs[j].tp.Partition
	})
	return cs
}

// Stop removes the partitions' claims from the assignment and marks them
// stopping, so that none of their messages starts any more; started ones may
// still finish until the caller freezes the claims. It returns the stopped
// claims.
func (t *Tracker) Stop(partitions []TopicPartition) []*Claim {
	t.mu.Lock()
	ended := make([]*Claim, 0, len(partitions))
	for _, tp := range partitions {
		if c, ok := t.claims[tp]; ok {
			delete(t.claims, tp)
			ended = append(ended, c)
		}
	}
	t.mu.Unlock()
	for _, c := range ended {
		c.stop()
	}
	return ended
}

// WaitIdle waits until every message of the stopped claims finished or was
// abandoned (the router drops the backlog that is not needed, and handlers
// finish the rest), or until timeout. It reports whether they all did.
func WaitIdle(claims []*Claim, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for _, c := range claims {
		select {
		case <-c.idle:
		case <-timer.C:
			return false
		}
	}
	return true
}

// InFlight returns the number of messages polled and not yet finished or abandoned.
func (t *Tracker) InFlight() int64 { return t.inFlight.Load() }

// Polled returns the number of messages polled so far.
func (t *Tracker) Polled() int64 { return t.polled.Load() }
