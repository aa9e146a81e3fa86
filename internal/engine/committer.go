package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// committer is the committer stage, the only goroutine that calls the
// source's Commit, so commits never race and a partition's committed
// offset never goes backwards through us. Every interval (and, with
// commitEvery, whenever the coordinator says that many offsets finished)
// it asks the coordinator what is committable (for each partition, the
// offset after its longest finished prefix, so a slow message holds back
// only its own partition, and the offset map of what finished above it)
// and commits the partitions that moved, the map encoded into the commit's
// metadata. A failed commit is logged, counted and retried with backoff;
// each try asks again, so a retry can never commit past an unfinished
// message. With async, periodic commits go out without the committer
// waiting for them (one at a time; a failed one is not retried, the next
// carries newer offsets), while a revoke's and the final commit stay
// synchronous and wait for the one in flight first. It also commits a
// revoke's final offsets for the poller, and the final offsets the
// coordinator hands over as it ends.
type committer[K, V any] struct {
	source      pipeline.Source[K, V]
	log         *slog.Logger
	stats       *Stats
	interval    time.Duration
	timeout     time.Duration // bounds one commit, and a final commit's retries
	async       bool
	mapMaxBytes int // the offset map's limit in the commit metadata; 0: no map
	obs         observer
	// transactor, in a transactional pipeline, commits instead of the
	// source: each commit is a transaction that writes the outputs of the
	// messages it commits (outbox.go).
	transactor pipeline.Transactor

	offsets   chan<- offsetsQuery  // to the coordinator
	final     <-chan []claimOffset // from the coordinator, as it ends
	commits   <-chan commitRequest // from the poller: a revoke's final offsets
	commitNow <-chan struct{}      // from the coordinator: commitEvery offsets finished
	coordDone <-chan struct{}
	// shutdownDeadline is when a shutdown must be over (zero before one
	// began): a final commit at shutdown is bounded by it, or by
	// finalCommitMargin from its start if that is later.
	shutdownDeadline func() time.Time

	last     map[pipeline.TopicPartition]claimOffset // last committed, per partition
	inFlight chan asyncResult                        // the async commit in flight, nil if none
	heldCuts map[pipeline.TopicPartition]int         // held keys last left out of a partition's metadata (warned)
	heldOff  bool                                    // warned that held keys are not recorded (no map)
	// outputsDone is, per claim, the offset below which committed
	// transactions carried its outputs (outbox.go); toTell, what the
	// coordinator has not been told of yet (the next offsets query tells).
	outputsDone map[uint64]int64
	toTell      []outputsDone
}

// asyncResult is what an asynchronous commit reports back.
type asyncResult struct {
	offsets []claimOffset
	sent    []pipeline.Offset
	err     error
	start   time.Time
}

var errCommitterDone = errors.New("parallafka: committer stopped")

