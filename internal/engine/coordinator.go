package engine

import (
	"context"
	"hash/maphash"
	"log/slog"
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
	keys    map[uint64][]entry[K, V] // busy keys → the messages queued behind the one in flight
	out     map[uint64]int           // batch mode: busy keys → their messages out in batches (or waiting for a retry)
	tracked int                      // in the window, not yet finished or abandoned
	start   int64                    // first offset tracked, -1 before: nothing to commit until the window passes it

	outstanding int  // dispatched, not yet back
	stopping    bool // revoked, lost or draining: nothing starts any more
	revoked     chan struct{}
	readyN      int  // its messages in the ready set
	queuedN     int  // its messages queued behind busy keys
	surplus     bool // its ready messages are more than the handlers need: the poller may pause it
	// low: it holds less than its share of the window (with hysteresis,
	// see checkLow): steering never pauses it, so that a partition whose
	// messages were not polled yet (a hot key nobody has seen) is read.
	low  bool
	over bool // it holds its share of the window or more (until half of it)
	// Its key chain (steer.go): the key with the longest queue seen, and
	// whether the claim is critical (a chain of it held a large share of
	// the queued messages) and short of polled messages.
	chainKey   uint64
	chainN     int // messages queued behind chainKey now
	hasChain   bool
	critical   bool
	short      bool
	chainDryAt time.Time // when chainKey's queue last ran out; zero while it has messages
	// inherited are the offsets an earlier owner finished past the
	// committed offset (its offset map), from the first not yet polled on:
	// polled, they count as finished at once.
	inherited []offsetmap.Run
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

// coordinator is the one goroutine that owns the state of every assigned
// partition (its claim) and of dispatch: the offset windows, the in-flight
// count, the key queues, the set of ready messages and the stopping state.
// Every other stage talks to it over the channels of coordinatorEdges.
//
// It dispatches a message when no earlier message with the same key is in
// flight, and queues it behind that message otherwise; of the dispatchable
// messages the one whose key has the longest backlog goes first, then the
// oldest (see ready). It hands the pool no more messages than there
// are handlers (see dispatchLimit for when it queues
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

	ctx           context.Context // the handlers' context, which claims' contexts derive from
	claims        map[pipeline.TopicPartition]*claim[K, V]
	claimIDs      uint64
	ready         ready[K, V]
	seq           uint64
	handling      int   // dispatched and not out of its handler yet
	inFlight      int   // tracked, not finished or abandoned (with the dispatched messages of ended claims)
	inFlightBytes int64 // their bytes, as the poller counted them
	freed         room  // what was freed of the window since the poller was last told
	// orphans are the sizes of dispatched messages whose claim ended: they
	// stay in the window's count until they come back.
	orphans      map[*pipeline.Message[K, V]]int32
	commitEvery  int // ask the committer to commit after this many offsets finished; 0: the interval alone
	sinceCommit  int
	maxInFlight  int
	surplusAt    int  // a claim with this many ready messages, most of them not behind a key, is surplus; 0: never
	surplusDirty bool // what the poller is to pause changed since it was last told
	// Poll steering (steer.go): claims with a critical key chain, how
	// many of them are short of messages, and whether the poller reads
	// only them (and the partitions below their share of the window).
	lowWater    int // a critical chain with fewer messages queued is short
	shortChains int
	criticals   int // claims that are critical
	starving    bool
	loops       int // coordinator turns, to look at the clock now and then
	queued      int
	quick       int      // handlers in a row that took less than quickHandler, up to quickRun
	slow        int      // and that took longer, up to quickRun
	quickWindow bool     // the poller keeps a small window (quickRun quick handlers in a row, until quickRun slow ones)
	limiter     *limiter // adaptive concurrency; nil: concurrency handlers, fixed
	onLimit     func(limit int)
	holding     bool // the user paused the pipeline: nothing is dispatched
	draining    bool
	hardStop    bool
	revokes     []*revokeWait[K, V]
	toStage     []*pipeline.Message[K, V] // tracked, waiting to go into the AfterPoll stages, in poll order
	revokesDue  bool                      // a claim being revoked may have nothing in flight now

	obs          observer
	epoch        time.Time     // the clock's zero: when run began
	coarse       time.Duration // the clock at the last stall check
	stallTimeout time.Duration // 0: no stall detection
	batch        BatchLimits   // batch mode when MaxMessages > 0 (see batch.go)
	lingerFrom   time.Time     // when the partial batch began to linger; zero: none lingers
	lingerTimer  *time.Timer
	lingerC      <-chan time.Time // the linger timer's channel while it is armed
}

