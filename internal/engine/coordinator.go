package engine

import (
	"context"
	"hash/maphash"
	"log/slog"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// claim is the coordinator's state for one partition during one
// assignment, from assign until revoke or loss. Only the coordinator
// touches it.
type claim[K, V any] struct {
	tp      pipeline.TopicPartition
	id      uint64 // unique per assignment: tells a commit of this claim from one of an earlier claim of the partition
	window  window[K, V]
	keys    map[uint64][]entry[K, V] // busy keys → the messages queued behind the one in flight
	tracked int                      // in the window, not yet finished or abandoned
	start   int64                    // first offset tracked, -1 before: nothing to commit until the window passes it

	outstanding int   // dispatched, not yet back
	dispatched  int64 // highest offset dispatched, -1 before
	stopping    bool  // revoked, lost or draining: only gap fillers start
	revoked     chan struct{}
	// ctx is its handlers' context: cancelled when the claim ends with
	// handlers still running (a revoke timeout, a lost assignment), since
	// the next owner may be handling the same messages by then.
	ctx    context.Context
	cancel context.CancelFunc
}

// wants reports whether a message of the claim at offset, not yet
// dispatched, may still be: any while the claim lives; once it stops, only
// gap fillers, the messages below the highest offset dispatched. Handling
// them lets the final commit reach past everything a handler took, so the
// next owner redoes nothing.
func (c *claim[K, V]) wants(offset int64) bool { return !c.stopping || offset < c.dispatched }

// coordinator is the one goroutine that owns the state of every assigned
// partition (its claim) and of dispatch: the offset windows, the in-flight
// count, the key queues, the set of ready messages and the stopping state.
// Every other stage talks to it over the channels of coordinatorEdges.
//
// It dispatches a message when no earlier message with the same key is in
// flight, and queues it behind that message otherwise; of the dispatchable
// messages the oldest goes first (see ready). It hands the pool no more
// messages than there are handlers (see dispatchLimit for when it queues
// more), so a message that becomes ready (a busy key's next one) does not
// wait behind messages handed out earlier, and its sends to the pool never
// block: the hand-off channel has room for every message out.
type coordinator[K, V any] struct {
	coordinatorEdges[K, V]
	ordering     Ordering
	orderNilKeys bool
	concurrency  int
	stats        *Stats
	log          *slog.Logger
	seed         maphash.Seed

	ctx        context.Context // the handlers' context, which claims' contexts derive from
	claims     map[pipeline.TopicPartition]*claim[K, V]
	claimIDs   uint64
	ready      ready[K, V]
	seq        uint64
	handling   int // dispatched and not out of its handler yet
	inFlight   int // tracked, not finished or abandoned (with the dispatched messages of ended claims)
	freed      int // in-flight slots freed since the poller was last told
	queued     int
	quick      int  // handlers in a row that took less than quickHandler, up to quickRun
	holding    bool // the user paused the pipeline: nothing is dispatched
	draining   bool
	hardStop   bool
	revokes    []*revokeWait[K, V]
	revokesDue bool // a claim being revoked may have nothing in flight now
}

// coordinatorEdges are the coordinator's channels, in the order of the flow.
type coordinatorEdges[K, V any] struct {
	polled     <-chan []*pipeline.Message[K, V] // from the poller: every poll cycle's messages
	routable   <-chan *pipeline.Message[K, V]   // from the AfterPoll stages; nil without them: polled messages are routed at once
	dispatch   chan<- job[K, V]                 // to the handler pool
	handlerEnd <-chan handlerEnded[K, V]        // from the handler pool, once per handler that ended; nil without AfterHandle stages (released tells)
	released   <-chan completion[K, V]          // from the ack collector: the key-released edge
	room       chan<- int                       // to the poller: in-flight slots freed
	rebalances <-chan rebalanceRequest          // from the poller's rebalance listener
	offsets    <-chan chan<- []claimOffset      // from the committer: what is committable now?
	final      chan<- []claimOffset             // to the committer, once, as the coordinator ends
	queries    <-chan revokedQuery              // from stages: pipeline.Revoked
	drainingCh <-chan struct{}                  // closed when a graceful stop begins
}

// revokeWait is a revoke waiting for its claims to have nothing in flight.
type revokeWait[K, V any] struct {
	claims []*claim[K, V]
	reply  chan<- []claimOffset
}

// run coordinates until the pipeline has drained (graceful) or stopped
// (ctx done) and everything dispatched came back, then hands the final
// offsets to the committer.
func (c *coordinator[K, V]) run(ctx context.Context) error {
	c.ctx = ctx
	defer func() {
		for _, cl := range c.claims {
			cl.cancel()
		}
	}()
	polled, routable, released, handlerEnd := c.polled, c.routable, c.released, c.handlerEnd
	draining, done := c.drainingCh, ctx.Done()
	dispatching := true
	defer func() {
		if dispatching { // a panic: the pool must end all the same
			close(c.dispatch)
		}
	}()
	for dispatching || released != nil || handlerEnd != nil {
		if dispatching && (c.hardStop || polled == nil && routable == nil && c.inFlight == 0) {
			dispatching = false
			close(c.dispatch) // the pool ends once its handlers returned
		}
		if dispatching && !c.holding {
			c.dispatchReady()
		}
		if c.revokesDue {
			c.answerRevokes()
		}
		c.publish()
		if c.takeReleased(released) {
			continue // dispatch what they freed before looking further
		}
		select {
		case batch, ok := <-polled:
			if !ok {
				polled = nil
				continue
			}
			c.track(batch, routable == nil)
		case msg, ok := <-routable:
			if !ok {
				routable = nil
				continue
			}
			c.trackPending()
			c.routeTracked(msg)
		case done, ok := <-released:
			if !ok {
				released = nil
				continue
			}
			if c.handlerEnd == nil {
				c.handling--
			}
			c.complete(done)
		case ended, ok := <-handlerEnd:
			if !ok {
				handlerEnd = nil
				continue
			}
			c.handling--
			c.handlerTook(ended.quick)
			if ended.cancelled != nil { // its claim ended: it does not go through the stages
				c.complete(completion[K, V]{msg: ended.cancelled, verdict: verdictAbandon, quick: ended.quick})
			}
		case req := <-c.rebalances:
			c.rebalance(req)
		case reply := <-c.offsets:
			reply <- c.committable(false)
		case q := <-c.queries:
			q.reply <- c.revokedChannel(q.tp)
		case <-draining:
			draining = nil
			c.drain()
		case <-done:
			done = nil
			c.hardStop = true
			c.drain()
		}
	}
	c.publish()
	c.final <- c.committable(true)
	return nil
}

// takeReleased takes back the completions that wait already, in one go:
// no select per message while handlers finish faster than the coordinator
// turns around. It reports whether it took any.
func (c *coordinator[K, V]) takeReleased(released <-chan completion[K, V]) bool {
	n := len(released) // only this goroutine receives: n are there to take
	for range n {
		done := <-released
		if c.handlerEnd == nil {
			c.handling--
		}
		c.complete(done)
	}
	return n > 0
}

// trackPending tracks the poll cycles already sent, before a message that
// left the AfterPoll stages is routed: the poller sends a cycle to the
// coordinator before it sends its messages into the stages, so this is
// the cycle of msg or a later one.
func (c *coordinator[K, V]) trackPending() {
	for n := len(c.polled); n > 0; n-- {
		batch, ok := <-c.polled
		if !ok {
			return
		}
		c.track(batch, false)
	}
}

// publish makes the coordinator's state visible: to Stats, and to the
// poller, which learns how many in-flight slots were freed.
func (c *coordinator[K, V]) publish() {
	c.stats.InFlight.Store(int64(c.inFlight))
	c.stats.Queued.Store(int64(c.queued))
	if c.freed > 0 {
		select {
		case c.room <- c.freed:
			c.freed = 0
		default: // the poller has not read the last count yet: it gets both together
		}
	}
}

// dispatchReady hands ready messages to free handlers, oldest first. The
// sends never block: the hand-off channel holds as many messages as there
// are handlers, and no more than that are ever out.
func (c *coordinator[K, V]) dispatchReady() {
	for c.handling < c.dispatchLimit() && c.ready.len() > 0 {
		e := c.ready.pop()
		s := e.claim.window.find(e.msg)
		s.state = slotDispatched
		e.claim.outstanding++
		e.claim.dispatched = max(e.claim.dispatched, e.msg.Offset)
		c.handling++
		c.dispatch <- job[K, V]{msg: e.msg, ctx: e.claim.ctx}
	}
}

// dispatchLimit is how many messages may be out of the coordinator and
// not yet out of a handler: one per handler, and as many again, queued for
// the handlers, while no message waits behind a busy key or the handlers
// are quick. The queue spares a coordinator round trip (a wakeup on each
// side) per message. It costs nothing while no key has a message waiting,
// since a message becomes ready late only when its key is released; and
// little with quick handlers (a key's next message waits behind at most
// one round of quick handlers). Otherwise dispatch is one message per free
// handler, so that a key's next message, usually the oldest ready one,
// never waits behind messages handed out earlier.
func (c *coordinator[K, V]) dispatchLimit() int {
	if c.queued == 0 || c.quick >= quickRun {
		return 2 * c.concurrency
	}
	return c.concurrency
}

// track adds a poll cycle's messages to their claims' windows: from now on
// they are in flight and hold back their partitions' commits until they
// finish. With route, they are routed at once (no AfterPoll stage).
func (c *coordinator[K, V]) track(batch []*pipeline.Message[K, V], route bool) {
	for _, msg := range batch {
		cl := c.claims[msg.TopicPartition()]
		switch {
		case cl == nil, cl.stopping:
			// Not ours (any more), or polled after the claim began to stop:
			// above everything dispatched, so no gap filler. Dropping it
			// loses nothing: it was never committed.
			c.freed++
			continue
		case !cl.window.add(msg):
			c.log.Error("parallafka: dropping a message polled out of offset order", "message", msg.String())
			c.freed++
			continue
		}
		cl.tracked++
		c.inFlight++
		if cl.start < 0 {
			cl.start = msg.Offset
		}
		if route {
			c.route(cl, &cl.window.slots[len(cl.window.slots)-1])
		}
	}
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

// route makes the message of s dispatchable, or queues it behind its key.
func (c *coordinator[K, V]) route(cl *claim[K, V], s *slot[K, V]) {
	if !cl.wants(s.offset) {
		c.settle(cl, s, slotAbandoned)
		return
	}
	c.seq++
	s.seq, s.state = c.seq, slotWaiting
	e := entry[K, V]{seq: s.seq, claim: cl, msg: s.msg}
	key, ordered := c.routingKey(s.msg)
	if !ordered {
		c.ready.pushFresh(e)
		return
	}
	if queue, busy := cl.keys[key]; busy {
		cl.keys[key] = append(queue, e)
		c.queued++
		return
	}
	cl.keys[key] = nil // busy, nothing queued
	c.ready.pushFresh(e)
}

// routingKey returns the queue a message keeps its order in. Keys are
// hashed: two keys with the same 64-bit hash share a queue, which only adds
// order between them.
func (c *coordinator[K, V]) routingKey(msg *pipeline.Message[K, V]) (key uint64, ordered bool) {
	switch {
	case c.ordering == Unordered:
		return 0, false
	case c.ordering == OrderByPartition:
		return 0, true
	case msg.RawKey == nil:
		return 0, c.orderNilKeys // one queue per partition for keyless messages
	}
	return maphash.Bytes(c.seed, msg.RawKey) | 1, true // never 0, the keyless queue
}

// complete takes back a message from the ack collector: a finished one
// frees its key for the next queued message; a retry goes out again with
// its key still held; an abandoned one takes its key's queue with it.
func (c *coordinator[K, V]) complete(done completion[K, V]) {
	cl := c.claims[done.msg.TopicPartition()]
	var s *slot[K, V]
	if cl != nil {
		s = cl.window.find(done.msg)
	}
	if s == nil || s.state != slotDispatched {
		// Its claim ended (revoke timeout, lost) while it was out: it was
		// still counted in flight until now; it commits nothing.
		c.inFlight--
		c.freed++
		return
	}
	cl.outstanding--
	c.handlerTook(done.quick)
	switch done.verdict {
	case verdictRetry:
		if cl.stopping {
			c.settle(cl, s, slotAbandoned) // never skipped: Kafka delivers it again
			c.abandonKey(cl, done.msg)
			return
		}
		c.stats.Retried.Add(1)
		s.state = slotWaiting
		c.ready.pushLater(entry[K, V]{seq: s.seq, claim: cl, msg: done.msg}) // its key still held
	case verdictFinish:
		c.settle(cl, s, slotFinished)
		c.releaseKey(cl, done.msg)
	default:
		c.settle(cl, s, slotAbandoned)
		c.abandonKey(cl, done.msg)
	}
}

// Handlers count as quick when quickRun in a row took less than
// quickHandler: about what a coordinator round trip costs, so that the
// queue of dispatchLimit delays a busy key's next message by less than a
// round trip would.
const (
	quickHandler = 20 * time.Microsecond
	quickRun     = 32
)

func (c *coordinator[K, V]) handlerTook(quick bool) {
	if !quick {
		c.quick = 0
	} else if c.quick < quickRun {
		c.quick++
	}
}

// settle records that the message of s finished or was abandoned.
func (c *coordinator[K, V]) settle(cl *claim[K, V], s *slot[K, V], state slotState) {
	cl.window.settle(s, state)
	cl.tracked--
	c.inFlight--
	c.freed++
	if cl.stopping && cl.tracked == 0 {
		c.revokesDue = true
	}
}

// releaseKey frees msg's key and makes the next message queued behind it
// dispatchable (it is usually older than every other ready message).
func (c *coordinator[K, V]) releaseKey(cl *claim[K, V], msg *pipeline.Message[K, V]) {
	key, ordered := c.routingKey(msg)
	if !ordered {
		return
	}
	queue := cl.keys[key]
	if len(queue) == 0 {
		delete(cl.keys, key)
		return
	}
	next := queue[0]
	queue[0] = entry[K, V]{}
	cl.keys[key] = queue[1:]
	c.queued--
	if !cl.wants(next.msg.Offset) {
		// Offsets grow along the queue: nothing behind it is wanted either.
		c.abandonEntry(next)
		c.abandonKey(cl, msg)
		return
	}
	c.ready.pushLater(next)
}

// abandonKey drops the messages queued behind msg's key, which msg held,
// and frees the key: none of them may run before Kafka delivers msg again.
func (c *coordinator[K, V]) abandonKey(cl *claim[K, V], msg *pipeline.Message[K, V]) {
	key, ordered := c.routingKey(msg)
	if !ordered {
		return
	}
	queue, busy := cl.keys[key]
	if !busy {
		return
	}
	delete(cl.keys, key)
	c.queued -= len(queue)
	for _, e := range queue {
		c.abandonEntry(e)
	}
}

// abandonEntry abandons a message that waits, queued or ready.
func (c *coordinator[K, V]) abandonEntry(e entry[K, V]) {
	if s := e.claim.window.find(e.msg); s != nil && s.state == slotWaiting {
		c.settle(e.claim, s, slotAbandoned)
	}
}

// drain stops every claim: a graceful stop (or a hard one) begins.
func (c *coordinator[K, V]) drain() {
	c.draining = true
	for _, cl := range c.claims {
		c.stop(cl)
	}
}

// stop makes a claim stop: nothing but gap fillers starts from now on;
// the rest of its backlog is abandoned.
func (c *coordinator[K, V]) stop(cl *claim[K, V]) {
	if !cl.stopping {
		cl.stopping = true
		close(cl.revoked)
	}
	if c.hardStop {
		cl.dispatched = -1 // no gap fillers either
	}
	c.ready.filter(func(e entry[K, V]) bool {
		if e.claim != cl || cl.wants(e.msg.Offset) {
			return true
		}
		c.abandonEntry(e)
		c.abandonKey(cl, e.msg) // drops from the key queues, not from ready
		return false
	})
	for key, queue := range cl.keys {
		n := len(queue)
		for n > 0 && !cl.wants(queue[n-1].msg.Offset) {
			n--
		}
		c.queued -= len(queue) - n
		for _, e := range queue[n:] {
			c.abandonEntry(e)
		}
		clear(queue[n:])
		cl.keys[key] = queue[:n]
	}
	cl.window.each(func(s *slot[K, V]) {
		if s.state == slotPolled && !cl.wants(s.offset) {
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
	if cl.outstanding > 0 {
		c.log.Warn("parallafka: cancelling the handlers of a partition given up; their messages are redelivered to the next owner",
			"partition", cl.tp, "handlers", cl.outstanding)
	}
	cl.cancel()
	c.ready.filter(func(e entry[K, V]) bool { return e.claim != cl })
	for _, queue := range cl.keys {
		c.queued -= len(queue)
	}
	cl.keys = nil
	gone := cl.tracked - cl.outstanding
	c.inFlight -= gone
	c.freed += gone
}

// rebalance carries out a request of the poller's rebalance listener.
func (c *coordinator[K, V]) rebalance(req rebalanceRequest) {
	switch req.kind {
	case rebalanceAssign:
		for _, tp := range req.partitions {
			if _, ok := c.claims[tp]; ok {
				continue // still ours (incremental assignment)
			}
			c.claimIDs++
			cl := &claim[K, V]{
				tp: tp, id: c.claimIDs, keys: make(map[uint64][]entry[K, V]),
				start: -1, dispatched: -1, revoked: make(chan struct{}),
			}
			cl.ctx, cl.cancel = context.WithCancel(c.ctx)
			if c.draining {
				cl.stopping = true
				close(cl.revoked)
			}
			c.claims[tp] = cl
		}
		req.reply <- nil
	case rebalanceRevoke:
		w := &revokeWait[K, V]{reply: req.reply}
		for _, tp := range req.partitions {
			if cl := c.claims[tp]; cl != nil {
				w.claims = append(w.claims, cl)
			}
		}
		c.revokes = append(c.revokes, w)
		for _, cl := range w.claims {
			c.stop(cl)
		}
		c.revokesDue = true
	case rebalanceGiveUp:
		for i, w := range c.revokes {
			if w.reply == req.reply {
				c.revokes = append(c.revokes[:i], c.revokes[i+1:]...)
				c.answerRevoke(w)
				return
			}
		}
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
		if off, ok := c.claimOffset(cl); ok {
			offsets = append(offsets, off)
		}
		c.end(cl)
	}
	w.reply <- offsets
}

// committable returns the offsets to commit: for every claim whose window
// moved past its start. A periodic commit (final false) skips stopping
// claims: a revoke commits those, or nobody (lost).
func (c *coordinator[K, V]) committable(final bool) []claimOffset {
	offsets := make([]claimOffset, 0, len(c.claims))
	for _, cl := range c.claims {
		if cl.stopping && !final {
			continue
		}
		if off, ok := c.claimOffset(cl); ok {
			offsets = append(offsets, off)
		}
	}
	return offsets
}

func (c *coordinator[K, V]) claimOffset(cl *claim[K, V]) (claimOffset, bool) {
	off, ok := cl.window.committable()
	if !ok || off <= cl.start {
		return claimOffset{}, false // nothing finished past the starting position
	}
	return claimOffset{Offset: pipeline.Offset{TopicPartition: cl.tp, Offset: off}, claim: cl.id}, true
}

// revokedChannel answers pipeline.Revoked.
func (c *coordinator[K, V]) revokedChannel(tp pipeline.TopicPartition) <-chan struct{} {
	if cl := c.claims[tp]; cl != nil {
		return cl.revoked
	}
	return closedChannel
}

var closedChannel = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()
