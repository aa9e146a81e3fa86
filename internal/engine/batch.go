package engine

import (
	"context"
	"slices"
	"sort"
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
	return c.concurrency * max(1, c.batch.MaxMessages)
}

// dispatchBatches hands batches to free handlers: a full one at once, a
// partial one once it lingered. The sends never block: no more batches
// than handlers are ever out.
func (c *coordinator[K, V]) dispatchBatches() {
	for c.handling < c.handlerLimit() && c.ready.len() > 0 {
		if !c.batchDue() {
			return
		}
		c.lingerFrom = time.Time{}
		b, ctx := c.assembleBatch()
		c.handling++
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
		if s := e.claim.window.find(e.msg); s != nil {
			bytes += int64(s.size)
		}
		if key, ordered := c.routingKey(e.msg); ordered {
			for _, q := range e.claim.keys[key] {
				if n >= c.batch.MaxMessages || bytes >= c.batch.MaxBytes {
					break
				}
				n++
				if s := q.claim.window.find(q.msg); s != nil {
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
		s.routed = c.coarse // for the stall check: about when its handler started
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
		s := e.claim.window.find(e.msg)
		if !fits(s) {
			c.ready.pushLater(e) // the batch is full: it waits for the next
			break
		}
		cl := e.claim
		c.readied(cl, -1)
		key, ordered := c.routingKey(e.msg)
		add(cl, s, key, ordered, -1)
		if !ordered {
			continue
		}
		// The messages queued behind the key come along, in order.
		queue := cl.keys[key]
		taken := 0
		for _, q := range queue {
			qs := cl.window.find(q.msg)
			if !fits(qs) {
				break
			}
			add(cl, qs, key, true, int32(len(b.msgs)-1))
			taken++
		}
		if taken > 0 {
			clear(queue[:taken])
			cl.keys[key] = queue[taken:]
			c.queued -= taken
			c.chainShrank(cl, key, len(queue)-taken, false)
			c.queuedOn(cl, -taken)
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

// requeue puts a message of a batch that was not handled after all back
// into its key's queue, in offset order: behind the message of its key
// that failed, ahead of those polled after it.
func (c *coordinator[K, V]) requeue(cl *claim[K, V], s *slot[K, V], msg *pipeline.Message[K, V], key uint64, ordered bool) {
	s.state = slotWaiting
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg}
	if !ordered {
		c.ready.pushLater(e)
		c.readied(cl, 1)
		return
	}
	queue := cl.keys[key]
	i := sort.Search(len(queue), func(i int) bool { return queue[i].msg.Offset > msg.Offset })
	cl.keys[key] = slices.Insert(queue, i, e)
	c.queued++
	c.chainGrew(cl, key, len(queue)+1)
	c.queuedOn(cl, 1)
}

// keyLeft counts a message out of its key's messages out (in batch mode,
// several of a key may be out together; each holds it); the last one out
// frees the key: the next message queued behind it becomes ready. An
// abandoned message (abandon) takes the key's queue with it: none of it
// may run before Kafka delivers the message again.
func (c *coordinator[K, V]) keyLeft(cl *claim[K, V], held bool, msg *pipeline.Message[K, V], key uint64, ordered, abandon bool) {
	if !ordered || c.batching() && !held {
		return
	}
	if abandon {
		if queue := cl.keys[key]; len(queue) > 0 {
			cl.keys[key] = nil // still held while others of the batch are out
			c.queued -= len(queue)
			c.chainShrank(cl, key, 0, false)
			c.queuedOn(cl, -len(queue))
			for _, e := range queue {
				c.abandonEntry(e)
			}
		}
	}
	if c.batching() {
		if n := cl.out[key] - 1; n > 0 {
			cl.out[key] = n
			return
		}
		delete(cl.out, key)
	}
	c.releaseKey(cl, msg)
}

// orphaned takes back a message whose claim ended while it was out: it was
// still counted in flight until now; it commits nothing.
func (c *coordinator[K, V]) orphaned(msg *pipeline.Message[K, V]) {
	size := c.orphans[msg]
	delete(c.orphans, msg)
	c.inFlight--
	c.inFlightBytes -= int64(size)
	c.free(size)
}

// takeHandlerEnds takes the handler ends waiting already, and reports how
// many it took: a batch's settled messages (its requeued ones, above all)
// must be taken before the completions of its failed messages that the
// stages send on.
func (c *coordinator[K, V]) takeHandlerEnds() int {
	n := len(c.handlerEnd) // only this goroutine receives
	for range n {
		c.handlerEnded(<-c.handlerEnd)
	}
	return n
}

// handlerEnded takes a handler's end: it is free again, and the messages
// it settled come back.
func (c *coordinator[K, V]) handlerEnded(ended handlerEnded[K, V]) {
	c.handlerReturned(ended.call)
	c.handlerTook(ended.quick)
	if ended.done.msg != nil {
		c.complete(ended.done)
	}
	for _, done := range ended.settled {
		c.complete(done)
	}
}
