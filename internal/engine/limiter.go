package engine

import (
	"math"
	"slices"
	"time"
)

// limiter adapts how many handlers may run at the same time, between min
// and max, from what the handlers show: their latency, against the lowest
// latency seen lately, and their failures. It follows Netflix's
// concurrency-limits (github.com/Netflix/concurrency-limits): the gradient
// of GradientLimit (the no-load latency over the current one scales the
// limit down), the time windows of WindowedLimit (one update per window,
// not per call) read at a percentile as its PercentileSampleWindow does,
// the three bands of VegasLimit (grow while there is no queue, hold while
// it is small, come down beyond), the "app limited" rule of
// Gradient2Limit and VegasLimit (no growth while under half of the limit
// is in use) and AIMDLimit's multiplicative decrease on a drop. It has one
// owner, the coordinator: no locks, and no clock of its own (each sample
// says when it ended), so that tests drive it with made-up times.
//
// Samples are gathered into windows of at least minWindowTime and
// minWindow calls. At the end of a window, with rtt its 90th percentile
// latency of successful calls (latencyQuantile), noLoad the latency
// without a queue (the lower of the last two probes', below) and ratio =
// rtt / noLoad:
//
//   - ratio above hold: calls queue downstream. The first such window
//     takes one call off (a machine's hiccup, a GC or a stalled core,
//     slows a window as much as a queue does, but not two in a row); the
//     next ones bring the limit down by the gradient (hold / ratio, at
//     least 0.5) with smoothing: at least by one, at most by a quarter a
//     window. Until the first queue the limit doubles per two rounds of
//     calls (TCP's slow start, per round trip); the first window
//     slowStartExit slower than the one before ends it: the limit goes to
//     limit × (the last window's latency) / rtt, what the downstream
//     served without a queue (Little's law), at least the last limit
//     that did not queue.
//   - ratio up to grow: no queue. The limit grows by one a window (TCP's
//     congestion avoidance), by two, four... (up to √limit) after three,
//     six... windows in a row that grew, and halves its distance to the
//     limit it last came down from (the knee) while far under it, as TCP
//     CUBIC returns to its last maximum. Not while fewer than half of the
//     allowed handlers were busy (key order or the backlog, not the
//     limit, bounded them: no evidence that more would help), nor after
//     a failure.
//   - in between: hold. A queue of a call or two adds a few per cent to
//     a window's slow calls, and that is where the limit stays, within a
//     call or two of the capacity (the three bands of Vegas).
//   - if a call in the window failed (an error or a panic, a timeout
//     returned as an error, a downstream shedding load), the limit is cut
//     by a tenth, or by the share of the window's calls that failed if
//     that is more, up to half: a failing downstream counts as overloaded.
//     A window ends early once a round of calls (the limit, at least
//     minWindow) failed: shed calls come back fast, as retries.
//
// Every noLoadEpoch windows (about 2.5 s), and at once when the limit
// holds a tenth above the last probe's, a probe runs two windows at
// probeFactor of the limit, under the capacity: their latency is the one
// without a queue at about this load (as TCP BBR's ProbeRTT state
// measures it), and the difference between the two, which ran alike, is
// the noise. So a downstream or a machine that became slower for good is
// learnt as the new normal within two epochs instead of being taken for
// overload for ever, a limit that sits a little above the capacity
// cannot creep up by learning its own queue as normal, and a machine
// whose calls run a little slower as it gets busier (every machine's)
// is not taken for a queue. A probe is short and rare, so it costs little
// throughput.
//
// The bands are as narrow as the windows let them be: grow is growBelow
// (2 %) and hold the tolerance (3 %), widened to 1.5 and 3 times the
// noise (the relative standard deviation of a window's latency), hold up
// to maxTolerance. A quiet downstream is held within a call or two of its
// capacity; a noisy one is not taken for a loaded one.
//
// Why the 90th percentile: a queue of a call or two in a downstream of
// tens makes a few per cent of the calls wait, which moves the 90th
// percentile clearly and the mean barely, while a busy process's
// hiccups (a GC, librdkafka's threads) move its slowest percent of calls
// much more than that and the 90th percentile hardly at all (measured
// window by window at fixed limits, bench/README.md). The median or the
// 95th percentile, with the wider tolerance they need, let the limit sit
// calls over the capacity and the handlers' tail latency well above the
// no-load latency; the 99th read every hiccup as a queue and cost
// throughput. Failed calls'
// latencies are left out (a downstream that sheds answers at once, which
// would make the lowest latency meaningless).
type limiter struct {
	min, max int
	limit    float64

	// The window being gathered.
	began     time.Time // its first call's end; zero before it
	calls     int
	failures  int
	latencies []time.Duration // of its successful calls (a sample of them past maxSamples)
	busiest   int             // most handlers running when one of its calls ended
	seen      uint64          // successful calls, for the reservoir sample

	// The latency without a queue (at latencyQuantile): this epoch's
	// probe's, and the last one's. Before the first probe, the lowest
	// window latency since slow start.
	noLoad, noLoadPrev time.Duration
	probed             bool          // a probe ended: noLoad is its latency
	windows            int           // in this epoch
	probing            bool          // this window is a probe
	probeRTT           time.Duration // the probe's first window's latency; zero in its first
	probedAt           float64       // the limit at the last probe
	congested          bool          // a window queued or failed once: slow start is over
	lastFlat           float64       // slow start: the limit of the last window without a queue
	lastRTT            time.Duration // the last window's latency (at latencyQuantile), for the log

	knee    float64 // the limit it last came down from
	falling bool    // the last window lowered the limit
	growing int     // windows in a row that raised it
	calm    int     // windows since it last came down
	again   bool    // it came down from the same knee twice in a row
	// noise is the standard deviation of a window's latency, relative,
	// from the probes' pairs of windows (an exponentially weighted average).
	noise float64
}

