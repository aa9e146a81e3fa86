package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/parallafka/parallafka/pipeline"
)

// The outbox of a transactional pipeline: the output records a handler
// call produces (Produce), held with their messages. A handler's context
// carries its call's outbox; once the call returns the pool seals it and
// hands what the call's successful messages produced to the coordinator
// on handlerEnd. The coordinator holds a message's outputs in its claim
// (claimOutputs) until the message finishes, and then until a transaction
// that commits the message's offset carries them; a message that fails,
// is retried or abandoned contributes nothing.

// ErrNoTransaction is returned by Produce outside a handler call of a
// transactional pipeline.
var ErrNoTransaction = errors.New("parallafka: Produce outside a handler call of a transactional pipeline (WithTransactions)")

// outbox collects one handler call's outputs, for the call's messages.
type outbox[K, V any] struct {
	mu       sync.Mutex
	sealed   bool
	msgs     []*pipeline.Message[K, V] // the call's messages
	produced []produced[K, V]
}

// produced are the outputs of one message in one handling attempt.
type produced[K, V any] struct {
	msg     *pipeline.Message[K, V]
	records []pipeline.Record
}

type outboxKey struct{}

// withOutbox returns the handler context of a call of msgs, and its outbox.
func withOutbox[K, V any](ctx context.Context, msgs []*pipeline.Message[K, V]) (context.Context, *outbox[K, V]) {
	box := &outbox[K, V]{msgs: msgs}
	return context.WithValue(ctx, outboxKey{}, box), box
}

// Produce adds records to msg's outputs, for the handler call whose
// context ctx is (see parallafka.Produce).
func Produce[K, V any](ctx context.Context, msg *pipeline.Message[K, V], records ...pipeline.Record) error {
	box, _ := ctx.Value(outboxKey{}).(*outbox[K, V])
	if box == nil {
		return ErrNoTransaction
	}
	box.mu.Lock()
	defer box.mu.Unlock()
	if box.sealed {
		return fmt.Errorf("%w: the call returned", ErrNoTransaction)
	}
	if !slices.Contains(box.msgs, msg) {
		return fmt.Errorf("%w: %s is not a message of this call", ErrNoTransaction, msg)
	}
	for _, r := range records {
		if r.Topic == "" {
			return errors.New("parallafka: Produce: a record without a topic")
		}
	}
	for i := range box.produced {
		if p := &box.produced[i]; p.msg == msg {
			p.records = append(p.records, records...)
			return nil
		}
	}
	box.produced = append(box.produced, produced[K, V]{msg: msg, records: slices.Clone(records)})
	return nil
}

// seal ends the call: Produce refuses from now on. It returns the outputs
// of the messages that succeeded (Err nil): those of a failed message are
// dropped with its attempt.
func (b *outbox[K, V]) seal() []produced[K, V] {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sealed = true
	kept := b.produced[:0]
	for _, p := range b.produced {
		if p.msg.Err == nil && len(p.records) > 0 {
			kept = append(kept, p)
		}
	}
	return kept
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
}

// produced holds the outputs of a handling attempt until it finishes.
func (o *claimOutputs) produced(offset int64, records []pipeline.Record) {
	if o.attempt == nil {
		o.attempt = make(map[int64][]pipeline.Record)
	}
	o.attempt[offset] = records
}

// settled moves the outputs of the message at offset to the finished ones
// if it finished; otherwise they are dropped.
func (o *claimOutputs) settled(offset int64, finished bool) {
	records, ok := o.attempt[offset]
	if !ok {
		return
	}
	delete(o.attempt, offset)
	if finished {
		o.finished = append(o.finished, records...)
	}
}

// committed drops the finished outputs below index through: committed
// transactions carried them.
func (o *claimOutputs) committed(through int64) {
	n := min(through-o.base, int64(len(o.finished)))
	if n <= 0 {
		return
	}
	o.base += n
	if n == int64(len(o.finished)) {
		o.finished = nil
		return
	}
	o.finished = o.finished[n:]
}

// snapshot returns the finished outputs, for a transaction, and the index
// of the first.
func (o *claimOutputs) snapshot() ([]pipeline.Record, int64) {
	return o.finished[:len(o.finished):len(o.finished)], o.base
}

// produced holds the outputs of a handling attempt of a message of a claim
// still live, until the message settles (complete).
func (c *coordinator[K, V]) produced(p produced[K, V]) {
	cl := c.claims[p.msg.TopicPartition()]
	if cl == nil {
		return
	}
	if s := cl.window.find(p.msg); s != nil && s.state == slotDispatched {
		cl.outputs.produced(s.offset, p.records)
	}
}

// outputsCommitted drops the outputs committed transactions carried from
// their claims (those of an earlier claim of a partition are gone with it).
func (c *coordinator[K, V]) outputsCommitted(committed []outputsDone) {
	for _, done := range committed {
		if cl := c.claims[done.tp]; cl != nil && cl.id == done.claim {
			cl.outputs.committed(done.through)
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
