package franz

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/pipeline"
)

// eventKind is the kind of rebalance a callback reports.
type eventKind uint8

const (
	evAssigned eventKind = iota
	evRevoked
	evLost
)

func (k eventKind) String() string {
	switch k {
	case evAssigned:
		return "assigned"
	case evRevoked:
		return "revoked"
	default:
		return "lost"
	}
}

// rebalanceEvent is one rebalance callback, on its way to Poll. The
// callback (on kgo's group goroutine) waits for done: kgo gives revoked
// partitions up, and starts fetching assigned ones, only once it returns.
type rebalanceEvent struct {
	kind      eventKind
	parts     []pipeline.TopicPartition
	committed []pipeline.Offset // evAssigned: as read when assigned
	done      chan struct{}
}

func (b *binding) onAssigned(ctx context.Context, _ *kgo.Client, m map[string][]int32) {
	b.deliver(ctx, evAssigned, m)
}

func (b *binding) onRevoked(ctx context.Context, _ *kgo.Client, m map[string][]int32) {
	b.deliver(ctx, evRevoked, m)
}

func (b *binding) onLost(ctx context.Context, _ *kgo.Client, m map[string][]int32) {
	b.deliver(ctx, evLost, m)
}

// deliver hands a callback to Poll (or Close) and waits until it was
// acted on, or until no Source serves events any more.
func (b *binding) deliver(ctx context.Context, kind eventKind, m map[string][]int32) {
	parts := toPipeline(m)
	if len(parts) == 0 || !b.attached.Load() {
		return // kgo calls back at the end of every session, even with nothing to report
	}
	ev := &rebalanceEvent{kind: kind, parts: parts, done: make(chan struct{})}
	if kind == evAssigned {
		ev.committed = b.fetchCommitted(ctx, parts)
	}
	select {
	case b.events <- ev:
	case <-b.gone:
		return
	}
	b.wakeMu.Lock()
	if b.wake != nil {
		b.wake()
	}
	b.wakeMu.Unlock()
	select {
	case <-ev.done:
	case <-b.gone:
	}
}

// committedTimeout bounds the read of the committed offsets of newly
// assigned partitions.
const committedTimeout = 5 * time.Second

// fetchCommitted reads the group's committed offsets and their metadata for
// newly assigned partitions (one OffsetFetch, at most committedTimeout). A
// partition it cannot read comes back with Offset -1: the pipeline then
// knows of no finished work past the committed offset, and redoes it.
func (b *binding) fetchCommitted(ctx context.Context, tps []pipeline.TopicPartition) []pipeline.Offset {
	out := make([]pipeline.Offset, len(tps))
	for i, tp := range tps {
		out[i] = pipeline.Offset{TopicPartition: tp, Offset: -1}
	}
	ctx, cancel := context.WithTimeout(ctx, committedTimeout)
	defer cancel()
	got, err := b.committed(ctx, tps)
	if err != nil {
		b.logger.Load().Warn("franz: cannot read the committed offsets of newly assigned partitions; work finished past them by the previous owner is redone",
			"partitions", tps, "error", err)
		return out
	}
	for i, tp := range tps {
		if off, ok := got[tp]; ok {
			out[i] = off
		}
	}
	return out
}

// committed reads the group's committed offsets (with their metadata) of
// tps; partitions without one are left out.
func (b *binding) committed(ctx context.Context, tps []pipeline.TopicPartition) (map[pipeline.TopicPartition]pipeline.Offset, error) {
	req := kmsg.NewPtrOffsetFetchRequest()
	rg := kmsg.NewOffsetFetchRequestGroup()
	rg.Group = b.group
	for topic, parts := range toKgo(tps) {
		rt := kmsg.NewOffsetFetchRequestGroupTopic()
		rt.Topic = topic
		rt.Partitions = parts
		rg.Topics = append(rg.Topics, rt)
	}
	req.Groups = append(req.Groups, rg)
	out := make(map[pipeline.TopicPartition]pipeline.Offset, len(tps))
	for _, shard := range b.client.RequestSharded(ctx, req) {
		if shard.Err != nil {
			return nil, shard.Err
		}
		resp := shard.Resp.(*kmsg.OffsetFetchResponse)
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			return nil, err
		}
		for _, g := range resp.Groups {
			if g.Group != b.group {
				continue
			}
			if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
				if errors.Is(err, kerr.GroupIDNotFound) {
					continue // a group that never committed
				}
				return nil, err
			}
			for _, t := range g.Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
						return nil, fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, err)
					}
					if p.Offset < 0 {
						continue
					}
					tp := pipeline.TopicPartition{Topic: t.Topic, Partition: p.Partition}
					off := pipeline.Offset{TopicPartition: tp, Offset: p.Offset}
					if p.Metadata != nil {
						off.Metadata = *p.Metadata
					}
					out[tp] = off
				}
			}
		}
	}
	return out, nil
}

