package stages

import (
	"context"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Poller is the poll stage: the only goroutine that calls Source.Poll, in
// order, and so the goroutine on which rebalance notifications arrive.
//
// It applies back-pressure: once MaxInFlight messages are polled and not yet
// finished, it first waits up to PauseAfter for room without polling (the
// consumer's prefetched messages stay ready, and a short gap between polls
// is harmless to group membership). If the pipeline is still full then, it
// pauses every assigned partition and keeps calling Poll, so that the
// consumer stays in its group however long handlers take, and rebalances
// are served; it resumes them when the pipeline has worked the in-flight
// count down to three quarters of the limit. (Pausing is a last resort:
// librdkafka drops what it prefetched for a paused partition and fetches it
// again after Resume.)
type Poller[K, V any] struct {
	*Env[K, V]
	MaxInFlight int
	// PollTimeout bounds one Poll call, and so how long a shutdown or a
	// freed slot waits to be noticed.
	PollTimeout time.Duration
	// PauseAfter bounds how long the poller waits, without polling, for
	// room under MaxInFlight before it pauses the partitions. It delays
	// rebalance notifications by as much, so keep it far below
	// max.poll.interval.ms.
	PauseAfter time.Duration

	assigned map[pipeline.TopicPartition]bool
	paused   bool
	held     []*pipeline.Message[K, V] // polled while at the limit (a consumer's prefetch)
}

// Run polls until the pipeline drains or ctx is done, sending each message
// on out. A Poll error is returned: the pipeline stops.
func (p *Poller[K, V]) Run(ctx context.Context, out chan<- *pipeline.Message[K, V]) error {
	for !p.draining() && ctx.Err() == nil {
		if !p.paused && !p.hasRoom() && p.Tracker.AwaitRoom(int64(p.MaxInFlight), p.PauseAfter, p.Draining) {
			continue
		}
		if err := p.applyBackPressure(); err != nil {
			return err
		}
		for len(p.held) > 0 && p.hasRoom() {
			msg := p.held[0]
			p.held = p.held[1:]
			if !p.send(ctx, out, msg) {
				return nil
			}
		}
		timeout := p.PollTimeout
		if p.paused {
			timeout = min(timeout, 10*time.Millisecond) // notice freed room promptly
		}
		msg, err := p.Source.Poll(timeout)
		if err != nil {
			return err
		}
		if msg == nil {
			continue
		}
		if !p.hasRoom() || len(p.held) > 0 {
			// Behind the held ones, even if room freed during the Poll:
			// sent first, it would overtake earlier offsets of its partition.
			p.held = append(p.held, msg)
			continue
		}
		if !p.send(ctx, out, msg) {
			return nil
		}
	}
	return nil
}

func (p *Poller[K, V]) hasRoom() bool { return p.Tracker.InFlight() < int64(p.MaxInFlight) }

// send tracks msg under its partition's claim and passes it on. It reports
// false when the pipeline stops before the message could be sent.
func (p *Poller[K, V]) send(ctx context.Context, out chan<- *pipeline.Message[K, V], msg *pipeline.Message[K, V]) bool {
	claim := p.Tracker.Claim(msg.TopicPartition())
	if claim == nil {
		// Polled for a partition we do not own (a source delivering after a
		// revoke): another member owns it, so dropping it loses nothing.
		p.Logger.Debug("parallafka: dropping message of unassigned partition", "message", msg.String())
		return true
	}
	pipeline.Track(claim, msg)
	// Without blocking first: a select locks every channel it names, and
	// ctx's is shared by every stage (see Router.tryStep).
	select {
	case out <- msg:
		return true
	default:
	}
	select {
	case out <- msg:
		return true
	case <-p.Draining:
	case <-ctx.Done():
	}
	pipeline.Abandon(msg)
	return false
}

func (p *Poller[K, V]) applyBackPressure() error {
	inFlight := p.Tracker.InFlight() + int64(len(p.held))
	switch {
	case !p.paused && inFlight >= int64(p.MaxInFlight):
		p.paused = true
		p.Counters.Pauses.Add(1)
		return p.setPaused(p.assignedPartitions(), true)
	case p.paused && inFlight <= int64(p.MaxInFlight)*3/4:
		p.paused = false
		return p.setPaused(p.assignedPartitions(), false)
	}
	return nil
}

func (p *Poller[K, V]) setPaused(partitions []pipeline.TopicPartition, paused bool) error {
	if len(partitions) == 0 {
		return nil
	}
	p.Tracker.SetPaused(partitions, paused)
	if paused {
		return p.Source.Pause(partitions)
	}
	return p.Source.Resume(partitions)
}

func (p *Poller[K, V]) assignedPartitions() []pipeline.TopicPartition {
	tps := make([]pipeline.TopicPartition, 0, len(p.assigned))
	for tp := range p.assigned {
		tps = append(tps, tp)
	}
	return tps
}

// dropHeld forgets held messages of the given partitions (revoked or lost);
// they were never tracked, so nothing else needs to know.
func (p *Poller[K, V]) dropHeld(partitions map[pipeline.TopicPartition]bool) {
	kept := p.held[:0]
	for _, msg := range p.held {
		if !partitions[msg.TopicPartition()] {
			kept = append(kept, msg)
		}
	}
	clear(p.held[len(kept):])
	p.held = kept
}
