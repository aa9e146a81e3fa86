package pipeline_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
)

type msg = pipeline.Message[string, string]

func tp(p int32) pipeline.TopicPartition { return pipeline.TopicPartition{Topic: "t", Partition: p} }

// track makes a message of c's partition at offset and tracks it.
func track(c *pipeline.Claim, offset int64) *msg {
	m := &msg{Topic: c.TopicPartition().Topic, Partition: c.TopicPartition().Partition, Offset: offset}
	pipeline.Track(c, m)
	return m
}

func assigned(t *testing.T, tr *pipeline.Tracker, tps ...pipeline.TopicPartition) []*pipeline.Claim {
	t.Helper()
	tr.Assign(tps)
	claims := make([]*pipeline.Claim, len(tps))
	for i, p := range tps {
		claims[i] = tr.Claim(p)
		require.NotNil(t, claims[i])
		require.Equal(t, p, claims[i].TopicPartition())
	}
	return claims
}

func committable(t *testing.T, c *pipeline.Claim) (int64, bool) {
	t.Helper()
	off, moved := c.Committable()
	require.Equal(t, c.TopicPartition(), off.TopicPartition)
	return off.Offset, moved
}

func TestTrackerAssignAndClaims(t *testing.T) {
	tr := pipeline.NewTracker()
	require.Nil(t, tr.Claim(tp(0)))
	require.Empty(t, tr.Claims())
	tr.Assign([]pipeline.TopicPartition{tp(2), {Topic: "a", Partition: 1}, tp(0)})
	c0 := tr.Claim(tp(0))
	require.NotNil(t, c0)
	var order []string
	for _, c := range tr.Claims() {
		order = append(order, c.TopicPartition().String())
	}
	require.Equal(t, []string{"a[1]", "t[0]", "t[2]"}, order)

	// Assigning a claimed partition keeps its claim (and its state).
	m := track(c0, 0)
	tr.Assign([]pipeline.TopicPartition{tp(0)})
	require.Same(t, c0, tr.Claim(tp(0)))
	require.EqualValues(t, 1, tr.InFlight())
	require.Equal(t, int64(-1), c0.LastCommitted())

	// Stop removes it; stopping an unassigned partition is a no-op.
	stopped := tr.Stop([]pipeline.TopicPartition{tp(0), tp(9)})
	require.Equal(t, []*pipeline.Claim{c0}, stopped)
	require.Nil(t, tr.Claim(tp(0)))
	require.True(t, c0.Stopping())
	require.Len(t, tr.Claims(), 2)
	require.Empty(t, tr.Stop([]pipeline.TopicPartition{tp(0)}))

	// Assigning again starts a fresh claim.
	tr.Assign([]pipeline.TopicPartition{tp(0)})
	c1 := tr.Claim(tp(0))
	require.NotSame(t, c0, c1)
	require.False(t, c1.Stopping())
	pipeline.Abandon(m)
	require.Zero(t, tr.InFlight())
	require.EqualValues(t, 1, tr.Polled())
}

func TestClaimCommittable(t *testing.T) {
	tr := pipeline.NewTracker()
	c := assigned(t, tr, tp(0))[0]
	_, moved := committable(t, c)
	require.False(t, moved, "nothing polled yet")

	m0, m1, m2 := track(c, 10), track(c, 11), track(c, 13)
	require.Same(t, c, m0.Claim())
	// Nothing finished, but the first polled offset is a valid position
	// (the claim never committed): committing it is harmless.
	off, moved := committable(t, c)
	require.True(t, moved)
	require.Equal(t, int64(10), off)
	c.Committed(10)

	pipeline.Finish(m1)
	off, moved = committable(t, c)
	require.False(t, moved, "offset 10 holds the partition back")
	require.Equal(t, int64(10), off)
	pipeline.Finish(m0)
	off, moved = committable(t, c)
	require.True(t, moved)
	require.Equal(t, int64(13), off)

	c.Committed(13)
	require.Equal(t, int64(13), c.LastCommitted())
	_, moved = committable(t, c)
	require.False(t, moved, "committed already")
	c.Committed(5) // an older commit never moves it back
	require.Equal(t, int64(13), c.LastCommitted())

	pipeline.Abandon(m2)
	_, moved = committable(t, c)
	require.False(t, moved, "an abandoned message stays uncommitted")
	require.Zero(t, tr.InFlight())
}

