package engine

import (
	"sort"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// slotState is where one polled message of a partition stands.
type slotState uint8

const (
	slotPolled     slotState = iota // tracked, in the AfterPoll stages
	slotWaiting                     // queued behind its key, or ready
	slotDispatched                  // handed to the handler pool, not yet back
	slotFinished                    // handled, skipped or dropped: committable
	slotAbandoned                   // given up in this assignment: never committed here
)

// slot is one offset of a partition's window.
type slot[K, V any] struct {
	offset int64
	msg    *pipeline.Message[K, V]
	seq    uint64 // poll order, for oldest-first dispatch (set when routed)
	// key is the queue it keeps its order in, if ordered (both set when
	// it is routed: a key is hashed once).
	key   uint64
	size  int32 // bytes, as the poller counted them
	state slotState
	// heldBack: its key was held when it was dispatched, so it was not
	// handled (heldkeys.go); it holds no key of its own when it finishes.
	heldBack bool
	ordered  bool // it keeps an order: key is its queue
	held     bool // batch mode: counted in its key's messages out (claim.out), from its batch's dispatch until it leaves for good or is requeued
	// Clock readings (the coordinator's, see coordinator.clock): routed
	// is when it was routed, then when it was dispatched; ready is when
	// it became ready (with an observer only). The stall check reads
	// routed of the message that blocks a partition.
	routed, ready time.Duration
}

// window holds the offsets of one partition that were polled and are not
// yet committable, and answers the committer's question: what is the
// offset after the longest finished prefix? Offsets are added in
// increasing order (gaps, as compaction and transaction markers leave
// them, are fine) and finish in any order. It costs one 56-byte slot per
// offset from the lowest unfinished one to the newest, and looking a slot
// up is O(1) while offsets are contiguous (O(log n) across gaps).
//
// The zero value is an empty window. Its owner is the coordinator.
type window[K, V any] struct {
	slots []slot[K, V] // slots[head:] sorted by offset; slots[head] unfinished
	head  int
	next  int64 // newest added offset + 1
	added bool
}

// add records a polled message. It reports false, adding nothing, for an
// offset not above the newest one (a source that went back).
func (w *window[K, V]) add(msg *pipeline.Message[K, V]) bool {
	if w.added && msg.Offset < w.next {
		return false
	}
	w.slots = append(w.slots, slot[K, V]{offset: msg.Offset, msg: msg})
	w.next, w.added = msg.Offset+1, true
	return true
}

// find returns msg's slot, or nil if msg is not in the window (an offset
// never added or committable already, or another message at that offset:
// one polled under an earlier assignment).
func (w *window[K, V]) find(msg *pipeline.Message[K, V]) *slot[K, V] {
	return w.at(msg.Offset, msg)
}

// at is find for msg at offset: it does not read msg.
func (w *window[K, V]) at(offset int64, msg *pipeline.Message[K, V]) *slot[K, V] {
	live := w.slots[w.head:]
	if len(live) == 0 {
		return nil
	}
	i := offset - live[0].offset
	if i < 0 || i >= int64(len(live)) || live[i].offset != offset {
		j := sort.Search(len(live), func(j int) bool { return live[j].offset >= offset })
		if j == len(live) || live[j].offset != offset {
			return nil
		}
		i = int64(j)
	}
	if live[i].msg != msg {
		return nil
	}
	return &live[i]
}

// settle records that s ended (finished or abandoned) and moves the head
// past the finished prefix. Only finished slots let the head pass: an
// abandoned one holds back the commit for good in this assignment.
func (w *window[K, V]) settle(s *slot[K, V], state slotState) {
	s.state = state
	if state != slotFinished {
		return
	}
	for w.head < len(w.slots) && w.slots[w.head].state == slotFinished {
		w.slots[w.head].msg = nil
		w.head++
	}
	switch {
	case w.head == len(w.slots):
		w.slots, w.head = w.slots[:0], 0
	case w.head > 1024 && w.head > len(w.slots)/2:
		// Reclaim the finished prefix once it dominates: appends stay amortized O(1).
		n := copy(w.slots, w.slots[w.head:])
		clear(w.slots[n:])
		w.slots, w.head = w.slots[:n], 0
	}
}

// committable returns the offset to commit: the lowest unfinished offset,
// or the newest added + 1 when all finished. ok is false before the first add.
func (w *window[K, V]) committable() (offset int64, ok bool) {
	if w.head < len(w.slots) {
		return w.slots[w.head].offset, true
	}
	return w.next, w.added
}

// each calls fn for every slot still in the window, in offset order.
func (w *window[K, V]) each(fn func(*slot[K, V])) {
	for i := w.head; i < len(w.slots); i++ {
		fn(&w.slots[i])
	}
}

// finishedRuns appends to runs the offsets above the committable one that
// finished, as runs in offset order. A run spans the offsets the source
// skipped between two of its slots (compacted, transaction markers): they
// are never delivered, so they are as good as finished. It costs O(slots).
func (w *window[K, V]) finishedRuns(runs []offsetmap.Run) []offsetmap.Run {
	open := false
	for i := w.head + 1; i < len(w.slots); i++ {
		s := &w.slots[i]
		switch finished := s.state == slotFinished; {
		case finished && !open:
			runs = append(runs, offsetmap.Run{From: s.offset})
			open = true
		case !finished && open:
			runs[len(runs)-1].To = s.offset
			open = false
		}
	}
	if open {
		runs[len(runs)-1].To = w.next
	}
	return runs
}
