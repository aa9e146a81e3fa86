package engine

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testClock is the made-up time of the calls fed to a limiter.
var testClock = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

// callWindow feeds the limiter one full window of calls that took took
// each, with all of the limit busy, the first failed of them failing; it
// returns the limit after it.
func callWindow(l *limiter, took time.Duration, failed int) int {
	for i := 0; ; i++ {
		testClock = testClock.Add(minWindowTime / minWindow)
		d := took
		if i < failed {
			d = time.Microsecond // a downstream that sheds answers at once
		}
		l.sample(testClock, d, i < failed, l.current())
		if l.calls == 0 {
			return l.current()
		}
	}
}

func TestLimiterStartsAtMinAndGrowsWhileLatencyIsFlat(t *testing.T) {
	l := newLimiter(3, 40)
	assert.Equal(t, 3, l.current())
	prev := l.limit
	for range 100 {
		callWindow(l, 2*time.Millisecond, 0)
		assert.GreaterOrEqual(t, l.limit, prev, "flat latency never lowers the limit")
		prev = l.limit
	}
	assert.Equal(t, 40, l.current(), "grows to max and stays there")
}

func TestLimiterDecreasesOnRisingLatency(t *testing.T) {
	l := newLimiter(1, 200)
	for l.current() < 100 {
		callWindow(l, 2*time.Millisecond, 0)
	}
	prev := l.current()
	next := callWindow(l, 4*time.Millisecond, 0)
	assert.Less(t, next, prev, "latency doubled: the limit comes down")
	assert.GreaterOrEqual(t, float64(next), 0.5*float64(prev), "by at most half a window")
	for range 20 {
		before, probe := l.limit, l.probing
		callWindow(l, 20*time.Millisecond, 0)
		if l.limit > 1 && !probe {
			assert.Less(t, l.limit, before, "still queueing: still coming down")
		}
	}
	assert.LessOrEqual(t, l.current(), 2)
}

func TestLimiterRespectsMin(t *testing.T) {
	l := newLimiter(8, 64)
	for range 50 {
		callWindow(l, time.Millisecond, 0)
	}
	for range 100 {
		callWindow(l, time.Second, 0)
		assert.GreaterOrEqual(t, l.current(), 8)
	}
	for range 100 {
		callWindow(l, time.Second, 5)
		assert.GreaterOrEqual(t, l.current(), 8)
	}
	assert.Equal(t, 8, l.current())
}

func TestLimiterFailureIsMultiplicativeDecrease(t *testing.T) {
	l := newLimiter(1, 1000)
	for l.current() < 100 {
		callWindow(l, time.Millisecond, 0)
	}
	before := l.limit
	callWindow(l, time.Millisecond, 1)
	assert.InDelta(t, before*backoff, l.limit, 1e-9, "one failed call in a window: ×0.9")
	before = l.limit
	calls := 0
	for l.calls > 0 || calls == 0 { // every call fails: the window ends after one round
		calls++
		l.sample(testClock, time.Microsecond, true, l.current())
	}
	assert.Equal(t, max(minWindow, int(before)), calls, "a round of failures ends the window")
	assert.InDelta(t, before*minGradient, l.limit, 1e-9, "every call failed: ×0.5 once")
}

func TestLimiterIgnoresFailedCallsLatency(t *testing.T) {
	l := newLimiter(1, 1000)
	for l.current() < 50 {
		callWindow(l, 2*time.Millisecond, 0)
	}
	// A downstream shedding load answers at once: those calls must not
	// make 2 ms look slow.
	for range 3 {
		callWindow(l, 2*time.Millisecond, 5)
	}
	assert.Equal(t, 2*time.Millisecond, l.lowestLatency())
}

func TestLimiterDoesNotGrowWhenHandlersAreIdle(t *testing.T) {
	l := newLimiter(10, 100)
	for range 50 {
		for range 2 * minWindow {
			testClock = testClock.Add(minWindowTime / minWindow)
			l.sample(testClock, time.Millisecond, false, 4) // key order allows 4: under half of 10
		}
	}
	assert.Equal(t, 10, l.current())
}

// downstream is a service that serves capacity calls at once in base
// each; calls beyond it queue. With limit handlers always busy, a call
// takes base × limit/capacity.
func downstreamLatency(limit, capacity int, base time.Duration) time.Duration {
	return time.Duration(float64(base) * max(1, float64(limit)/float64(capacity)))
}

func TestLimiterFindsAndFollowsTheCapacity(t *testing.T) {
	const base = 2 * time.Millisecond
	l := newLimiter(1, 512)
	settle := func(capacity int) {
		t.Helper()
		for range 200 {
			callWindow(l, downstreamLatency(l.current(), capacity, base), 0)
		}
		for range 200 {
			callWindow(l, downstreamLatency(l.current(), capacity, base), 0)
			if l.probing {
				continue // the next window runs under the limit, on purpose
			}
			require.GreaterOrEqual(t, l.current(), capacity, "capacity %d: throughput lost", capacity)
			require.LessOrEqual(t, float64(l.current()), 1.05*float64(capacity)+1, "capacity %d: more than a call or two queued", capacity)
		}
	}
	settle(32)
	settle(8)
	settle(32)
	settle(200)
}

