package stages

import (
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Rebalancer is the pipeline's pipeline.RebalanceListener. The source calls
// it from inside Poll, so it runs on the poll stage's goroutine and shares
// the Poller's state without locks.
type Rebalancer[K, V any] struct {
	*Poller[K, V]
	Router    *Router[K, V]
	Committer *Committer[K, V]
	// RevokeTimeout bounds how long a revoke waits for the revoked
	// partitions' in-flight handlers before it commits what finished.
	RevokeTimeout time.Duration
}

var _ pipeline.RebalanceListener = (*Rebalancer[int, int])(nil)

// PartitionsAssigned starts a fresh claim for each partition. While the
// pipeline is at its in-flight limit, new partitions start paused too.
func (r *Rebalancer[K, V]) PartitionsAssigned(partitions []pipeline.TopicPartition) {
	r.Tracker.Assign(partitions)
	if r.assigned == nil {
		r.assigned = make(map[pipeline.TopicPartition]bool)
	}
	for _, tp := range partitions {
		r.assigned[tp] = true
	}
	r.Logger.Info("parallafka: partitions assigned", "partitions", partitions)
	if r.paused {
		if err := r.setPaused(partitions, true); err != nil {
			r.Logger.Warn("parallafka: pausing new partitions failed", "error", err)
		}
	}
}

// PartitionsRevoked stops dispatching the partitions, drops their backlog,
// waits up to RevokeTimeout for their in-flight handlers, and commits their
// final offsets before it returns, so that the next owner starts exactly
// after the last message this member finished.
func (r *Rebalancer[K, V]) PartitionsRevoked(partitions []pipeline.TopicPartition) {
	start := time.Now()
	claims := r.forget(partitions)
	idle := pipeline.WaitIdle(claims, r.RevokeTimeout)
	r.Committer.CommitFinal(claims)
	for _, c := range claims {
		c.Freeze()
	}
	r.Logger.Info("parallafka: partitions revoked", "partitions", partitions,
		"handlers_finished", idle, "took", time.Since(start))
	if !idle {
		r.Logger.Warn("parallafka: revoke timeout: handlers still running; their messages will be redelivered to the next owner",
			"timeout", r.RevokeTimeout)
	}
}

// PartitionsLost drops the partitions' backlog without committing: another
// member may own them already.
func (r *Rebalancer[K, V]) PartitionsLost(partitions []pipeline.TopicPartition) {
	for _, c := range r.forget(partitions) {
		c.Freeze()
	}
	r.Logger.Warn("parallafka: partitions lost", "partitions", partitions)
}

// forget takes the partitions out of the assignment: their claims stop, the
// router drops their queued messages, and messages held by the poller go.
func (r *Rebalancer[K, V]) forget(partitions []pipeline.TopicPartition) []*pipeline.Claim {
	gone := make(map[pipeline.TopicPartition]bool, len(partitions))
	for _, tp := range partitions {
		gone[tp] = true
		delete(r.assigned, tp)
	}
	r.Tracker.SetPaused(partitions, false)
	r.dropHeld(gone)
	claims := r.Tracker.Stop(partitions)
	r.Router.Purge(claims)
	return claims
}
