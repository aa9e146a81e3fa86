package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// committer is the committer stage, the only goroutine that calls the
// source's Commit, so commits never race and a partition's committed
// offset never goes backwards through us. Every interval it asks the
// coordinator what is committable (for each partition, the offset after
// its longest finished prefix, so a slow message holds back only its own
// partition) and commits the partitions that moved. A failed commit is
// logged, counted and retried with backoff; each try asks again, so a
// retry can never commit past an unfinished message. It also commits a
// revoke's final offsets for the poller, and the final offsets the
// coordinator hands over as it ends.
type committer[K, V any] struct {
	source   pipeline.Source[K, V]
	log      *slog.Logger
	stats    *Stats
	interval time.Duration
	timeout  time.Duration // bounds one commit, and a final commit's retries

	offsets   chan<- chan<- []claimOffset // to the coordinator
	final     <-chan []claimOffset        // from the coordinator, as it ends
	commits   <-chan commitRequest        // from the poller: a revoke's final offsets
	coordDone <-chan struct{}
	// shutdownDeadline is when a shutdown must be over (zero before one
	// began): a final commit at shutdown is bounded by it, or by
	// finalCommitMargin from its start if that is later.
	shutdownDeadline func() time.Time

	last map[pipeline.TopicPartition]claimOffset // last committed, per partition
}

var errCommitterDone = errors.New("parallafka: committer stopped")

// run commits until the coordinator hands over the final offsets, then
// commits those and returns.
func (c *committer[K, V]) run(ctx context.Context) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	c.last = make(map[pipeline.TopicPartition]claimOffset)
	backoff := time.Duration(0)
	timer := time.NewTimer(c.interval)
	defer timer.Stop()
	reply := make(chan []claimOffset, 1)
	for {
		select {
		case <-timer.C:
		case req := <-c.commits:
			req.reply <- c.commitFinal(req.offsets)
			continue
		case offsets := <-c.final:
			return c.commitLast(offsets)
		case <-c.coordDone:
			select {
			case offsets := <-c.final: // sent just before it returned
				return c.commitLast(offsets)
			default: // it failed: the flow is broken, commit nothing
			}
			return nil
		}
		var offsets []claimOffset
		select {
		case c.offsets <- reply:
			offsets = <-reply
		case offsets = <-c.final:
			return c.commitLast(offsets)
		case <-c.coordDone:
			continue // the first select takes the final offsets
		}
		next := c.interval
		switch err := c.commit(ctx, offsets); {
		case err == nil:
			backoff = 0
		case errors.Is(err, pipeline.ErrNotOwned):
			// Nothing to retry: a rebalance is under way. Partitions this
			// member keeps are committed on the next interval.
			backoff = 0
			c.log.Info("parallafka: commit refused: partitions not owned in the group's current generation; the next commit carries those still assigned", "error", err)
		default:
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			next = min(backoff, c.interval)
			c.log.Warn("parallafka: commit failed; retrying", "error", err, "retry_in", next)
		}
		timer.Reset(next)
	}
}

// finalCommitMargin is the least time a final commit at shutdown gets,
// even if the handlers used up the whole shutdown timeout.
const finalCommitMargin = 2 * time.Second

// commitLast commits the final offsets the coordinator handed over as it
// ended. An error names the partitions whose offsets were not committed.
func (c *committer[K, V]) commitLast(offsets []claimOffset) error {
	err := c.commitFinal(offsets)
	if err == nil || errors.Is(err, pipeline.ErrNotOwned) {
		return nil // not ours any more: the new owner goes on from the last commit
	}
	tps := make([]pipeline.TopicPartition, len(offsets))
	for i, off := range offsets {
		tps[i] = off.TopicPartition
	}
	return fmt.Errorf("final offsets of %v not committed (their unfinished messages are delivered again): %w", tps, err)
}

// commitFinal commits offsets synchronously, retrying with backoff within
// the timeout, and within the shutdown deadline once a shutdown began. It
// is used on revoke and at shutdown.
func (c *committer[K, V]) commitFinal(offsets []claimOffset) error {
	deadline := time.Now().Add(c.timeout)
	if d := c.shutdownDeadline(); !d.IsZero() {
		if least := time.Now().Add(finalCommitMargin); d.Before(least) {
			d = least
		}
		if d.Before(deadline) {
			deadline = d
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for backoff := 50 * time.Millisecond; ; backoff *= 2 {
		err := c.commit(ctx, offsets)
		if err == nil {
			return nil
		}
		if errors.Is(err, pipeline.ErrNotOwned) {
			c.log.Warn("parallafka: final commit refused: partitions no longer owned; the new owner redoes what was not committed", "error", err)
			return err
		}
		c.log.Warn("parallafka: final commit failed", "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			c.log.Error("parallafka: giving up final commit; uncommitted messages will be redelivered", "error", err)
			return err
		}
	}
}

// commit commits the offsets that moved since this member's last commit
// of the same claim.
func (c *committer[K, V]) commit(ctx context.Context, offsets []claimOffset) error {
	send := make([]pipeline.Offset, 0, len(offsets))
	for _, off := range offsets {
		if last, ok := c.last[off.TopicPartition]; ok && last.claim == off.claim && last.Offset.Offset >= off.Offset.Offset {
			continue
		}
		send = append(send, off.Offset)
	}
	if len(send) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := c.source.Commit(ctx, send); err != nil {
		c.stats.CommitErrors.Add(1)
		return err
	}
	c.stats.Commits.Add(1)
	for _, off := range offsets {
		c.last[off.TopicPartition] = off
	}
	c.stats.setCommitted(send)
	return nil
}
