package engine

import (
	"hash/maphash"
	"slices"
	"sort"

	"github.com/parallafka/parallafka/pipeline"
)

// keyRouting is how messages keep their order: which queue a message
// waits in (key), and how many messages wait behind busy keys in all. The
// queues are each claim's (claim.keys): a key's queue goes with its
// partition.
type keyRouting struct {
	ordering     Ordering
	orderNilKeys bool
	seed         maphash.Seed
	queued       int
}

// key returns the queue a message with rawKey keeps its order in. Keys are
// hashed: two keys with the same 64-bit hash share a queue, which only adds
// order between them.
func (r *keyRouting) key(rawKey []byte) (key uint64, ordered bool) {
	switch {
	case r.ordering == Unordered:
		return 0, false
	case r.ordering == OrderByPartition:
		return 0, true
	case rawKey == nil:
		return 0, r.orderNilKeys // one queue per partition for keyless messages
	}
	return maphash.Bytes(r.seed, rawKey) | 1, true // never 0, the keyless queue
}

// route makes the message of s dispatchable, or queues it behind its key.
func (c *coordinator[K, V]) route(cl *claim[K, V], s *slot[K, V]) {
	if cl.stopping {
		c.settle(cl, s, slotAbandoned)
		return
	}
	c.seq++
	s.seq, s.state = c.seq, slotWaiting
	if c.obs.on() {
		s.routed = c.policy.clock()
		s.ready = s.routed // until it turns out to be queued
	}
	e := entry[K, V]{seq: s.seq, claim: cl, msg: s.msg}
	key, ordered := c.routing.key(s.msg.RawKey)
	if !ordered {
		c.ready.pushFresh(e)
		c.policy.readied(cl, 1)
		return
	}
	if queue, busy := cl.keys[key]; busy {
		s.ready = -1 // queued: set when its key is released
		cl.keys[key] = append(queue, e)
		c.routing.queued++
		c.policy.chainGrew(cl, key, len(queue)+1)
		if len(queue)+1 == minChain && c.policy.quick < quickRun {
			c.promote(cl, key)
		}
		c.policy.queuedOn(cl, 1)
		return
	}
	cl.keys[key] = nil // busy, nothing queued
	c.ready.pushFresh(e)
	c.policy.readied(cl, 1)
}

// routeTracked routes a message that left the AfterPoll stages.
func (c *coordinator[K, V]) routeTracked(msg *pipeline.Message[K, V]) {
	cl := c.claims[msg.TopicPartition()]
	if cl == nil {
		return // its claim ended, which counted it out
	}
	s := cl.window.find(msg)
	if s == nil || s.state != slotPolled {
		if s == nil {
			c.log.Error("parallafka: a stage sent on a message the pipeline does not know", "message", msg.String())
		}
		return // abandoned while it was in the stages
	}
	c.route(cl, s)
}

// promote has key's ready message, if it waits among the fresh ones,
// compared by its backlog from now on: a key that queued minChain messages
// behind its first one is a chain, and its first message must not wait for
// every message polled before it (thousands, when a hot key's partition
// was read late).
func (c *coordinator[K, V]) promote(cl *claim[K, V], key uint64) {
	c.ready.promote(func(e *entry[K, V]) bool {
		if e.claim != cl {
			return false
		}
		k, _ := c.routing.key(e.msg.RawKey)
		return k == key
	}, minChain)
}

// backlog returns how many messages wait behind e's key now.
func (c *coordinator[K, V]) backlog(e *entry[K, V]) int {
	key, ordered := c.routing.key(e.msg.RawKey)
	if !ordered {
		return 0
	}
	return len(e.claim.keys[key])
}

