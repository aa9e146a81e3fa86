package engine

import (
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// The poller is the pipeline's RebalanceListener: the source calls it
// inside Poll (on the poll goroutine) and inside Close (once the flow
// ended). It asks the coordinator to act on the rebalance on the
// rebalances edge and waits for its reply; a revoke's final offsets go to
// the committer on the commits edge before the callback returns.

// PartitionsAssigned starts a fresh claim for each partition. While the
// pipeline is at its in-flight limit, new partitions start paused too.
func (p *poller[K, V]) PartitionsAssigned(committed []pipeline.Offset) {
	if p.flowEnded() {
		return
	}
	tps := make([]pipeline.TopicPartition, len(committed))
	for i, off := range committed {
		tps[i] = off.TopicPartition
		if off.Offset >= 0 {
			p.setNext(off.TopicPartition, off.Offset)
		}
	}
	p.flushForRebalance()
	p.request(rebalanceRequest{kind: rebalanceAssign, partitions: tps, committed: committed})
	if p.assigned == nil {
		p.assigned = make(map[pipeline.TopicPartition]bool)
	}
	for _, tp := range tps {
		p.assigned[tp] = true
	}
	p.log.Info("parallafka: partitions assigned", "partitions", tps)
	p.stats.Assigned.Store(int64(len(p.assigned)))
	p.obs.partitions("PartitionsAssigned", tps)
	if p.sourcePaused == nil {
		p.sourcePaused = make(map[pipeline.TopicPartition]bool)
	}
	for _, tp := range tps {
		p.sourcePaused[tp] = false // a source starts new partitions unpaused
	}
	p.pauseDirty = true
	if err := p.reconcile(); err != nil {
		p.log.Warn("parallafka: pausing new partitions failed", "error", err)
	}
}

// PartitionsRevoked stops dispatching the partitions, drops their backlog,
// waits up to the revoke timeout for their messages in flight, and commits
// their final offsets before it returns, so that the next owner starts
// right after the last message this member finished.
func (p *poller[K, V]) PartitionsRevoked(tps []pipeline.TopicPartition) {
	if p.flowEnded() { // inside the source's Close: the final offsets are committed
		p.obs.partitions("PartitionsRevoked", tps)
		return
	}
	start := time.Now()
	p.forget(tps)
	reply := make(chan []claimOffset, 1)
	idle := true
	if !p.send(rebalanceRequest{kind: rebalanceRevoke, partitions: tps, reply: reply}) {
		return
	}
	timer := time.NewTimer(p.revokeTimeout)
	defer timer.Stop()
	var offsets []claimOffset
	select {
	case offsets = <-reply:
	case <-timer.C:
		idle = false
		p.send(rebalanceRequest{kind: rebalanceGiveUp, reply: reply})
		select {
		case offsets = <-reply:
		case <-p.coordDone:
		}
	case <-p.coordDone:
	}
	err := p.commit(offsets)
	p.log.Info("parallafka: partitions revoked", "partitions", tps,
		"handlers_finished", idle, "took", time.Since(start), "commit_error", err)
	if !idle {
		p.log.Warn("parallafka: revoke timeout: handlers still running were cancelled; their messages will be redelivered to the next owner",
			"timeout", p.revokeTimeout)
	}
	p.obs.partitions("PartitionsRevoked", tps)
}

// PartitionsLost drops the partitions' backlog without committing: another
// member may own them already.
func (p *poller[K, V]) PartitionsLost(tps []pipeline.TopicPartition) {
	if p.flowEnded() {
		p.obs.partitions("PartitionsLost", tps)
		return
	}
	p.forget(tps)
	p.request(rebalanceRequest{kind: rebalanceLost, partitions: tps})
	p.log.Warn("parallafka: partitions lost", "partitions", tps)
	p.obs.partitions("PartitionsLost", tps)
}

// flushForRebalance hands over the messages polled so far in this cycle,
// before a rebalance changes what they belong to.
func (p *poller[K, V]) flushForRebalance() { p.flush() }

// flowEnded reports whether the coordinator returned (see coordDone).
func (p *poller[K, V]) flowEnded() bool {
	select {
	case <-p.coordDone:
		return true
	default:
		return false
	}
}

// forget takes partitions out of the assignment: the cycle's messages go to
// the coordinator first (which drops them with the claim), held ones go.
func (p *poller[K, V]) forget(tps []pipeline.TopicPartition) {
	p.flushForRebalance()
	gone := make(map[pipeline.TopicPartition]bool, len(tps))
	for _, tp := range tps {
		gone[tp] = true
		delete(p.assigned, tp)
	}
	kept := p.held[:0]
	for _, msg := range p.held {
		if !gone[msg.TopicPartition()] {
			kept = append(kept, msg)
		}
	}
	clear(p.held[len(kept):])
	p.held = kept
	for _, tp := range tps {
		delete(p.sourcePaused, tp)
		delete(p.steered, tp)
		delete(p.over, tp)
		delete(p.low, tp)
		delete(p.next, tp)
	}
	p.stats.Assigned.Store(int64(len(p.assigned)))
	if p.paused || p.holding {
		p.stats.setPaused(p.partitions())
	}
}

// request sends req with a fresh reply channel and waits for the reply.
func (p *poller[K, V]) request(req rebalanceRequest) {
	req.reply = make(chan []claimOffset, 1)
	if p.send(req) {
		select {
		case <-req.reply:
		case <-p.coordDone:
		}
	}
}

func (p *poller[K, V]) send(req rebalanceRequest) bool {
	select {
	case p.rebalances <- req:
		return true
	case <-p.coordDone:
		return false
	}
}

// commit has the committer commit a revoke's final offsets, and waits.
func (p *poller[K, V]) commit(offsets []claimOffset) error {
	if len(offsets) == 0 {
		return nil
	}
	req := commitRequest{offsets: offsets, reply: make(chan error, 1)}
	select {
	case p.commits <- req:
	case <-p.commitDone:
		return errCommitterDone
	}
	select {
	case err := <-req.reply:
		return err
	case <-p.commitDone:
		return errCommitterDone
	}
}
