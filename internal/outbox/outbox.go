// Package outbox holds the outputs a transactional pipeline's handlers and
// stages produce (parallafka.Produce) until the engine takes them: a
// handler call's context carries a Call, an AfterHandle stage's context a
// Stage. Package engine makes them and takes what they hold; package
// stages produces through them (a dead letter in a transactional
// pipeline).
package outbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/parallafka/parallafka/pipeline"
)

// ErrNoTransaction is returned by Produce outside a handler call or an
// AfterHandle stage of a transactional pipeline.
var ErrNoTransaction = errors.New("parallafka: Produce outside a handler call or an AfterHandle stage of a transactional pipeline (WithTransactions)")

type key struct{}

// Produced are the outputs of one message.
type Produced[K, V any] struct {
	Msg     *pipeline.Message[K, V]
	Records []pipeline.Record
}

// Call collects one handler call's outputs, for the call's messages.
type Call[K, V any] struct {
	mu       sync.Mutex
	sealed   bool
	msgs     []*pipeline.Message[K, V] // the call's messages
	produced []Produced[K, V]
}

// WithCall returns the handler context of a call of msgs, and its outbox.
func WithCall[K, V any](ctx context.Context, msgs []*pipeline.Message[K, V]) (context.Context, *Call[K, V]) {
	c := &Call[K, V]{msgs: msgs}
	return context.WithValue(ctx, key{}, c), c
}

// Seal ends the call: Produce refuses from now on. It returns the outputs
// of the messages that succeeded (Err nil): those of a failed message are
// dropped with its attempt.
func (c *Call[K, V]) Seal() []Produced[K, V] {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sealed = true
	kept := c.produced[:0]
	for _, p := range c.produced {
		if p.Msg.Err == nil && len(p.Records) > 0 {
			kept = append(kept, p)
		}
	}
	return kept
}

func (c *Call[K, V]) add(msg *pipeline.Message[K, V], records []pipeline.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sealed {
		return fmt.Errorf("%w: the call returned", ErrNoTransaction)
	}
	if !slices.Contains(c.msgs, msg) {
		return fmt.Errorf("%w: %s is not a message of this call", ErrNoTransaction, msg)
	}
	for i := range c.produced {
		if p := &c.produced[i]; p.Msg == msg {
			p.Records = append(p.Records, records...)
			return nil
		}
	}
	c.produced = append(c.produced, Produced[K, V]{Msg: msg, Records: slices.Clone(records)})
	return nil
}

// Stage collects the outputs the AfterHandle stages produce for the
// messages they hold, until the ack collector takes a message's (Take).
type Stage[K, V any] struct {
	mu      sync.Mutex
	records map[*pipeline.Message[K, V]][]pipeline.Record
}

// WithStage returns an AfterHandle stage's context, with s.
func WithStage[K, V any](ctx context.Context, s *Stage[K, V]) context.Context {
	return context.WithValue(ctx, key{}, s)
}

// Take returns and forgets msg's outputs.
func (s *Stage[K, V]) Take(msg *pipeline.Message[K, V]) []pipeline.Record {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	records := s.records[msg]
	delete(s.records, msg)
	return records
}

func (s *Stage[K, V]) add(msg *pipeline.Message[K, V], records []pipeline.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.records == nil {
		s.records = make(map[*pipeline.Message[K, V]][]pipeline.Record)
	}
	s.records[msg] = append(s.records[msg], records...)
	return nil
}

// Produce adds records to msg's outputs, in the handler call or the
// AfterHandle stage whose context ctx is (see parallafka.Produce).
func Produce[K, V any](ctx context.Context, msg *pipeline.Message[K, V], records ...pipeline.Record) error {
	type adder interface {
		add(*pipeline.Message[K, V], []pipeline.Record) error
	}
	box, _ := ctx.Value(key{}).(adder)
	if box == nil {
		return ErrNoTransaction
	}
	for _, r := range records {
		if r.Topic == "" {
			return errors.New("parallafka: Produce: a record without a topic")
		}
	}
	return box.add(msg, records)
}

// Transactional reports whether ctx is a handler call's or an AfterHandle
// stage's of a transactional pipeline, of messages of type K, V.
func Transactional[K, V any](ctx context.Context) bool {
	switch ctx.Value(key{}).(type) {
	case *Call[K, V], *Stage[K, V]:
		return true
	}
	return false
}
