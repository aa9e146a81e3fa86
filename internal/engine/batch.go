package engine

import (
	"context"
	"slices"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// batch is what the coordinator hands a batch handler: messages of free
// keys, each key's messages together and in offset order.
type batch[K, V any] struct {
	msgs []*pipeline.Message[K, V]
	// prev[i] is the index of the previous message of msgs[i]'s key (or
	// partition, in partition mode) in the batch, -1 for none: when a
	// message fails, the later ones of its key are requeued behind it.
	prev []int32
	// claimCtx[i] is the context of msgs[i]'s claim: done once the claim
	// ended (a revoke timeout, a lost assignment) or on a hard stop.
	claimCtx []context.Context
	// release frees the batch's merged context, if it has one (a batch of
	// several partitions is cancelled when any of their claims ends).
	release func()
}

// The coordinator's batch mode. A batch is assembled from the ready set as
// single messages are dispatched (longest key backlog first), and each
// message taken brings the messages queued behind its key along, up to the
// batch's limits: a hot key goes out in long runs, and a batch never waits
// for a key that is busy elsewhere. The key stays held until every message
// of it in the batch left for good (claim.out counts them); a retry keeps
// holding it, like in single-message mode.

// batching reports whether the coordinator assembles batches.
func (c *coordinator[K, V]) batching() bool { return c.batch.MaxMessages > 0 }

// handlerCapacity is how many messages the handlers take at once: one per
// handler, or a full batch per handler.
func (c *coordinator[K, V]) handlerCapacity() int {
	return c.policy.concurrency * max(1, c.batch.MaxMessages)
}

// dispatchBatches hands batches to free handlers: a full one at once, a
// partial one once it lingered. The sends never block: no more batches
// than handlers are ever out.
func (c *coordinator[K, V]) dispatchBatches() {
	for c.policy.handling < c.policy.handlerLimit() && c.ready.len() > 0 {
		if !c.batchDue() {
			return
		}
		if c.rates != nil {
			now := time.Now()
			if d := c.rates.globalDelay(now, 1, 0); d > 0 {
				c.stats.Throttled.Add(1)
				c.rates.arm(now, now.Add(d))
				return
			}
		}
		c.lingerFrom = time.Time{}
		b, ctx := c.assembleBatch()
		if c.rates != nil {
			size := 0
			for _, m := range b.msgs {
				size += len(m.RawKey) + len(m.RawValue)
			}
			c.rates.takeGlobal(time.Now(), len(b.msgs), size)
		}
		c.policy.handling++
		c.dispatch <- job[K, V]{ctx: ctx, batch: b}
	}
	if c.ready.len() == 0 {
		c.lingerFrom = time.Time{}
	}
}

// batchDue reports whether a batch should go now: it is full, lingering is
// off, or the partial batch lingered long enough (otherwise the linger
// timer is armed to wake the coordinator).
func (c *coordinator[K, V]) batchDue() bool {
	if c.batch.Linger <= 0 || c.draining || c.batchFull() {
		return true
	}
	now := time.Now()
	if c.lingerFrom.IsZero() {
		c.lingerFrom = now
	}
	due := c.lingerFrom.Add(c.batch.Linger)
	if !now.Before(due) {
		return true
	}
	if c.lingerTimer == nil {
		c.lingerTimer = time.NewTimer(due.Sub(now))
	} else {
		c.lingerTimer.Reset(due.Sub(now))
	}
	c.lingerC = c.lingerTimer.C
	return false
}

// batchFull reports whether the ready messages, with those queued behind
// their keys, fill a batch. It looks at no more than MaxMessages entries.
func (c *coordinator[K, V]) batchFull() bool {
	if c.ready.len() >= c.batch.MaxMessages {
		return true
	}
	n, bytes := 0, int64(0)
	c.ready.each(func(e *entry[K, V]) bool {
		n++
		if s := e.slot(); s != nil {
			bytes += int64(s.size)
		}
		if e.queue != nil {
			for _, q := range e.queue.waiting() {
				if n >= c.batch.MaxMessages || bytes >= c.batch.MaxBytes {
					break
				}
				n++
				if s := q.slot(); s != nil {
					bytes += int64(s.size)
				}
			}
		}
		return n < c.batch.MaxMessages && bytes < c.batch.MaxBytes
	})
	return n >= c.batch.MaxMessages || bytes >= c.batch.MaxBytes
}

// assembleBatch takes a batch out of the ready set and the key queues, and
// returns it with its handlers' context.
func (c *coordinator[K, V]) assembleBatch() (*batch[K, V], context.Context) {
	b := &batch[K, V]{}
	var bytes int64
	var ctxs []context.Context // the distinct claims' contexts
	fits := func(s *slot[K, V]) bool {
		return len(b.msgs) == 0 || len(b.msgs) < c.batch.MaxMessages && bytes+int64(s.size) <= c.batch.MaxBytes
	}
	add := func(cl *claim[K, V], s *slot[K, V], key uint64, ordered bool, prev int32) {
		s.state = slotDispatched
		s.routed = c.policy.coarse // for the stall check: about when its handler started
		cl.outstanding++
		if ordered && !s.held {
			s.held = true
			if cl.out == nil {
				cl.out = make(map[uint64]int)
			}
			cl.out[key]++
		}
		bytes += int64(s.size)
		b.msgs = append(b.msgs, s.msg)
		b.prev = append(b.prev, prev)
		b.claimCtx = append(b.claimCtx, cl.ctx)
		if !slices.Contains(ctxs, cl.ctx) {
			ctxs = append(ctxs, cl.ctx)
		}
	}
	for len(b.msgs) < c.batch.MaxMessages && c.ready.len() > 0 {
		e := c.ready.pop(c.backlog)
		s := e.slot()
		if !fits(s) {
			c.ready.pushLater(e) // the batch is full: it waits for the next
			break
		}
		cl := e.claim
		c.policy.readied(cl, -1)
		key, ordered := s.key, s.ordered
		held := cl.heldKeys != nil && c.heldBack(e)
		add(cl, s, key, ordered, -1)
		if !ordered || held {
			continue // a held key's messages go one by one, in order
		}
		// The messages queued behind the key come along, in order.
		queue := e.queue.waiting()
		taken := 0
		for _, q := range queue {
			qs := q.slot()
			if !fits(qs) {
				break
			}
			add(cl, qs, key, true, int32(len(b.msgs)-1))
			taken++
		}
		if taken > 0 {
			e.queue.take(taken)
			c.routing.queued -= taken
			c.policy.chainShrank(cl, key, len(queue)-taken, false)
			c.policy.queuedOn(cl, -taken)
		}
	}
	if len(ctxs) == 1 {
		return b, ctxs[0]
	}
	// A batch of several partitions: cancelled when any of them ends.
	ctx, cancel := context.WithCancel(c.ctx)
	stops := make([]func() bool, len(ctxs))
	for i, cctx := range ctxs {
		stops[i] = context.AfterFunc(cctx, cancel)
	}
	b.release = func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
	return b, ctx
}
