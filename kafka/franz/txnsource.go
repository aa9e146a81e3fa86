package franz

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// What a Transactor uses of its Source (txnSource): the group member's
// client, the assignment, and the commit slot, so that a transaction's
// offsets are committed as the Source's own are.

func (s *Source[K, V]) groupClient() *kgo.Client { return s.client }

func (s *Source[K, V]) groupName() string { return s.b.group }

// beginTxnCommit takes the commit slot for a transaction, as Commit does:
// transactions and commits go one at a time, none begins once the Source
// is closing (but from the listener's revoke inside Close), and the
// returned context is cancelled when partitions are lost and by
// Interrupt. release gives the slot back.
func (s *Source[K, V]) beginTxnCommit(ctx context.Context) (_ context.Context, release func(), _ error) {
	if err := s.beginCommit(); err != nil {
		return nil, nil, err
	}
	select {
	case s.commitSlot <- struct{}{}:
	case <-ctx.Done():
		s.endCommit()
		return nil, nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.flightCancel = cancel
	s.mu.Unlock()
	return ctx, func() {
		cancel()
		s.mu.Lock()
		s.flightCancel = nil
		s.mu.Unlock()
		<-s.commitSlot
		s.endCommit()
	}, nil
}

// notOwned returns the partitions of offsets not assigned to this member,
// or assigned to it under another member ID (a classic member that
// rejoined as a new member: the group gave them to others meanwhile).
func (s *Source[K, V]) notOwned(offsets []pipeline.Offset) []pipeline.TopicPartition {
	member, _ := s.client.GroupMetadata()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []pipeline.TopicPartition
	for _, off := range offsets {
		if was, ok := s.assigned[off.TopicPartition]; !ok || (was != "" && was != member) {
			out = append(out, off.TopicPartition)
		}
	}
	return out
}

// noteCommitted records offsets a transaction committed.
func (s *Source[K, V]) noteCommitted(offsets []pipeline.Offset) {
	s.mu.Lock()
	kafkaclient.NoteCommitted(offsets, s.assigned, s.committed)
	s.mu.Unlock()
}

// lastCommitted returns the offset last committed for tp in the current
// assignment, if any.
func (s *Source[K, V]) lastCommitted(tp pipeline.TopicPartition) (pipeline.Offset, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	off, ok := s.committed[tp]
	return off, ok
}
