package pipeline

import (
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

	mu        sync.Mutex
	window    OffsetWindow
	started   int   // dispatched to the handler pool and not yet finished
	committed int64 // last committed offset, -1 before the first commit
	ended     atomic.Bool
	idle      chan struct{} // closed once ended and started == 0
}

// TopicPartition returns the partition claimed.
func (c *Claim) TopicPartition() TopicPartition { return c.tp }

// Ended reports whether the claim was revoked or lost: its messages must no
// longer be dispatched to handlers.
func (c *Claim) Ended() bool { return c.ended.Load() }

// Track adds a freshly polled message to its partition's claim: from now on
// the message is in flight, and its offset holds back the partition's
// commits until it finishes.
func Track[K, V any](c *Claim, msg *Message[K, V]) {
	msg.claim = c
	c.trackOffset(msg.Offset)
}

func (c *Claim) trackOffset(offset int64) {
	c.mu.Lock()
	c.window.Add(offset)
	c.mu.Unlock()
	c.tracker.inFlight.Add(1)
	c.tracker.polled.Add(1)
}

// Start records that a message of the claim was dispatched to the handler
// pool. It reports false, and records nothing, if the claim ended: the
// message must then be abandoned instead.
func (c *Claim) Start() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended.Load() {
		return false
	}
	c.started++
	return true
}

// Finish records that the message at offset finished (handled, skipped or
// dropped by a stage): its offset may now be committed. started says whether
// it had been dispatched with Start.
func (c *Claim) Finish(offset int64, started bool) {
	c.release(started, func() { c.window.Finish(offset) })
}

// Abandon records that a message will never finish in this assignment (its
// backlog was dropped on shutdown or revoke): it stays uncommitted, so Kafka
// delivers it again.
func (c *Claim) Abandon(started bool) { c.release(started, nil) }

func (c *Claim) release(started bool, finish func()) {
	c.mu.Lock()
	if finish != nil && !c.ended.Load() {
		finish()
	}
	if started {
		c.started--
		if c.started == 0 && c.ended.Load() {
			closeOnce(c.idle)
		}
	}
	c.mu.Unlock()
	c.tracker.inFlight.Add(-1)
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
}

// LastCommitted returns the last committed offset, or -1.
func (c *Claim) LastCommitted() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.committed
}

// end marks the claim ended; no message of it starts from now on.
func (c *Claim) end() {
	c.mu.Lock()
	c.ended.Store(true)
	if c.started == 0 {
		closeOnce(c.idle)
	}
	c.mu.Unlock()
}

// Tracker holds the claims of the current assignment and the counters that
// drive back-pressure. It is safe for concurrent use.
type Tracker struct {
	mu     sync.Mutex
	claims map[TopicPartition]*Claim

	inFlight atomic.Int64 // polled, not yet finished or abandoned
	polled   atomic.Int64
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{claims: make(map[TopicPartition]*Claim)} }

// Assign starts a fresh claim for each partition. A partition that is
// already claimed keeps its claim.
func (t *Tracker) Assign(partitions []TopicPartition) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tp := range partitions {
		if _, ok := t.claims[tp]; !ok {
			t.claims[tp] = &Claim{tp: tp, tracker: t, committed: -1, idle: make(chan struct{})}
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

// End removes the partitions' claims from the assignment and marks them
// ended, so that none of their messages starts any more. It returns the
// ended claims.
func (t *Tracker) End(partitions []TopicPartition) []*Claim {
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
		c.end()
	}
	return ended
}

// WaitIdle waits until no started message of the ended claims is running,
// or until timeout. It reports whether they all went idle.
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
