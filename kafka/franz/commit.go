package franz

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// CommitError is the error of Source.Commit when some offsets were not
// committed. Each offset given to Commit is in exactly one of Committed,
// NotOwned and Failed:
//
//	Committed []pipeline.Offset // now the group's committed offsets (or passed already)
//	NotOwned  []pipeline.Offset // dropped: this member does not own their partitions
//	Failed    []pipeline.Offset // not committed for a reason that may pass: retry them
//	Causes    map[pipeline.TopicPartition]error // the error of each offset in NotOwned and Failed
//
// A committer retries Failed (after a backoff), drops NotOwned, and counts
// Committed as done. errors.Is(err, pipeline.ErrNotOwned) reports that
// Failed is empty: give up on the whole commit. Its Unwrap returns the
// causes of Failed (of NotOwned when Failed is empty), so errors.As finds a
// *kerr.Error among them; its Error lists the first three partitions not
// committed and why.
//
// It is the same type as package kafka's CommitError.
type CommitError = kafkaclient.CommitError

// Commit commits offsets (each the next offset to read in its partition, as
// Kafka defines committed offsets: they are sent as given, not +1), each
// with its metadata (the pipeline's offset map), as the group's committed
// offsets. It returns nil if all were committed, else a *CommitError, or
// ErrClosed after Close, or ctx's error.
//
// A partition is not owned (NotOwned; pipeline.ErrNotOwned) when it was
// never assigned, was revoked or lost already, or the group moved to a
// generation (KIP-848: member epoch) this member is not part of
// (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
// FENCED_INSTANCE_ID, STALE_MEMBER_EPOCH, FENCED_MEMBER_EPOCH).
//
// The commit is sent as the group member: kgo's CommitOffsetsSync builds the
// OffsetCommit request with the member ID and generation (KIP-848: member
// epoch) it has when the commit is issued, and waits for a join or sync in
// progress first, so a member that was fenced or moved on has its commit
// refused by the coordinator. A kgo.PreCommitFnContext hook replaces the
// metadata kgo would send (its member ID) with the offsets' own.
//
// Offsets of partitions not currently assigned to this Source are not sent:
// they are reported NotOwned. An offset lower than one this Source already
// committed for the partition in the current assignment, or equal to it
// with the same metadata, is not sent either (and counts as committed).
// Commits are serialized: one is in flight at a time. A commit in flight
// is cancelled when its ctx ends, when partitions are lost (the lost
// callback waits for it, so that it cannot outlive the membership it was
// sent with) and by Interrupt.
//
// Commit may run concurrently with the other methods, and from inside the
// listener's PartitionsRevoked (also during Close).
func (s *Source[K, V]) Commit(ctx context.Context, offsets []pipeline.Offset) error {
	if len(offsets) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, off := range offsets {
		if off.Offset < 0 {
			return fmt.Errorf("franz: commit %s: invalid offset %d", off.TopicPartition, off.Offset)
		}
	}
	if err := s.beginCommit(); err != nil {
		return err
	}
	defer s.endCommit()
	select {
	case s.commitSlot <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.commitSlot }()

	s.mu.Lock()
	res, send := kafkaclient.Sift(offsets, s.assigned, s.committed)
	s.mu.Unlock()
	if len(send) > 0 {
		kafkaclient.Merge(res, s.send(ctx, send))
	}
	return kafkaclient.CommitResult(res, s.logger(), "franz")
}

// send commits offsets as the group member, with their metadata. The caller
// holds the commit slot. It records what was committed.
func (s *Source[K, V]) send(ctx context.Context, send []pipeline.Offset) *CommitError {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.flightCancel = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.flightCancel = nil
		s.mu.Unlock()
	}()

	offsets := make(map[string]map[int32]kgo.EpochOffset)
	metadata := make(map[pipeline.TopicPartition]string, len(send))
	for _, off := range send {
		if offsets[off.Topic] == nil {
			offsets[off.Topic] = make(map[int32]kgo.EpochOffset)
		}
		offsets[off.Topic][off.Partition] = kgo.EpochOffset{Epoch: -1, Offset: off.Offset}
		metadata[off.TopicPartition] = off.Metadata
	}
	ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			t := &req.Topics[i]
			for j := range t.Partitions {
				md := metadata[pipeline.TopicPartition{Topic: t.Topic, Partition: t.Partitions[j].Partition}]
				t.Partitions[j].Metadata = &md
			}
		}
		return nil
	})
	var (
		req  *kmsg.OffsetCommitRequest
		resp *kmsg.OffsetCommitResponse
		err  error
	)
	s.client.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, rq *kmsg.OffsetCommitRequest, rs *kmsg.OffsetCommitResponse, e error) {
		req, resp, err = rq, rs, e
	})

	results := make(map[pipeline.TopicPartition]error, len(send))
	if err == nil && resp != nil {
		names := make(map[[16]byte]string)
		if req != nil {
			for _, t := range req.Topics {
				names[t.TopicID] = t.Topic
			}
		}
		for _, t := range resp.Topics {
			topic := t.Topic
			if topic == "" {
				topic = names[t.TopicID] // v10+ answers name topics by ID only
			}
			for _, p := range t.Partitions {
				results[pipeline.TopicPartition{Topic: topic, Partition: p.Partition}] = kerr.ErrorForCode(p.ErrorCode)
			}
		}
	}
	res := &CommitError{Causes: make(map[pipeline.TopicPartition]error)}
	for _, off := range send {
		perr, reported := results[off.TopicPartition]
		switch {
		case err != nil:
			perr = err
		case !reported:
			perr = errors.New("franz: partition missing from the commit result")
		}
		kafkaclient.Classify(res, off, perr, notOwned, metadataTooLarge)
	}
	s.mu.Lock()
	kafkaclient.NoteCommitted(res.Committed, s.assigned, s.committed)
	s.mu.Unlock()
	if err != nil {
		s.logger().Debug("franz: commit ended", "offsets", send, "error", err)
	}
	return res
}

// cancelFlight cancels the commit in flight, if any, and waits (at most
// flightWait) until it returned.
func (s *Source[K, V]) cancelFlight() {
	s.mu.Lock()
	cancel := s.flightCancel
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	t := time.NewTimer(flightWait)
	defer t.Stop()
	select {
	case s.commitSlot <- struct{}{}:
		<-s.commitSlot
	case <-t.C:
		s.logger().Warn("franz: a cancelled commit has not returned", "waited", flightWait)
	}
}

// flightWait bounds cancelFlight's wait: kgo's commit returns as soon as
// its context is cancelled.
const flightWait = 2 * time.Second

// beginCommit counts a commit in, unless the Source is closing.
func (s *Source[K, V]) beginCommit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (s.closing && !s.closeCallback) || s.abandoned {
		return ErrClosed
	}
	s.commits++
	return nil
}

func (s *Source[K, V]) endCommit() {
	s.mu.Lock()
	s.commits--
	if s.commits == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

// notOwned tells the commit errors that mean this member cannot commit the
// partition, from those worth retrying.
func notOwned(err error) bool {
	for _, e := range []error{kerr.UnknownMemberID, kerr.IllegalGeneration, kerr.RebalanceInProgress,
		kerr.FencedInstanceID, kerr.StaleMemberEpoch, kerr.FencedMemberEpoch} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// metadataTooLarge tells the commit error of an offset whose metadata the
// broker refused as too large.
func metadataTooLarge(err error) bool { return errors.Is(err, kerr.OffsetMetadataTooLarge) }
