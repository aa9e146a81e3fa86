package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

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
// confluent-kafka-go Error among them; its Error lists the first three
// partitions not committed and why.
//
// It is the same type as franz.CommitError (package kafka/franz).
type CommitError = kafkaclient.CommitError

// ErrCommitInFlight is the cause of a CommitError's Failed offsets when ctx
// ended while librdkafka was still carrying the commit out: it may yet
// succeed or fail. The Source keeps track of it: the next Commit is sent
// after it ended, and a lost assignment waits for it (see Commit).
var ErrCommitInFlight = errors.New("kafka: commit still in flight")

// Commit commits offsets (each the next offset to read in its partition, as
// Kafka defines committed offsets: they are sent as given, not +1) as the
// group's committed offsets, with a synchronous CommitOffsets. It returns
// nil if all were committed, else a *CommitError (see pipeline.ErrNotOwned), or
// ErrClosed after Close, or ctx's error.
//
// When the commit fails for some partitions, confluent-kafka-go reports one
// error for the whole request; the Source then reads the group's committed
// offsets back (OffsetFetch, at most 5 seconds) to tell the partitions that
// were committed from those that were not, and classifies the latter by that
// error. A partition is not owned (NotOwned; pipeline.ErrNotOwned) when it
// was never assigned, was revoked or lost already, or the group moved to a
// new generation this member is not part of yet (UNKNOWN_MEMBER_ID,
// ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID,
// STALE_MEMBER_EPOCH, assignment lost, consumer destroyed): retrying the
// same commit at once is pointless. If the partition is still (or again)
// this member's once the rebalance completed (cooperative rebalancing keeps
// partitions through a generation change), the next periodic commit carries
// its offset. errors.Is(err, pipeline.ErrNotOwned) holds exactly when
// nothing in the error is worth retrying.
//
// Offsets of partitions not currently assigned to this Source are not sent:
// they are reported NotOwned. An offset lower than one this Source already
// committed for the partition in the current assignment, or equal to it
// with the same metadata, is not sent either (and counts as committed). Commits are serialized: one is
// in flight at a time.
//
// Commit returns when ctx ends even though librdkafka cannot abandon a
// commit it started (it ends when the coordinator answers, or after up to
// socket.timeout.ms + session.timeout.ms + socket.timeout.ms while the
// coordinator is unreachable): the offsets are then in Failed with a cause
// matching ErrCommitInFlight and ctx's error, and the commit goes on in the
// background. The next Commit waits for it (within its own ctx).
//
// A commit in flight never outlives a lost assignment: librdkafka sends a
// commit that waited for the coordinator with the group generation (or
// KIP-848 member epoch) it has when it sends it, so a commit issued before
// the assignment was lost could land after this member rejoined, with its
// new generation, over the offsets a new owner committed meanwhile, moving
// them backwards. So when partitions are lost, the rebalance callback waits,
// before it unassigns them (librdkafka rejoins only after that), for the
// commit in flight to end: sent with the old generation, the broker refuses
// it. The wait is bounded by librdkafka's own limit above (plus 5 s); if that
// is ever exceeded, Poll returns an error matching ErrCommitInFlight, so the
// consumer is closed rather than rejoin. Interrupt cuts the wait short.
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
			return fmt.Errorf("kafka: commit %s: invalid offset %d", off.TopicPartition, off.Offset)
		}
	}
	if err := s.beginCommit(); err != nil {
		return err
	}
	defer s.endCommit()
	// The slot is held by the commit in flight, which releases it when
	// librdkafka is done with it.
	select {
	case s.commitSlot <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		<-s.commitSlot
		return err
	}

	var f *commitFlight
	s.mu.Lock()
	res, send := kafkaclient.Sift(offsets, s.assigned, s.committed)
	if len(send) > 0 {
		f = s.takeOff(send)
	}
	s.mu.Unlock()
	if f == nil {
		<-s.commitSlot
		return kafkaclient.CommitResult(res, s.logger(), "kafka")
	}

	go s.runCommit(f)
	select {
	case <-f.done:
		kafkaclient.Merge(res, &f.res)
	case <-ctx.Done():
		cause := fmt.Errorf("%w: %w", ErrCommitInFlight, ctx.Err())
		for _, off := range send {
			res.Failed = append(res.Failed, off)
			res.Causes[off.TopicPartition] = cause
		}
	}
	return kafkaclient.CommitResult(res, s.logger(), "kafka")
}

// commitFlight is a commit that librdkafka is carrying out.
type commitFlight struct {
	sent []pipeline.Offset
	done chan struct{} // closed when res is set
	res  CommitError
}

// takeOff registers the commit of send as the one in flight, under s.mu
// (the lock that disown takes, so that a lost assignment either sees the
// flight or its partitions are not assigned any more here). The caller
// holds the commit slot and starts runCommit.
func (s *Source[K, V]) takeOff(send []pipeline.Offset) *commitFlight {
	f := &commitFlight{done: make(chan struct{}), sent: send}
	s.flight = f
	s.flights.Add(1)
	return f
}

