package pipeline

import "sort"

// OffsetWindow tracks the offsets of one partition that were polled but are
// not yet committable, and answers the question the committer asks: what is
// the highest offset such that it and every offset below it finished, + 1?
//
// Offsets must be added in increasing order (the order Kafka delivers them;
// gaps, as left by compaction or transaction markers, are fine). They may
// finish in any order. The window keeps one 16-byte entry per offset from the
// lowest unfinished one to the newest, so a stuck message costs 16 bytes for
// each later message of its partition, not the message itself.
//
// The zero value is an empty window. It is not safe for concurrent use.
type OffsetWindow struct {
	entries []offsetEntry // entries[head:] are sorted by offset; entries[head] is unfinished
	head    int
	next    int64 // newest added offset + 1
	added   bool
}

type offsetEntry struct {
	offset int64
	done   bool
}

// Add records that offset was polled.
func (w *OffsetWindow) Add(offset int64) {
	if w.added && offset < w.next {
		panic("parallafka: offsets must be added in increasing order")
	}
	w.entries = append(w.entries, offsetEntry{offset: offset})
	w.next, w.added = offset+1, true
}

// Finish records that offset finished. It reports false if the offset is not
// in the window (never added, or finished already).
func (w *OffsetWindow) Finish(offset int64) bool {
	live := w.entries[w.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].offset >= offset })
	if i == len(live) || live[i].offset != offset || live[i].done {
		return false
	}
	live[i].done = true
	if i == 0 {
		w.advance()
	}
	return true
}

func (w *OffsetWindow) advance() {
	for w.head < len(w.entries) && w.entries[w.head].done {
		w.head++
	}
	switch {
	case w.head == len(w.entries):
		w.entries, w.head = w.entries[:0], 0
	case w.head > 1024 && w.head > len(w.entries)/2:
		// Reclaim the finished prefix once it dominates, keeping appends amortized O(1).
		n := copy(w.entries, w.entries[w.head:])
		w.entries, w.head = w.entries[:n], 0
	}
}

// Committable returns the offset to commit: the lowest unfinished offset, or
// newest added + 1 when all finished. ok is false before the first Add.
func (w *OffsetWindow) Committable() (offset int64, ok bool) {
	if w.head < len(w.entries) {
		return w.entries[w.head].offset, true
	}
	return w.next, w.added
}

// Pending returns the number of offsets held in the window: the unfinished
// ones and the finished ones waiting behind an unfinished one.
func (w *OffsetWindow) Pending() int { return len(w.entries) - w.head }
