package engine

import (
	"slices"
	"testing"

	"github.com/parallafka/parallafka/pipeline"
)

// TestKeyQueue: a key's queue keeps its messages in order through pushes,
// takes from the front, offset-ordered inserts and resets, and reuses its
// room.
func TestKeyQueue(t *testing.T) {
	at := func(off int64) entry[string, string] {
		return entry[string, string]{msg: &pipeline.Message[string, string]{Offset: off}, offset: off}
	}
	offsets := func(q *keyQueue[string, string]) []int64 {
		var offs []int64
		for _, e := range q.waiting() {
			offs = append(offs, e.offset)
		}
		return offs
	}
	var q keyQueue[string, string]
	for off := range int64(4) {
		q.push(at(off))
	}
	q.take(1)
	if got := offsets(&q); !slices.Equal(got, []int64{1, 2, 3}) || q.len() != 3 {
		t.Fatalf("after take(1): %v (len %d)", got, q.len())
	}
	q.insert(at(0)) // a requeued message goes back in front
	q.insert(at(5))
	q.insert(at(4))
	if got := offsets(&q); !slices.Equal(got, []int64{0, 1, 2, 3, 4, 5}) {
		t.Fatalf("after inserts: %v", got)
	}
	q.take(6)
	if q.len() != 0 || q.head != 0 {
		t.Fatalf("emptied: len %d, head %d", q.len(), q.head)
	}
	// Pushing past the capacity with a taken front moves the front back
	// rather than growing.
	q.reset()
	for off := range int64(cap(q.msgs)) {
		q.push(at(off))
	}
	c := cap(q.msgs)
	q.take(2)
	q.push(at(100))
	q.push(at(101))
	if cap(q.msgs) != c || q.len() != c {
		t.Fatalf("cap %d, len %d; want %d, %d", cap(q.msgs), q.len(), c, c)
	}
	if got := offsets(&q); got[0] != 2 || got[len(got)-1] != 101 {
		t.Fatalf("order after compaction: %v", got)
	}
}

// TestSpareKeyQueuesBounded: an idle key's queue is kept for the next busy
// key, up to maxSpareQueues of them, and none keeps a long queue's room.
func TestSpareKeyQueuesBounded(t *testing.T) {
	c := &coordinator[string, string]{}
	cl := &claim[string, string]{keys: make(map[uint64]*keyQueue[string, string])}
	var busy []*keyQueue[string, string]
	for key := range uint64(maxSpareQueues + 10) {
		q := c.busyKey(cl, key+1)
		for range spareQueueCap + 1 {
			q.push(entry[string, string]{})
		}
		busy = append(busy, q)
	}
	for _, q := range busy {
		q.reset()
		c.idleKey(cl, q)
	}
	if len(cl.keys) != 0 || len(c.spareQueues) != maxSpareQueues {
		t.Fatalf("%d keys busy, %d spares; want 0, %d", len(cl.keys), len(c.spareQueues), maxSpareQueues)
	}
	for _, q := range c.spareQueues {
		if cap(q.msgs) > spareQueueCap || q.len() != 0 {
			t.Fatalf("a spare keeps cap %d, len %d", cap(q.msgs), q.len())
		}
	}
	q := c.busyKey(cl, 7)
	if cl.keys[7] != q || q.key != 7 || len(c.spareQueues) != maxSpareQueues-1 {
		t.Fatal("a busy key did not take a spare")
	}
}
