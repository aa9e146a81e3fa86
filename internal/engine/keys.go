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

// keyQueue is a busy key of a claim: the messages queued behind the one
// out (ready or in a handler), oldest first. A key's ready message and
// the messages queued behind it point to it, so that its backlog is read
// without a lookup. It lives in claim.keys from the key's first message
// until the key is idle again, then goes back to the coordinator's spares.
type keyQueue[K, V any] struct {
	key  uint64
	msgs []entry[K, V] // msgs[head:] wait
	head int
}

// waiting returns the queued messages, oldest first.
func (q *keyQueue[K, V]) waiting() []entry[K, V] { return q.msgs[q.head:] }

// len returns how many messages are queued.
func (q *keyQueue[K, V]) len() int { return len(q.msgs) - q.head }

// push queues e behind the others.
func (q *keyQueue[K, V]) push(e entry[K, V]) {
	if q.head > 0 && len(q.msgs) == cap(q.msgs) {
		q.compact()
	}
	q.msgs = append(q.msgs, e)
}

// take removes the n oldest queued messages.
func (q *keyQueue[K, V]) take(n int) {
	clear(q.msgs[q.head : q.head+n])
	q.head += n
	if q.head == len(q.msgs) {
		q.msgs, q.head = q.msgs[:0], 0
	}
}

// insert queues e in offset order.
func (q *keyQueue[K, V]) insert(e entry[K, V]) {
	q.compact()
	i := sort.Search(len(q.msgs), func(i int) bool { return q.msgs[i].msg.Offset > e.msg.Offset })
	q.msgs = slices.Insert(q.msgs, i, e)
}

// reset empties the queue.
func (q *keyQueue[K, V]) reset() {
	clear(q.msgs)
	q.msgs, q.head = q.msgs[:0], 0
}

func (q *keyQueue[K, V]) compact() {
	n := copy(q.msgs, q.msgs[q.head:])
	clear(q.msgs[n:])
	q.msgs, q.head = q.msgs[:n], 0
}

// The spares are bounded, so that what they hold does not grow with the
// window or with time: at most maxSpareQueues of them, each keeping a
// queue of at most spareQueueCap messages (a hot key's long queue is not
// kept for the cold keys that reuse it).
const (
	maxSpareQueues = 4096
	spareQueueCap  = 16
)

// busyKey marks key busy in cl and returns its queue, empty.
func (c *coordinator[K, V]) busyKey(cl *claim[K, V], key uint64) *keyQueue[K, V] {
	var q *keyQueue[K, V]
	if n := len(c.spareQueues); n > 0 {
		q, c.spareQueues[n-1] = c.spareQueues[n-1], nil
		c.spareQueues = c.spareQueues[:n-1]
	} else {
		q = &keyQueue[K, V]{}
	}
	q.key = key
	cl.keys[key] = q
	return q
}

// idleKey forgets cl's queue q of a key that has nothing queued, ready or
// out any more, and keeps q for another key.
func (c *coordinator[K, V]) idleKey(cl *claim[K, V], q *keyQueue[K, V]) {
	delete(cl.keys, q.key)
	if len(c.spareQueues) >= maxSpareQueues {
		return
	}
	if cap(q.msgs) > spareQueueCap {
		q.msgs = nil
	}
	q.reset()
	c.spareQueues = append(c.spareQueues, q)
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
	e := entry[K, V]{seq: s.seq, claim: cl, msg: s.msg, offset: s.offset}
	s.key, s.ordered = c.routing.key(s.msg.RawKey)
	if !s.ordered {
		c.ready.pushFresh(e)
		c.policy.readied(cl, 1)
		return
	}
	key := s.key
	if q := cl.keys[key]; q != nil {
		s.ready = -1 // queued: set when its key is released
		e.queue = q
		q.push(e)
		n := q.len()
		c.routing.queued++
		c.policy.chainGrew(cl, key, n)
		if n >= minChain && n&(n-1) == 0 && c.policy.quick < quickRun {
			c.promote(q, n)
		}
		c.policy.queuedOn(cl, 1)
		return
	}
	e.queue = c.busyKey(cl, key) // busy, nothing queued
	c.ready.pushFresh(e)
	c.policy.readied(cl, 1)
}