const (
	minWindowTime = 100 * time.Millisecond
	minWindow     = 10   // calls per window, at least
	maxSamples    = 4096 // latencies kept per window: a uniform sample of them beyond
	backoff       = 0.9  // the limit's factor, at most, after a window with failures (AIMDLimit's default)
	minGradient   = 0.5  // GradientLimit's clamp
	// latencyQuantile is the percentile of a window's latencies the limit
	// goes by.
	latencyQuantile = 0.9
	// growBelow and tolerance bound the bands of a window's latency over
	// the one without a queue, at their narrowest: up to growBelow the limit grows, up
	// to tolerance it holds, beyond it comes down. Noise widens them
	// (bands), the tolerance up to maxTolerance.
	growBelow    = 1.02
	tolerance    = 1.03
	maxTolerance = 1.25
	noiseWeight  = 0.25 // of a probe in the average noise
	// slowStartExit: a slow start window this much slower than the one
	// before it (at half its limit) queued. Its windows are two rounds of
	// calls: noisier than the bands can tell from a queue, and doubling
	// past the capacity shows far more than that.
	slowStartExit = 1.25
	// nearKnee: under this share of the knee, growth returns to it fast.
	// plateau: windows it waits before it tries the knee again.
	plateau     = 4
	nearKnee    = 0.85
	smoothing   = 0.5 // the share of a latency decrease applied per window
	noLoadEpoch = 25  // windows
	// probeFactor is the share of the limit a probe window runs at: below
	// the capacity, where the bands hold the limit (within the tolerance
	// over it), yet about as busy a machine.
	probeFactor = 0.9
	// reprobe: a limit this much over the last probe's probes again.
	reprobe = 1.1
)

// newLimiter returns a limiter that starts at min.
func newLimiter(min, max int) *limiter {
	return &limiter{min: min, max: max, limit: float64(min)}
}

// current returns the number of handlers allowed to run now.
func (l *limiter) current() int {
	limit := l.limit
	if l.probing {
		limit *= probeFactor
	}
	return min(l.max, max(l.min, int(limit)))
}

// sample records one handler call that ended at ended after took, failed
// or not, with running handlers running when it ended (itself included).
// It reports whether the limit changed.
func (l *limiter) sample(ended time.Time, took time.Duration, failed bool, running int) bool {
	if l.began.IsZero() {
		l.began = ended
	}
	l.calls++
	l.busiest = max(l.busiest, running)
	if failed {
		l.failures++
	} else {
		l.keep(took)
	}
	// A window ends after minWindowTime, or at once when a round of calls
	// failed: a downstream shedding load fails calls faster than it
	// serves them, and every one of them is a retry to come. During slow
	// start it ends after two rounds of calls, as TCP's slow start grows
	// per round trip: from min to a capacity of tens in milliseconds, not
	// in tenths of a second.
	round := max(minWindow, l.current())
	if l.calls < minWindow || ended.Sub(l.began) < minWindowTime && l.failures < round && (l.congested || l.calls < 2*round) {
		return false
	}
	before := l.current()
	l.update()
	l.began, l.calls, l.failures, l.latencies, l.busiest, l.seen = time.Time{}, 0, 0, l.latencies[:0], 0, 0
	return l.current() != before
}

// keep adds a latency to the window's sample: every one up to maxSamples,
// then a uniform sample of them (reservoir sampling), so that a window of
// a fast pipeline costs no more than a slow one's.
func (l *limiter) keep(took time.Duration) {
	l.seen++
	if len(l.latencies) < maxSamples {
		l.latencies = append(l.latencies, took)
		return
	}
	// splitmix64 of the count: cheap, and deterministic for tests.
	z := l.seen * 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	if i := (z ^ (z >> 31)) % l.seen; i < maxSamples {
		l.latencies[i] = took
	}
}

