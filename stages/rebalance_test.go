package stages_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
)

// revokeAsync revokes partitions from another goroutine (the source
// delivers the revoke from inside the poll stage's Poll) and returns a
// channel closed once the revoke returned.
func revokeAsync(r *pollRun, tps ...pipeline.TopicPartition) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.src.Revoke(tps...)
	}()
	return done
}

// byPartition receives n messages and groups them by partition.
func byPartition(t *testing.T, r *pollRun, n int) map[int32][]*M {
	t.Helper()
	got := map[int32][]*M{}
	for range n {
		m := recv(t, r.out)
		got[m.Partition] = append(got[m.Partition], m)
	}
	return got
}

func TestRebalancerRevokeWaitsForHandlersThenCommits(t *testing.T) {
	r := newPollRun(t, 2, 100, false)
	r.produce(0, 3)
	r.produce(1, 1)
	r.start(t)
	got := byPartition(t, r, 4)
	m0, m1, m2 := got[0][0], got[0][1], got[0][2]
	claim := m0.Claim()
	require.True(t, pipeline.Start(m0))
	require.True(t, pipeline.Start(m1))
	pipeline.Finish(m0)

	revoked := revokeAsync(r, tp(0))
	waitForGoroutine(t, "pipeline.WaitIdle", "(*Rebalancer[...]).PartitionsRevoked")
	select {
	case <-revoked:
		t.Fatal("the revoke returned while a started handler still ran")
	default:
	}
	require.True(t, claim.Stopping())
	require.Nil(t, r.env.Tracker.Claim(tp(0)))
	require.False(t, pipeline.Start(m2), "nothing of a revoked partition starts")

	pipeline.Finish(m1) // the handler finishes within the revoke timeout
	select {
	case <-revoked:
		t.Fatal("the revoke returned while m2 was neither finished nor dropped")
	case <-time.After(20 * time.Millisecond):
	}
	pipeline.Abandon(m2) // dropped, as the router drops what no handler took
	recv(t, revoked)
	require.Equal(t, int64(2), r.src.Committed(tp(0)), "committed before the revoke returned")

	// m2 was dropped; finishing it late, after the freeze, is a no-op and
	// must not move the commit.
	pipeline.Finish(m2)
	off, moved := claim.Committable()
	require.False(t, moved)
	require.Equal(t, int64(2), off.Offset)

	// Other partitions go on.
	r.produce(1, 1)
	m := recv(t, r.out)
	require.Equal(t, tp(1), m.TopicPartition())
	pipeline.Finish(m)
	pipeline.Finish(got[1][0])

	// Assigned again: a fresh claim, from the committed offset.
	r.src.Assign(tp(0))
	again := recv(t, r.out)
	require.Equal(t, tp(0), again.TopicPartition())
	require.Equal(t, int64(2), again.Offset, "redelivered from the committed offset")
	require.NotSame(t, claim, again.Claim())
	pipeline.Finish(again)
	require.Zero(t, r.env.Tracker.InFlight())
}

func TestRebalancerRevokeTimeout(t *testing.T) {
	r := newPollRun(t, 1, 100, false)
	r.reb.RevokeTimeout = 50 * time.Millisecond
	r.produce(0, 2)
	r.start(t)
	got := byPartition(t, r, 2)
	m0, m1 := got[0][0], got[0][1]
	require.True(t, pipeline.Start(m0))
	require.True(t, pipeline.Start(m1))
	pipeline.Finish(m1)

	start := time.Now()
	recv(t, revokeAsync(r, tp(0))) // m0 hangs: the revoke gives up waiting
	require.GreaterOrEqual(t, time.Since(start), r.reb.RevokeTimeout)
	require.Equal(t, int64(0), r.src.Committed(tp(0)), "m0 did not finish: nothing past it")

	pipeline.Finish(m0) // too late: the partition may be another member's
	off, moved := m0.Claim().Committable()
	require.False(t, moved)
	require.Equal(t, int64(0), off.Offset)
	r.reb.Committer.CommitFinal([]*pipeline.Claim{m0.Claim()})
	require.Equal(t, []int64{0}, commitsOf(r.src.Source, 0))
}

func TestRebalancerLostCommitsNothing(t *testing.T) {
	r := newPollRun(t, 1, 100, false)
	r.produce(0, 2)
	r.start(t)
	got := byPartition(t, r, 2)
	m0, m1 := got[0][0], got[0][1]
	require.True(t, pipeline.Start(m1))
	pipeline.Finish(m0)

	r.src.Lose(tp(0)) // returns at once: a lost partition waits for nothing
	require.Nil(t, r.env.Tracker.Claim(tp(0)))
	require.True(t, m0.Claim().Stopping())
	pipeline.Finish(m1)
	_, moved := m1.Claim().Committable()
	require.True(t, moved, "offset 2 was never committed ...")
	require.Equal(t, int64(-1), r.src.Committed(tp(0)), "... and a lost partition commits nothing")
	off, _ := m1.Claim().Committable()
	require.Equal(t, int64(1), off.Offset, "frozen at the loss: m1 finished after it")
}

func TestRebalancerPausesPartitionsAssignedAtTheLimit(t *testing.T) {
	r := newPollRun(t, 2, 1, false)
	r.produce(0, 1)
	r.start(t)
	recv(t, revokeAsync(r, tp(1)))
	m0 := recv(t, r.out)
	eventually(t, func() bool { return r.src.Paused(tp(0)) }, "at the limit of 1")

	r.src.Assign(tp(1))
	require.True(t, r.src.Paused(tp(1)), "assigned while at the limit: paused at once")
	require.ElementsMatch(t, []pipeline.TopicPartition{tp(0), tp(1)}, r.env.Tracker.Paused())

	pipeline.Finish(m0) // nothing more to poll: both stay resumed
	eventually(t, func() bool { return !r.src.Paused(tp(0)) && !r.src.Paused(tp(1)) }, "resumed together")
	require.Empty(t, r.env.Tracker.Paused())
}

func TestRebalancerDropsPrefetchedMessagesOfRevokedPartitions(t *testing.T) {
	r := newPollRun(t, 2, 1, true)
	r.produce(0, 3)
	r.start(t)
	m0 := recv(t, r.out)
	// The source ignores Pause: the two later messages are held by the poll
	// stage, untracked, until there is room.
	eventually(t, func() bool {
		r.src.mu.Lock()
		defer r.src.mu.Unlock()
		return r.src.delivered == 3
	})
	revoked := revokeAsync(r, tp(0))
	// The revoke waits for every tracked message of the partition: m0, which
	// no handler took here, is dropped as the router would drop it.
	pipeline.Abandon(m0)
	recv(t, revoked)
	require.Equal(t, int64(0), r.src.Committed(tp(0)))
	r.produce(1, 1)
	m := recv(t, r.out)
	require.Equal(t, tp(1), m.TopicPartition(), "the held messages of partition 0 were dropped")
	pipeline.Finish(m)
	require.EqualValues(t, 2, r.env.Tracker.Polled())
}
