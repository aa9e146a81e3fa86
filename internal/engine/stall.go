package engine

import (
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Stall detection: the coordinator, the owner of every partition's window,
// looks at each claim on a timer tick. A claim with unfinished work whose
// committable offset has not moved for the stall timeout is stalled: its
// first unfinished message blocks it (a handler that hangs, a key whose
// earlier message keeps being retried). The stall is logged (Warn) with
// that message, counted, shown in Stats, told to the observer, and makes
// Health report stalled, until the offset moves or the claim ends.

// stallCheckEvery is the tick of the stall check for a stall timeout d: a
// stall is found within d plus one tick.
func stallCheckEvery(d time.Duration) time.Duration {
	return min(max(d/4, time.Millisecond), 5*time.Second)
}

// checkStalls looks at every claim's progress.
func (c *coordinator[K, V]) checkStalls() {
	now := c.policy.clock()
	c.policy.coarse = now
	changed := false
	for _, cl := range c.claims {
		off, _ := cl.window.committable()
		switch {
		case cl.tracked == 0 || cl.stopping || c.holding || c.draining:
			// Nothing unfinished, or not expected to move: not a stall.
			changed = c.unstall(cl) || changed
			cl.progressOff, cl.progressAt = off, now
		case off != cl.progressOff:
			changed = c.unstall(cl) || changed
			cl.progressOff, cl.progressAt = off, now
		case now-cl.progressAt >= c.stallTimeout:
			stall, ok := c.describeStall(cl, now)
			if !ok {
				continue
			}
			first := cl.stall == nil
			cl.stall, changed = &stall, true
			if first {
				c.stats.Stalls.Add(1)
				c.log.Warn("parallafka: partition stalled: its committed offset has not moved while a message holds it back",
					"partition", stall.TopicPartition, "offset", stall.Offset, "key", string(stall.Key),
					"state", stall.State, "running", stall.Running, "stalled_for", stall.Since)
				c.obs.stalled(stall)
			}
		}
	}
	if changed {
		c.publishStalls()
	}
}

// describeStall names the message that blocks cl: its first unfinished one.
func (c *coordinator[K, V]) describeStall(cl *claim[K, V], now time.Duration) (pipeline.Stall, bool) {
	w := &cl.window
	if w.head >= len(w.slots) {
		return pipeline.Stall{}, false
	}
	s := &w.slots[w.head]
	st := pipeline.Stall{TopicPartition: cl.tp, Offset: s.offset, Key: s.msg.RawKey, Since: now - cl.progressAt}
	switch s.state {
	case slotPolled:
		st.State = "in the AfterPoll stages"
	case slotDispatched:
		st.State, st.Running = "handling", max(0, now-s.routed)
		if c.policy.handling > c.policy.concurrency {
			// More out than handlers: some wait in the hand-off to the
			// pool, and the coordinator cannot tell which.
			st.State = "handling, or handed to the pool behind busy handlers"
		}
	case slotWaiting:
		st.State = "waiting for a handler"
		var queued []entry[K, V]
		if q := cl.keys[s.key]; s.ordered && q != nil {
			queued = q.waiting()
		}
		for _, e := range queued {
			if e.msg == s.msg {
				st.State = "waiting behind its key"
				break
			}
		}
	default:
		return pipeline.Stall{}, false // abandoned: the claim is stopping
	}
	return st, true
}

// unstall clears cl's stall, if any, and reports whether there was one.
func (c *coordinator[K, V]) unstall(cl *claim[K, V]) bool {
	if cl.stall == nil {
		return false
	}
	d := c.policy.clock() - cl.progressAt
	c.log.Info("parallafka: partition no longer stalled", "partition", cl.tp, "stalled_for", d)
	cl.stall = nil
	c.obs.unstalled(cl.tp, d)
	if c.claims[cl.tp] != cl {
		c.publishStalls() // it ended: no tick will look at it again
	}
	return true
}

// publishStalls shows the stalls in Stats.
func (c *coordinator[K, V]) publishStalls() {
	var stalls []pipeline.Stall
	for _, cl := range c.claims {
		if cl.stall != nil {
			stalls = append(stalls, *cl.stall)
		}
	}
	c.stats.Stalled.Store(int64(len(stalls)))
	c.stats.setStalls(stalls)
}
