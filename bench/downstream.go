package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// downstream is the simulated shared service of the downstream handler
// model: it serves up to capacity calls at a time, base each, in arrival
// order; calls beyond that wait (so latency grows with the excess), and
// with a fail factor, a call that finds more than fail × capacity calls in
// the service (served or waiting) fails at once: the service sheds load.
//
// The service runs on its own schedule, computed when a call arrives: with
// every call taking base, a call starts when it arrives or when the call
// capacity places ahead of it ends, whichever is later, and the handler
// sleeps until its end. So the service's capacity and queue are exact,
// whatever the machine's timer does to the sleeping handlers (on a busy
// VM a 2 ms sleep can take 10 ms at the 99th percentile): a late wake-up
// delays that handler, not the calls behind it. The latency the service
// imposed (end − arrival) is recorded apart from the handler's wall time.
//
// With jitter J, each call takes base × (1 + J × u), u uniform in [-1, 1]
// (a real service's calls vary), still in arrival order: a call starts
// when capacity calls or fewer of those ahead of it are still in the
// service, and not before the call ahead of it started.
//
// A handler waits for its call's end as for a reply on a socket: on a
// timerfd, woken by Go's network poller when the kernel's timer fires
// (fdWait). With wait=timer it sleeps (time.Sleep), which on this VM wakes
// 0.1-0.3 ms later, time during which the service idles as it would not for
// a client woken by a reply.
type downstream struct {
	base   time.Duration
	fail   float64 // 0: never fails
	jitter float64
	wait   func(end time.Time)

	mu        sync.Mutex
	capacity  int
	ends      []time.Time // the calls in the service: when each ends (ascending)
	lastStart time.Time   // when the last call to arrive starts
	rng       *rand.Rand  // for jitter
}

// errShed is a call the downstream refused: too many calls in it.
var errShed = errors.New("downstream overloaded: call shed")

func newDownstream(h handlerSpec) *downstream {
	d := &downstream{base: h.min, fail: h.fail, jitter: h.jitter, capacity: h.capacity, wait: fdWait,
		rng: rand.New(rand.NewPCG(1, 2))}
	if h.timer {
		d.wait = func(end time.Time) { time.Sleep(time.Until(end)) }
	}
	return d
}

// call makes one call: it returns once the service has served it, with
// the latency the service imposed (its wait plus base), or errShed at once
// if the service is overloaded.
func (d *downstream) call() (latency time.Duration, err error) {
	now := time.Now()
	d.mu.Lock()
	done := 0
	for done < len(d.ends) && !d.ends[done].After(now) {
		done++
	}
	d.ends = append(d.ends[:0], d.ends[done:]...)
	if d.fail > 0 && float64(len(d.ends)) > d.fail*float64(d.capacity) {
		d.mu.Unlock()
		return 0, errShed
	}
	start := later(now, d.lastStart)
	if n := len(d.ends); n >= d.capacity {
		// When the call capacity places from the last ends, capacity − 1
		// calls are left in the service: this one takes the server that
		// freed.
		start = later(start, d.ends[n-d.capacity])
	}
	took := d.base
	if d.jitter > 0 {
		took = time.Duration(float64(d.base) * (1 + d.jitter*(2*d.rng.Float64()-1)))
	}
	end := start.Add(took)
	i, _ := slices.BinarySearchFunc(d.ends, end, time.Time.Compare)
	d.ends = slices.Insert(d.ends, i, end)
	d.lastStart = start
	d.mu.Unlock()
	d.wait(end)
	return end.Sub(now), nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// setCapacity changes the capacity from now on: with fewer servers,
// waiting calls wait longer; with more, they start sooner.
func (d *downstream) setCapacity(c int) {
	d.mu.Lock()
	d.capacity = c
	d.mu.Unlock()
}

// parseDownstream parses the arguments of
// downstream:cap=C,base=D[,fail=F][,jitter=J][,wait=fd|timer].
func parseDownstream(h *handlerSpec, arg string) error {
	for _, kv := range parseList(arg) {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "cap":
			h.capacity, err = strconv.Atoi(v)
			if err == nil && h.capacity < 1 {
				err = fmt.Errorf("must be at least 1")
			}
		case "base":
			h.min, err = time.ParseDuration(v)
			if err == nil && h.min <= 0 {
				err = fmt.Errorf("must be positive")
			}
			h.max = h.min
		case "fail":
			h.fail, err = strconv.ParseFloat(v, 64)
			if err == nil && h.fail < 1 {
				err = fmt.Errorf("must be at least 1 (calls beyond fail × cap are shed)")
			}
		case "jitter":
			h.jitter, err = strconv.ParseFloat(v, 64)
			if err == nil && (h.jitter < 0 || h.jitter >= 1) {
				err = fmt.Errorf("must be at least 0 and under 1 (calls take base × (1 ± jitter))")
			}
		case "wait":
			switch v {
			case "fd":
				h.timer = false
			case "timer":
				h.timer = true
			default:
				err = fmt.Errorf("want fd or timer")
			}
		default:
			err = fmt.Errorf("unknown parameter (want cap, base, fail, jitter, wait)")
		}
		if err != nil {
			return fmt.Errorf("downstream: %s: %w", kv, err)
		}
	}
	if h.capacity == 0 || h.min == 0 {
		return fmt.Errorf("downstream: want downstream:cap=C,base=D[,fail=F][,jitter=J][,wait=fd|timer], got %q", arg)
	}
	return nil
}

// capacityChange is -downstream-change T:cap=C: the downstream's capacity
// becomes C at T after the run's start.
type capacityChange struct {
	at       time.Duration
	capacity int
}

func parseCapacityChange(s string) (*capacityChange, error) {
	if s == "" {
		return nil, nil
	}
	at, spec, ok := strings.Cut(s, ":")
	c, found := strings.CutPrefix(spec, "cap=")
	if !ok || !found {
		return nil, fmt.Errorf("want T:cap=C, got %q", s)
	}
	var ch capacityChange
	var err error
	if ch.at, err = time.ParseDuration(at); err != nil || ch.at <= 0 {
		return nil, fmt.Errorf("want a positive duration before ':', got %q", at)
	}
	if ch.capacity, err = strconv.Atoi(c); err != nil || ch.capacity < 1 {
		return nil, fmt.Errorf("want cap=C with C at least 1, got %q", spec)
	}
	return &ch, nil
}

// concSpec is one -concurrency value: a fixed count, or adaptive:MIN-MAX.
type concSpec struct {
	n   int // fixed, or the adaptive max
	min int // adaptive: the limit's floor; 0 for fixed
}

func (s concSpec) adaptive() bool { return s.min > 0 }

func (s concSpec) String() string {
	if s.adaptive() {
		return fmt.Sprintf("adaptive:%d-%d", s.min, s.n)
	}
	return strconv.Itoa(s.n)
}

func parseConcurrency(s string) ([]concSpec, error) {
	var out []concSpec
	for _, f := range parseList(s) {
		if r, ok := strings.CutPrefix(f, "adaptive:"); ok {
			lo, hi, ok := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if !ok || err1 != nil || err2 != nil || a < 1 || b < a {
				return nil, fmt.Errorf("want adaptive:MIN-MAX with 1 <= MIN <= MAX, got %q", f)
			}
			out = append(out, concSpec{n: b, min: a})
			continue
		}
		n, err := parseCount(f)
		if err != nil {
			return nil, err
		}
		out = append(out, concSpec{n: n})
	}
	return out, nil
}
