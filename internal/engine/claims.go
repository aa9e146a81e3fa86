package engine

import (
	"context"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// claim is the coordinator's state for one partition during one
// assignment, from assign until revoke or loss. Only the coordinator
// touches it.
type claim[K, V any] struct {
	tp      pipeline.TopicPartition
	id      uint64 // unique per assignment: tells a commit of this claim from one of an earlier claim of the partition
	window  window[K, V]
	keys    map[uint64]*keyQueue[K, V] // busy keys → the messages queued behind the one in flight
	out     map[uint64]int             // batch mode: busy keys → their messages out in batches (or waiting for a retry)
	tracked int                        // in the window, not yet finished or abandoned
	start   int64                      // first offset tracked, -1 before: nothing to commit until the window passes it

	outstanding   int  // dispatched, not yet back
	stopping      bool // revoked, lost or draining: nothing starts any more
	ended         bool // forgotten (end): its messages move no commit
	revoked       chan struct{}
	claimSteering // the dispatch policy's state of it (steer.go)
	// inherited are the offsets an earlier owner finished past the
	// committed offset (its offset map), from the first not yet polled on:
	// polled, they count as finished at once.
	inherited []offsetmap.Run
	// committed is the offset committed when it was assigned (-1: none).
	committed int64
	// heldKeys are its held keys, by raw key (heldkeys.go); nil: none.
	// heldChanged: the set changed since the assignment (a release), so
	// the metadata must be written again even if nothing else moved.
	heldKeys    map[string]*heldKey
	heldChanged bool
	// outputs are a transactional pipeline's outputs of its messages
	// (outbox.go).
	outputs claimOutputs
	// Stall detection (stall.go): the committable offset last seen, when
	// it was seen to move, and the stall found, if any.
	progressOff int64
	progressAt  time.Duration
	stall       *pipeline.Stall
	// ctx is its handlers' context: cancelled when the claim ends with
	// handlers still running (a revoke timeout, a lost assignment), since
	// the next owner may be handling the same messages by then.
	ctx    context.Context
	cancel context.CancelFunc
}

// finishedBefore reports whether an earlier owner finished offset (its
// offset map says so). Offsets are asked in increasing order.
func (c *claim[K, V]) finishedBefore(offset int64) bool {
	for len(c.inherited) > 0 && c.inherited[0].To <= offset {
		c.inherited = c.inherited[1:]
	}
	return len(c.inherited) > 0 && c.inherited[0].From <= offset
}

// revokeWait is a revoke waiting for its claims to have nothing in flight.
type revokeWait[K, V any] struct {
	claims []*claim[K, V]
	reply  chan<- []claimOffset
}

// rebalance carries out a request of the poller's rebalance listener.
func (c *coordinator[K, V]) rebalance(req rebalanceRequest) {
	switch req.kind {
	case rebalanceAssign:
		c.assign(req.partitions, req.committed)
		req.reply <- nil
	case rebalanceRevoke:
		c.revoke(req.partitions, req.reply) // replied once idle
	case rebalanceGiveUp:
		c.giveUp(req.reply)
	case rebalanceHold, rebalanceUnhold:
		c.holding = req.kind == rebalanceHold
		req.reply <- nil
	case rebalanceLost:
		for _, tp := range req.partitions {
			if cl := c.claims[tp]; cl != nil {
				c.end(cl)
			}
		}
		req.reply <- nil
	}
}

// assign starts a claim for each partition not claimed yet, with the
// offset map of its committed offset.
func (c *coordinator[K, V]) assign(tps []pipeline.TopicPartition, committed []pipeline.Offset) {
	for _, tp := range tps {
		if _, ok := c.claims[tp]; ok {
			continue // still ours (incremental assignment)
		}
		c.claimIDs++
		cl := &claim[K, V]{
			tp: tp, id: c.claimIDs, keys: make(map[uint64]*keyQueue[K, V]),
			start: -1, revoked: make(chan struct{}), progressOff: -1, progressAt: c.policy.coarse,
		}
		var held []offsetmap.Held
		cl.committed, cl.inherited, held = inheritedMap(c.log, committed, tp)
		cl.ctx, cl.cancel = context.WithCancel(c.ctx)
		if c.draining {
			cl.stopping = true
			close(cl.revoked)
		}
		c.claims[tp] = cl
		c.indexClaim(cl)
		c.restoreHeld(cl, held)
	}
	c.policy.sizeSurplus(c.claims, c.handlerCapacity())
}

// maxIndexedPartition bounds the claims' table by partition number.
const maxIndexedPartition = 1 << 12

// indexClaim puts cl in the table by partition number, unless a claim of
// another topic has its number there.
func (c *coordinator[K, V]) indexClaim(cl *claim[K, V]) {
	p := int(cl.tp.Partition)
	if p < 0 || p >= maxIndexedPartition {
		return
	}
	if p >= len(c.byPartition) {
		c.byPartition = append(c.byPartition, make([]*claim[K, V], p+1-len(c.byPartition))...)
	}
	if c.byPartition[p] == nil {
		c.byPartition[p] = cl
	}
}

// claimOf returns the claim of msg's partition, or nil. The table by
// partition number answers first: the map hashes the topic's name.
func (c *coordinator[K, V]) claimOf(msg *pipeline.Message[K, V]) *claim[K, V] {
	if p := int(msg.Partition); p >= 0 && p < len(c.byPartition) {
		if cl := c.byPartition[p]; cl != nil && cl.tp.Topic == msg.Topic {
			return cl
		}
	}
	return c.claims[msg.TopicPartition()]
}

// revoke stops the partitions' claims; reply gets their final offsets
// once they have nothing in flight (answerRevokes), or when the poller
// gives up waiting (giveUp).
func (c *coordinator[K, V]) revoke(tps []pipeline.TopicPartition, reply chan<- []claimOffset) {
	w := &revokeWait[K, V]{reply: reply}
	for _, tp := range tps {
		if cl := c.claims[tp]; cl != nil {
			w.claims = append(w.claims, cl)
		}
	}
	c.revokes = append(c.revokes, w)
	for _, cl := range w.claims {
		c.stop(cl)
	}
	c.revokesDue = true
}

// giveUp answers the revoke waiting on reply now: its timeout passed.
func (c *coordinator[K, V]) giveUp(reply chan<- []claimOffset) {
	for i, w := range c.revokes {
		if w.reply == reply {
			c.revokes = append(c.revokes[:i], c.revokes[i+1:]...)
			c.answerRevoke(w)
			return
		}
	}
}

// answerRevokes answers every revoke whose claims have nothing in flight.
func (c *coordinator[K, V]) answerRevokes() {
	c.revokesDue = false
	var idle []*revokeWait[K, V]
	kept := c.revokes[:0]
	for _, w := range c.revokes {
		done := true
		for _, cl := range w.claims {
			done = done && cl.tracked == 0
		}
		if done {
			idle = append(idle, w)
		} else {
			kept = append(kept, w)
		}
	}
	clear(c.revokes[len(kept):])
	c.revokes = kept
	for _, w := range idle {
		c.answerRevoke(w)
	}
}

// answerRevoke replies to a revoke with its claims' final offsets and ends
// the claims.
func (c *coordinator[K, V]) answerRevoke(w *revokeWait[K, V]) {
	var offsets []claimOffset
	for _, cl := range w.claims {
		if off, ok := cl.position(); ok {
			offsets = append(offsets, off)
		}
		c.end(cl)
	}
	w.reply <- offsets
}

// drain stops every claim: a graceful stop (or a hard one) begins.
func (c *coordinator[K, V]) drain() {
	c.draining = true
	for _, cl := range c.claims {
		c.stop(cl)
	}
}

// stop makes a claim stop: nothing starts from now on, and its backlog
// (every message not in a handler) is abandoned. What finished stays
// finished: the final commit's offset map carries it to the next owner.
func (c *coordinator[K, V]) stop(cl *claim[K, V]) {
	if !cl.stopping {
		cl.stopping = true
		close(cl.revoked)
	}
	c.ready.filter(func(e entry[K, V]) bool {
		if e.claim != cl {
			return true
		}
		c.abandonEntry(e)
		return false
	})
	for key, q := range cl.keys {
		// Not kept as a spare: a message of the key may still be out,
		// and the queue is gone when it comes back.
		c.routing.queued -= q.len()
		for _, e := range q.waiting() {
			c.abandonEntry(e)
		}
		delete(cl.keys, key)
	}
	if c.rates != nil {
		kept := c.rates.parked[:0]
		for _, p := range c.rates.parked {
			if p.e.claim == cl {
				c.abandonEntry(p.e)
				continue
			}
			kept = append(kept, p)
		}
		clear(c.rates.parked[len(kept):])
		c.rates.parked = kept
	}
	cl.readyN, cl.queuedN = 0, 0
	c.policy.forgetChain(cl)
	c.policy.checkSurplus(cl)
	cl.window.each(func(s *slot[K, V]) {
		if s.state == slotPolled {
			c.settle(cl, s, slotAbandoned) // still in the AfterPoll stages
		}
	})
	c.revokesDue = c.revokesDue || cl.tracked == 0
}

// end forgets a claim: from now on its messages move no commit. Those out
// in handlers stay counted in flight until they come back.
func (c *coordinator[K, V]) end(cl *claim[K, V]) {
	if c.claims[cl.tp] != cl {
		return
	}
	c.stop(cl)
	delete(c.claims, cl.tp)
	cl.ended = true
	if p := int(cl.tp.Partition); p < len(c.byPartition) && c.byPartition[p] == cl {
		c.byPartition[p] = nil
	}
	c.unstall(cl)
	c.inFlight.releaseOutputs(cl.outputs.bytes) // committed with its last offsets, or not at all
	c.heldN -= len(cl.heldKeys)                 // they go with the partition, in its last commit
	if cl.outstanding > 0 {
		c.log.Warn("parallafka: cancelling the handlers of a partition given up; their messages are redelivered to the next owner",
			"partition", cl.tp, "handlers", cl.outstanding)
	}
	cl.cancel()
	c.policy.sizeSurplus(c.claims, c.handlerCapacity())
	c.policy.steeringChanged = true
	c.ready.filter(func(e entry[K, V]) bool { return e.claim != cl })
	for _, q := range cl.keys {
		c.routing.queued -= q.len()
	}
	cl.keys = nil
	cl.window.each(func(s *slot[K, V]) {
		switch s.state {
		case slotDispatched:
			c.inFlight.orphan(s.msg, s.size)
		case slotPolled, slotWaiting:
			c.inFlight.remove(s.size)
		}
	})
}

// revokedChannel answers pipeline.Revoked.
func (c *coordinator[K, V]) revokedChannel(tp pipeline.TopicPartition) <-chan struct{} {
	if cl := c.claims[tp]; cl != nil {
		return cl.revoked
	}
	return closedChannel
}

var closedChannel = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()
