package engine

import (
	"context"

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

// ErrNoTransaction is returned by Produce outside a handler call or an
// AfterHandle stage of a transactional pipeline.
var ErrNoTransaction = outbox.ErrNoTransaction

// Produce adds records to msg's outputs (see parallafka.Produce).
func Produce[K, V any](ctx context.Context, msg *pipeline.Message[K, V], records ...pipeline.Record) error {
	return outbox.Produce(ctx, msg, records...)
}

// claimOutputs are a claim's outputs: those of messages still in a
// handling attempt (by offset), and those of finished messages, in the
// order they finished, which no committed transaction carried yet. Each
// finished output has an index, counted from the claim's first: the
// committer knows which were committed by their indexes, however late
// the coordinator drops them.
type claimOutputs struct {
	attempt  map[int64][]pipeline.Record
	finished []pipeline.Record
	base     int64 // the index of finished[0]
	bytes    int64 // of finished: they count in the in-flight byte window until committed
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
	if !finished {
		return 0
	}
	o.finished = append(o.finished, records...)
	n := recordBytes(records)
	o.bytes += n
	return n
}

// committed drops the finished outputs below index through: committed
// transactions carried them. It returns their bytes.
func (o *claimOutputs) committed(through int64) int64 {
	n := min(through-o.base, int64(len(o.finished)))
	if n <= 0 {
		return 0
	}
	bytes := recordBytes(o.finished[:n])
	o.base += n
	o.bytes -= bytes
	if n == int64(len(o.finished)) {
		o.finished = nil
	} else {
		o.finished = o.finished[n:]
	}
	return bytes
}

// snapshot returns the finished outputs, for a transaction, and the index
// of the first.
func (o *claimOutputs) snapshot() ([]pipeline.Record, int64) {
	return o.finished[:len(o.finished):len(o.finished)], o.base
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
			c.inFlight.releaseOutputs(cl.outputs.committed(done.through))
		}
	}
}

// outputsDone says that a claim's outputs below index through were
// committed.
type outputsDone struct {
	tp      pipeline.TopicPartition
	claim   uint64
	through int64
}
