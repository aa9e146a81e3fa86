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
// of GradientLimit (the no-load latency over the current one, kept in
// [0.5, 1], scales the limit; its increase of √limit while latency is
// flat), the time windows of WindowedLimit (one update per window, not
// per call) read at a percentile as its PercentileSampleWindow does, the
// tolerance of Gradient2Limit (latency a little above the lowest is not
// yet queueing), the "app limited" rule of Gradient2Limit
// and VegasLimit (no growth while under half of the limit is in use) and
// AIMDLimit's multiplicative decrease on a drop. It has one owner, the
// coordinator: no locks, and no clock of its own (each sample says when it
// ended), so that tests drive it with made-up times.
//
// Samples are gathered into windows of at least minWindowTime and
// minWindow calls. At the end of a window, with rtt its 95th percentile
// latency of successful calls (latencyQuantile) and noLoad the lowest such
// percentile of this epoch and the last (see the probe below):
//
//   - gradient = tolerance × noLoad / rtt, kept in [0.5, 1]. Below 1,
//     calls queue downstream (latency grows with the excess): the limit
//     shrinks by smoothing × (1 − gradient), so at most by a quarter a
//     window. At 1 it grows: while rtt is within 5 % of noLoad (no queue)
//     it doubles until the first window that queued or failed (TCP's slow
//     start, with windows of two rounds of calls: that window takes the
//     limit back by a quarter, at least to the last one that did not
//     queue), then grows by √limit/2; above 5 % by 1 (Vegas's cautious
//     increase near the knee); and not at all while fewer than half of
//     the allowed handlers were busy (key order or the backlog, not the
//     limit, bounded them: no evidence that more would help).
//   - if a call in the window failed (an error or a panic, a timeout
//     returned as an error, a downstream shedding load), the limit is cut
//     by a tenth, or by the share of the window's calls that failed if
//     that is more, up to half: a failing downstream counts as overloaded.
//     A window ends early once a round of calls (the limit, at least
//     minWindow) failed: shed calls come back fast, as retries.
//
// Every noLoadEpoch windows (about 2.5 s) a probe window runs at
// probeFactor of the limit: its latency is the one without a queue, which
// starts the next epoch's lowest (as TCP BBR's ProbeRTT state does). So a downstream or a
// machine that became slower for good is learnt as the new normal within
// two epochs instead of being taken for overload for ever, and a limit
// that sits a little above the capacity (within the tolerance) cannot
// creep up by learning its own queue as normal. A probe costs about 1 %
// of the throughput.
//
// The 95th percentile is what the limit keeps low: a queue in the
// downstream shows in the slowest calls first (the median moves only once
// most calls wait, when the tail is long already), and the tail is what a
// user bounds. Measured in bench/README.md: going by the median the limit
// sat well above the capacity (handler p99 1.9-2.0 × the no-load
// latency); by the 99th percentile it kept the p99 lower but read every
// hiccup of a busy process (a GC, librdkafka's threads) as a queue and
// lost up to 29 % of the throughput on Apache Kafka. Failed calls'
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

	// The lowest window latency (at latencyQuantile): in this epoch, and
	// the last one. Each epoch begins with a probe: a window at probeFactor
	// of the limit, which measures the latency without a queue.
	noLoad, noLoadPrev time.Duration
	windows            int           // in this epoch
	probing            bool          // this window is a probe
	congested          bool          // a window queued or failed once: slow start is over
	lastFlat           float64       // slow start: the limit of the last window without a queue
	lastRTT            time.Duration // the last window's latency (at latencyQuantile), for the log
}

const (
	minWindowTime = 100 * time.Millisecond
	minWindow     = 10   // calls per window, at least
	maxSamples    = 1024 // latencies kept per window: a uniform sample of them beyond
	backoff       = 0.9  // the limit's factor, at most, after a window with failures (AIMDLimit's default)
	minGradient   = 0.5  // GradientLimit's clamp
	// latencyQuantile is the percentile of a window's latencies the limit
	// goes by.
	latencyQuantile = 0.95
	// tolerance: a latency up to tolerance × the lowest is not yet
	// queueing: a window's slowest calls vary with the machine's load (a
	// handler's wake-up, a GC) without any queue (bench/README.md).
	tolerance   = 1.2
	flat        = 1.05 // a latency up to flat × the lowest: no queue, grow fast
	smoothing   = 0.5  // the share of a latency decrease applied per window
	noLoadEpoch = 25   // windows
	// probeFactor is the share of the limit a probe window runs at: below
	// the capacity even when the limit sits at the tolerance above it
	// (0.75 × 1.2 < 1), so its latency is the no-load one.
	probeFactor = 0.75
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
	limit := l.limit
	if len(l.latencies) > 0 {
		slices.Sort(l.latencies)
		rtt := max(l.latencies[min(len(l.latencies)-1, int(float64(len(l.latencies))*latencyQuantile))], 1)
		l.lastRTT = rtt
		switch {
		case l.probing:
			// A new epoch: the probe's latency, without a queue, and the
			// lowest of the last epoch are what it goes by.
			l.probing, l.windows, l.noLoadPrev, l.noLoad = false, 0, l.noLoad, rtt
		default:
			l.noLoad = min(l.noLoad, rtt)
			if l.noLoad == 0 {
				l.noLoad = rtt
			}
			ratio := float64(rtt) / float64(l.lowestLatency())
			gradient := max(minGradient, min(1, tolerance/ratio))
			switch {
			case gradient < 1 && !l.congested && l.lastFlat > 0:
				// The first queue: slow start doubled past the capacity,
				// at most twice it. Three quarters of it is within a
				// quarter of the capacity; the gradient takes it from there.
				l.congested = true
				limit = max(l.lastFlat, 0.75*limit)
			case gradient < 1:
				l.congested = true
				limit *= 1 - smoothing*(1-gradient)
			case l.failures > 0 || 2*l.busiest < l.current():
			case ratio <= flat && !l.congested:
				l.lastFlat = limit
				limit *= 2 // slow start, as TCP's: until the first sign of a queue
			case ratio <= flat:
				limit += math.Sqrt(limit) / 2
			default: // a little queueing, within the tolerance: creep
				limit++
			}
			if l.windows++; l.windows >= noLoadEpoch {
				l.probing = true
			}
		}
	}
	if l.failures > 0 {
		// At least a tenth off, and as much as the share of calls that
		// failed, up to half.
		l.probing, l.congested = false, true
		cut := max(minGradient, min(backoff, 1-float64(l.failures)/float64(l.calls)))
		limit = min(limit, l.limit*cut)
	}
	l.limit = max(float64(l.min), min(float64(l.max), limit))
}

// lowestLatency returns the lowest window latency it goes by.
func (l *limiter) lowestLatency() time.Duration {
	if l.noLoadPrev > 0 && (l.noLoad == 0 || l.noLoadPrev < l.noLoad) {
		return l.noLoadPrev
	}
	return l.noLoad
}
