package franz

import (
	"slices"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/pipeline"
)

// recordBuffer holds the records of the last poll that Poll has not
// returned yet, and those of partitions the pipeline paused, which wait for
// Resume: kgo's position is past them already, so they must not be dropped.
// Owned by the goroutine calling Poll.
type recordBuffer struct {
	recs   []*kgo.Record
	pos    int
	paused map[pipeline.TopicPartition]bool
	held   []*kgo.Record // records of paused partitions, in poll order
}

func recordTP(r *kgo.Record) pipeline.TopicPartition {
	return pipeline.TopicPartition{Topic: r.Topic, Partition: r.Partition}
}

// next returns the next record of a partition that is not paused, or nil.
func (b *recordBuffer) next() *kgo.Record {
	for b.pos < len(b.recs) {
		r := b.recs[b.pos]
		b.recs[b.pos] = nil
		b.pos++
		if len(b.paused) > 0 && b.paused[recordTP(r)] {
			b.held = append(b.held, r)
			continue
		}
		return r
	}
	b.recs, b.pos = b.recs[:0], 0
	return nil
}

// add appends a poll's records (one partition's at a time, or all).
func (b *recordBuffer) add(recs []*kgo.Record) {
	if b.pos > 0 && b.pos == len(b.recs) {
		b.recs, b.pos = b.recs[:0], 0
	}
	b.recs = append(b.recs, recs...)
}

// interleaveRun is how many records of one partition interleave takes
// before it moves on to the next: enough to keep a partition's records
// together for the engine's per-partition work, few enough that a poll
// whose records the window cannot all take spreads what it takes over the
// partitions.
const interleaveRun = 64

// interleave appends a poll's records, one slice per partition, taking
// interleaveRun records of each partition in turn. kgo returns a fetch's
// records partition by partition, up to a partition's fetch size each
// (thousands of messages): appended as they come, a window with room for
// fewer would fill with the first partitions' records while the last ones,
// perhaps a hot key's, wait for it to drain (bench/README.md, workload 2).
// Each partition's records keep their order.
func (b *recordBuffer) interleave(parts [][]*kgo.Record) {
	if len(parts) == 1 {
		b.add(parts[0])
		return
	}
	for len(parts) > 0 {
		kept := parts[:0]
		for _, recs := range parts {
			n := min(len(recs), interleaveRun)
			b.add(recs[:n])
			if n < len(recs) {
				kept = append(kept, recs[n:])
			}
		}
		clear(parts[len(kept):])
		parts = kept
	}
}

// grow makes room for n more records, so that the adds of a poll that
// follow append without growing the buffer each time.
func (b *recordBuffer) grow(n int) {
	if b.pos > 0 && b.pos == len(b.recs) {
		b.recs, b.pos = b.recs[:0], 0
	}
	b.recs = slices.Grow(b.recs, n)
}

// pause holds back the partitions' records from now on.
func (b *recordBuffer) pause(tps []pipeline.TopicPartition) {
	if b.paused == nil {
		b.paused = make(map[pipeline.TopicPartition]bool)
	}
	for _, tp := range tps {
		b.paused[tp] = true
	}
}

// resume puts the partitions' held records back in front of the buffer,
// before any later record of theirs.
func (b *recordBuffer) resume(tps []pipeline.TopicPartition) {
	var back []*kgo.Record
	for _, tp := range tps {
		delete(b.paused, tp)
	}
	kept := b.held[:0]
	for _, r := range b.held {
		if b.paused[recordTP(r)] {
			kept = append(kept, r)
		} else {
			back = append(back, r)
		}
	}
	clear(b.held[len(kept):])
	b.held = kept
	if len(back) > 0 {
		b.recs = append(back, b.recs[b.pos:]...)
		b.pos = 0
	}
}

// forget drops the records of partitions given up (revoked, lost) and
// their pause, so that none of them is returned after the rebalance.
func (b *recordBuffer) forget(tps []pipeline.TopicPartition) {
	gone := make(map[pipeline.TopicPartition]bool, len(tps))
	for _, tp := range tps {
		gone[tp] = true
		delete(b.paused, tp)
	}
	keep := func(in []*kgo.Record) []*kgo.Record {
		out := in[:0]
		for _, r := range in {
			if !gone[recordTP(r)] {
				out = append(out, r)
			}
		}
		clear(in[len(out):])
		return out
	}
	b.recs = keep(b.recs[b.pos:])
	b.pos = 0
	b.held = keep(b.held)
}