// run commits until the coordinator hands over the final offsets, then
// commits those and returns.
func (c *committer[K, V]) run(ctx context.Context) error {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	c.last = make(map[pipeline.TopicPartition]claimOffset)
	defer c.awaitAsync()
	backoff := time.Duration(0)
	timer := time.NewTimer(c.interval)
	defer timer.Stop()
	reply := make(chan []claimOffset, 1)
	for {
		select {
		case <-timer.C:
		case <-c.commitNow:
		case res := <-c.inFlight:
			c.asyncEnded(res)
			continue
		case req := <-c.commits:
			c.awaitAsync()
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
		if c.inFlight != nil {
			timer.Reset(c.interval) // the one in flight goes first; the next tick carries newer offsets
			continue
		}
		var offsets []claimOffset
		select {
		case c.offsets <- offsetsQuery{reply: reply, committed: c.toTell}:
			c.toTell = nil
			offsets = <-reply
		case offsets = <-c.final:
			return c.commitLast(offsets)
		case <-c.coordDone:
			continue // the first select takes the final offsets
		}
		next := c.interval
		if c.async {
			c.commitAsync(ctx, offsets)
			timer.Reset(next)
			continue
		}
		switch err := c.commit(ctx, offsets, false); {
		case err == nil:
			backoff = 0
		case errors.Is(err, pipeline.ErrTransactionFatal):
			return err
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

// commitAsync starts a commit of offsets on a goroutine of its own; run
// takes its result from inFlight.
func (c *committer[K, V]) commitAsync(ctx context.Context, offsets []claimOffset) {
	send := c.prepare(offsets)
	if len(send) == 0 {
		return
	}
	done := make(chan asyncResult, 1)
	c.inFlight = done
	go func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		err := c.source.Commit(ctx, send)
		done <- asyncResult{offsets: offsets, sent: send, err: err, start: start}
	}()
}

// awaitAsync waits for the async commit in flight, if any.
func (c *committer[K, V]) awaitAsync() {
	if c.inFlight != nil {
		c.asyncEnded(<-c.inFlight)
	}
}

func (c *committer[K, V]) asyncEnded(res asyncResult) {
	c.inFlight = nil
	c.report(res.sent, false, res.start, res.err, 0)
	c.recorded(res.offsets, res.sent, res.err)
	c.shrinkMap(res.err)
	switch {
	case res.err == nil:
	case errors.Is(res.err, pipeline.ErrNotOwned):
		c.log.Info("parallafka: commit refused: partitions not owned in the group's current generation; the next commit carries those still assigned", "error", res.err)
	default:
		c.log.Warn("parallafka: asynchronous commit failed; the next one carries newer offsets", "error", res.err)
	}
}

// finalCommitMargin is the least time a final commit at shutdown gets,
// even if the handlers used up the whole shutdown timeout.
const finalCommitMargin = 2 * time.Second

// commitLast commits the final offsets the coordinator handed over as it
// ended. An error names the partitions whose offsets were not committed.
func (c *committer[K, V]) commitLast(offsets []claimOffset) error {
	c.awaitAsync()
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
		err := c.commit(ctx, offsets, true)
		if err == nil {
			for _, off := range offsets {
				delete(c.outputsDone, off.claim) // the claim ended
			}
			return nil
		}
		if errors.Is(err, pipeline.ErrNotOwned) {
			c.log.Warn("parallafka: final commit refused: partitions no longer owned; the new owner redoes what was not committed", "error", err)
			return err
		}
		if errors.Is(err, pipeline.ErrTransactionFatal) {
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

// commit commits, synchronously, the offsets that moved (or whose offset
// map changed) since this member's last commit of the same claim.
func (c *committer[K, V]) commit(ctx context.Context, offsets []claimOffset, final bool) error {
	if c.transactor != nil {
		c.uncarried(offsets)
	}
	send := c.prepare(offsets)
	if len(send) == 0 {
		return nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var err error
	records := 0
	if c.transactor != nil {
		records, err = c.transact(ctx, offsets, send)
	} else {
		err = c.source.Commit(ctx, send)
	}
	c.report(send, final, start, err, records)
	c.recorded(offsets, send, err)
	c.shrinkMap(err)
	return err
}

// shrinkMap halves the offset map's limit when the broker refused a map as
// too large, so that the retry fits (down to no map at all).
func (c *committer[K, V]) shrinkMap(err error) {
	if err == nil || c.mapMaxBytes == 0 || !errors.Is(err, pipeline.ErrMetadataTooLarge) {
		return
	}
	c.mapMaxBytes /= 2
	if c.mapMaxBytes < 64 {
		c.mapMaxBytes = 0
	}
	c.log.Warn("parallafka: the broker refused the offset map as too large (offset.metadata.max.bytes); halving its limit",
		"limit", c.mapMaxBytes, "error", err)
}

// prepare encodes the offsets' maps into their metadata and returns those
// to send: the ones that moved or whose map changed since the last commit
// of the same claim.
func (c *committer[K, V]) prepare(offsets []claimOffset) []pipeline.Offset {
	send := make([]pipeline.Offset, 0, len(offsets))
	for i := range offsets {
		off := &offsets[i]
		off.Metadata = ""
		if c.transactor != nil {
			off.runs = nil // a transaction carries outputs below its offset alone: no map (outbox.go)
		}
		if c.mapMaxBytes > 0 && (len(off.runs) > 0 || len(off.held) > 0) {
			var kept, keptHeld int
			off.Metadata, kept, keptHeld = offsetmap.EncodeHeld(off.Offset.Offset, off.runs, off.held, c.mapMaxBytes)
			if kept < len(off.runs) {
				c.stats.MapTruncated.Add(1)
				c.log.Debug("parallafka: offset map cut to fit the metadata limit: after a crash the next owner redoes the finished offsets left out",
					"partition", off.TopicPartition, "offset", off.Offset.Offset, "runs", len(off.runs), "kept", kept, "limit", c.mapMaxBytes)
			}
			c.heldCut(off, keptHeld)
		} else if len(off.held) > 0 && !c.heldOff {
			c.heldOff = true
			c.log.Warn("parallafka: held keys are not recorded in the commit metadata (the offset map is off): after a rebalance or a restart they are no longer held",
				"partition", off.TopicPartition, "held_keys", len(off.held))
		}
		last, ok := c.last[off.TopicPartition]
		if ok && last.claim == off.claim && (last.Offset.Offset > off.Offset.Offset || last.Offset == off.Offset) && len(off.outputs) == 0 {
			continue
		}
		send = append(send, off.Offset)
	}
	return send
}

// heldCut warns when a partition's held keys did not all fit in the
// metadata limit, once for each number left out: the oldest are no longer
// held after a rebalance or a restart.
func (c *committer[K, V]) heldCut(off *claimOffset, kept int) {
	cut := len(off.held) - kept
	if c.heldCuts[off.TopicPartition] == cut {
		return
	}
	if c.heldCuts == nil {
		c.heldCuts = make(map[pipeline.TopicPartition]int)
	}
	c.heldCuts[off.TopicPartition] = cut
	if cut > 0 {
		c.log.Warn("parallafka: held keys do not all fit in the commit metadata limit: the oldest left out are no longer held after a rebalance or a restart",
			"partition", off.TopicPartition, "held_keys", len(off.held), "left_out", cut, "newest_left_out", string(off.held[cut-1].Key), "limit", c.mapMaxBytes)
	}
}

// recorded books a commit's outcome.
func (c *committer[K, V]) recorded(offsets []claimOffset, send []pipeline.Offset, err error) {
	if err != nil {
		c.stats.CommitErrors.Add(1)
		return
	}
	c.stats.Commits.Add(1)
	for _, off := range offsets {
		c.last[off.TopicPartition] = off
	}
	c.stats.setCommitted(send)
}

// report tells the observer of a commit request (a transaction that
// wrote records outputs, in a transactional pipeline).
func (c *committer[K, V]) report(send []pipeline.Offset, final bool, start time.Time, err error, records int) {
	if c.obs.on() {
		c.obs.committed(pipeline.CommitInfo{Offsets: slices.Clone(send), Final: final, Took: time.Since(start), Err: err,
			Transaction: c.transactor != nil, Records: records})
	}
}

// uncarried leaves out of offsets the outputs that committed transactions
// carried already: the coordinator drops them once the next offsets query
// tells it, and a revoke's or the final offsets may come before that.
func (c *committer[K, V]) uncarried(offsets []claimOffset) {
	for i := range offsets {
		off := &offsets[i]
		done, ok := c.outputsDone[off.claim]
		if !ok {
			continue
		}
		kept := make([]finishedOutputs, 0, len(off.outputs))
		for _, f := range off.outputs {
			if f.offset >= done {
				kept = append(kept, f)
			}
		}
		off.outputs = kept
	}
}

// transact commits offsets in a transaction with the outputs of the
// messages they commit, and books the outputs as carried. It returns how
// many outputs the transaction had.
func (c *committer[K, V]) transact(ctx context.Context, offsets []claimOffset, send []pipeline.Offset) (int, error) {
	var records []pipeline.Record
	for _, off := range offsets {
		for _, f := range off.outputs {
			records = append(records, f.records...)
		}
	}
	if err := c.transactor.Transact(ctx, records, send); err != nil {
		return len(records), err
	}
	if c.outputsDone == nil {
		c.outputsDone = make(map[uint64]int64)
	}
	for _, off := range offsets {
		if len(off.outputs) == 0 {
			continue
		}
		// Every output of the claim below the committed offset is
		// carried now, by this transaction or an earlier one.
		c.outputsDone[off.claim] = off.Offset.Offset
		c.toTell = append(c.toTell, outputsDone{tp: off.TopicPartition, claim: off.claim, below: off.Offset.Offset})
	}
	return len(records), nil
}
