package stages

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Committer is the committer stage. Every Interval it commits, for each
// assigned partition whose position moved, the offset after the longest
// finished prefix of the partition (pipeline.Claim.Committable), so a slow
// message holds back its own partition only. A failed commit is logged,
// counted and retried with exponential backoff on its own goroutine, so
// handling goes on meanwhile; since each try recomputes the offsets from
// what finished, a retry can never commit past an unfinished message.
//
// Commits are serialized: a revoke's final commit and a periodic one never
// race, so a partition's committed offset never goes backwards.
type Committer[K, V any] struct {
	*Env[K, V]
	Interval time.Duration
	// FinalTimeout bounds the commits made at shutdown and on revoke,
	// retries included.
	FinalTimeout time.Duration

	mu sync.Mutex
}

// Run commits on the interval until collected is closed (the ack collector
// finished), then makes the final commit.
func (c *Committer[K, V]) Run(ctx context.Context, collected <-chan struct{}) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	backoff := time.Duration(0)
	timer := time.NewTimer(c.Interval)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-collected:
			c.CommitFinal(c.Tracker.Claims())
			return nil
		case <-ctx.Done():
			// A hard stop: collected closes soon; the final commit commits
			// what finished.
			<-collected
			c.CommitFinal(c.Tracker.Claims())
			return nil
		}
		next := c.Interval
		switch err := c.commit(ctx, c.Tracker.Claims(), false); {
		case err == nil:
			backoff = 0
		case errors.Is(err, pipeline.ErrNotOwned):
			// Nothing to retry: a rebalance is under way. Partitions this
			// member keeps are committed on the next interval.
			backoff = 0
			c.Logger.Info("parallafka: commit refused: partitions not owned in the group's current generation; the next commit carries those still assigned", "error", err)
		default:
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			next = min(backoff, c.Interval)
			c.Logger.Warn("parallafka: commit failed; retrying", "error", err, "retry_in", next)
		}
		timer.Reset(next)
	}
}

// CommitFinal commits the claims' positions synchronously, retrying with
// backoff within FinalTimeout. Used at shutdown and on revoke.
func (c *Committer[K, V]) CommitFinal(claims []*pipeline.Claim) {
	ctx, cancel := context.WithTimeout(context.Background(), c.FinalTimeout)
	defer cancel()
	for backoff := 50 * time.Millisecond; ; backoff *= 2 {
		err := c.commit(ctx, claims, true)
		if err == nil {
			return
		}
		if errors.Is(err, pipeline.ErrNotOwned) {
			c.Logger.Warn("parallafka: final commit refused: partitions no longer owned; the new owner redoes what was not committed", "error", err)
			return
		}
		c.Logger.Warn("parallafka: final commit failed", "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			c.Logger.Error("parallafka: giving up final commit; uncommitted messages will be redelivered", "error", err)
			return
		}
	}
}

// commit commits the claims whose position moved since their last commit.
// A periodic commit (final false) skips claims that stopped: it listed them
// before it took the lock, and a claim revoked or lost since is its revoke's
// to commit (which may have run meanwhile), or nobody's.
func (c *Committer[K, V]) commit(ctx context.Context, claims []*pipeline.Claim, final bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var offsets []pipeline.Offset
	var moved []*pipeline.Claim
	for _, claim := range claims {
		if !final && claim.Stopping() {
			continue
		}
		if off, ok := claim.Committable(); ok {
			offsets = append(offsets, off)
			moved = append(moved, claim)
		}
	}
	if len(offsets) == 0 {
		return nil
	}
	if err := c.Source.Commit(ctx, offsets); err != nil {
		c.Counters.CommitErrors.Add(1)
		return err
	}
	c.Counters.Commits.Add(1)
	for i, claim := range moved {
		claim.Committed(offsets[i].Offset)
	}
	return nil
}