func TestInFlightCountsEachMessageOnce(t *testing.T) {
	tr := pipeline.NewTracker()
	c := assigned(t, tr, tp(0))[0]
	var ms []*msg
	for i := range int64(6) {
		ms = append(ms, track(c, i))
		require.EqualValues(t, i+1, tr.InFlight())
	}
	require.EqualValues(t, 6, tr.Polled())
	require.True(t, pipeline.Start(ms[0]))
	require.True(t, pipeline.Start(ms[1]))

	steps := []struct {
		release func(*msg)
		m       *msg
		want    int64
	}{
		{pipeline.Finish[string, string], ms[0], 5},
		{pipeline.Finish[string, string], ms[0], 5}, // double Finish: no-op
		{pipeline.Abandon[string, string], ms[0], 5},
		{pipeline.Abandon[string, string], ms[1], 4},
		{pipeline.Abandon[string, string], ms[1], 4}, // double Abandon: no-op
		{pipeline.Finish[string, string], ms[1], 4},  // a Finish after Abandon does not finish it
		{pipeline.Finish[string, string], ms[2], 3},  // tracked, never started
		{pipeline.Abandon[string, string], ms[3], 2},
	}
	for i, s := range steps {
		s.release(s.m)
		require.Equal(t, s.want, tr.InFlight(), "step %d", i)
	}
	off, _ := committable(t, c)
	require.Equal(t, int64(1), off, "offset 1 was abandoned: it holds the partition back")

	// The claim's count went down exactly once per message: once the last
	// two are released, the stopped claim is idle.
	stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
	require.False(t, pipeline.WaitIdle(stopped, 0))
	pipeline.Finish(ms[4])
	pipeline.Finish(ms[5])
	require.True(t, pipeline.WaitIdle(stopped, time.Minute))
	require.Zero(t, tr.InFlight())
	require.EqualValues(t, 6, tr.Polled())
}

func TestStartAfterStop(t *testing.T) {
	tr := pipeline.NewTracker()
	cs := assigned(t, tr, tp(0), tp(1))
	a, b, other := track(cs[0], 0), track(cs[0], 1), track(cs[1], 0)
	require.True(t, pipeline.Start(a))
	tr.Stop([]pipeline.TopicPartition{tp(0)})
	require.False(t, pipeline.Start(b), "stopped claim")
	require.True(t, pipeline.Start(other), "other partitions go on")

	// A started message finishing before the freeze still counts.
	pipeline.Finish(a)
	off, moved := committable(t, cs[0])
	require.True(t, moved)
	require.Equal(t, int64(1), off)
	pipeline.Abandon(b)
	pipeline.Finish(other)
	require.Zero(t, tr.InFlight())
}

func TestFreezeStopsCommitsMoving(t *testing.T) {
	tr := pipeline.NewTracker()
	c := assigned(t, tr, tp(0))[0]
	a, b := track(c, 0), track(c, 1)
	require.True(t, pipeline.Start(a))
	require.True(t, pipeline.Start(b))
	stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
	pipeline.Finish(a)
	off, moved := committable(t, c)
	require.True(t, moved)
	require.Equal(t, int64(1), off)
	c.Committed(1)
	c.Freeze()
	require.False(t, pipeline.WaitIdle(stopped, 0), "b is still running")
	pipeline.Finish(b) // late: after the freeze
	off, moved = committable(t, c)
	require.False(t, moved, "a finish after the freeze must not move commits")
	require.Equal(t, int64(1), off)
	require.True(t, pipeline.WaitIdle(stopped, time.Minute), "yet it is no longer running")
	require.Zero(t, tr.InFlight())

	// The partition assigned again: a fresh claim, not moved by the old one.
	fresh := assigned(t, tr, tp(0))[0]
	_, moved = committable(t, fresh)
	require.False(t, moved)
	n1 := track(fresh, 1)
	off, moved = committable(t, fresh)
	require.True(t, moved, "a fresh claim never committed")
	require.Equal(t, int64(1), off)
	fresh.Committed(1)
	pipeline.Finish(n1)
	off, moved = committable(t, fresh)
	require.True(t, moved)
	require.Equal(t, int64(2), off)
}