// coordinatorEdges are the coordinator's channels, in the order of the flow.
type coordinatorEdges[K, V any] struct {
	polled     <-chan pollCycle[K, V]         // from the poller: every poll cycle's messages
	spent      chan<- pollCycle[K, V]         // to the poller: cycles tracked, their slices for the next ones
	staged     chan<- *pipeline.Message[K, V] // into the AfterPoll stages, once tracked; nil without them: polled messages are routed at once
	routable   <-chan *pipeline.Message[K, V] // from the AfterPoll stages
	dispatch   chan<- job[K, V]               // to the handler pool
	handlerEnd <-chan handlerEnded[K, V]      // from the handler pool, once per handler that ended; nil without AfterHandle stages (released tells)
	released   <-chan completion[K, V]        // from the ack collector: the key-released edge
	room       chan<- room                    // to the poller: in-flight slots and bytes freed
	commitNow  chan<- struct{}                // to the committer: commitEvery offsets finished
	steer      chan<- steering                // to the poller: the partitions to pause, and those over and below their share
	rebalances <-chan rebalanceRequest        // from the poller's rebalance listener
	offsets    <-chan chan<- []claimOffset    // from the committer: what is committable now?
	final      chan<- []claimOffset           // to the committer, once, as the coordinator ends
	queries    <-chan revokedQuery            // from stages: pipeline.Revoked
	drainingCh <-chan struct{}                // closed when a graceful stop begins
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
	c.epoch = time.Now()
	var stallTick <-chan time.Time
	if c.stallTimeout > 0 {
		t := time.NewTicker(stallCheckEvery(c.stallTimeout))
		defer t.Stop()
		stallTick = t.C
	}
	c.publishLimit()
	defer func() {
		for _, cl := range c.claims {
			cl.cancel()
		}
		if c.lingerTimer != nil {
			c.lingerTimer.Stop()
		}
	}()
	polled, routable, released, handlerEnd := c.polled, c.routable, c.released, c.handlerEnd
	defer func() {
		if c.staged != nil {
			close(c.staged)
		}
	}()
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
			if c.batching() {
				c.dispatchBatches()
			} else {
				c.dispatchReady()
			}
		}
		if c.revokesDue {
			c.answerRevokes()
		}
		c.publish()
		if polled == nil && c.staged != nil && len(c.toStage) == 0 {
			close(c.staged) // the AfterPoll stages end once they handed on what they hold
			c.staged = nil
		}
		var staged chan<- *pipeline.Message[K, V]
		var toStage *pipeline.Message[K, V]
		if len(c.toStage) > 0 {
			staged, toStage = c.staged, c.toStage[0]
		}
		if c.takeEnded() {
			continue // dispatch what they freed before looking further
		}
		select {
		case cycle, ok := <-polled:
			if !ok {
				polled = nil
				continue
			}
			c.track(cycle)
			c.recycle(cycle)
		case staged <- toStage:
			c.toStage[0] = nil
			c.toStage = c.toStage[1:]
		case msg, ok := <-routable:
			if !ok {
				routable = nil
				continue
			}
			c.routeTracked(msg)
		case done, ok := <-released:
			if !ok {
				released = nil
				continue
			}
			c.takeHandlerEnds() // a batch's requeued messages first
			c.complete(done)
		case ended, ok := <-handlerEnd:
			if !ok {
				handlerEnd = nil
				continue
			}
			c.handlerEnded(ended)
		case <-c.lingerC:
			c.lingerC = nil // a partial batch lingered long enough: dispatched above
		case req := <-c.rebalances:
			c.rebalance(req)
		case reply := <-c.offsets:
			reply <- c.committable(false)
		case q := <-c.queries:
			q.reply <- c.revokedChannel(q.tp)
		case <-stallTick:
			c.checkStalls()
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

// takeEnded takes back the handler ends and completions that wait
// already, in one go: no select per message while handlers finish faster
// than the coordinator turns around. It reports whether it took any.
func (c *coordinator[K, V]) takeEnded() bool {
	n := c.takeHandlerEnds()
	m := len(c.released) // only this goroutine receives: m are there to take
	for range m {
		c.complete(<-c.released)
	}
	return n+m > 0
}

// publish makes the coordinator's state visible: to Stats, and to the
// poller, which learns how many in-flight slots were freed.
func (c *coordinator[K, V]) publish() {
	c.stats.InFlight.Store(int64(c.inFlight))
	c.stats.InFlightBytes.Store(c.inFlightBytes)
	c.stats.Queued.Store(int64(c.queued))
	c.checkStarving()
	if c.surplusDirty && c.steer != nil {
		var s steering
		quick := c.quick >= quickRun
		for tp, cl := range c.claims {
			// Surplus ready work is paused only for a chain's sake: with
			// no critical claim nobody needs the window it would free, and
			// a resumed partition may take a while to be fetched again.
			if cl.surplus && c.criticals > 0 || c.starving && !cl.critical && !cl.low {
				s.pause = append(s.pause, tp)
			}
			if cl.over && !cl.critical && !quick {
				s.over = append(s.over, tp)
			}
			if cl.low {
				s.low = append(s.low, tp)
			}
		}
		s.starving, s.quick = c.starving, c.quickWindow && c.criticals == 0
		select {
		case c.steer <- s:
			c.surplusDirty = false
		default: // the poller has not read the last set yet
		}
	}
	if c.freed != (room{}) {
		select {
		case c.room <- c.freed:
			c.freed = room{}
		default: // the poller has not read the last count yet: it gets both together
		}
	}
}

// dispatchReady hands ready messages to free handlers, longest key
// backlog first. The
// sends never block: the hand-off channel holds as many messages as there
// are handlers, and no more than that are ever out.
func (c *coordinator[K, V]) dispatchReady() {
	for c.handling < c.dispatchLimit() && c.ready.len() > 0 {
		e := c.ready.pop(c.backlog)
		c.readied(e.claim, -1)
		s := e.claim.window.find(e.msg)
		s.state = slotDispatched
		e.claim.outstanding++
		c.handling++
		j := job[K, V]{msg: e.msg, ctx: e.claim.ctx}
		if c.obs.on() {
			now := c.clock()
			j.waited = pipeline.Wait{BehindKey: s.ready - s.routed, ForHandler: now - s.ready}
			s.routed = now
		} else {
			s.routed = c.coarse // for the stall check: about when its handler started
		}
		c.dispatch <- j
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
//
// With adaptive concurrency the pool has a handler for every message the
// limit may allow, so every message out is running: the limit alone.
func (c *coordinator[K, V]) dispatchLimit() int {
	if c.limiter != nil {
		return c.handlerLimit()
	}
	if c.queued == 0 || c.quick >= quickRun {
		return 2 * c.concurrency
	}
	return c.concurrency
}

// recycle hands a tracked cycle's slices back to the poller, emptied, so
// that a poll cycle allocates nothing in steady state.
func (c *coordinator[K, V]) recycle(cycle pollCycle[K, V]) {
	clear(cycle.msgs)
	select {
	case c.spent <- pollCycle[K, V]{msgs: cycle.msgs[:0], sizes: cycle.sizes[:0]}:
	default: // the poller has enough
	}
}

// track adds a poll cycle's messages to their claims' windows: from now on
// they are in flight and hold back their partitions' commits until they
// finish. They are routed at once, or, with AfterPoll stages, sent into
// the stages first.
func (c *coordinator[K, V]) track(cycle pollCycle[K, V]) {
	for i, msg := range cycle.msgs {
		size := cycle.sizes[i]
		cl := c.claims[msg.TopicPartition()]
		switch {
		case cl == nil, cl.stopping:
			// Not ours (any more), or polled after the claim began to stop:
			// dropping it loses nothing, it was never committed.
			c.free(size)
			continue
		case !cl.window.add(msg):
			c.log.Error("parallafka: dropping a message polled out of offset order", "message", msg.String())
			c.free(size)
			continue
		}
		cl.window.slots[len(cl.window.slots)-1].size = size
		cl.tracked++
		c.checkLow(cl)
		c.inFlight++
		c.inFlightBytes += int64(size)
		if cl.start < 0 {
			cl.start = msg.Offset
		}
		if cl.finishedBefore(msg.Offset) {
			c.stats.FinishedBefore.Add(1)
			c.settle(cl, &cl.window.slots[len(cl.window.slots)-1], slotFinished)
			continue
		}
		if c.staged != nil {
			c.toStage = append(c.toStage, msg)
			continue
		}
		c.route(cl, &cl.window.slots[len(cl.window.slots)-1])
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
	if cl.stopping {
		c.settle(cl, s, slotAbandoned)
		return
	}
	c.seq++
	s.seq, s.state = c.seq, slotWaiting
	if c.obs.on() {
		s.routed = c.clock()
		s.ready = s.routed // until it turns out to be queued
	}
	e := entry[K, V]{seq: s.seq, claim: cl, msg: s.msg}
	key, ordered := c.routingKey(s.msg)
	if !ordered {
		c.ready.pushFresh(e)
		c.readied(cl, 1)
		return
	}
	if queue, busy := cl.keys[key]; busy {
		s.ready = -1 // queued: set when its key is released
		cl.keys[key] = append(queue, e)
		c.queued++
		c.chainGrew(cl, key, len(queue)+1)
		if len(queue)+1 == minChain && c.quick < quickRun {
			c.promote(cl, key)
		}
		c.queuedOn(cl, 1)
		return
	}
	cl.keys[key] = nil // busy, nothing queued
	c.ready.pushFresh(e)
	c.readied(cl, 1)
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
		k, _ := c.routingKey(e.msg)
		return k == key
	}, minChain)
}

// readied and queuedOn count a claim's messages in the ready set and
// behind busy keys, and keep its surplus state: a claim is surplus once it
// has surplusAt ready messages and fewer queued behind keys than that (its
// handlers' work is buffered, and no key chain of it waits for more
// messages), and stops being surplus below half of it or once its queues
// outgrow its ready messages. The poller pauses surplus partitions, so
// that the window fills with the partitions whose hot keys need their next
// messages polled, not with cold work that waits for a handler anyway.
func (c *coordinator[K, V]) readied(cl *claim[K, V], n int) {
	cl.readyN += n
	c.checkSurplus(cl)
}

func (c *coordinator[K, V]) queuedOn(cl *claim[K, V], n int) {
	cl.queuedN += n
	c.checkSurplus(cl)
}

// sizeSurplus sets surplusAt for the partitions assigned now: enough ready
// messages to keep every handler busy twice over, and no fewer than a
// quarter of the window shared evenly, so that at most a quarter of the
// window holds work that waits only for a handler and the rest is free for
// the partitions whose keys have chains to feed.
func (c *coordinator[K, V]) sizeSurplus() {
	if c.maxInFlight <= 0 {
		return
	}
	c.surplusAt = max(2*c.handlerCapacity(), c.maxInFlight/(4*max(1, len(c.claims))))
	c.lowWater = max(2*c.concurrency, c.maxInFlight/16)
	for _, cl := range c.claims {
		c.checkLow(cl)
	}
}

func (c *coordinator[K, V]) checkSurplus(cl *claim[K, V]) {
	if c.surplusAt <= 0 {
		return
	}
	want := cl.surplus
	switch {
	case cl.stopping:
		want = false
	case cl.critical && cl.chainN >= c.maxInFlight/2:
		// Its chain has work for a long while: the rest of the window is
		// for the other partitions, whose handlers need ready work.
		want = true
	case cl.critical && cl.chainN >= c.maxInFlight/4 && cl.surplus:
	case cl.queuedN >= cl.readyN || cl.readyN < c.surplusAt/2:
		want = false
	case cl.readyN >= c.surplusAt:
		want = true
	}
	if want != cl.surplus {
		cl.surplus, c.surplusDirty = want, true
	}
}

// backlog returns how many messages wait behind e's key now.
func (c *coordinator[K, V]) backlog(e *entry[K, V]) int {
	key, ordered := c.routingKey(e.msg)
	if !ordered {
		return 0
	}
	return len(e.claim.keys[key])
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

// complete takes back a message from a handler, or from the ack collector
// past the AfterHandle stages: a finished one frees its key for the next
// queued message; a retry goes out again with its key still held; an
// abandoned one takes its key's queue with it; a requeued one (batch mode)
// waits again in its key's queue.
func (c *coordinator[K, V]) complete(done completion[K, V]) {
	cl := c.claims[done.msg.TopicPartition()]
	var s *slot[K, V]
	if cl != nil {
		s = cl.window.find(done.msg)
	}
	if s == nil || s.state != slotDispatched {
		c.orphaned(done.msg)
		return
	}
	cl.outstanding--
	key, ordered := c.routingKey(done.msg)
	verdict := done.verdict
	if cl.stopping && (verdict == verdictRetry || verdict == verdictRequeue) {
		verdict = verdictAbandon // never skipped: Kafka delivers it again
	}
	// Taken before settle, which may move the window's slots. A retry
	// keeps holding its key.
	held := s.held
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
	default:
		c.settle(cl, s, slotAbandoned)
	}
	c.keyLeft(cl, held, done.msg, key, ordered, verdict == verdictAbandon)
}

// handlerReturned counts a handler out and gives the adaptive limit its
// sample.
func (c *coordinator[K, V]) handlerReturned(call handlerCall) {
	if c.limiter != nil && call.ran && c.limiter.sample(call.ended, call.took, call.failed, c.handling) {
		c.limitChanged()
	}
	c.handling--
}

// limitChanged logs a new adaptive limit and publishes it.
func (c *coordinator[K, V]) limitChanged() {
	c.log.Debug("parallafka: concurrency limit changed", "limit", c.limiter.current(),
		"latency", c.limiter.lastRTT, "lowest_latency", c.limiter.lowestLatency())
	c.publishLimit()
}

// handlerLimit is how many handlers may run now: the adaptive limit, or
// the fixed concurrency.
func (c *coordinator[K, V]) handlerLimit() int {
	if c.limiter != nil {
		return c.limiter.current()
	}
	return c.concurrency
}

// publishLimit makes the concurrency limit visible: to Stats and to the
// user's callback (called on this goroutine: it must be quick).
func (c *coordinator[K, V]) publishLimit() {
	limit := c.handlerLimit()
	c.stats.ConcurrencyLimit.Store(int64(limit))
	c.obs.limitChanged(limit)
	if c.onLimit != nil {
		c.onLimit(limit)
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
		c.slow = min(c.slow+1, quickRun)
	} else {
		c.quick = min(c.quick+1, quickRun)
		c.slow = 0
	}
	// The poller's window follows (steering.quick), with hysteresis: one
	// slow call (a GC pause, a busy machine) does not give back the whole
	// window, a run of them does.
	if c.quickWindow && c.slow >= quickRun || !c.quickWindow && c.quick >= quickRun {
		c.quickWindow = !c.quickWindow
		c.surplusDirty = true
	}
}

// settle records that the message of s finished or was abandoned.
func (c *coordinator[K, V]) settle(cl *claim[K, V], s *slot[K, V], state slotState) {
	cl.window.settle(s, state)
	cl.tracked--
	c.checkLow(cl)
	c.inFlight--
	c.inFlightBytes -= int64(s.size)
	c.free(s.size)
	if cl.stopping && cl.tracked == 0 {
		c.revokesDue = true
	}
	if state == slotFinished && c.commitEvery > 0 {
		if c.sinceCommit++; c.sinceCommit >= c.commitEvery {
			c.sinceCommit = 0
			select {
			case c.commitNow <- struct{}{}:
			default: // one is due already
			}
		}
	}
}

// free counts a message out of the window, for the poller.
func (c *coordinator[K, V]) free(size int32) {
	c.freed.msgs++
	c.freed.bytes += int64(size)
}

// readyAgain makes a message whose handler asked for a retry dispatchable
// again, its key still held: the later messages of its key keep waiting.
func (c *coordinator[K, V]) readyAgain(cl *claim[K, V], s *slot[K, V], msg *pipeline.Message[K, V]) {
	c.stats.Retried.Add(1)
	s.state = slotWaiting
	if c.obs.on() {
		s.routed = c.clock()
		s.ready = s.routed
	}
	e := entry[K, V]{seq: s.seq, claim: cl, msg: msg}
	e.backlog = c.backlog(&e)
	c.ready.pushLater(e)
	c.readied(cl, 1)
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
		c.chainShrank(cl, key, 0, true)
		return
	}
	next := queue[0]
	queue[0] = entry[K, V]{}
	cl.keys[key] = queue[1:]
	c.queued--
	c.chainShrank(cl, key, len(queue)-1, false)
	next.backlog = len(queue) - 1
	if c.obs.on() {
		if s := cl.window.find(next.msg); s != nil {
			s.ready = c.clock()
		}
	}
	c.ready.pushLater(next)
	cl.queuedN--
	c.readied(cl, 1)
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
	for key, queue := range cl.keys {
		c.queued -= len(queue)
		for _, e := range queue {
			c.abandonEntry(e)
		}
		delete(cl.keys, key)
	}
	cl.readyN, cl.queuedN = 0, 0
	c.forgetChain(cl)
	c.checkSurplus(cl)
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
	c.unstall(cl)
	if cl.outstanding > 0 {
		c.log.Warn("parallafka: cancelling the handlers of a partition given up; their messages are redelivered to the next owner",
			"partition", cl.tp, "handlers", cl.outstanding)
	}
	cl.cancel()
	c.sizeSurplus()
	c.surplusDirty = true
	c.ready.filter(func(e entry[K, V]) bool { return e.claim != cl })
	for _, queue := range cl.keys {
		c.queued -= len(queue)
	}
	cl.keys = nil
	cl.window.each(func(s *slot[K, V]) {
		switch s.state {
		case slotDispatched:
			if c.orphans == nil {
				c.orphans = make(map[*pipeline.Message[K, V]]int32)
			}
			c.orphans[s.msg] = s.size
		case slotPolled, slotWaiting:
			c.inFlight--
			c.inFlightBytes -= int64(s.size)
			c.free(s.size)
		}
	})
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
				start: -1, revoked: make(chan struct{}), progressOff: -1, progressAt: c.coarse,
			}
			cl.inherited = c.inheritedMap(req.committed, tp)
			cl.ctx, cl.cancel = context.WithCancel(c.ctx)
			if c.draining {
				cl.stopping = true
				close(cl.revoked)
			}
			c.claims[tp] = cl
		}
		c.sizeSurplus()
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