// update ends a window.
func (l *limiter) update() {
	limit, ran := l.limit, l.current()
	falling, growing := false, false
	if len(l.latencies) > 0 {
		slices.Sort(l.latencies)
		rtt := max(l.latencies[min(len(l.latencies)-1, int(float64(len(l.latencies))*latencyQuantile))], 1)
		l.lastRTT = rtt
		switch {
		case l.probing && l.probeRTT == 0:
			l.probeRTT = rtt // the probe's first window
		case l.probing:
			// A new epoch: the probe's latency, without a queue, and the
			// last epoch's are what it goes by. Its two windows ran alike:
			// what tells them apart is noise.
			a, b := float64(l.probeRTT), float64(rtt)
			sd := math.Abs(a-b) / ((a + b) / 2) * math.Sqrt(math.Pi) / 2 // relative: E|a−b| = 2σ/√π
			if !l.probed {
				l.noise = sd
			}
			l.noise += noiseWeight * (sd - l.noise)
			l.noLoadPrev, l.noLoad = l.noLoad, time.Duration((a+b)/2)
			if l.limit > reprobe*l.probedAt {
				l.noLoadPrev = 0 // measured at a load far lighter
			}
			l.probing, l.probed, l.probeRTT, l.windows, l.probedAt = false, true, 0, 0, l.limit
		case !l.congested && l.noLoad > 0 && float64(rtt) > slowStartExit*float64(l.noLoad):
			// The first queue: slow start doubled past the capacity, at
			// most twice it. The last window, without a queue, served
			// half the limit at noLoad: limit × noLoad / rtt calls are
			// served without a queue (Little's law).
			l.congested = true
			limit = max(l.lastFlat, limit*float64(l.noLoad)/float64(rtt))
			l.knee = limit
		default:
			if !l.congested || l.noLoad == 0 {
				// Slow start goes by the last window's latency, not the
				// lowest: a handful of handlers run quicker than tens on
				// a busy machine, without any queue.
				l.noLoad = rtt
			} else if !l.probed {
				l.noLoad = min(l.noLoad, rtt)
			}
			ratio := float64(rtt) / float64(l.lowestLatency())
			grow, hold := l.bands()
			switch {
			case ratio > hold && !l.falling:
				// One window over: one off. A machine's hiccup (a GC, a
				// stalled core) slows a window's calls as much as a queue
				// does, but not two windows in a row.
				l.comeDown(limit)
				falling = true
				limit--
			case ratio > hold:
				l.congested, falling = true, true
				gradient := max(minGradient, hold/ratio)
				limit = min(limit-1, limit*(1-smoothing*(1-gradient)))
			case l.failures > 0 || 2*l.busiest < ran:
			case !l.congested:
				l.lastFlat = limit
				limit *= 2 // slow start, as TCP's: until the first sign of a queue
			case ratio > grow:
				// A queue of a call or two, or none: hold. But if the
				// limit grew by a tenth since the last probe, its
				// latency is that of a lighter load (a busier machine
				// runs each call a little slower): probe now.
				l.probing = l.probed && limit > reprobe*l.probedAt
			case limit < nearKnee*l.knee:
				limit += max(1, (nearKnee*l.knee-limit)/2)
				growing = true
			case l.again && math.Floor(limit)+1 >= math.Floor(l.knee) && l.calm < plateau:
				// Back under the limit it came down from twice in a row:
				// it tries that again after plateau windows, not at once
				// (as TCP CUBIC's plateau): a limit one over the
				// capacity, every other window, would make a call in
				// every round wait. (Once is what a hiccup does.)
			default:
				// By one, doubling per three windows in a row that grew
				// (up to √limit): where a queue stops it, it rarely grows
				// twice in a row; past a capacity that rose, it gets there
				// in seconds.
				limit += min(math.Exp2(float64(l.growing/3)), max(1, math.Sqrt(limit)))
				growing = true
			}
			if l.windows++; l.windows >= noLoadEpoch {
				l.probing = true
			}
		}
	}
	if l.failures > 0 {
		// At least a tenth off, and as much as the share of calls that
		// failed, up to half.
		if !l.falling && !falling {
			l.comeDown(l.limit)
		}
		l.probing, l.probeRTT, falling = false, 0, true
		cut := max(minGradient, min(backoff, 1-float64(l.failures)/float64(l.calls)))
		limit = min(limit, l.limit*cut)
	}
	if l.falling && !falling && limit < l.knee/2 {
		// It came down to under half of where it began to: the
		// capacity fell, that knee is gone.
		l.knee = limit
	}
	l.falling = falling
	if l.calm++; falling {
		l.calm = 0
	}
	if l.growing++; !growing {
		l.growing = 0
	}
	l.limit = max(float64(l.min), min(float64(l.max), limit))
}

// comeDown records that the limit comes down from limit, with a queue
// or failures: the knee, and whether it is the one it came down from
// last time.
func (l *limiter) comeDown(limit float64) {
	l.again = math.Floor(limit) == math.Floor(l.knee)
	l.knee, l.congested = limit, true
}

// bands returns the ratios up to which the limit grows, and up to which it
// holds: the narrowest, widened by the noise.
func (l *limiter) bands() (grow, hold float64) {
	return max(growBelow, 1+1.5*l.noise), min(maxTolerance, max(tolerance, 1+3*l.noise))
}

// lowestLatency returns the latency without a queue it goes by: the lower
// of the last two probes' (before the first probe, the lowest window
// latency since slow start).
func (l *limiter) lowestLatency() time.Duration {
	if l.noLoadPrev > 0 && (l.noLoad == 0 || l.noLoadPrev < l.noLoad) {
		return l.noLoadPrev
	}
	return l.noLoad
}
