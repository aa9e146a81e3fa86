package engine

import "github.com/parallafka/parallafka/pipeline"

// ready is the coordinator's set of dispatchable messages, critical path
// first: the message of the key with the longest backlog (messages queued
// behind it) goes out first, then the oldest (lowest seq). A busy (hot)
// key's chain of messages is what bounds a skewed workload, so it runs back
// to back instead of waiting behind cold keys; among keys with no backlog,
// dispatch follows poll order.
//
// Fresh messages arrive in poll order, so they wait in a FIFO (O(1)); only
// messages that become ready later (a released key's next one, a retry) go
// into a binary heap, ordered by their backlog when they became ready. The
// two fronts are compared by their keys' backlogs now (a fresh message's
// key may have queued many since it arrived: a key that never started is
// not starved by keys that keep going), then by age.
type ready[K, V any] struct {
	fresh     []entry[K, V] // fresh[freshHead:], in seq order
	freshHead int
	later     []entry[K, V] // min-heap on seq
}

// entry is a dispatchable message with what the coordinator needs to
// dispatch it.
type entry[K, V any] struct {
	seq     uint64
	backlog int // messages queued behind it on its key, when it became ready
	claim   *claim[K, V]
	msg     *pipeline.Message[K, V]
	offset  int64           // msg's: its slot is found without reading msg
	queue   *keyQueue[K, V] // its key's queue; nil for a message that keeps no order
}

// slot returns the entry's slot in its claim's window (nil if it left it).
func (e *entry[K, V]) slot() *slot[K, V] { return e.claim.window.at(e.offset, e.msg) }

// before orders the later heap: longest backlog first, then oldest.
func (e *entry[K, V]) before(o *entry[K, V]) bool {
	return e.backlog > o.backlog || e.backlog == o.backlog && e.seq < o.seq
}

func (r *ready[K, V]) len() int { return len(r.fresh) - r.freshHead + len(r.later) }

// pushFresh adds a message newer than every message added so far.
func (r *ready[K, V]) pushFresh(e entry[K, V]) { r.fresh = append(r.fresh, e) }

// pushLater adds a message of any age.
func (r *ready[K, V]) pushLater(e entry[K, V]) {
	r.later = append(r.later, e)
	r.up(len(r.later) - 1)
}

// pop removes and returns the front message; the set must not be empty.
// backlog returns the number of messages queued behind an entry's key now.
func (r *ready[K, V]) pop(backlog func(*entry[K, V]) int) entry[K, V] {
	takeFresh := len(r.later) == 0
	if !takeFresh && r.freshHead < len(r.fresh) {
		f, l := &r.fresh[r.freshHead], &r.later[0]
		bf, bl := backlog(f), backlog(l)
		takeFresh = bf > bl || bf == bl && f.seq < l.seq
	}
	if takeFresh {
		e := r.fresh[r.freshHead]
		r.fresh[r.freshHead] = entry[K, V]{}
		r.freshHead++
		if r.freshHead == len(r.fresh) {
			r.fresh, r.freshHead = r.fresh[:0], 0
		} else if r.freshHead > 1024 && r.freshHead > len(r.fresh)/2 {
			n := copy(r.fresh, r.fresh[r.freshHead:])
			clear(r.fresh[n:])
			r.fresh, r.freshHead = r.fresh[:n], 0
		}
		return e
	}
	e, n := r.later[0], len(r.later)-1
	r.later[0] = r.later[n]
	r.later[n] = entry[K, V]{}
	r.later = r.later[:n]
	if n > 0 {
		r.down(0)
	}
	return e
}

// each calls fn for the messages in the set, fresh ones first, until fn
// returns false.
func (r *ready[K, V]) each(fn func(*entry[K, V]) bool) {
	for i := r.freshHead; i < len(r.fresh); i++ {
		if !fn(&r.fresh[i]) {
			return
		}
	}
	for i := range r.later {
		if !fn(&r.later[i]) {
			return
		}
	}
}

// promote moves the oldest fresh message for which match returns true
// into the later heap with the given backlog, so that it is compared by
// its backlog rather than waiting for the older fresh messages to go
// first; a message in the later heap already with a smaller backlog gets
// this one, and moves up. It reports whether one was found. It costs a
// scan of the ready messages, which hold one message per busy key at most.
func (r *ready[K, V]) promote(match func(*entry[K, V]) bool, backlog int) bool {
	for i := r.freshHead; i < len(r.fresh); i++ {
		if !match(&r.fresh[i]) {
			continue
		}
		e := r.fresh[i]
		e.backlog = backlog
		copy(r.fresh[i:], r.fresh[i+1:])
		r.fresh[len(r.fresh)-1] = entry[K, V]{}
		r.fresh = r.fresh[:len(r.fresh)-1]
		r.pushLater(e)
		return true
	}
	for i := range r.later {
		if match(&r.later[i]) {
			if r.later[i].backlog < backlog {
				r.later[i].backlog = backlog
				r.up(i)
			}
			return true
		}
	}
	return false
}

// filter keeps the messages for which keep returns true.
func (r *ready[K, V]) filter(keep func(entry[K, V]) bool) {
	fresh := r.fresh[:0]
	for _, e := range r.fresh[r.freshHead:] {
		if keep(e) {
			fresh = append(fresh, e)
		}
	}
	clear(r.fresh[len(fresh):])
	r.fresh, r.freshHead = fresh, 0
	later := r.later[:0]
	for _, e := range r.later {
		if keep(e) {
			later = append(later, e)
		}
	}
	clear(r.later[len(later):])
	r.later = later
	for i := len(r.later)/2 - 1; i >= 0; i-- {
		r.down(i)
	}
}

// up and down move the entry at i to its place, shifting the entries it
// passes into the hole it leaves (one copy per level, not a swap).
func (r *ready[K, V]) up(i int) {
	e := r.later[i]
	for i > 0 {
		parent := (i - 1) / 2
		if !e.before(&r.later[parent]) {
			break
		}
		r.later[i] = r.later[parent]
		i = parent
	}
	r.later[i] = e
}

func (r *ready[K, V]) down(i int) {
	e, n := r.later[i], len(r.later)
	for {
		child := 2*i + 1
		if child >= n {
			break
		}
		if right := child + 1; right < n && r.later[right].before(&r.later[child]) {
			child = right
		}
		if !r.later[child].before(&e) {
			break
		}
		r.later[i] = r.later[child]
		i = child
	}
	r.later[i] = e
}
