package engine

import (
	"log/slog"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// The commit positions: what is in flight in the window, and, per claim,
// what may be committed (the offset after the longest finished prefix and
// the offset map above it).

// inFlight counts the in-flight window: the messages tracked and not
// finished or abandoned (with the dispatched messages of ended claims,
// until they come back), their bytes as the poller counted them, and what
// was freed since the poller was last told.
type inFlight[K, V any] struct {
	msgs  int
	bytes int64
	freed room
	// orphans are the sizes of dispatched messages whose claim ended: they
	// stay in the window's count until they come back.
	orphans map[*pipeline.Message[K, V]]int32
}

// add counts a tracked message in.
func (w *inFlight[K, V]) add(size int32) {
	w.msgs++
	w.bytes += int64(size)
}

// remove counts a tracked message out, and frees its room.
func (w *inFlight[K, V]) remove(size int32) {
	w.msgs--
	w.bytes -= int64(size)
	w.free(size)
}

// free gives the poller back the room of a message, tracked or not.
func (w *inFlight[K, V]) free(size int32) {
	w.freed.msgs++
	w.freed.bytes += int64(size)
}

// holdOutputs keeps n bytes of outputs counted in the byte window: those
// of a finished message, until a transaction carries them (outbox.go).
// The poller gets that much less room back.
func (w *inFlight[K, V]) holdOutputs(n int64) {
	w.bytes += n
	w.freed.bytes -= n
}

// releaseOutputs gives back the room of n bytes of outputs held.
func (w *inFlight[K, V]) releaseOutputs(n int64) {
	w.bytes -= n
	w.freed.bytes += n
}

// orphan keeps a dispatched message of an ended claim counted until it
// comes back (returned).
func (w *inFlight[K, V]) orphan(msg *pipeline.Message[K, V], size int32) {
	if w.orphans == nil {
		w.orphans = make(map[*pipeline.Message[K, V]]int32)
	}
	w.orphans[msg] = size
}

// returned counts an orphan out: it commits nothing.
func (w *inFlight[K, V]) returned(msg *pipeline.Message[K, V]) {
	size := w.orphans[msg]
	delete(w.orphans, msg)
	w.remove(size)
}

// commitCount asks the committer to commit (now) after every this many
// offsets finished; every 0: the interval alone.
type commitCount struct {
	every, since int
	now          chan<- struct{}
}

// finished counts a finished offset.
func (n *commitCount) finished() {
	if n.every <= 0 {
		return
	}
	if n.since++; n.since >= n.every {
		n.since = 0
		select {
		case n.now <- struct{}{}:
		default: // one is due already
		}
	}
}

// track adds a poll cycle's messages to their claims' windows: from now on
// they are in flight and hold back their partitions' commits until they
// finish. They are routed at once, or, with AfterPoll stages, sent into
// the stages first.
func (c *coordinator[K, V]) track(cycle pollCycle[K, V]) {
	for i, msg := range cycle.msgs {
		size := cycle.sizes[i]
		cl := c.claimOf(msg)
		switch {
		case cl == nil, cl.stopping:
			// Not ours (any more), or polled after the claim began to stop:
			// dropping it loses nothing, it was never committed.
			c.inFlight.free(size)
			continue
		case !cl.window.add(msg):
			c.log.Error("parallafka: dropping a message polled out of offset order", "message", msg.String())
			c.inFlight.free(size)
			continue
		}
		cl.window.slots[len(cl.window.slots)-1].size = size
		cl.tracked++
		c.policy.checkLow(cl, len(c.claims))
		c.inFlight.add(size)
		if cl.start < 0 {
			cl.start = msg.Offset
		}
		if cl.finishedBefore(msg.Offset) {
			c.stats.FinishedBefore.Add(1)
			c.settle(cl, &cl.window.slots[len(cl.window.slots)-1], slotFinished)
			continue
		}
		if c.staged != nil {
			c.toStage = append(c.toStage, msg)
			continue
		}
		c.route(cl, &cl.window.slots[len(cl.window.slots)-1])
	}
}

// settle records that the message of s finished or was abandoned.
func (c *coordinator[K, V]) settle(cl *claim[K, V], s *slot[K, V], state slotState) {
	cl.window.settle(s, state)
	cl.tracked--
	c.policy.checkLow(cl, len(c.claims))
	c.inFlight.remove(s.size)
	if cl.stopping && cl.tracked == 0 {
		c.revokesDue = true
	}
	if state == slotFinished {
		c.commits.finished()
	}
}

// committable returns the offsets to commit: for every claim whose window
// moved past its start. A periodic commit (final false) skips stopping
// claims: a revoke commits those, or nobody (lost).
func committable[K, V any](claims map[pipeline.TopicPartition]*claim[K, V], final bool) []claimOffset {
	offsets := make([]claimOffset, 0, len(claims))
	for _, cl := range claims {
		if cl.stopping && !final {
			continue
		}
		if off, ok := cl.position(); ok {
			offsets = append(offsets, off)
		}
	}
	return offsets
}

// position returns what to commit for a claim: the offset after its
// longest finished prefix, and the offset map, the runs of offsets above it
// that finished too (here, or under an earlier owner and not polled yet).
func (cl *claim[K, V]) position() (claimOffset, bool) {
	off, ok := cl.window.committable()
	if !ok {
		if !cl.heldChanged || cl.committed < 0 {
			return claimOffset{}, false
		}
		// Nothing polled, but a held key was released: the committed
		// offset again, with the metadata that says so.
		off = cl.committed
	}
	runs := cl.window.finishedRuns(nil)
	inherited := cl.inherited
	for len(inherited) > 0 && inherited[0].To <= cl.window.next {
		inherited = inherited[1:]
	}
	if len(inherited) > 0 {
		first := inherited[0]
		first.From = max(first.From, cl.window.next)
		if len(runs) == 0 && first.From == off {
			// Everything polled finished, and so did what comes next.
			off, inherited = first.To, inherited[1:]
		} else if n := len(runs); n > 0 && runs[n-1].To == first.From {
			runs[n-1].To, inherited = first.To, inherited[1:]
		} else {
			runs, inherited = append(runs, first), inherited[1:]
		}
		runs = append(runs, inherited...)
	}
	if off <= cl.start && len(runs) == 0 && !cl.heldChanged {
		return claimOffset{}, false // nothing finished past the starting position
	}
	co := claimOffset{Offset: pipeline.Offset{TopicPartition: cl.tp, Offset: off}, claim: cl.id, runs: runs, held: cl.heldList()}
	co.outputs = cl.outputs.below(off)
	return co, true
}

// inheritedMap returns tp's committed offset (-1: none) and decodes its
// offset map and held keys, if the source read them. Metadata that is not
// an offset map of ours (written by another tool, corrupt, or left behind
// by an offset reset) is ignored: the finished work it may describe is
// redone, and the keys it may hold are not held.
func inheritedMap(log *slog.Logger, committed []pipeline.Offset, tp pipeline.TopicPartition) (int64, []offsetmap.Run, []offsetmap.Held) {
	for _, off := range committed {
		if off.TopicPartition != tp || off.Offset < 0 {
			continue
		}
		if off.Metadata == "" {
			return off.Offset, nil, nil
		}
		runs, held, err := offsetmap.DecodeHeld(off.Offset, off.Metadata)
		if err != nil {
			log.Warn("parallafka: ignoring the committed offset's metadata: not an offset map of this pipeline; work finished past the committed offset by the previous owner is redone, and keys it held are not held",
				"partition", tp, "offset", off.Offset, "metadata_bytes", len(off.Metadata), "error", err)
			return off.Offset, nil, nil
		}
		if len(runs) > 0 {
			log.Debug("parallafka: offset map read: finished offsets past the committed one are skipped",
				"partition", tp, "offset", off.Offset, "runs", len(runs))
		}
		return off.Offset, runs, held
	}
	return -1, nil, nil
}