// runCommit carries f out, on a goroutine of its own so that Commit can
// return when its ctx ends. It holds the commit slot until librdkafka is
// done.
func (s *Source[K, V]) runCommit(f *commitFlight) {
	defer s.flights.Done()
	send := f.sent
	res := &f.res
	res.Causes = make(map[pipeline.TopicPartition]error)
	parts, err := s.consumer.CommitOffsets(toKafkaOffsets(send))
	results := make(map[pipeline.TopicPartition]error, len(parts))
	for _, p := range parts {
		if p.Topic != nil {
			results[pipeline.TopicPartition{Topic: *p.Topic, Partition: p.Partition}] = p.Error
		}
	}
	if err != nil && len(send) > 1 {
		// confluent-kafka-go returns a single error, without the
		// per-partition results, as soon as one partition failed:
		// ask the coordinator which partitions did get their offset.
		s.markCommitted(send, results)
	}
	for _, off := range send {
		perr, reported := results[off.TopicPartition]
		switch {
		case perr == errCommitted:
			perr = nil
		case perr != nil:
		case err != nil:
			perr = err
		case !reported:
			perr = errors.New("kafka: partition missing from the commit result")
		}
		kafkaclient.Classify(res, off, perr, notOwned, metadataTooLarge)
	}
	s.mu.Lock()
	kafkaclient.NoteCommitted(res.Committed, s.assigned, s.committed)
	if s.flight == f {
		s.flight = nil
	}
	s.mu.Unlock()
	if err != nil {
		s.logger().Debug("kafka: commit ended", "offsets", send, "error", err)
	}
	close(f.done)
	<-s.commitSlot
}

// awaitFlight waits for the commit in flight, if any, to end, at most d or
// until Interrupt. It reports whether no commit is in flight any more.
func (s *Source[K, V]) awaitFlight(d time.Duration) bool {
	s.mu.Lock()
	f := s.flight
	s.mu.Unlock()
	if f == nil {
		return true
	}
	s.logger().Info("kafka: waiting for the commit in flight before giving up the lost partitions", "offsets", f.sent)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.done:
		return true
	case <-t.C:
	case <-s.interrupt:
	}
	return false
}

// deadlineTimer returns a channel that receives at deadline, nil (never
// ready) for the zero deadline, and the function that stops its timer.
func deadlineTimer(deadline time.Time) (<-chan time.Time, func() bool) {
	if deadline.IsZero() {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(time.Until(deadline))
	return t.C, t.Stop
}

// errCommitted marks, in markCommitted's results, a partition whose
// committed offset reached the one sent.
var errCommitted = errors.New("committed")

// committedTimeout bounds markCommitted's query.
const committedTimeout = 5 * time.Second

// markCommitted sets results[tp] to errCommitted for the partitions of sent
// whose committed offset is now at least the one sent.
func (s *Source[K, V]) markCommitted(sent []pipeline.Offset, results map[pipeline.TopicPartition]error) {
	parts, err := s.consumer.Committed(toKafka(offsetPartitions(sent)), millis(committedTimeout))
	if err != nil {
		s.logger().Debug("kafka: cannot read committed offsets after a failed commit", "error", err)
		return
	}
	want := make(map[pipeline.TopicPartition]pipeline.Offset, len(sent))
	for _, off := range sent {
		want[off.TopicPartition] = off
	}
	for _, p := range parts {
		if p.Topic == nil || p.Error != nil {
			continue
		}
		tp := pipeline.TopicPartition{Topic: *p.Topic, Partition: p.Partition}
		if w, ok := want[tp]; ok && int64(p.Offset) > w.Offset || ok && int64(p.Offset) == w.Offset && metadataOf(p) == w.Metadata {
			results[tp] = errCommitted
		}
	}
}

func offsetPartitions(offsets []pipeline.Offset) []pipeline.TopicPartition {
	tps := make([]pipeline.TopicPartition, len(offsets))
	for i, off := range offsets {
		tps[i] = off.TopicPartition
	}
	return tps
}

// beginCommit counts a commit in, unless the Source is closing: the
// consumer must not be destroyed under a commit.
func (s *Source[K, V]) beginCommit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || (s.closing && !s.closeCallback) {
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

// awaitCommits waits until no Commit call is in progress, or deadline
// passes (never, for a zero deadline). It reports whether none is.
func (s *Source[K, V]) awaitCommits(deadline time.Time) bool {
	s.mu.Lock()
	if s.commits == 0 {
		s.mu.Unlock()
		return true
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	idle := s.idle
	s.mu.Unlock()
	timeout, stop := deadlineTimer(deadline)
	defer stop()
	select {
	case <-idle:
		return true
	case <-timeout:
		return false
	}
}

// metadataTooLarge tells the commit error of an offset whose metadata the
// broker refused as too large.
func metadataTooLarge(err error) bool {
	var kerr ckafka.Error
	return errors.As(err, &kerr) && kerr.Code() == ckafka.ErrOffsetMetadataTooLarge
}

// notOwned tells the commit errors that mean this member cannot commit the
// partition, from those worth retrying.
func notOwned(err error) bool {
	var kerr ckafka.Error
	if !errors.As(err, &kerr) {
		return false
	}
	switch kerr.Code() {
	case ckafka.ErrUnknownMemberID, ckafka.ErrIllegalGeneration, ckafka.ErrRebalanceInProgress,
		ckafka.ErrFencedInstanceID, ckafka.ErrStaleMemberEpoch, ckafka.ErrAssignmentLost,
		ckafka.ErrFenced, ckafka.ErrDestroy:
		return true
	}
	return false
}

func toKafkaOffsets(offsets []pipeline.Offset) []ckafka.TopicPartition {
	parts := make([]ckafka.TopicPartition, len(offsets))
	for i, off := range offsets {
		topic := off.Topic
		parts[i] = ckafka.TopicPartition{Topic: &topic, Partition: off.Partition, Offset: ckafka.Offset(off.Offset)}
		if off.Metadata != "" {
			metadata := off.Metadata
			parts[i].Metadata = &metadata
		}
	}
	return parts
}

func metadataOf(p ckafka.TopicPartition) string {
	if p.Metadata == nil {
		return ""
	}
	return *p.Metadata
}
