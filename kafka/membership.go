package kafka

import (
	"context"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// A member cut off from the brokers cannot tell whether its group still
// assigns it its partitions. If the broker expires its session meanwhile (a
// network partition, or a broker restart that outlasts the session timeout),
// the group gives the partitions to another member, and this member hears of
// it only when it reaches the coordinator again: with the classic protocol
// librdkafka keeps a session timer of its own, but with KIP-848's
// group.protocol=consumer it keeps none, and the member goes on handling
// the partitions' messages next to their new owner (a "zombie"), until its
// next heartbeat.
//
// So from the time librdkafka reports every broker down while partitions
// are assigned, the Source reports its membership in doubt, and the
// pipeline starts no handler. The Source then probes the coordinator: it
// reads the group's committed offsets of its partitions and commits them
// again, unchanged. A commit carries the member's generation (KIP-848:
// member epoch), so the coordinator accepts it only from a member that
// still owns the partitions: accepted, the doubt ends; refused, the lost
// assignment follows (a rebalance callback also ends the doubt). The probe
// goes through the commit slot like any commit, so it neither overtakes a
// commit of the pipeline nor outlives a lost assignment (see Commit).

const (
	// probeTimeout bounds one probe's wait for the commit slot and its
	// read of the committed offsets.
	probeTimeout = 2 * time.Second
	// probeEvery spaces the probes while the doubt lasts.
	probeEvery = 250 * time.Millisecond
)

// MembershipInDoubt reports whether the Source cannot tell if its group
// still assigns it its partitions: from the time librdkafka reported every
// broker down while partitions were assigned until the group coordinator
// accepted a commit of this member again (a probe the Source makes itself)
// or a rebalance callback ran. Parallafka starts no handler meanwhile. It is
// safe to call from any goroutine.
func (s *Source[K, V]) MembershipInDoubt() bool { return s.doubt.Load() }

// suspect starts the doubt, if partitions are assigned. It runs on Poll's
// goroutine, when librdkafka reports every broker down.
func (s *Source[K, V]) suspect() {
	s.mu.Lock()
	assigned := len(s.assigned)
	s.mu.Unlock()
	if assigned > 0 && !s.doubt.Swap(true) {
		s.logger().Warn("kafka: every broker is down: this member's assignment is in doubt until the group coordinator accepts a commit of it again",
			"partitions", assigned)
	}
}

// confirm ends the doubt.
func (s *Source[K, V]) confirm(why string) {
	if s.doubt.Swap(false) {
		s.down.Store(nil)
		s.logger().Info("kafka: this member's assignment is confirmed", "by", why)
	}
}

// maybeProbe starts a probe while the doubt lasts, one at a time, spaced by
// probeEvery. It runs on Poll's goroutine.
func (s *Source[K, V]) maybeProbe(now time.Time) {
	if !s.doubt.Load() || s.probing || now.Before(s.nextProbe) {
		return
	}
	if s.beginCommit() != nil { // closing: the consumer must not be used after Close
		return
	}
	s.probing = true
	s.probeDone = make(chan struct{})
	go func() {
		defer close(s.probeDone)
		defer s.endCommit()
		s.probe()
	}()
}

// probeEnded notices the end of a probe. It runs on Poll's goroutine.
func (s *Source[K, V]) probeEnded(now time.Time) {
	if s.probing && isDone(s.probeDone) {
		s.probing = false
		s.nextProbe = now.Add(probeEvery)
	}
}

// probe commits the group's committed offsets of the assigned partitions
// again, unchanged, and ends the doubt if the coordinator accepts them.
func (s *Source[K, V]) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	select {
	case s.commitSlot <- struct{}{}:
	case <-ctx.Done():
		return
	}
	s.mu.Lock()
	tps := make([]pipeline.TopicPartition, 0, len(s.assigned))
	for tp := range s.assigned {
		tps = append(tps, tp)
	}
	s.mu.Unlock()
	if len(tps) == 0 {
		<-s.commitSlot
		s.confirm("no partition assigned any more")
		return
	}
	parts, err := s.consumer.Committed(toKafka(tps), millis(probeTimeout))
	if err != nil {
		<-s.commitSlot
		s.logger().Debug("kafka: membership probe: cannot read the committed offsets", "error", err)
		return
	}
	var send []pipeline.Offset
	s.mu.Lock()
	for _, p := range parts {
		if p.Topic == nil || p.Error != nil || p.Offset < 0 {
			continue
		}
		tp := pipeline.TopicPartition{Topic: *p.Topic, Partition: p.Partition}
		if _, ok := s.assigned[tp]; ok {
			send = append(send, pipeline.Offset{TopicPartition: tp, Offset: int64(p.Offset), Metadata: metadataOf(p)})
		}
	}
	var f *commitFlight
	if len(send) > 0 {
		f = s.takeOff(send) // a lost assignment waits for it (see Commit)
	}
	s.mu.Unlock()
	if f == nil {
		// No partition has a committed offset to commit again: the
		// coordinator answered the offset fetch, which is all this
		// member can learn without waiting for its next heartbeat.
		<-s.commitSlot
		s.confirm("the coordinator answered (no committed offset to commit again)")
		return
	}
	go s.runCommit(f) // releases the slot
	select {
	case <-f.done:
	case <-ctx.Done():
		return
	}
	if len(f.res.Failed) == 0 && len(f.res.NotOwned) == 0 {
		s.confirm("a commit accepted by the coordinator")
		return
	}
	s.logger().Debug("kafka: membership probe: commit refused", "error", f.res.Error())
}

// owned returns an error wrapping pipeline.ErrNotOwned if the membership
// is in doubt or a partition of offsets is not assigned to the Source: a
// transaction must not commit them (Transactor).
func (s *Source[K, V]) owned(offsets []pipeline.Offset) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ownedLocked(offsets)
}

// ownedLocked is owned, under s.mu.
func (s *Source[K, V]) ownedLocked(offsets []pipeline.Offset) error {
	if s.doubt.Load() {
		return fmt.Errorf("%w: this member's group membership is in doubt", pipeline.ErrNotOwned)
	}
	for _, off := range offsets {
		if _, ok := s.assigned[off.TopicPartition]; !ok {
			return fmt.Errorf("%w: %s is not assigned to this member", pipeline.ErrNotOwned, off.TopicPartition)
		}
	}
	return nil
}

// offsetsInFlight runs send, which sends a transaction's offsets
// (Transactor), as the commit in flight: it takes the commit slot, checks
// under s.mu (the lock disown takes) that the offsets' partitions are
// still assigned and the membership not in doubt, and registers the
// flight, which a lost assignment waits for before librdkafka may rejoin
// (see Commit). It returns an error wrapping pipeline.ErrNotOwned if the
// partitions are not this member's any more, without calling send.
func (s *Source[K, V]) offsetsInFlight(ctx context.Context, offsets []pipeline.Offset, send func() error) error {
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
	err := s.ownedLocked(offsets)
	var f *commitFlight
	if err == nil {
		f = s.takeOff(offsets)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		s.mu.Lock()
		if s.flight == f {
			s.flight = nil
		}
		s.mu.Unlock()
		close(f.done)
		s.flights.Done()
	}()
	return send()
}