// handle acts on a rebalance event on the goroutine serving events (Poll's,
// or Close's), then releases the callback.
func (s *Source[K, V]) handle(ev *rebalanceEvent) {
	defer close(ev.done)
	s.mu.Lock()
	abandoned := s.abandoned
	s.mu.Unlock()
	s.logger().Info("franz: partitions "+ev.kind.String(), "partitions", ev.parts)
	switch ev.kind {
	case evAssigned:
		s.startup.answered = true
		s.confirm("a rebalance (partitions assigned)")
		member, _ := s.client.GroupMetadata()
		s.mu.Lock()
		for _, tp := range ev.parts {
			s.assigned[tp] = member
			delete(s.committed, tp)
		}
		s.mu.Unlock()
		// kgo keeps a partition paused through a rebalance: one the
		// pipeline paused before it lost it would come back paused.
		s.client.ResumeFetchPartitions(toKgo(ev.parts))
		s.buf.forget(ev.parts)
		if !abandoned {
			s.callListener("PartitionsAssigned", func() { s.listener.PartitionsAssigned(ev.committed) })
		}
	case evRevoked:
		if gone := s.rejoined(ev.parts); len(gone) > 0 {
			// A classic member that kgo rejoined under a new member ID
			// (its session had expired) hears of its old partitions as
			// revoked; the group gave them to others meanwhile, and a
			// commit with the new generation would be accepted over
			// theirs: they are lost, not revoked.
			s.logger().Warn("franz: partitions revoked after this member rejoined under a new member ID: handled as lost", "partitions", gone)
			s.handle(&rebalanceEvent{kind: evLost, parts: gone, done: make(chan struct{})})
			ev.parts = slices.DeleteFunc(ev.parts, func(tp pipeline.TopicPartition) bool { return slices.Contains(gone, tp) })
			if len(ev.parts) == 0 {
				return
			}
		}
		s.buf.forget(ev.parts)
		if !abandoned {
			s.mu.Lock()
			s.closeCallback = s.closing
			s.mu.Unlock()
			s.callListener("PartitionsRevoked", func() { s.listener.PartitionsRevoked(ev.parts) })
			s.mu.Lock()
			s.closeCallback = false
			s.mu.Unlock()
		}
		s.disown(ev.parts)
		s.confirm("a rebalance (partitions revoked)")
	case evLost:
		// Commits of these partitions are refused from now on, and the
		// one in flight is cancelled and waited for: kgo rejoins only
		// once this callback returns, and a commit must not outlive the
		// membership it was sent with.
		s.disown(ev.parts)
		s.cancelFlight()
		s.buf.forget(ev.parts)
		if !abandoned {
			s.callListener("PartitionsLost", func() { s.listener.PartitionsLost(ev.parts) })
		}
		s.mu.Lock()
		left := len(s.assigned)
		s.mu.Unlock()
		if left == 0 {
			s.confirm("a rebalance (partitions lost)")
		}
	}
}

// rejoined returns the partitions of parts that were assigned to another
// member ID than this member's now.
func (s *Source[K, V]) rejoined(parts []pipeline.TopicPartition) []pipeline.TopicPartition {
	member, _ := s.client.GroupMetadata()
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []pipeline.TopicPartition
	for _, tp := range parts {
		if was, ok := s.assigned[tp]; ok && was != "" && was != member {
			gone = append(gone, tp)
		}
	}
	return gone
}

// disown forgets partitions: Commit refuses them from now on.
func (s *Source[K, V]) disown(tps []pipeline.TopicPartition) {
	s.mu.Lock()
	for _, tp := range tps {
		delete(s.assigned, tp)
		delete(s.committed, tp)
	}
	s.mu.Unlock()
}

// callListener runs a listener method, turning a panic into a Poll error.
func (s *Source[K, V]) callListener(name string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			s.fail(fmt.Errorf("franz: RebalanceListener.%s panicked: %v", name, r))
		}
	}()
	fn()
}

func (s *Source[K, V]) fail(err error) {
	s.logger().Error("franz: rebalance failed", "error", err)
	if s.failure == nil {
		s.failure = err
	}
}

// toPipeline turns kgo's map of partitions into a sorted list.
func toPipeline(m map[string][]int32) []pipeline.TopicPartition {
	var tps []pipeline.TopicPartition
	for topic, parts := range m {
		for _, p := range parts {
			tps = append(tps, pipeline.TopicPartition{Topic: topic, Partition: p})
		}
	}
	slices.SortFunc(tps, func(a, b pipeline.TopicPartition) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
	})
	return tps
}

// toKgo turns a list of partitions into kgo's map.
func toKgo(tps []pipeline.TopicPartition) map[string][]int32 {
	m := make(map[string][]int32)
	for _, tp := range tps {
		m[tp.Topic] = append(m[tp.Topic], tp.Partition)
	}
	return m
}
