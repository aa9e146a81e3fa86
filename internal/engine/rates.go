package engine

import (
	"hash/maphash"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/parallafka/parallafka/internal/msginfo"
)

// RateLimit is a dispatch rate limit; zero fields are unlimited.
type RateLimit struct {
	Records float64 // records per second, all keys together
	Bytes   float64 // bytes per second (as the poller counts them), all keys together
	PerKey  float64 // records per second per routing key
}

func (r RateLimit) set() bool { return r.Records > 0 || r.Bytes > 0 || r.PerKey > 0 }

// RateControl carries Parallafka.SetRateLimit to the running coordinator:
// the latest limit wins.
type RateControl struct {
	once sync.Once
	ch   chan RateLimit
}

func (r *RateControl) edge() chan RateLimit {
	if r == nil {
		return nil
	}
	r.once.Do(func() { r.ch = make(chan RateLimit, 1) })
	return r.ch
}

// Set asks for a new limit (the zero RateLimit: none).
func (r *RateControl) Set(l RateLimit) {
	ch := r.edge()
	for {
		select {
		case ch <- l:
			return
		default:
			select {
			case <-ch: // not read yet: replaced
			default:
			}
		}
	}
}

// maxIdleKeys bounds the per-key limiters kept: past it, those of keys
// whose bucket refilled (idle for at least a second's worth) are evicted.
const maxIdleKeys = 4096

// rates is the coordinator's rate limiting, nil when no limit is set (no
// per-message work then). A ready entry whose key is throttled is parked,
// out of the ready set, until its token is due: it holds no handler.
type rates[K, V any] struct {
	limit   RateLimit
	records *rate.Limiter // nil: unlimited
	bytes   *rate.Limiter
	keys    map[uint64]*rate.Limiter
	seed    maphash.Seed
	parked  []parkedEntry[K, V]
	timer   *time.Timer
	timerC  <-chan time.Time
	due     time.Time // when the timer fires; zero: not armed
}

type parkedEntry[K, V any] struct {
	e   entry[K, V]
	due time.Time
}

func newRates[K, V any](l RateLimit) *rates[K, V] {
	if !l.set() {
		return nil
	}
	r := &rates[K, V]{limit: l, seed: maphash.MakeSeed()}
	if l.Records > 0 {
		r.records = rate.NewLimiter(rate.Limit(l.Records), max(1, int(l.Records/10)))
	}
	if l.Bytes > 0 {
		r.bytes = rate.NewLimiter(rate.Limit(l.Bytes), max(1, int(l.Bytes)))
	}
	if l.PerKey > 0 {
		r.keys = make(map[uint64]*rate.Limiter)
	}
	return r
}

// globalDelay reports how long until n records of size bytes may go out
// under the global limits; it takes nothing.
func (r *rates[K, V]) globalDelay(now time.Time, n int, size int) time.Duration {
	var d time.Duration
	if r.records != nil {
		d = max(d, delay(r.records, now, n))
	}
	if r.bytes != nil {
		d = max(d, delay(r.bytes, now, min(size, r.bytes.Burst())))
	}
	return d
}

func delay(l *rate.Limiter, now time.Time, n int) time.Duration {
	res := l.ReserveN(now, n)
	if !res.OK() {
		return 0
	}
	d := res.DelayFrom(now)
	res.CancelAt(now)
	return d
}

// takeGlobal takes n records of size bytes from the global buckets.
func (r *rates[K, V]) takeGlobal(now time.Time, n, size int) {
	if r.records != nil {
		r.records.ReserveN(now, n)
	}
	if r.bytes != nil {
		r.bytes.ReserveN(now, min(size, r.bytes.Burst()))
	}
}

// keyDelay takes a token of rawKey's bucket if one is there (0), or
// reports how long until one is.
func (r *rates[K, V]) keyDelay(now time.Time, rawKey []byte) time.Duration {
	if r.keys == nil {
		return 0
	}
	h := maphash.Bytes(r.seed, rawKey)
	l := r.keys[h]
	if l == nil {
		if len(r.keys) >= maxIdleKeys {
			r.evict(now)
		}
		l = rate.NewLimiter(rate.Limit(r.limit.PerKey), 1)
		r.keys[h] = l
	}
	res := l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d
	}
	return 0
}

// evict forgets the buckets of idle keys (full again: a new one is the same).
func (r *rates[K, V]) evict(now time.Time) {
	for h, l := range r.keys {
		if l.TokensAt(now) >= float64(l.Burst()) {
			delete(r.keys, h)
		}
	}
}

// arm makes the timer fire by at: the coordinator then dispatches again.
func (r *rates[K, V]) arm(now, at time.Time) {
	if !r.due.IsZero() && !at.Before(r.due) {
		return
	}
	r.due = at
	if r.timer == nil {
		r.timer = time.NewTimer(at.Sub(now))
	} else {
		r.timer.Reset(at.Sub(now))
	}
	r.timerC = r.timer.C
}

// fired takes the timer's tick: the parked entries due go back to ready.
func (r *rates[K, V]) fired(now time.Time, back func(entry[K, V])) {
	r.due, r.timerC = time.Time{}, nil
	kept := r.parked[:0]
	var next time.Time
	for _, p := range r.parked {
		if !now.Before(p.due) {
			back(p.e)
			continue
		}
		kept = append(kept, p)
		if next.IsZero() || p.due.Before(next) {
			next = p.due
		}
	}
	clear(r.parked[len(kept):])
	r.parked = kept
	if !next.IsZero() {
		r.arm(now, next)
	}
}

func (r *rates[K, V]) stop() {
	if r != nil && r.timer != nil {
		r.timer.Stop()
	}
}

// admit applies the rate limits to e, popped from the ready set: admitted,
// it may be dispatched (its tokens taken). Otherwise it went back to the
// ready set (the global limit: more is false, nothing goes out until the
// timer fires) or was parked until its key's token is due (more is true:
// other keys go on).
func (c *coordinator[K, V]) admit(e entry[K, V]) (admitted, more bool) {
	r := c.rates
	now := time.Now()
	size := 0
	if s := e.slot(); s != nil {
		size = int(s.size)
	}
	if d := r.globalDelay(now, 1, size); d > 0 {
		c.ready.pushLater(e)
		c.stats.Throttled.Add(1)
		if c.obs.throttle != nil {
			c.obs.throttled(msginfo.Of(e.msg), d, false)
		}
		r.arm(now, now.Add(d))
		return false, false
	}
	if d := r.keyDelay(now, e.msg.RawKey); d > 0 {
		r.parked = append(r.parked, parkedEntry[K, V]{e: e, due: now.Add(d)})
		c.stats.Throttled.Add(1)
		if c.obs.throttle != nil {
			c.obs.throttled(msginfo.Of(e.msg), d, true)
		}
		r.arm(now, now.Add(d))
		return false, true
	}
	r.takeGlobal(now, 1, size)
	return true, true
}

// setRateLimit takes a new limit at run time: the parked entries go back
// to the ready set, to be admitted under the new limit.
func (c *coordinator[K, V]) setRateLimit(l RateLimit) {
	if c.rates != nil {
		for _, p := range c.rates.parked {
			c.ready.pushLater(p.e)
		}
		c.rates.stop()
	}
	c.rates = newRates[K, V](l)
}
