package engine

import (
	"log/slog"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// dispatchPolicy is the coordinator's dispatch heuristics, on its
// goroutine: how many handlers may run (fixed, or the adaptive limit),
// how many messages go out ahead of them (dispatchLimit), whether the
// handlers are quick (and so whether the poller keeps a small window), the
// poll steering thresholds and each claim's steering state (steer.go),
// and a coarse clock. It decides; the coordinator acts: it reads what the
// policy says and tells the poller (steering) when steerDirty says so.
type dispatchPolicy[K, V any] struct {
	concurrency int
	maxInFlight int      // the poller's window; 0: no steering
	limiter     *limiter // adaptive concurrency; nil: concurrency handlers, fixed
	stats       *Stats
	log         *slog.Logger
	obs         observer

	handling    int  // dispatched and not out of its handler yet
	quick       int  // handlers in a row that took less than quickHandler, up to quickRun
	slow        int  // and that took longer, up to quickRun
	quickWindow bool // the poller keeps a small window (quickRun quick handlers in a row, until quickRun slow ones)

	// Poll steering (steer.go): the thresholds, the claims with a
	// critical key chain, how many of them are short of messages, and
	// whether the poller reads only them (and the partitions below their
	// share of the window).
	surplusAt       int // a claim with this many ready messages, most of them not behind a key, is surplus; 0: never
	lowWater        int // a critical chain with fewer messages queued is short
	shortChains     int
	criticals       int // claims that are critical
	starving        bool
	steeringChanged bool // what the poller is to pause changed since it was last told
	loops           int  // coordinator turns, to look at the clock now and then

	epoch  time.Time     // the clock's zero: when the coordinator began
	coarse time.Duration // the clock at the last stall check
}

// Handlers count as quick when quickRun in a row took less than
// quickHandler: about what a coordinator round trip costs, so that the
// queue of dispatchLimit delays a busy key's next message by less than a
// round trip would.
const (
	quickHandler = 20 * time.Microsecond
	quickRun     = 32
)

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
func (p *dispatchPolicy[K, V]) dispatchLimit(queued int) int {
	if p.limiter != nil {
		return p.handlerLimit()
	}
	if queued == 0 || p.quick >= quickRun {
		return 2 * p.concurrency
	}
	return p.concurrency
}

// runLength is how many ready messages go to a handler in one job: one,
// unless the handlers are quick, the concurrency is fixed and no key chain
// is critical. Then a run of up to maxRun, the ready set shared among the
// jobs dispatchLimit lets out, so that every handler has work and the
// hand-off to the pool and back (a wakeup on each side) is paid once per
// run rather than per message. A message of a run waits for the quick
// calls before it, and its key is busy until the whole run ended: a
// critical key chain (steer.go), whose next message should go at once,
// keeps runs off.
func (p *dispatchPolicy[K, V]) runLength(ready int) int {
	if p.limiter != nil || p.quick < quickRun || p.criticals > 0 {
		return 1
	}
	return max(1, min(maxRun, ready/(2*p.concurrency)))
}

// maxRun bounds a run: at most maxRun quick calls (under quickHandler
// each) delay the last message of a run and the keys of all of them.
const maxRun = 16

// handlerReturned counts a handler out and gives the adaptive limit its
// sample.
func (p *dispatchPolicy[K, V]) handlerReturned(call handlerCall) {
	if p.limiter != nil && call.ran && p.limiter.sample(call.ended, call.took, call.failed, p.handling) {
		p.limitChanged()
	}
	p.handling--
}

// limitChanged logs a new adaptive limit and publishes it.
func (p *dispatchPolicy[K, V]) limitChanged() {
	p.log.Debug("parallafka: concurrency limit changed", "limit", p.limiter.current(),
		"latency", p.limiter.lastRTT, "lowest_latency", p.limiter.lowestLatency())
	p.publishLimit()
}

// handlerLimit is how many handlers may run now: the adaptive limit, or
// the fixed concurrency.
func (p *dispatchPolicy[K, V]) handlerLimit() int {
	if p.limiter != nil {
		return p.limiter.current()
	}
	return p.concurrency
}

// publishLimit makes the concurrency limit visible: to Stats and to the
// observer (called on this goroutine: it must be quick).
func (p *dispatchPolicy[K, V]) publishLimit() {
	limit := p.handlerLimit()
	p.stats.ConcurrencyLimit.Store(int64(limit))
	p.obs.limitChanged(limit)
}

func (p *dispatchPolicy[K, V]) handlerTook(quick bool) {
	if !quick {
		p.quick = 0
		p.slow = min(p.slow+1, quickRun)
	} else {
		p.quick = min(p.quick+1, quickRun)
		p.slow = 0
	}
	// The poller's window follows (steering.quick), with hysteresis: one
	// slow call (a GC pause, a busy machine) does not give back the whole
	// window, a run of them does.
	if p.quickWindow && p.slow >= quickRun || !p.quickWindow && p.quick >= quickRun {
		p.quickWindow = !p.quickWindow
		p.steeringChanged = true
	}
}

// readied and queuedOn count a claim's messages in the ready set and
// behind busy keys, and keep its surplus state: a claim is surplus once it
// has surplusAt ready messages and fewer queued behind keys than that (its
// handlers' work is buffered, and no key chain of it waits for more
// messages), and stops being surplus below half of it or once its queues
// outgrow its ready messages. The poller pauses surplus partitions, so
// that the window fills with the partitions whose hot keys need their next
// messages polled, not with cold work that waits for a handler anyway.
func (p *dispatchPolicy[K, V]) readied(cl *claim[K, V], n int) {
	cl.readyN += n
	p.checkSurplus(cl)
}

func (p *dispatchPolicy[K, V]) queuedOn(cl *claim[K, V], n int) {
	cl.queuedN += n
	p.checkSurplus(cl)
}

// sizeSurplus sets surplusAt for the partitions assigned now: enough ready
// messages to keep every handler busy twice over, and no fewer than a
// quarter of the window shared evenly, so that at most a quarter of the
// window holds work that waits only for a handler and the rest is free for
// the partitions whose keys have chains to feed.
func (p *dispatchPolicy[K, V]) sizeSurplus(claims map[pipeline.TopicPartition]*claim[K, V], handlerCapacity int) {
	if p.maxInFlight <= 0 {
		return
	}
	p.surplusAt = max(2*handlerCapacity, p.maxInFlight/(4*max(1, len(claims))))
	p.lowWater = max(2*p.concurrency, p.maxInFlight/16)
	for _, cl := range claims {
		p.checkLow(cl, len(claims))
	}
}

func (p *dispatchPolicy[K, V]) checkSurplus(cl *claim[K, V]) {
	if p.surplusAt <= 0 {
		return
	}
	want := cl.surplus
	switch {
	case cl.stopping:
		want = false
	case cl.critical && cl.chainN >= p.maxInFlight/2:
		// Its chain has work for a long while: the rest of the window is
		// for the other partitions, whose handlers need ready work.
		want = true
	case cl.critical && cl.chainN >= p.maxInFlight/4 && cl.surplus:
	case cl.queuedN >= cl.readyN || cl.readyN < p.surplusAt/2:
		want = false
	case cl.readyN >= p.surplusAt:
		want = true
	}
	if want != cl.surplus {
		cl.surplus, p.steeringChanged = want, true
	}
}

// clock returns the time since the coordinator began.
func (p *dispatchPolicy[K, V]) clock() time.Duration { return time.Since(p.epoch) }

// handlersQuick reports whether the last quickRun handlers were quick.
func (p *dispatchPolicy[K, V]) handlersQuick() bool { return p.quick >= quickRun }
