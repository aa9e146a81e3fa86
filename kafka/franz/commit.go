package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/pipeline"
)

// ErrNotOwned reports partitions that this member cannot commit because it
// does not own them: never assigned, revoked or lost already, or the group
// moved to a generation (KIP-848: member epoch) this member is not part of
// (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS,
// FENCED_INSTANCE_ID, STALE_MEMBER_EPOCH, FENCED_MEMBER_EPOCH). It is
// pipeline.ErrNotOwned.
var ErrNotOwned = pipeline.ErrNotOwned

// CommitError is the error of Source.Commit when some offsets were not
// committed. Each offset given to Commit is in exactly one of Committed,
// NotOwned and Failed. It has the shape of package kafka's CommitError.
type CommitError struct {
	// Committed are the offsets that are now the group's committed offsets
	// (or were already passed by an earlier commit of this Source).
	Committed []pipeline.Offset
	// NotOwned are the offsets dropped because this member does not own
	// their partitions: do not retry them.
	NotOwned []pipeline.Offset
	// Failed are the offsets not committed for a reason that may pass
	// (coordinator moving, request timed out, ...): retry them.
	Failed []pipeline.Offset
	// Causes holds the error of each offset in NotOwned and Failed.
	Causes map[pipeline.TopicPartition]error
}

// Error lists the partitions that were not committed and why.
func (e *CommitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "franz: commit failed for %d of %d partitions", len(e.NotOwned)+len(e.Failed),
		len(e.Committed)+len(e.NotOwned)+len(e.Failed))
	if len(e.Failed) == 0 {
		b.WriteString(" (not owned, not retriable)")
	}
	for i, off := range append(append([]pipeline.Offset(nil), e.Failed...), e.NotOwned...) {
		if i == 3 {
			b.WriteString("; ...")
			break
		}
		fmt.Fprintf(&b, "; %s@%d: %v", off.TopicPartition, off.Offset, e.Causes[off.TopicPartition])
	}
	return b.String()
}

// Is reports whether target is ErrNotOwned and nothing is worth retrying.
func (e *CommitError) Is(target error) bool { return target == ErrNotOwned && len(e.Failed) == 0 }

// Unwrap returns the causes of Failed, or of NotOwned when Failed is empty
// (so that errors.Is(err, ErrNotOwned) keeps its meaning): errors.As finds a
// *kerr.Error among them.
func (e *CommitError) Unwrap() []error {
	group := e.Failed
	if len(group) == 0 {
		group = e.NotOwned
	}
	errs := make([]error, 0, len(group))
	for _, off := range group {
		if err := e.Causes[off.TopicPartition]; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Retriable reports whether some offsets failed for a reason that may pass.
func (e *CommitError) Retriable() bool { return len(e.Failed) > 0 }

var errNotAssigned = fmt.Errorf("%w: partition not assigned", ErrNotOwned)

// Commit commits offsets (each the next offset to read in its partition, as
// Kafka defines committed offsets: they are sent as given, not +1), each
// with its metadata (the pipeline's offset map), as the group's committed
// offsets. It returns nil if all were committed, else a *CommitError (see
// ErrNotOwned), or ErrClosed after Close, or ctx's error.
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

	res := &CommitError{Causes: make(map[pipeline.TopicPartition]error)}
	var send []pipeline.Offset
	s.mu.Lock()
	for _, off := range dedupe(offsets) {
		if _, ok := s.assigned[off.TopicPartition]; !ok {
			res.NotOwned = append(res.NotOwned, off)
			res.Causes[off.TopicPartition] = errNotAssigned
		} else if last, ok := s.committed[off.TopicPartition]; ok && (off.Offset < last.Offset || off == last) {
			res.Committed = append(res.Committed, off)
		} else {
			send = append(send, off)
		}
	}
	s.mu.Unlock()
	if len(send) > 0 {
		sent := s.send(ctx, send)
		res.Committed = append(res.Committed, sent.Committed...)
		res.NotOwned = append(res.NotOwned, sent.NotOwned...)
		res.Failed = append(res.Failed, sent.Failed...)
		for tp, err := range sent.Causes {
			res.Causes[tp] = err
		}
	}
	return res.result(s.logger())
}

// result is nil if every offset was committed, else res.
func (res *CommitError) result(log *slog.Logger) error {
	if len(res.NotOwned) == 0 && len(res.Failed) == 0 {
		log.Debug("franz: offsets committed", "offsets", res.Committed)
		return nil
	}
	log.Debug("franz: commit failed", "failed", res.Failed, "not_owned", res.NotOwned, "error", res.Error())
	return res
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
		switch {
		case perr == nil:
			res.Committed = append(res.Committed, off)
		case notOwned(perr):
			res.NotOwned = append(res.NotOwned, off)
			res.Causes[off.TopicPartition] = fmt.Errorf("%w: %w", ErrNotOwned, perr)
		case errors.Is(perr, kerr.OffsetMetadataTooLarge):
			res.Failed = append(res.Failed, off)
			res.Causes[off.TopicPartition] = fmt.Errorf("%w (%d bytes): %w", pipeline.ErrMetadataTooLarge, len(off.Metadata), perr)
		default:
			res.Failed = append(res.Failed, off)
			res.Causes[off.TopicPartition] = perr
		}
	}
	s.mu.Lock()
	for _, off := range res.Committed {
		if _, ok := s.assigned[off.TopicPartition]; ok {
			if last, ok := s.committed[off.TopicPartition]; !ok || off.Offset >= last.Offset {
				s.committed[off.TopicPartition] = off
			}
		}
	}
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

// dedupe keeps the highest offset of each partition, with its metadata (the
// last given, if the same offset comes more than once), in partition order.
// Copied from package kafka (commit.go).
func dedupe(offsets []pipeline.Offset) []pipeline.Offset {
	best := make(map[pipeline.TopicPartition]pipeline.Offset, len(offsets))
	for _, off := range offsets {
		if cur, ok := best[off.TopicPartition]; !ok || off.Offset >= cur.Offset {
			best[off.TopicPartition] = off
		}
	}
	out := make([]pipeline.Offset, 0, len(best))
	for _, off := range best {
		out = append(out, off)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}