func TestWaitIdle(t *testing.T) {
	t.Run("returns true once every message is released", func(t *testing.T) {
		tr := pipeline.NewTracker()
		cs := assigned(t, tr, tp(0), tp(1))
		a, b := track(cs[0], 0), track(cs[1], 0)
		queued := track(cs[0], 1) // tracked, never started: waited for until abandoned
		require.True(t, pipeline.Start(a))
		require.True(t, pipeline.Start(b))
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0), tp(1)})
		require.Len(t, stopped, 2)

		result := make(chan bool, 1)
		go func() { result <- pipeline.WaitIdle(stopped, time.Minute) }()
		pipeline.Finish(a)
		select {
		case <-result:
			t.Fatal("WaitIdle returned while b still runs")
		default:
		}
		pipeline.Abandon(b)
		select {
		case <-result:
			t.Fatal("WaitIdle returned while a queued message is neither finished nor abandoned")
		default:
		}
		pipeline.Abandon(queued)
		select {
		case ok := <-result:
			require.True(t, ok)
		case <-time.After(10 * time.Second):
			t.Fatal("WaitIdle did not return")
		}
	})
	t.Run("idle once the backlog is abandoned", func(t *testing.T) {
		tr := pipeline.NewTracker()
		c := assigned(t, tr, tp(0))[0]
		m := track(c, 0)
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
		require.False(t, pipeline.WaitIdle(stopped, 0))
		pipeline.Abandon(m)
		require.True(t, pipeline.WaitIdle(stopped, time.Minute))
		require.True(t, pipeline.WaitIdle(nil, 0))
	})
	t.Run("false after the timeout when one hangs", func(t *testing.T) {
		tr := pipeline.NewTracker()
		cs := assigned(t, tr, tp(0), tp(1))
		a, b := track(cs[0], 0), track(cs[1], 0)
		require.True(t, pipeline.Start(a))
		require.True(t, pipeline.Start(b))
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0), tp(1)})
		pipeline.Finish(a)
		const timeout = 30 * time.Millisecond
		start := time.Now()
		require.False(t, pipeline.WaitIdle(stopped, timeout))
		require.GreaterOrEqual(t, time.Since(start), timeout)
		pipeline.Finish(b)
		require.True(t, pipeline.WaitIdle(stopped, time.Minute))
	})
	t.Run("a retried message stays started", func(t *testing.T) {
		// Start is called once per dispatch from the router's point of view;
		// a retry keeps the message started until it is released.
		tr := pipeline.NewTracker()
		c := assigned(t, tr, tp(0))[0]
		m := track(c, 0)
		require.True(t, pipeline.Start(m))
		stopped := tr.Stop([]pipeline.TopicPartition{tp(0)})
		require.False(t, pipeline.WaitIdle(stopped, 0))
		pipeline.Abandon(m)
		require.True(t, pipeline.WaitIdle(stopped, time.Minute))
	})
}

func TestPaused(t *testing.T) {
	tr := pipeline.NewTracker()
	require.Empty(t, tr.Paused())
	tr.SetPaused([]pipeline.TopicPartition{tp(0), tp(1), tp(2)}, true)
	tr.SetPaused([]pipeline.TopicPartition{tp(1)}, true) // twice: still once
	require.ElementsMatch(t, []pipeline.TopicPartition{tp(0), tp(1), tp(2)}, tr.Paused())
	tr.SetPaused([]pipeline.TopicPartition{tp(1), tp(7)}, false)
	require.ElementsMatch(t, []pipeline.TopicPartition{tp(0), tp(2)}, tr.Paused())
	tr.SetPaused(nil, true)
	tr.SetPaused([]pipeline.TopicPartition{tp(0), tp(2)}, false)
	require.Empty(t, tr.Paused())
}

func TestTopicPartitionAndMessageStrings(t *testing.T) {
	require.Equal(t, "t[3]", tp(3).String())
	m := &msg{Topic: "t", Partition: 3, Offset: 42}
	require.Equal(t, "t[3]@42", m.String())
	require.Equal(t, tp(3), m.TopicPartition())
	require.Nil(t, m.Claim())
}