// claimOffset returns what to commit for a claim: the offset after its
// longest finished prefix, and the offset map, the runs of offsets above it
// that finished too (here, or under an earlier owner and not polled yet).
func (c *coordinator[K, V]) claimOffset(cl *claim[K, V]) (claimOffset, bool) {
	off, ok := cl.window.committable()
	if !ok {
		return claimOffset{}, false
	}
	runs := cl.window.finishedRuns(nil)
	inherited := cl.inherited
	for len(inherited) > 0 && inherited[0].To <= cl.window.next {
		inherited = inherited[1:]
	}
	if len(inherited) > 0 {
		first := inherited[0]
		first.From = max(first.From, cl.window.next)
		if len(runs) == 0 && first.From == off {
			// Everything polled finished, and so did what comes next.
			off, inherited = first.To, inherited[1:]
		} else if n := len(runs); n > 0 && runs[n-1].To == first.From {
			runs[n-1].To, inherited = first.To, inherited[1:]
		} else {
			runs, inherited = append(runs, first), inherited[1:]
		}
		runs = append(runs, inherited...)
	}
	if off <= cl.start && len(runs) == 0 {
		return claimOffset{}, false // nothing finished past the starting position
	}
	return claimOffset{Offset: pipeline.Offset{TopicPartition: cl.tp, Offset: off}, claim: cl.id, runs: runs}, true
}