// complete takes back a message from a handler, or from the ack collector
// past the AfterHandle stages: a finished one frees its key for the next
// queued message; a retry goes out again with its key still held; an
// abandoned one takes its key's queue with it; a requeued one (batch mode)
// waits again in its key's queue.
func (c *coordinator[K, V]) complete(done completion[K, V]) {
	if done.verdict == verdictRetry || done.verdict == verdictRequeue {
		// A stage may have acted on Draining (a retry's wait cut short)
		// before this goroutine took the draining edge: take it first, so
		// that a retry during shutdown is abandoned, never handled again.
		c.noticeDraining()
	}
	cl := c.claims[done.msg.TopicPartition()]
	var s *slot[K, V]
	if cl != nil {
		s = cl.window.find(done.msg)
	}
	if s == nil || s.state != slotDispatched {
		c.inFlight.returned(done.msg)
		return
	}
	cl.outstanding--
	key, ordered := c.routing.key(done.msg.RawKey)
	verdict := done.verdict
	if cl.stopping && (verdict == verdictRetry || verdict == verdictRequeue) {
		verdict = verdictAbandon // never skipped: Kafka delivers it again
	}
	// Taken before settle, which may move the window's slots. A retry
	// keeps holding its key. A message not handled because its key was
	// held holds nothing more.
	held := s.held
	hold := done.hold && !s.heldBack && verdict == verdictFinish
	if len(done.staged) > 0 {
		cl.outputs.staged(s.offset, done.staged)
	}
	if cl.outputs.attempt != nil {
		c.inFlight.holdOutputs(cl.outputs.settled(s.offset, verdict == verdictFinish))
	}
	if verdict != verdictRetry {
		s.held = false
	}
	switch verdict {
	case verdictRetry:
		c.readyAgain(cl, s, done.msg)
		return
	case verdictRequeue:
		c.requeue(cl, s, done.msg, key, ordered)
	case verdictFinish:
		c.settle(cl, s, slotFinished)
		if hold {
			c.holdKey(cl, done.msg) // before its key's next message is ready
		}
	default:
		c.settle(cl, s, slotAbandoned)
	}
	c.keyLeft(cl, held, done.msg, key, ordered, verdict == verdictAbandon)
}

// readyAgain makes a message whose handler asked for a retry dispatchable
// again, its key still held: the later messages of its key keep waiting.
func (c *coordinator[K, V]) readyAgain(cl *claim[K, V], s *slot[K, V], msg *pipeline.Message[K, V]) {
	c.stats.Retried.Add(1)
	s.state = slotWaiting
	if c.obs.on() {
		s.routed = c.policy.clock()
		s.ready = s.routed
	}
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg}
	e.backlog = c.backlog(&e)
	c.ready.pushLater(e)
	c.policy.readied(cl, 1)
}

// releaseKey frees msg's key and makes the next message queued behind it
// dispatchable (it is usually older than every other ready message).
func (c *coordinator[K, V]) releaseKey(cl *claim[K, V], msg *pipeline.Message[K, V]) {
	key, ordered := c.routing.key(msg.RawKey)
	if !ordered {
		return
	}
	queue := cl.keys[key]
	if len(queue) == 0 {
		delete(cl.keys, key)
		c.policy.chainShrank(cl, key, 0, true)
		return
	}
	next := queue[0]
	queue[0] = entry[K, V]{}
	cl.keys[key] = queue[1:]
	c.routing.queued--
	c.policy.chainShrank(cl, key, len(queue)-1, false)
	next.backlog = len(queue) - 1
	if c.obs.on() {
		if s := cl.window.find(next.msg); s != nil {
			s.ready = c.policy.clock()
		}
	}
	c.ready.pushLater(next)
	cl.queuedN--
	c.policy.readied(cl, 1)
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
			c.routing.queued -= len(queue)
			c.policy.chainShrank(cl, key, 0, false)
			c.policy.queuedOn(cl, -len(queue))
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

// requeue puts a message of a batch that was not handled after all back
// into its key's queue, in offset order: behind the message of its key
// that failed, ahead of those polled after it.
func (c *coordinator[K, V]) requeue(cl *claim[K, V], s *slot[K, V], msg *pipeline.Message[K, V], key uint64, ordered bool) {
	s.state = slotWaiting
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg}
	if !ordered {
		c.ready.pushLater(e)
		c.policy.readied(cl, 1)
		return
	}
	queue := cl.keys[key]
	i := sort.Search(len(queue), func(i int) bool { return queue[i].msg.Offset > msg.Offset })
	cl.keys[key] = slices.Insert(queue, i, e)
	c.routing.queued++
	c.policy.chainGrew(cl, key, len(queue)+1)
	c.policy.queuedOn(cl, 1)
}

// abandonEntry abandons a message that waits, queued or ready.
func (c *coordinator[K, V]) abandonEntry(e entry[K, V]) {
	if s := e.claim.window.find(e.msg); s != nil && s.state == slotWaiting {
		c.settle(e.claim, s, slotAbandoned)
	}
}