// routeTracked routes a message that left the AfterPoll stages.
func (c *coordinator[K, V]) routeTracked(msg *pipeline.Message[K, V]) {
	cl := c.claimOf(msg)
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

// promote has q's key's ready message, if it waits among the fresh ones,
// compared by its backlog (n, the messages queued behind it) from now on: a
// key that queued minChain messages behind its first one is a chain, and
// its first message must not wait for every message polled before it
// (thousands, when a hot key's partition was read late). It is called
// again each time the queue doubles: in the later heap the message is
// ordered by the backlog it was given, and a hot key's queue grows to
// thousands while released cold keys' messages, with backlogs of a few
// dozen, would keep going first (on a skewed workload over librdkafka
// that delayed the hot key's first message by a quarter of a second).
func (c *coordinator[K, V]) promote(q *keyQueue[K, V], n int) {
	c.ready.promote(func(e *entry[K, V]) bool { return e.queue == q }, n)
}

// backlog returns how many messages wait behind e's key now.
func (c *coordinator[K, V]) backlog(e *entry[K, V]) int {
	if e.queue == nil {
		return 0
	}
	return e.queue.len()
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
	var s *slot[K, V]
	cl := done.origin.claim
	switch {
	case cl == nil:
		if cl = c.claimOf(done.msg); cl != nil {
			s = cl.window.find(done.msg)
		}
	case cl.ended:
		cl = nil
	default:
		s = cl.window.at(done.origin.offset, done.msg)
	}
	if s == nil || s.state != slotDispatched {
		c.inFlight.returned(done.msg)
		return
	}
	cl.outstanding--
	key, ordered := s.key, s.ordered
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
	c.keyLeft(cl, held, key, ordered, verdict == verdictAbandon)
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
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg, offset: s.offset}
	if s.ordered {
		e.queue = cl.keys[s.key]
	}
	e.backlog = c.backlog(&e)
	c.ready.pushLater(e)
	c.policy.readied(cl, 1)
}

// releaseKey frees key and makes the next message queued behind it
// dispatchable (it is usually older than every other ready message).
func (c *coordinator[K, V]) releaseKey(cl *claim[K, V], key uint64) {
	q := cl.keys[key]
	if q == nil || q.len() == 0 {
		if q != nil {
			c.idleKey(cl, q)
		}
		c.policy.chainShrank(cl, key, 0, true)
		return
	}
	next := q.msgs[q.head]
	q.take(1)
	n := q.len()
	c.routing.queued--
	c.policy.chainShrank(cl, key, n, false)
	next.backlog = n
	if c.obs.on() {
		if s := next.slot(); s != nil {
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
func (c *coordinator[K, V]) keyLeft(cl *claim[K, V], held bool, key uint64, ordered, abandon bool) {
	if !ordered || c.batching() && !held {
		return
	}
	if abandon {
		if q := cl.keys[key]; q != nil && q.len() > 0 {
			queue := q.waiting()
			c.routing.queued -= len(queue)
			c.policy.chainShrank(cl, key, 0, false)
			c.policy.queuedOn(cl, -len(queue))
			for _, e := range queue {
				c.abandonEntry(e)
			}
			q.reset() // still held while others of the batch are out
		}
	}
	if c.batching() {
		if n := cl.out[key] - 1; n > 0 {
			cl.out[key] = n
			return
		}
		delete(cl.out, key)
	}
	c.releaseKey(cl, key)
}

// requeue puts a message of a batch that was not handled after all back
// into its key's queue, in offset order: behind the message of its key
// that failed, ahead of those polled after it.
func (c *coordinator[K, V]) requeue(cl *claim[K, V], s *slot[K, V], msg *pipeline.Message[K, V], key uint64, ordered bool) {
	s.state = slotWaiting
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg, offset: s.offset}
	if !ordered {
		c.ready.pushLater(e)
		c.policy.readied(cl, 1)
		return
	}
	q := cl.keys[key]
	if q == nil {
		q = c.busyKey(cl, key)
	}
	e.queue = q
	q.insert(e)
	c.routing.queued++
	c.policy.chainGrew(cl, key, q.len())
	c.policy.queuedOn(cl, 1)
}

// abandonEntry abandons a message that waits, queued or ready.
func (c *coordinator[K, V]) abandonEntry(e entry[K, V]) {
	if s := e.slot(); s != nil && s.state == slotWaiting {
		c.settle(e.claim, s, slotAbandoned)
	}
}
