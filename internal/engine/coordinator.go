package engine

import (
	"context"
	"hash/maphash"
	"log/slog"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// coordinator is the one goroutine that owns the state of every assigned
// partition and of dispatch; every other goroutine talks to it over the
// channels of coordinatorEdges. Its state is in rooms, each in its file:
//
//   - the partition claims (claims.go): each assigned partition's claim,
//     its stopping state, the revokes waiting for it to be idle;
//   - the key queues (keys.go): which message waits behind which busy
//     key, routing, releasing, abandoning, promoting;
//   - the commit positions (positions.go): the in-flight window's count,
//     each claim's committable offset and offset map;
//   - the dispatch policy (policy.go, steer.go): how many handlers run,
//     the quick-handler queue, poll steering, the coarse clock;
//   - the ready set (ready.go) and, in batch mode, batches (batch.go).
//
// It dispatches a message when no earlier message with the same key is in
// flight, and queues it behind that message otherwise; of the dispatchable
// messages the one whose key has the longest backlog goes first, then the
// oldest (see ready). It hands the pool no more messages than there
// are handlers (see dispatchLimit for when it queues more), so a message
// that becomes ready (a busy key's next one) does not wait behind
// messages handed out earlier, and its sends to the pool never block: the
// hand-off channel has room for every message out.
type coordinator[K, V any] struct {
	coordinatorEdges[K, V]
	stats *Stats
	log   *slog.Logger
	obs   observer

	ctx    context.Context // the handlers' context, which claims' contexts derive from
	claims map[pipeline.TopicPartition]*claim[K, V]
	// byPartition is claims again, by partition number (one topic's per
	// number, the first assigned): a lookup that hashes nothing.
	byPartition []*claim[K, V]
	claimIDs    uint64
	revokes     []*revokeWait[K, V]
	revokesDue  bool // a claim being revoked may have nothing in flight now
	routing     keyRouting
	// spareQueues are key queues of keys gone idle, for the next keys to
	// get busy: a key's first message allocates nothing in steady state.
	spareQueues []*keyQueue[K, V]
	// spareRuns and spareRunEnds are the slices of runs that came back
	// (dispatchReady), for the next runs.
	spareRuns    [][]job[K, V]
	spareRunEnds [][]completion[K, V]
	ready        ready[K, V]
	seq          uint64
	inFlight     inFlight[K, V]
	commits      commitCount
	policy       dispatchPolicy[K, V]
	toStage      []*pipeline.Message[K, V] // tracked, waiting to go into the AfterPoll stages, in poll order
	holding      bool                      // the user paused the pipeline: nothing is dispatched
	draining     bool
	hardStop     bool
	// drainBacklog: a graceful stop keeps the claims and dispatches their
	// backlog (ShutdownMode Drain) until nothing is in flight; the
	// shutdown timeout (ctx done) still stops it as a graceful one.
	drainBacklog bool
	rates        *rates[K, V] // nil: no rate limit (no per-message work)
	// Held keys (heldkeys.go): how many the claims hold, how long a hold
	// lasts (0: until released), and ReleaseKey's requests while it runs.
	heldN       int
	heldTTL     time.Duration
	releases    *HeldKeyControl
	releaseReqs <-chan keyRelease
	detach      func()

	stallTimeout time.Duration // 0: no stall detection
	stallTicker  *time.Ticker
	batch        BatchLimits // batch mode when MaxMessages > 0 (see batch.go)
	lingerFrom   time.Time   // when the partial batch began to linger; zero: none lingers
	lingerTimer  *time.Timer
	lingerC      <-chan time.Time // the linger timer's channel while it is armed

	open openEdges[K, V]
}

// coordinatorEdges are the coordinator's channels, in the order of the flow.
type coordinatorEdges[K, V any] struct {
	polled     <-chan pollCycle[K, V]         // from the poller: every poll cycle's messages
	spent      chan<- pollCycle[K, V]         // to the poller: cycles tracked, their slices for the next ones
	staged     chan<- *pipeline.Message[K, V] // into the AfterPoll stages, once tracked; nil without them: polled messages are routed at once
	routable   <-chan *pipeline.Message[K, V] // from the AfterPoll stages
	dispatch   chan<- job[K, V]               // to the handler pool
	handlerEnd <-chan handlerEnded[K, V]      // from the handler pool, once per job: the handler is free, with what it settled
	released   <-chan completion[K, V]        // from the ack collector, past the AfterHandle stages; nil without them
	room       chan<- room                    // to the poller: in-flight slots and bytes freed
	commitNow  chan<- struct{}                // to the committer: commitEvery offsets finished
	steer      chan<- steering                // to the poller: the partitions to pause, and those over and below their share
	rebalances <-chan rebalanceRequest        // from the poller's rebalance listener
	offsets    <-chan offsetsQuery            // from the committer: what is committable now?
	final      chan<- []claimOffset           // to the committer, once, as the coordinator ends
	queries    <-chan revokedQuery            // from stages: pipeline.Revoked
	drainingCh <-chan struct{}                // closed when a graceful stop begins
	rateLimits <-chan RateLimit               // from Parallafka.SetRateLimit; nil: never changed
}

// openEdges are the inputs the coordinator still reads (nil once closed
// or no longer wanted), and whether it still dispatches.
type openEdges[K, V any] struct {
	polled      <-chan pollCycle[K, V]
	routable    <-chan *pipeline.Message[K, V]
	released    <-chan completion[K, V]
	handlerEnd  <-chan handlerEnded[K, V]
	draining    <-chan struct{}
	done        <-chan struct{}
	stallTick   <-chan time.Time
	dispatching bool
}

// coordinatorConfig is what the coordinator is configured with.
type coordinatorConfig struct {
	concurrency, minConcurrency int
	maxInFlight, commitEvery    int
	ordering                    Ordering
	orderNilKeys                bool
	batch                       BatchLimits // batch mode when MaxMessages > 0
	stallTimeout                time.Duration
	drainBacklog                bool // a graceful stop handles the polled backlog before it ends
	rateLimit                   RateLimit
	heldTTL                     time.Duration
	releases                    *HeldKeyControl
	stats                       *Stats
	log                         *slog.Logger
	obs                         observer
}

func newCoordinator[K, V any](cfg coordinatorConfig, edges coordinatorEdges[K, V]) *coordinator[K, V] {
	c := &coordinator[K, V]{
		coordinatorEdges: edges, stats: cfg.stats, log: cfg.log, obs: cfg.obs,
		claims:  make(map[pipeline.TopicPartition]*claim[K, V]),
		routing: keyRouting{ordering: cfg.ordering, orderNilKeys: cfg.orderNilKeys, seed: maphash.MakeSeed()},
		commits: commitCount{every: cfg.commitEvery, now: edges.commitNow},
		policy: dispatchPolicy[K, V]{
			concurrency: cfg.concurrency, maxInFlight: cfg.maxInFlight,
			stats: cfg.stats, log: cfg.log, obs: cfg.obs,
		},
		stallTimeout: cfg.stallTimeout, batch: cfg.batch, drainBacklog: cfg.drainBacklog,
		rates:   newRates[K, V](cfg.rateLimit),
		heldTTL: cfg.heldTTL, releases: cfg.releases,
	}
	if cfg.minConcurrency > 0 {
		c.policy.limiter = newLimiter(cfg.minConcurrency, cfg.concurrency)
	}
	return c
}

// run coordinates until the pipeline has drained (graceful) or stopped
// (ctx done) and everything dispatched came back, then hands the final
// offsets to the committer.
func (c *coordinator[K, V]) run(ctx context.Context) error {
	c.begin(ctx)
	defer c.close()
	for c.open.dispatching || c.open.released != nil || c.open.handlerEnd != nil {
		c.stopDispatchingOnceDrained()
		c.dispatchReadyWork()
		if c.revokesDue {
			c.answerRevokes()
		}
		c.publish()
		c.closeStagedOnceEmpty()
		if c.takeEnded() {
			continue // dispatch what they freed before looking further
		}
		c.awaitNext()
	}
	c.publish()
	c.final <- committable(c.claims, true)
	return nil
}

func (c *coordinator[K, V]) begin(ctx context.Context) {
	c.ctx = ctx
	c.policy.epoch = time.Now()
	c.open = openEdges[K, V]{
		polled: c.polled, routable: c.routable, released: c.released, handlerEnd: c.handlerEnd,
		draining: c.drainingCh, done: ctx.Done(), dispatching: true,
	}
	if c.stallTimeout > 0 {
		c.stallTicker = time.NewTicker(stallCheckEvery(c.stallTimeout))
		c.open.stallTick = c.stallTicker.C
	}
	c.policy.publishLimit()
	c.releaseReqs, c.detach = c.releases.attach()
}

// close lets go of what run held: the claims' contexts, the timers, and
// the edges it owns (a panic too must let the pool and the stages end).
func (c *coordinator[K, V]) close() {
	if c.detach != nil {
		c.detach()
	}
	c.stats.HeldKeys.Store(0) // the final commit took them with the partitions
	for _, cl := range c.claims {
		cl.cancel()
	}
	if c.lingerTimer != nil {
		c.lingerTimer.Stop()
	}
	if c.stallTicker != nil {
		c.stallTicker.Stop()
	}
	c.rates.stop()
	if c.staged != nil {
		close(c.staged)
	}
	if c.open.dispatching {
		close(c.dispatch)
	}
}

// stopDispatchingOnceDrained closes dispatch once nothing more can come
// to dispatch (or on a hard stop): the pool ends once its handlers
// returned.
func (c *coordinator[K, V]) stopDispatchingOnceDrained() {
	o := &c.open
	if o.dispatching && (c.hardStop || o.polled == nil && o.routable == nil && c.inFlight.msgs == 0) {
		o.dispatching = false
		close(c.dispatch)
	}
}

// dispatchReadyWork hands ready work to free handlers, unless dispatch
// ended or the user paused.
func (c *coordinator[K, V]) dispatchReadyWork() {
	switch {
	case !c.open.dispatching || c.holding:
	case c.batching():
		c.dispatchBatches()
	default:
		c.dispatchReady()
	}
}

// dispatchReady hands ready messages to free handlers, longest key
// backlog first: one message per job, or runs of them while the handlers
// are quick (see runLength). The sends never block: the hand-off channel
// holds as many jobs as dispatchLimit allows out, and no more than that
// are ever out.
func (c *coordinator[K, V]) dispatchReady() {
	for c.policy.handling < c.policy.dispatchLimit(c.routing.queued) && c.ready.len() > 0 {
		n := c.policy.runLength(c.ready.len())
		if n <= 1 {
			j, ok, more := c.takeReady()
			if ok {
				c.policy.handling++
				c.dispatch <- j
			}
			if !more {
				return
			}
			continue
		}
		run, more := c.spareRun(), true
		for len(run) < n && more && c.ready.len() > 0 {
			var j job[K, V]
			var ok bool
			if j, ok, more = c.takeReady(); ok {
				run = append(run, j)
			}
		}
		switch len(run) {
		case 0:
			c.spareRuns = append(c.spareRuns, run)
		case 1:
			j := run[0]
			c.recycleRun(run, nil)
			c.policy.handling++
			c.dispatch <- j
		default:
			c.policy.handling++
			c.dispatch <- job[K, V]{run: run, ends: c.spareEnds()}
		}
		if !more {
			return
		}
	}
}

// takeReady takes the next ready message for dispatch and returns its job.
// ok is false if it does not go now (a key's rate limit parked it); more
// is false if nothing more may go now (the rate limit).
func (c *coordinator[K, V]) takeReady() (j job[K, V], ok, more bool) {
	e := c.ready.pop(c.backlog)
	held := e.claim.heldKeys != nil && c.heldBack(e) // not handled: no token either
	if c.rates != nil && !held {
		admitted, more := c.admit(e)
		if !admitted {
			return j, false, more
		}
	}
	c.policy.readied(e.claim, -1)
	s := e.slot()
	s.state = slotDispatched
	e.claim.outstanding++
	j = job[K, V]{msg: e.msg, origin: origin[K, V]{claim: e.claim, offset: e.offset}, ctx: e.claim.ctx}
	if c.obs.on() {
		now := c.policy.clock()
		j.waited = pipeline.Wait{BehindKey: s.ready - s.routed, ForHandler: now - s.ready}
		s.routed = now
	} else {
		s.routed = c.policy.coarse // for the stall check: about when its handler started
	}
	return j, true, true
}

// spareRun returns an empty run with room for maxRun jobs, reused.
func (c *coordinator[K, V]) spareRun() []job[K, V] { return popSpare(&c.spareRuns) }

// spareEnds returns an empty slice of completions with room for a run's,
// reused.
func (c *coordinator[K, V]) spareEnds() []completion[K, V] { return popSpare(&c.spareRunEnds) }

// popSpare takes the last of spares, or makes one with room for a run.
func popSpare[T any](spares *[][]T) []T {
	if n := len(*spares); n > 0 {
		s := (*spares)[n-1]
		*spares = (*spares)[:n-1]
		return s
	}
	return make([]T, 0, maxRun)
}

// recycleRun keeps a run's slices, emptied, for the next runs.
func (c *coordinator[K, V]) recycleRun(run []job[K, V], ends []completion[K, V]) {
	if run != nil {
		clear(run)
		c.spareRuns = append(c.spareRuns, run[:0])
	}
	if ends != nil {
		clear(ends)
		c.spareRunEnds = append(c.spareRunEnds, ends[:0])
	}
}

// closeStagedOnceEmpty closes the AfterPoll stages' input once the poller
// ended and every tracked message went in: they end once they handed on
// what they hold.
func (c *coordinator[K, V]) closeStagedOnceEmpty() {
	if c.open.polled == nil && c.staged != nil && len(c.toStage) == 0 {
		close(c.staged)
		c.staged = nil
	}
}

// awaitNext waits for the next thing to do and does it.
// takePolled tracks the poll cycles waiting on the polled edge. The poller
// hands over a cycle before it asks for a rebalance (flushForRebalance),
// but the two edges are separate channels and a select picks at random
// among ready ones: a cycle taken after the rebalance would be tracked
// under the new assignment (a revoked partition assigned again: its stale
// messages would start the new claim's window past offsets not yet polled
// again, which would then be dropped as out of order and committed as a
// gap). Every cycle sent before the request is in the channel by the time
// the request is received, so taking what is there keeps the poller's order.
func (c *coordinator[K, V]) takePolled() {
	for c.open.polled != nil {
		select {
		case cycle, ok := <-c.open.polled:
			if !ok {
				c.open.polled = nil
				return
			}
			c.track(cycle)
			c.recycle(cycle)
		default:
			return
		}
	}
}

func (c *coordinator[K, V]) awaitNext() {
	o := &c.open
	var staged chan<- *pipeline.Message[K, V]
	var toStage *pipeline.Message[K, V]
	if len(c.toStage) > 0 {
		staged, toStage = c.staged, c.toStage[0]
	}
	var rateTick <-chan time.Time
	if c.rates != nil {
		rateTick = c.rates.timerC
	}
	select {
	case <-rateTick:
		c.rates.fired(time.Now(), c.ready.pushLater)
	case l := <-c.rateLimits:
		c.setRateLimit(l)
	case r := <-c.releaseReqs:
		r.reply <- c.releaseHeld(r.key)
	case cycle, ok := <-o.polled:
		if !ok {
			o.polled = nil
			return
		}
		c.track(cycle)
		c.recycle(cycle)
	case staged <- toStage:
		c.toStage[0] = nil
		c.toStage = c.toStage[1:]
	case msg, ok := <-o.routable:
		if !ok {
			o.routable = nil
			return
		}
		c.routeTracked(msg)
	case done, ok := <-o.released:
		if !ok {
			o.released = nil
			return
		}
		c.takeHandlerEnds() // a batch's requeued messages first
		c.complete(done)
	case ended, ok := <-o.handlerEnd:
		if !ok {
			o.handlerEnd = nil
			return
		}
		c.handlerEnded(ended)
	case <-c.lingerC:
		c.lingerC = nil // a partial batch lingered long enough: dispatched next turn
	case req := <-c.rebalances:
		c.takePolled()
		c.rebalance(req)
	case q := <-c.offsets:
		c.outputsCommitted(q.committed)
		c.expireHeld(time.Now())
		q.reply <- committable(c.claims, false)
	case q := <-c.queries:
		q.reply <- c.revokedChannel(q.tp)
	case <-o.stallTick:
		c.checkStalls()
	case <-o.draining:
		c.beginDraining()
	case <-o.done:
		o.done = nil
		c.hardStop = true
		c.drain()
	}
}

// beginDraining acts on the draining edge, closed: a graceful stop began.
func (c *coordinator[K, V]) beginDraining() {
	c.open.draining = nil
	if c.drainBacklog {
		c.draining = true // the poller stops; the backlog goes on to the handlers
	} else {
		c.drain()
	}
}

// noticeDraining begins draining now if the draining edge is closed
// already, whatever the select would take first.
func (c *coordinator[K, V]) noticeDraining() {
	if c.open.draining == nil {
		return
	}
	select {
	case <-c.open.draining:
		c.beginDraining()
	default:
	}
}

// takeEnded takes back the handler ends and completions that wait
// already, in one go: no select per message while handlers finish faster
// than the coordinator turns around. It reports whether it took any.
func (c *coordinator[K, V]) takeEnded() bool {
	// The completions first counted, then the handler ends: each of the
	// m completions had its handler's end sent before it, so the handler
	// ends taken include theirs (taken the other way round, a completion
	// could overtake its handler's end).
	m := len(c.released) // only this goroutine receives: m are there to take
	n := c.takeHandlerEnds()
	for range m {
		c.complete(<-c.released)
	}
	return n+m > 0
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
	c.policy.handlerReturned(ended.call)
	c.policy.handlerTook(ended.quick)
	for _, p := range ended.produced {
		c.produced(p)
	}
	if ended.done.msg != nil {
		c.complete(ended.done)
	}
	for _, done := range ended.settled {
		c.complete(done)
	}
	if ended.run != nil {
		c.recycleRun(ended.run, ended.settled)
	}
}

// publish makes the coordinator's state visible: to Stats, and to the
// poller, which learns how many in-flight slots were freed.
func (c *coordinator[K, V]) publish() {
	c.stats.InFlight.Store(int64(c.inFlight.msgs))
	c.stats.InFlightBytes.Store(c.inFlight.bytes)
	c.stats.Queued.Store(int64(c.routing.queued))
	c.stats.HeldKeys.Store(int64(c.heldN))
	c.policy.checkStarving(c.claims, c.ready.len())
	if c.policy.steeringChanged && c.steer != nil {
		select {
		case c.steer <- c.policy.steering(c.claims):
			c.policy.steeringChanged = false
		default: // the poller has not read the last set yet
		}
	}
	if c.inFlight.freed != (room{}) {
		select {
		case c.room <- c.inFlight.freed:
			c.inFlight.freed = room{}
		default: // the poller has not read the last count yet: it gets both together
		}
	}
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