func TestMessageFate(t *testing.T) {
	m := &msg{Err: fmt.Errorf("boom")}
	require.False(t, m.Dropped())
	require.False(t, m.RetryRequested())
	m.Retry()
	require.True(t, m.RetryRequested())
	require.False(t, m.Dropped())
	m.ResetFate()
	require.False(t, m.RetryRequested())
	m.Drop()
	require.True(t, m.Dropped())
	require.NoError(t, m.Err, "Drop clears the error")
	require.False(t, m.RetryRequested())
}

// TestClaimsConcurrently runs the claim API the way the pipeline does, from
// many goroutines at once: one poller tracking in order, workers starting and
// finishing, a committer, and a rebalancer stopping and re-assigning. Run it
// with -race.
func TestClaimsConcurrently(t *testing.T) {
	tr := pipeline.NewTracker()
	parts := []pipeline.TopicPartition{tp(0), tp(1), tp(2)}
	tr.Assign(parts)

	work := make(chan *msg, 64)
	var workers sync.WaitGroup
	for w := range 4 {
		workers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for m := range work {
				if !pipeline.Start(m) {
					pipeline.Abandon(m)
					continue
				}
				if rng.IntN(10) == 0 {
					pipeline.Abandon(m)
				} else {
					pipeline.Finish(m)
				}
			}
		})
	}

	stop := make(chan struct{})
	var side sync.WaitGroup
	var commits atomic.Int64
	side.Go(func() { // committer
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, c := range tr.Claims() {
				if off, ok := c.Committable(); ok {
					assert.Greater(t, off.Offset, c.LastCommitted())
					c.Committed(off.Offset)
					commits.Add(1)
				}
			}
			_ = tr.Paused()
			time.Sleep(20 * time.Microsecond) // pacing only
		}
	})

	// The poller, which is also the rebalancer (as in the pipeline).
	rng := rand.New(rand.NewPCG(7, 7))
	next := map[pipeline.TopicPartition]int64{}
	var old []*pipeline.Claim
	for i := range 20000 {
		p := parts[rng.IntN(len(parts))]
		switch r := rng.IntN(1000); {
		case r == 0:
			stopped := tr.Stop([]pipeline.TopicPartition{p})
			old = append(old, stopped...)
			tr.SetPaused([]pipeline.TopicPartition{p}, false)
			for _, c := range stopped {
				c.Freeze()
			}
		case r == 1:
			tr.Assign([]pipeline.TopicPartition{p})
			tr.SetPaused([]pipeline.TopicPartition{p}, i%2 == 0)
		default:
			c := tr.Claim(p)
			if c == nil {
				continue
			}
			work <- track(c, next[p])
			next[p] += 1 + rng.Int64N(2)
		}
	}
	close(work)
	workers.Wait()
	close(stop)
	side.Wait()
	require.Zero(t, tr.InFlight())
	require.True(t, pipeline.WaitIdle(tr.Stop(parts), time.Minute))
	require.True(t, pipeline.WaitIdle(old, time.Minute))
	require.Positive(t, commits.Load())
}

// claimModel is the reference for one Claim: what was added, what finished
// while the claim was not frozen, and what was committed.
type claimModel struct {
	claim     *pipeline.Claim
	window    *windowModel
	next      int64 // the next offset to poll
	started   int
	tracked   int // tracked and not yet released
	stopping  bool
	frozen    bool
	committed int64
}

type msgModel struct {
	m       *msg
	cm      *claimModel
	started bool
}

// committable: the window's answer, moved only past the last commit.
func (cm *claimModel) committable() (int64, bool) {
	off, ok, _ := cm.window.committable()
	return off, ok && off > cm.committed
}

