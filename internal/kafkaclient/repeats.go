package kafkaclient

import (
	"strings"
	"sync"
	"time"
)

// repeatInterval is how often an identical client error or log line is
// logged at most; the repeats in between are counted.
const repeatInterval = time.Second

// Repeats rate-limits identical log lines: a client that cannot reach its
// brokers repeats the same lines many times a second. The zero value is
// ready to use; it is safe for concurrent use.
type Repeats struct {
	mu   sync.Mutex
	seen map[string]*repeat
}

type repeat struct {
	logged     time.Time
	suppressed int
}

// Allow reports whether the line with key may be logged now (at most once
// per repeatInterval), and how many like it were suppressed since it was
// last logged. Lines that differ only in their digits ("after 0ms", "after
// 1ms") count as identical.
func (r *Repeats) Allow(key string, now time.Time) (bool, int) {
	key = strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '#'
		}
		return r
	}, key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = make(map[string]*repeat)
	}
	rp, ok := r.seen[key]
	if !ok {
		if len(r.seen) >= 256 {
			for k, v := range r.seen {
				if now.Sub(v.logged) > time.Minute {
					delete(r.seen, k)
				}
			}
		}
		r.seen[key] = &repeat{logged: now}
		return true, 0
	}
	if now.Sub(rp.logged) < repeatInterval {
		rp.suppressed++
		return false, 0
	}
	n := rp.suppressed
	rp.logged, rp.suppressed = now, 0
	return true, n
}
