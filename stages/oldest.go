package stages

import "github.com/parallafka/parallafka/pipeline"

// oldestFirst is the router's set of dispatchable messages: a binary
// min-heap on the order they were polled in (pipeline.Sequence), so the
// message that waited longest goes out first. A key's next message, queued
// while the key was busy, is usually older than every message that arrived
// since: a busy (hot) key runs back to back instead of waiting behind the
// whole set for each of its messages. And since dispatch follows poll
// order, the highest offset dispatched in a partition stays close to its
// oldest undispatched message, so a revoke has few gap fillers to finish.
type oldestFirst[K, V any] struct {
	h []*pipeline.Message[K, V]
}

func (o *oldestFirst[K, V]) Len() int { return len(o.h) }

// Front returns the oldest message; the set must not be empty.
func (o *oldestFirst[K, V]) Front() *pipeline.Message[K, V] { return o.h[0] }

func (o *oldestFirst[K, V]) less(i, j int) bool {
	return pipeline.Sequence(o.h[i]) < pipeline.Sequence(o.h[j])
}

func (o *oldestFirst[K, V]) Push(msg *pipeline.Message[K, V]) {
	o.h = append(o.h, msg)
	o.up(len(o.h) - 1)
}

// PopFront removes the oldest message; the set must not be empty.
func (o *oldestFirst[K, V]) PopFront() *pipeline.Message[K, V] {
	msg, n := o.h[0], len(o.h)-1
	o.h[0] = o.h[n]
	o.h[n] = nil
	o.h = o.h[:n]
	if n > 0 {
		o.down(0)
	}
	return msg
}

// Filter keeps the messages for which keep returns true.
func (o *oldestFirst[K, V]) Filter(keep func(*pipeline.Message[K, V]) bool) {
	kept := o.h[:0]
	for _, msg := range o.h {
		if keep(msg) {
			kept = append(kept, msg)
		}
	}
	clear(o.h[len(kept):])
	o.h = kept
	for i := len(o.h)/2 - 1; i >= 0; i-- {
		o.down(i)
	}
}

func (o *oldestFirst[K, V]) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !o.less(i, parent) {
			return
		}
		o.h[i], o.h[parent] = o.h[parent], o.h[i]
		i = parent
	}
}

func (o *oldestFirst[K, V]) down(i int) {
	for {
		least, l, r := i, 2*i+1, 2*i+2
		if l < len(o.h) && o.less(l, least) {
			least = l
		}
		if r < len(o.h) && o.less(r, least) {
			least = r
		}
		if least == i {
			return
		}
		o.h[i], o.h[least] = o.h[least], o.h[i]
		i = least
	}
}
