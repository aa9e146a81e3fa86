package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// handlerSpec is a handler model: what each message's handler does.
//
//   - noop: nothing.
//   - sleep:D: sleeps D, a stand-in for I/O (a call to a service). The
//     measured duration includes the sleep's overshoot.
//   - sleep:A-B: sleeps a duration drawn uniformly from [A, B], drawn once
//     per message when the workload is generated, so that the serial
//     baseline and every run sleep the same durations.
//   - cpu:N: N rounds of integer hashing, a fixed amount of CPU work.
//   - sink:F+P: a sink (a database, a bulk API): a fixed round trip F per
//     call plus P per message, slept. One message costs F+P; a batch of n
//     (with -batch) F+n×P.
//   - downstream:cap=C,base=D[,fail=F]: a call to one simulated service
//     that all handlers share, serving C calls at a time in D each (see
//     downstream); with fail=F, a call that finds more than F×C calls in
//     it fails at once, and the handler returns the error.
type handlerSpec struct {
	text     string
	kind     string        // noop, sleep, cpu, sink, downstream
	min, max time.Duration // downstream: min is the base time
	rounds   int
	fixed    time.Duration // sink: per call
	perMsg   time.Duration // sink: per message
	capacity int           // downstream
	fail     float64       // downstream; 0: never fails
	timer    bool          // downstream: handlers wait with time.Sleep, not on a timerfd
	jitter   float64       // downstream: each call takes base × (1 ± jitter), uniform
}

func parseHandler(s string) (handlerSpec, error) {
	h := handlerSpec{text: s}
	kind, arg, _ := strings.Cut(s, ":")
	h.kind = kind
	switch kind {
	case "noop":
		if arg != "" {
			return h, fmt.Errorf("noop takes no argument")
		}
	case "sleep":
		lo, hi, ranged := strings.Cut(arg, "-")
		var err error
		if h.min, err = time.ParseDuration(lo); err != nil {
			return h, fmt.Errorf("sleep: %w", err)
		}
		h.max = h.min
		if ranged {
			if h.max, err = time.ParseDuration(hi); err != nil {
				return h, fmt.Errorf("sleep: %w", err)
			}
		}
		if h.min < 0 || h.max < h.min {
			return h, fmt.Errorf("sleep: want 0 <= A <= B in sleep:A-B, got %q", arg)
		}
	case "sink":
		f, per, ok := strings.Cut(arg, "+")
		var err1, err2 error
		h.fixed, err1 = time.ParseDuration(f)
		h.perMsg, err2 = time.ParseDuration(per)
		if !ok || err1 != nil || err2 != nil || h.fixed < 0 || h.perMsg < 0 {
			return h, fmt.Errorf("sink: want sink:F+P with durations F, P >= 0 (e.g. sink:2ms+10us), got %q", arg)
		}
	case "cpu":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return h, fmt.Errorf("cpu: want cpu:N with N >= 0 rounds, got %q", arg)
		}
		h.rounds = n
	case "downstream":
		if err := parseDownstream(&h, arg); err != nil {
			return h, err
		}
	default:
		return h, fmt.Errorf("want noop, sleep:D, sleep:A-B, cpu:N, sink:F+P or downstream:cap=C,base=D[,fail=F], got %q", s)
	}
	return h, nil
}

func (h handlerSpec) String() string { return h.text }

// timed reports whether the handler's duration is worth measuring (a no-op
// takes no time; measuring it would only add the clock's cost).
func (h handlerSpec) timed() bool { return h.kind != "noop" }

// nominal draws the nominal duration of each of n messages (nil when the
// model has no per-message duration).
func (h handlerSpec) nominal(n int, rng *rand.Rand) []time.Duration {
	if h.kind != "sleep" {
		return nil
	}
	d := make([]time.Duration, n)
	for i := range d {
		d[i] = h.min
		if h.max > h.min {
			d[i] += time.Duration(rng.Int64N(int64(h.max-h.min) + 1))
		}
	}
	return d
}

// sink keeps the cpu model's result alive so that the compiler cannot drop
// the work.
var sink atomic.Uint64

// run does message i's work.
func (h handlerSpec) run(w *workload, i int32) {
	switch h.kind {
	case "sleep":
		if d := w.nominal[i]; d > 0 {
			time.Sleep(d)
		}
	case "cpu":
		sink.Add(spin(uint64(i), h.rounds))
	case "sink":
		time.Sleep(h.fixed + h.perMsg)
	}
}

// sinkBound is the lower bound of a sink model's run on n messages with c
// calls at a time, at most batch messages per call (1 without -batch), from
// the model's nominal durations: the larger of the work (the fewest calls,
// ⌈n/batch⌉, each costing F, plus n×P, over c) and the longest chain (its
// k messages in ⌈k/batch⌉ calls one after another: ⌈k/batch⌉×F + k×P).
func (h handlerSpec) sinkBound(n, c, batch int, longestChain int) idealBound {
	calls := func(k int) int { return (k + batch - 1) / batch }
	cost := func(k int) float64 {
		return (float64(calls(k))*float64(h.fixed) + float64(k)*float64(h.perMsg)) / 1e9
	}
	b := idealBound{seconds: cost(n) / float64(c), limit: "work", handlerSeconds: cost(n)}
	if chain := cost(longestChain); chain > b.seconds {
		b.seconds, b.limit = chain, "chain"
	}
	return b
}

// spin does n rounds of splitmix64, a fixed amount of CPU work.
func spin(x uint64, n int) uint64 {
	for range n {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		x = z ^ (z >> 31)
	}
	return x
}