// FuzzClaimTracker drives a Tracker with one partition through polls,
// starts, finishes, abandons, commits, revokes (Stop, then Freeze later),
// losses (Stop and Freeze at once) and re-assignments, and compares every
// claim with claimModel. Each operation is two bytes, an opcode and an
// argument:
//
//	0: assign (a fresh claim unless one is live; it starts at the last commit)
//	1: poll: track the next offset of the live claim (gap 1..3)
//	2: start the (arg mod n)-th tracked, unstarted message
//	3: finish the (arg mod n)-th unreleased message
//	4: abandon the (arg mod n)-th unreleased message
//	5: revoke the live claim (stop; freeze comes later); with arg odd: lose it (stop and freeze)
//	6: freeze the (arg mod n)-th stopped, unfrozen claim
//	7: commit: Committable of the (arg mod n)-th claim, recorded with Committed when arg&1
func FuzzClaimTracker(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 1, 0, 1, 1, 2, 0, 2, 0, 3, 1, 7, 1, 3, 0, 7, 1})
	// Revoke with a started message finishing before and another after the freeze.
	f.Add([]byte{0, 0, 1, 0, 1, 0, 1, 0, 2, 0, 2, 0, 5, 0, 2, 0, 3, 0, 7, 1, 6, 0, 3, 0, 7, 1, 0, 0, 1, 0, 3, 2, 7, 3})
	// Lost while messages run; re-assigned; old messages finish late.
	f.Add([]byte{0, 0, 1, 2, 1, 1, 2, 0, 2, 1, 7, 1, 5, 1, 0, 0, 1, 0, 1, 0, 3, 0, 3, 0, 7, 0, 7, 1, 4, 0, 3, 0, 7, 1})
	f.Add([]byte{0, 0, 1, 0, 4, 0, 1, 0, 3, 0, 7, 1, 5, 0, 7, 1, 0, 1, 1, 1, 2, 0, 3, 0, 7, 1, 5, 1, 6, 0, 0, 0})
	f.Fuzz(fuzzClaimTracker)
}

