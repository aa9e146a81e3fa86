package franz

import (
	"context"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// A member cut off from the brokers cannot tell whether its group still
// assigns it its partitions. kgo keeps no session timer of its own: if the
// broker expires the member's session meanwhile, the group gives the
// partitions to another member, and this member hears of it only when it
// reaches the coordinator again (a heartbeat or a commit refused), while it
// goes on handling what it polled next to the partitions' new owner.
//
// So from the time no broker answered for a while (see Unreachable) while
// partitions are assigned, the Source reports its membership in doubt, and
// the pipeline starts no handler. The Source then probes the coordinator: it
// reads the group's committed offsets of its partitions and commits them
// again, unchanged, as the member (with its generation or member epoch), so
// the coordinator accepts it only from a member still in the group:
// accepted, the doubt ends; refused, the lost assignment follows (a
// rebalance callback also ends the doubt). As in package kafka.

const (
	// downAfter is how long no broker must have answered, with a
	// connection failing since, for the Source to count them unreachable.
	downAfter = time.Second
	// probeTimeout bounds one probe.
	probeTimeout = 2 * time.Second
	// probeEvery spaces the probes while the doubt lasts.
	probeEvery = 250 * time.Millisecond
)

// Unreachable returns an error from the time a connection to a broker
// failed while no broker had answered for a second, until a broker answers
// again and, if the membership was in doubt, the coordinator confirmed it;
// nil otherwise. The error wraps ErrUnreachable and the connection's
// error. It is safe to call from any goroutine (Parallafka's Health does).
func (s *Source[K, V]) Unreachable() error {
	if !s.unreachableSince(time.Now()) && !s.doubt.Load() {
		return nil
	}
	cause := error(fmt.Errorf("no answer"))
	if e := s.b.failErr.Load(); e != nil {
		cause = *e
	}
	return fmt.Errorf("%w: %w", ErrUnreachable, cause)
}

// unreachableSince reports whether brokers count as unreachable at now.
func (s *Source[K, V]) unreachableSince(now time.Time) bool {
	fail, ok := s.b.lastFail.Load(), s.b.lastOK.Load()
	return fail != 0 && fail > ok && now.UnixNano()-ok >= int64(downAfter)
}

// MembershipInDoubt reports whether the Source cannot tell if its group
// still assigns it its partitions: from the time no broker was reachable
// while partitions were assigned until the group coordinator accepted a
// commit of this member again (a probe the Source makes itself) or a
// rebalance callback ran. Parallafka starts no handler meanwhile. It is
// safe to call from any goroutine.
func (s *Source[K, V]) MembershipInDoubt() bool { return s.doubt.Load() }

// suspectIfDown starts the doubt, if brokers are unreachable and partitions
// assigned. It runs on Poll's goroutine.
func (s *Source[K, V]) suspectIfDown(now time.Time) {
	if !s.unreachableSince(now) {
		return
	}
	s.mu.Lock()
	assigned := len(s.assigned)
	s.mu.Unlock()
	if assigned > 0 && !s.doubt.Swap(true) {
		s.logger().Warn("franz: no broker answers: this member's assignment is in doubt until the group coordinator accepts a commit of it again",
			"partitions", assigned)
	}
}

// confirm ends the doubt.
func (s *Source[K, V]) confirm(why string) {
	if s.doubt.Swap(false) {
		s.logger().Info("franz: this member's assignment is confirmed", "by", why)
	}
}

// maybeProbe starts a probe while the doubt lasts, one at a time, spaced by
// probeEvery. It runs on Poll's goroutine.
func (s *Source[K, V]) maybeProbe(now time.Time) {
	if !s.doubt.Load() || s.probing || now.Before(s.nextProbe) {
		return
	}
	if s.beginCommit() != nil {
		return
	}
	s.probing = true
	s.probeDone = make(chan struct{})
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
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
	ctx, cancel := context.WithTimeout(s.bgCtx, probeTimeout)
	defer cancel()
	select {
	case s.commitSlot <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-s.commitSlot }()
	s.mu.Lock()
	tps := make([]pipeline.TopicPartition, 0, len(s.assigned))
	for tp := range s.assigned {
		tps = append(tps, tp)
	}
	s.mu.Unlock()
	if len(tps) == 0 {
		s.confirm("no partition assigned any more")
		return
	}
	got, err := s.b.committed(ctx, tps)
	if err != nil {
		s.logger().Debug("franz: membership probe: cannot read the committed offsets", "error", err)
		return
	}
	var send []pipeline.Offset
	s.mu.Lock()
	for tp, off := range got {
		if _, ok := s.assigned[tp]; ok {
			send = append(send, off)
		}
	}
	s.mu.Unlock()
	if len(send) == 0 {
		// Nothing committed to commit again: the coordinator answered,
		// which is all this member can learn before its next heartbeat.
		s.confirm("the coordinator answered (no committed offset to commit again)")
		return
	}
	res := s.send(ctx, send)
	if len(res.Failed) == 0 && len(res.NotOwned) == 0 {
		s.confirm("a commit accepted by the coordinator")
		return
	}
	s.logger().Debug("franz: membership probe: commit refused", "error", res.Error())
}
