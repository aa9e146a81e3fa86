package engine

import (
	"math"
	"time"
)

// limiter adapts how many handlers may run at the same time, between min
// and max, from what the handlers show: their latency, against the lowest
// latency seen, and their failures. It is the gradient algorithm of
// Netflix's concurrency-limits (GradientLimit: the gradient of the minimum
// RTT against the current one, plus a queue allowance of √limit; see
// github.com/Netflix/concurrency-limits, limit/GradientLimit.java and the
// TCP Vegas reasoning in VegasLimit.java), with its windowing
// (WindowedLimit) and AIMD's multiplicative decrease on a drop
// (AIMDLimit), fitted to a pipeline whose one owner, the coordinator,
// calls it: no locks, no clock (each sample carries its own latency).
//
// Samples are gathered into windows of at least one round (as many
// handler calls as the limit allows at once, and at least minWindow); at
// the end of each window:
//
//   - if a call in it failed (an error, a panic, a timeout that the
//     handler returned as an error), the limit is multiplied by backoff:
//     a failing downstream is an overloaded one until it says otherwise;
//   - otherwise, with rtt the window's mean latency of successful calls and
//     noLoad the lowest mean latency of a window seen lately, the limit
//     becomes limit × gradient + √limit / 2, where gradient is noLoad/rtt
//     kept in [0.5, 1]. While latency is flat the limit grows by √limit/2
//     a window; once calls queue downstream, latency grows with the excess
//     and the gradient takes it away (with a service of capacity C, the
//     limit settles near C + √C/2, where the queue just pays for the
//     allowance). The limit does not grow in a window where fewer than
//     half of it were in use (the handlers, not the limit, were the
//     bound: key order, or too few messages).
//
// Failed calls count as failures only: their latency (a downstream that
// sheds load answers at once) would make the lowest latency meaningless.
// The lowest latency is forgotten slowly (it is the lowest over the last
// noLoadEpoch to 2×noLoadEpoch windows), so a downstream that became
// slower for good is learnt as its new normal instead of being taken for
// overload for ever.
type limiter struct {
	min, max int
	limit    float64

	// The window being gathered.
	calls, failures int
	sum             time.Duration // latency of the successful calls
	busiest         int           // most handlers running when one of its calls ended

	// The lowest window mean latency: over this epoch and the last one.
	noLoad, noLoadPrev time.Duration
	windows            int
	lastRTT            time.Duration // the last window's mean latency, for the log
}

const (
	minWindow   = 10   // calls per window, at least
	backoff     = 0.9  // the limit's factor after a window with failures (AIMDLimit's default)
	minGradient = 0.5  // the most one window may take away for latency (GradientLimit's clamp)
	noLoadEpoch = 1000 // windows
)

// newLimiter returns a limiter that starts at min.
func newLimiter(min, max int) *limiter {
	return &limiter{min: min, max: max, limit: float64(min)}
}

// current returns the number of handlers allowed to run now.
func (l *limiter) current() int {
	return min(l.max, max(l.min, int(l.limit)))
}

// sample records one handler call that ended after took, failed or not,
// with running handlers running when it ended (itself included). It
// reports whether the limit changed.
func (l *limiter) sample(took time.Duration, failed bool, running int) bool {
	l.calls++
	l.busiest = max(l.busiest, running)
	if failed {
		l.failures++
	} else {
		l.sum += took
	}
	if l.calls < max(minWindow, l.current()) {
		return false
	}
	before := l.current()
	l.update()
	l.calls, l.failures, l.sum, l.busiest = 0, 0, 0, 0
	return l.current() != before
}

// update ends a window.
func (l *limiter) update() {
	limit := l.limit
	ok := l.calls - l.failures
	switch {
	case l.failures > 0:
		limit *= backoff
	case ok > 0:
		rtt := max(l.sum/time.Duration(ok), 1)
		l.lastRTT = rtt
		l.windows++
		if l.windows >= noLoadEpoch {
			l.windows, l.noLoadPrev, l.noLoad = 0, l.noLoad, 0
		}
		if l.noLoad == 0 || rtt < l.noLoad {
			l.noLoad = rtt
		}
		noLoad := l.noLoad
		if l.noLoadPrev > 0 {
			noLoad = min(noLoad, l.noLoadPrev)
		}
		gradient := max(minGradient, min(1, float64(noLoad)/float64(rtt)))
		limit = limit*gradient + math.Sqrt(limit)/2
		if limit > l.limit && 2*l.busiest < l.current() {
			limit = l.limit // not limited by the limit: no evidence it could be higher
		}
	}
	l.limit = max(float64(l.min), min(float64(l.max), limit))
}

// lowestLatency returns the lowest window mean latency it goes by.
func (l *limiter) lowestLatency() time.Duration {
	if l.noLoadPrev > 0 && (l.noLoad == 0 || l.noLoadPrev < l.noLoad) {
		return l.noLoadPrev
	}
	return l.noLoad
}
