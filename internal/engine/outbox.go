package engine

import (
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// The outbox of a transactional pipeline: the output records a handler
// call produces (Produce), held with their messages. A handler's context
// carries its call's outbox (outbox.Call); once the call returns the pool
// seals it and hands what the call's successful messages produced to the
// coordinator on handlerEnd. The AfterHandle stages' context carries one
// outbox.Stage, from which the ack collector takes a message's outputs
// (a dead letter, say) with its verdict. The coordinator holds a message's outputs in its claim
// (claimOutputs) until the message finishes, and then until a transaction
// that commits the message's offset carries them; a message that fails,
// is retried or abandoned contributes nothing.

// claimOutputs are a claim's outputs: those of messages still in a
// handling attempt (by offset), and those of finished messages, in the
// order they finished, which no committed transaction carried yet.
//
// A transaction carries the outputs of the finished messages below the
// offset it commits, and only those: a transactional commit records no
// offset map (the map may be cut to fit, or refused as too large, and an
// output whose message a next owner does not know finished would be
// written twice). A message that finished above a gap therefore has its
// outputs wait until the gap closes. The committer knows what was carried
// by the offset each transaction committed, however late the coordinator
// drops the outputs.
type claimOutputs struct {
	attempt  map[int64][]pipeline.Record
	finished []finishedOutputs
	bytes    int64 // of finished: they count in the in-flight byte window until committed
}

// finishedOutputs are a finished message's outputs.
type finishedOutputs struct {
	offset  int64
	records []pipeline.Record
}

// recordBytes is what an output counts in the in-flight byte window.
func recordBytes(records []pipeline.Record) int64 {
	var n int64
	for _, r := range records {
		n += int64(len(r.Key) + len(r.Value))
		for _, h := range r.Headers {
			n += int64(len(h.Key) + len(h.Value))
		}
	}
	return n
}

// produced holds the outputs of a handling attempt until it finishes.
func (o *claimOutputs) produced(offset int64, records []pipeline.Record) {
	if o.attempt == nil {
		o.attempt = make(map[int64][]pipeline.Record)
	}
	o.attempt[offset] = records
}

// staged adds the outputs the AfterHandle stages produced for the message
// at offset to those of its attempt.
func (o *claimOutputs) staged(offset int64, records []pipeline.Record) {
	if o.attempt == nil {
		o.attempt = make(map[int64][]pipeline.Record)
	}
	o.attempt[offset] = append(o.attempt[offset], records...)
}

// settled moves the outputs of the message at offset to the finished ones
// if it finished; otherwise they are dropped. It returns the bytes it
// added to the finished ones.
func (o *claimOutputs) settled(offset int64, finished bool) int64 {
	records, ok := o.attempt[offset]
	if !ok {
		return 0
	}
	delete(o.attempt, offset)
	if !finished || len(records) == 0 {
		return 0
	}
	o.finished = append(o.finished, finishedOutputs{offset: offset, records: records})
	n := recordBytes(records)
	o.bytes += n
	return n
}

// committed drops the finished outputs of messages below offset: a
// committed transaction carried them. It returns their bytes.
func (o *claimOutputs) committed(below int64) int64 {
	var bytes int64
	kept := o.finished[:0]
	for _, f := range o.finished {
		if f.offset < below {
			bytes += recordBytes(f.records)
			continue
		}
		kept = append(kept, f)
	}
	clear(o.finished[len(kept):])
	o.finished = kept
	o.bytes -= bytes
	return bytes
}

// below returns the finished outputs of messages below offset, in the
// order the messages finished: what a transaction committing offset
// carries.
func (o *claimOutputs) below(offset int64) []finishedOutputs {
	var out []finishedOutputs
	for _, f := range o.finished {
		if f.offset < offset {
			out = append(out, f)
		}
	}
	return out
}

// produced holds the outputs of a handling attempt of a message of a claim
// still live, until the message settles (complete).
func (c *coordinator[K, V]) produced(p outbox.Produced[K, V]) {
	cl := c.claims[p.Msg.TopicPartition()]
	if cl == nil {
		return
	}
	if s := cl.window.find(p.Msg); s != nil && s.state == slotDispatched {
		cl.outputs.produced(s.offset, p.Records)
	}
}

// outputsCommitted drops the outputs committed transactions carried from
// their claims (those of an earlier claim of a partition are gone with it).
func (c *coordinator[K, V]) outputsCommitted(committed []outputsDone) {
	for _, done := range committed {
		if cl := c.claims[done.tp]; cl != nil && cl.id == done.claim {
			c.inFlight.releaseOutputs(cl.outputs.committed(done.below))
		}
	}
}

// outputsDone says that a claim's outputs of messages below offset below
// were committed.
type outputsDone struct {
	tp    pipeline.TopicPartition
	claim uint64
	below int64
}