func TestLimiterForgetsAnOldLowestLatency(t *testing.T) {
	l := newLimiter(1, 64)
	for range 100 {
		callWindow(l, time.Millisecond, 0)
	}
	// The downstream became slower for good (not loaded): within two
	// epochs its new latency is the normal one, and the limit grows again.
	for range 2 * (noLoadEpoch + 2) { // two epochs: each ends with a probe of two windows
		callWindow(l, 10*time.Millisecond, 0)
	}
	assert.Equal(t, 10*time.Millisecond, l.lowestLatency())
	for range 100 {
		callWindow(l, 10*time.Millisecond, 0)
	}
	assert.Equal(t, 64, l.current())
}

// The limit goes by a window's slowest calls: a queue that makes 10 % of
// the calls slow brings it down while the median is still flat.
func TestLimiterGoesByTheSlowestCalls(t *testing.T) {
	l := newLimiter(1, 200)
	for l.current() < 64 {
		callWindow(l, 2*time.Millisecond, 0)
	}
	before := l.current()
	for i := 0; ; i++ {
		testClock = testClock.Add(minWindowTime / minWindow)
		took := 2 * time.Millisecond
		if i%10 == 0 {
			took = 4 * time.Millisecond
		}
		l.sample(testClock, took, false, l.current())
		if l.calls == 0 {
			break
		}
	}
	assert.Less(t, l.current(), before)
}

// Slow start grows per two rounds of calls, not per minWindowTime, and its
// first queue takes the limit to what the downstream served without one
// (Little's law: limit × the last latency / this one).
func TestLimiterSlowStartIsQuickAndEndsAtWhatWasServed(t *testing.T) {
	const base = 2 * time.Millisecond
	l := newLimiter(1, 512)
	began := testClock
	for !l.congested {
		limit := l.current()
		for range 2 * max(minWindow, limit) {
			testClock = testClock.Add(base / time.Duration(limit)) // limit calls per base
			l.sample(testClock, downstreamLatency(limit, 32, base), false, limit)
		}
	}
	assert.Less(t, testClock.Sub(began), minWindowTime, "slow start within a window's time")
	assert.Equal(t, 32, l.current(), "64 queued: 64 × 2 ms / 4 ms")
}

// One slow window is a hiccup of the machine (a GC, a stalled core), not a
// queue: the limit gives up one call, not a quarter; a second one in a row
// is a queue.
func TestLimiterTellsAHiccupFromAQueue(t *testing.T) {
	const base = 2 * time.Millisecond
	l := newLimiter(1, 512)
	for range 100 {
		callWindow(l, downstreamLatency(l.current(), 32, base), 0)
	}
	for l.probing {
		callWindow(l, downstreamLatency(l.current(), 32, base), 0)
	}
	before := l.current()
	require.InDelta(t, 32, before, 1)
	callWindow(l, 3*base, 0)
	assert.Equal(t, before-1, l.current(), "one slow window: one call off")
	callWindow(l, 3*base, 0)
	assert.Less(t, l.current(), before-5, "two in a row: a queue, down by the gradient")
}

// A downstream whose latency varies from window to window by 5 % (no
// queue at any limit) is not taken for a loaded one: its probes measure
// the noise and the bands widen, so the limit still grows to max.
func TestLimiterWidensItsBandsOnANoisyDownstream(t *testing.T) {
	const base = 2 * time.Millisecond
	rng := rand.New(rand.NewPCG(1, 2))
	l := newLimiter(1, 64)
	var limits []int
	for range 400 {
		took := time.Duration(float64(base) * (1 + 0.05*rng.NormFloat64()))
		limits = append(limits, callWindow(l, took, 0))
	}
	assert.Greater(t, l.noise, 0.03, "the probes measured the noise")
	low := 0
	for _, limit := range limits[200:] {
		if limit < 48 {
			low++
		}
	}
	assert.Less(t, low, 20, "the limit stays near max: %v", limits[200:])
}

// When the capacity rises, the limit follows within about a second of
// windows: its growth doubles per three windows in a row that grew.
func TestLimiterFollowsARisingCapacityQuickly(t *testing.T) {
	const base = 2 * time.Millisecond
	l := newLimiter(1, 512)
	for range 100 {
		callWindow(l, downstreamLatency(l.current(), 8, base), 0)
	}
	require.InDelta(t, 8, l.current(), 1)
	windows := 0
	for l.current() < 32 {
		callWindow(l, downstreamLatency(l.current(), 32, base), 0)
		windows++
	}
	assert.LessOrEqual(t, windows, 20, "by one a window, it would take 24 and more")
}

// A machine runs each call a little slower as it gets busier, without any
// queue. After the capacity rose, the latency of the last probe (at a
// lighter load) would hold the limit far under the new capacity until the
// next epoch: once the limit holds a tenth above the last probe's, it
// probes again.
func TestLimiterProbesAgainWhenTheLimitGrewByATenth(t *testing.T) {
	const base = 2 * time.Millisecond
	busier := func(limit, capacity int) time.Duration { // 10 % slower at 64 handlers
		return time.Duration(float64(downstreamLatency(limit, capacity, base)) * (1 + 0.1*float64(limit)/64))
	}
	l := newLimiter(1, 512)
	for range 100 {
		callWindow(l, busier(l.current(), 16), 0)
	}
	require.InDelta(t, 16, l.current(), 1)
	for range 2 * noLoadEpoch {
		callWindow(l, busier(l.current(), 64), 0)
	}
	assert.GreaterOrEqual(t, l.current(), 56, "within two epochs of the capacity's rise")
}