// inheritedMap decodes the offset map of tp's committed offset, if the
// source read one. Metadata that is not an offset map of ours (written by
// another tool, corrupt, or left behind by an offset reset) is ignored:
// the finished work it may describe is redone.
func (c *coordinator[K, V]) inheritedMap(committed []pipeline.Offset, tp pipeline.TopicPartition) []offsetmap.Run {
	for _, off := range committed {
		if off.TopicPartition != tp || off.Offset < 0 || off.Metadata == "" {
			continue
		}
		runs, err := offsetmap.Decode(off.Offset, off.Metadata)
		if err != nil {
			c.log.Warn("parallafka: ignoring the committed offset's metadata: not an offset map of this pipeline; work finished past the committed offset by the previous owner is redone",
				"partition", tp, "offset", off.Offset, "metadata_bytes", len(off.Metadata), "error", err)
			return nil
		}
		if len(runs) > 0 {
			c.log.Debug("parallafka: offset map read: finished offsets past the committed one are skipped",
				"partition", tp, "offset", off.Offset, "runs", len(runs))
		}
		return runs
	}
	return nil
}

// revokedChannel answers pipeline.Revoked.
func (c *coordinator[K, V]) revokedChannel(tp pipeline.TopicPartition) <-chan struct{} {
	if cl := c.claims[tp]; cl != nil {
		return cl.revoked
	}
	return closedChannel
}

var closedChannel = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()
