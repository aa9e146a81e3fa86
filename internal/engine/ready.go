package engine

import "github.com/parallafka/parallafka/pipeline"

// ready is the coordinator's set of dispatchable messages, oldest first:
// the one polled first (lowest seq) goes out first. A key's next message,
// queued while the key was busy, is older than everything polled since, so
// a busy (hot) key runs back to back instead of queueing behind the whole
// set for each of its messages; and dispatch stays close to poll order, so
// no key or partition waits behind others that keep going. (Longest backlog
// first was tried: keys that never started, whose backlog grows while their
// first message waits, starved behind running ones, and with them their
// partitions' commits. The critical path is served by the poll steering
// instead: see poller.)
//
// Fresh messages arrive in poll order, so they wait in a FIFO (O(1));
// only messages that become ready later (a released key's next one, a
// retry) go into a binary min-heap. The front is the older of the two
// fronts.
type ready[K, V any] struct {
	fresh     []entry[K, V] // fresh[freshHead:], in seq order
	freshHead int
	later     []entry[K, V] // min-heap on seq
}

// entry is a dispatchable message with what the coordinator needs to
// dispatch it.
type entry[K, V any] struct {
	seq   uint64
	claim *claim[K, V]
	msg   *pipeline.Message[K, V]
}

func (r *ready[K, V]) len() int { return len(r.fresh) - r.freshHead + len(r.later) }

// pushFresh adds a message newer than every message added so far.
func (r *ready[K, V]) pushFresh(e entry[K, V]) { r.fresh = append(r.fresh, e) }

// pushLater adds a message of any age.
func (r *ready[K, V]) pushLater(e entry[K, V]) {
	r.later = append(r.later, e)
	r.up(len(r.later) - 1)
}

// pop removes and returns the oldest message; the set must not be empty.
func (r *ready[K, V]) pop() entry[K, V] {
	if len(r.later) == 0 || (r.freshHead < len(r.fresh) && r.fresh[r.freshHead].seq < r.later[0].seq) {
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

func (r *ready[K, V]) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if r.later[parent].seq <= r.later[i].seq {
			return
		}
		r.later[i], r.later[parent] = r.later[parent], r.later[i]
		i = parent
	}
}

func (r *ready[K, V]) down(i int) {
	for {
		least, left, right := i, 2*i+1, 2*i+2
		if left < len(r.later) && r.later[left].seq < r.later[least].seq {
			least = left
		}
		if right < len(r.later) && r.later[right].seq < r.later[least].seq {
			least = right
		}
		if least == i {
			return
		}
		r.later[i], r.later[least] = r.later[least], r.later[i]
		i = least
	}
}
