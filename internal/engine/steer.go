package engine

import (
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Poll steering: the coordinator tells the poller which partitions to
// pause so that the in-flight window holds what the handlers need next.
//
// On a skewed workload the bound is the hottest key's chain: its messages
// run one at a time, so it must never wait for its next message to be
// polled, while the window must not fill with cold work that only waits for
// a handler. librdkafka reads every partition at about the same rate, so
// without steering the hot key's partition is read too slowly: the hot
// key's handler idles while the window is full of other partitions' work,
// and a larger window alone only makes that vary from run to run
// (bench/README.md).
//
// The rules, all decided here, on the coordinator's own state:
//   - A claim is critical once one of its keys has at least minChain
//     messages queued (minQuickChain while the handlers are quick) and
//     half of the claim's messages in the window: the
//     partition is read mostly for that key's chain. It stays critical
//     until that chain has had nothing queued for chainDry, or the claim
//     ends.
//   - A critical claim is short while its chain has fewer than lowWater
//     messages queued (until it has twice that).
//   - While a critical claim is short and the handlers have ready work to
//     spare (at least 2×concurrency ready messages, until fewer than
//     concurrency), the coordinator is starving: every partition but the
//     critical ones and those below their share of the window (low) is
//     paused, so the window's free slots go to the chains.
//   - While some claim is critical, a claim with surplus ready work is
//     paused (see checkSurplus), and so is a critical claim whose chain
//     holds half the window: the rest is for the other partitions'
//     handlers. With no critical claim nobody needs the window a pause
//     would free, and a resumed partition can take a while to be fetched
//     again (librdkafka drops what it prefetched for it).
//   - A claim below a quarter of its share of the window is low (until
//     half of it); one at its share or above is over (until below half).
//     While a low partition has messages left to read (the source's
//     watermarks say so), the poller pauses the partitions that are over
//     and not critical. librdkafka's queue may hold a whole fetch of every
//     other partition (thousands of messages each) ahead of a partition's
//     first messages; pausing drops those, so the window does not fill
//     with them before a hot key's partition is read at all.
//
// Quick handlers (see handlerTook) turn starving off: their chains drain
// in microseconds and the consumer is bound by polling, which pausing
// would slow down. In key order they also shrink the poller's window
// (steering.quick, see minQuickWindow) while no claim is critical.

// claimSteering is a claim's state for poll steering: its messages ready
// and queued, whether it is surplus, low or over, and its key chain.
type claimSteering struct {
	readyN  int  // its messages in the ready set
	queuedN int  // its messages queued behind busy keys
	surplus bool // its ready messages are more than the handlers need: the poller may pause it
	// low: it holds less than its share of the window (with hysteresis,
	// see checkLow): steering never pauses it, so that a partition whose
	// messages were not polled yet (a hot key nobody has seen) is read.
	low  bool
	over bool // it holds its share of the window or more (until half of it)
	// Its key chain: the key with the longest queue seen, and whether the
	// claim is critical (a chain of it held a large share of the queued
	// messages) and short of polled messages.
	chainKey   uint64
	chainN     int // messages queued behind chainKey now
	hasChain   bool
	critical   bool
	short      bool
	chainDryAt time.Time // when chainKey's queue last ran out; zero while it has messages
}

const (
	minChain = 16          // a shorter queue is no chain worth steering for
	chainDry = time.Second // a critical claim whose chain had nothing queued this long is critical no more
	// minQuickChain is minChain while the handlers are quick. Their chains
	// drain a message per coordinator round trip, so a short one costs a
	// millisecond or two, less than what a critical claim gives up: the
	// small window and runs (policy.go). Such short chains come and go on
	// any workload: a worker descheduled for a few milliseconds leaves its
	// keys with a few dozen messages queued, and on a uniform no-op
	// workload over franz-go that made a claim critical in most runs, at
	// about half the throughput. A hot key's chain (a tenth of the
	// messages) holds hundreds of the small window's messages.
	minQuickChain = 128
)

// chainGrew records that key's queue in cl has n messages now.
func (p *dispatchPolicy[K, V]) chainGrew(cl *claim[K, V], key uint64, n int) {
	switch {
	case cl.hasChain && cl.chainKey == key:
	case n > cl.chainN:
		cl.chainKey, cl.hasChain = key, true
	default:
		return
	}
	cl.chainN, cl.chainDryAt = n, time.Time{}
	least := minChain
	if p.handlersQuick() {
		least = minQuickChain
	}
	if !cl.critical && n >= least && 2*n >= cl.tracked {
		cl.critical, p.steeringChanged = true, true
		p.criticals++
	}
	p.checkShort(cl)
}

// chainShrank records that key's queue in cl has n messages left after a
// dispatch; idle: the key has nothing in flight either.
func (p *dispatchPolicy[K, V]) chainShrank(cl *claim[K, V], key uint64, n int, idle bool) {
	if !cl.hasChain || cl.chainKey != key {
		return
	}
	cl.chainN = n
	if idle {
		cl.chainDryAt = time.Now()
	}
	p.checkShort(cl)
}

// forgetChain ends cl's chain: the claim is stopping, or its chain ran dry.
func (p *dispatchPolicy[K, V]) forgetChain(cl *claim[K, V]) {
	if cl.critical {
		p.steeringChanged = true
		p.criticals--
	}
	cl.hasChain, cl.critical, cl.chainN, cl.chainDryAt = false, false, 0, time.Time{}
	p.checkShort(cl)
}

// checkShort keeps cl.short and the count of short claims.
func (p *dispatchPolicy[K, V]) checkShort(cl *claim[K, V]) {
	want := cl.short
	switch {
	case !cl.critical || cl.stopping:
		want = false
	case cl.chainN < p.lowWater:
		want = true
	case cl.chainN >= 2*p.lowWater:
		want = false
	}
	if want != cl.short {
		cl.short = want
		if want {
			p.shortChains++
		} else {
			p.shortChains--
		}
	}
	p.checkSurplus(cl)
}

// checkLow keeps cl.low and cl.over. Below a quarter of its even share of
// the window (until half of it) a claim is low: steering does not pause
// it, and while it has messages to read the poller pauses the claims that
// are over: at their share or above (until below half of it).
func (p *dispatchPolicy[K, V]) checkLow(cl *claim[K, V], claims int) {
	if p.maxInFlight <= 0 {
		return
	}
	share := p.maxInFlight / max(1, claims)
	low, over := cl.low, cl.over
	switch {
	case cl.tracked < share/4:
		low = true
	case cl.tracked >= share/2:
		low = false
	}
	switch {
	case cl.tracked >= share:
		over = true
	case cl.tracked < share/2:
		over = false
	}
	if low != cl.low || over != cl.over {
		cl.low, cl.over, p.steeringChanged = low, over, true
	}
}

// checkStarving decides, once per coordinator turn, whether the poller
// reads only the critical partitions (and the low ones).
func (p *dispatchPolicy[K, V]) checkStarving(claims map[pipeline.TopicPartition]*claim[K, V], ready int) {
	p.loops++
	if p.loops&255 == 0 {
		p.expireChains(claims, time.Now())
	}
	want := p.starving
	switch {
	case p.shortChains == 0 || p.quick >= quickRun || ready < p.concurrency:
		want = false
	case ready >= 2*p.concurrency:
		want = true
	}
	if want != p.starving {
		p.starving, p.steeringChanged = want, true
	}
}

// expireChains forgets the chains that had nothing queued for chainDry: a
// hot key that went quiet, or whose partition has nothing more to read.
func (p *dispatchPolicy[K, V]) expireChains(claims map[pipeline.TopicPartition]*claim[K, V], now time.Time) {
	for _, cl := range claims {
		if cl.hasChain && !cl.chainDryAt.IsZero() && now.Sub(cl.chainDryAt) > chainDry {
			p.forgetChain(cl)
		}
	}
}

// steering is what the poller is to pause now (see the rules above).
func (p *dispatchPolicy[K, V]) steering(claims map[pipeline.TopicPartition]*claim[K, V]) steering {
	var s steering
	quick := p.handlersQuick()
	for tp, cl := range claims {
		// Surplus ready work is paused only for a chain's sake: with
		// no critical claim nobody needs the window it would free, and
		// a resumed partition may take a while to be fetched again.
		if cl.surplus && p.criticals > 0 || p.starving && !cl.critical && !cl.low {
			s.pause = append(s.pause, tp)
		}
		if cl.over && !cl.critical && !quick {
			s.over = append(s.over, tp)
		}
		if cl.low {
			s.low = append(s.low, tp)
		}
	}
	s.starving, s.quick = p.starving, p.quickWindow && p.criticals == 0
	return s
}