func fuzzClaimTracker(t *testing.T, data []byte) {
	tr := pipeline.NewTracker()
	p := tp(0)
	var (
		live      *claimModel
		claims    []*claimModel // every claim ever, oldest first
		msgs      []*msgModel   // unreleased messages
		polled    int64
		committed int64 // the group's committed offset, where a fresh claim starts
	)
	// checkClaim compares one claim with its model (plain comparisons: this
	// runs after every operation).
	checkClaim := func(cm *claimModel, idle bool) {
		want, wantMoved := cm.committable()
		off, moved := cm.claim.Committable()
		if moved != wantMoved || (wantMoved && off.Offset != want) || off.TopicPartition != p {
			t.Fatalf("Committable() = %v, %v; want %d, %v", off, moved, want, wantMoved)
		}
		if got := cm.claim.LastCommitted(); got != cm.committed {
			t.Fatalf("LastCommitted() = %d; want %d", got, cm.committed)
		}
		if got := cm.claim.Stopping(); got != cm.stopping {
			t.Fatalf("Stopping() = %v; want %v", got, cm.stopping)
		}
		if idle && cm.stopping {
			cs := []*pipeline.Claim{cm.claim}
			if cm.tracked == 0 && !pipeline.WaitIdle(cs, time.Minute) {
				t.Fatal("WaitIdle: a stopped claim without unreleased messages is not idle")
			}
			if cm.tracked > 0 && pipeline.WaitIdle(cs, 0) {
				t.Fatalf("WaitIdle: idle with %d unreleased messages", cm.tracked)
			}
		}
	}
	for i := 0; i+1 < len(data) && i < 2*maxFuzzOps; i += 2 {
		op, arg := data[i]%8, data[i+1]
		var touched *claimModel // the claim whose started count may have changed
		switch op {
		case 0:
			tr.Assign([]pipeline.TopicPartition{p})
			c := tr.Claim(p)
			require.NotNil(t, c)
			if live != nil {
				require.Same(t, live.claim, c, "an assigned partition keeps its claim")
				break
			}
			for _, old := range claims {
				require.NotSame(t, old.claim, c, "a re-assigned partition gets a fresh claim")
			}
			live = &claimModel{claim: c, window: newWindowModel(), next: committed, committed: -1}
			claims = append(claims, live)
		case 1:
			if live == nil {
				break
			}
			m := track(live.claim, live.next)
			live.window.add(live.next)
			live.next += 1 + int64(arg%3)
			msgs = append(msgs, &msgModel{m: m, cm: live})
			live.tracked++
			polled++
		case 2:
			var tracked []*msgModel
			for _, mm := range msgs {
				if !mm.started {
					tracked = append(tracked, mm)
				}
			}
			if len(tracked) == 0 {
				break
			}
			mm := tracked[int(arg)%len(tracked)]
			if ok := pipeline.Start(mm.m); ok != !mm.cm.stopping {
				t.Fatalf("Start(%v) = %v with the claim stopping: %v", mm.m, ok, mm.cm.stopping)
			}
			if !mm.cm.stopping {
				mm.started = true
				mm.cm.started++
			}
			touched = mm.cm
		case 3, 4:
			if len(msgs) == 0 {
				break
			}
			k := int(arg) % len(msgs)
			mm := msgs[k]
			msgs = slices.Delete(msgs, k, k+1)
			if op == 3 {
				pipeline.Finish(mm.m)
				if !mm.cm.frozen {
					mm.cm.window.finish(mm.m.Offset)
				}
			} else {
				pipeline.Abandon(mm.m)
			}
			if mm.started {
				mm.cm.started--
			}
			mm.cm.tracked--
			if arg&0x80 != 0 { // releasing twice is a no-op
				pipeline.Finish(mm.m)
				pipeline.Abandon(mm.m)
			}
			touched = mm.cm
		case 5:
			if live == nil {
				require.Empty(t, tr.Stop([]pipeline.TopicPartition{p}))
				break
			}
			stopped := tr.Stop([]pipeline.TopicPartition{p})
			require.Equal(t, []*pipeline.Claim{live.claim}, stopped)
			live.stopping = true
			if arg%2 == 1 { // lost: frozen at once
				live.claim.Freeze()
				live.frozen = true
			}
			touched, live = live, nil
		case 6:
			var open []*claimModel
			for _, cm := range claims {
				if cm.stopping && !cm.frozen {
					open = append(open, cm)
				}
			}
			if len(open) == 0 {
				break
			}
			cm := open[int(arg)%len(open)]
			cm.claim.Freeze()
			cm.frozen = true
			touched = cm
		case 7:
			if len(claims) == 0 {
				break
			}
			cm := claims[int(arg)%len(claims)]
			if off, moved := cm.claim.Committable(); moved && arg&1 == 1 {
				cm.claim.Committed(off.Offset)
				cm.committed = off.Offset
				if !cm.frozen {
					committed = off.Offset
				}
			}
		}

		// Invariants after every operation.
		if got := tr.InFlight(); got != int64(len(msgs)) {
			t.Fatalf("InFlight() = %d; want %d", got, len(msgs))
		}
		if got := tr.Polled(); got != polled {
			t.Fatalf("Polled() = %d; want %d", got, polled)
		}
		switch c := tr.Claim(p); {
		case live == nil && c != nil:
			t.Fatal("a claim after the revoke")
		case live != nil && c != live.claim:
			t.Fatal("the live claim changed")
		}
		for _, cm := range claims {
			checkClaim(cm, cm == touched)
		}
	}
}

func TestTrackerCommittedOutlivesClaims(t *testing.T) {
	tr := pipeline.NewTracker()
	require.Empty(t, tr.Committed())
	cs := assigned(t, tr, tp(0), tp(1))
	cs[0].Committed(5)
	cs[1].Committed(3)
	cs[1].Committed(2) // older: ignored by the claim
	tr.Stop([]pipeline.TopicPartition{tp(0)})
	got := tr.Committed()
	require.Equal(t, int64(5), got[tp(0)], "kept after the revoke")
	require.Equal(t, int64(3), cs[1].LastCommitted())
	got[tp(0)] = 99 // a copy
	require.Equal(t, int64(5), tr.Committed()[tp(0)])
}

func TestDraining(t *testing.T) {
	require.Nil(t, pipeline.Draining(context.Background()), "a context the pipeline did not make")
	ch := make(chan struct{})
	ctx := pipeline.WithDraining(context.Background(), ch)
	d := pipeline.Draining(ctx)
	require.NotNil(t, d)
	select {
	case <-d:
		t.Fatal("closed before the drain")
	default:
	}
	close(ch)
	<-d
}
