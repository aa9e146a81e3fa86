package parallafka_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// After a revoke timeout the revoked partition's handlers still running get
// their context cancelled (the next owner may be running the same
// messages), while other partitions' handlers keep theirs.
func TestRevokeTimeoutCancelsTheRevokedHandlers(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 4, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithRevokeTimeout(50*time.Millisecond))
	require.NoError(t, err)
	var cancelled [2]atomic.Bool
	var running atomic.Int32
	release := make(chan struct{})
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset != 0 {
			return nil
		}
		running.Add(1)
		select {
		case <-ctx.Done(): // ignores nothing: returns once cancelled
			cancelled[m.Partition].Store(true)
			return ctx.Err()
		case <-release:
			return nil
		}
	})
	eventually(t, func() bool { return running.Load() == 2 })
	src.Revoke(tp(0))
	eventually(t, func() bool { return cancelled[0].Load() })
	assert.False(t, cancelled[1].Load(), "the partition kept has its handler's context")
	assert.Less(t, src.Committed(tp(0)), int64(1), "the cancelled message is not committed")
	close(release)
	eventually(t, func() bool { return src.Committed(tp(1)) == 2 })
	err, _ = stop()
	require.NoError(t, err, "a cancelled handler of a revoked partition is no failure")
}

// A lost assignment cancels its handlers too.
func TestLostCancelsHandlers(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 1, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	var running, cancelled atomic.Bool
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		running.Store(true)
		<-ctx.Done()
		cancelled.Store(true)
		return ctx.Err()
	})
	eventually(t, running.Load)
	src.Lose(tp(0))
	eventually(t, cancelled.Load)
	err, _ = stop()
	require.NoError(t, err)
	assert.Empty(t, src.Commits())
}

// Nothing is committed for a partition before one of its messages finished
// (issue 11, item 7: no redundant commit on assignment). Once one did, the
// commit may stay at the start but carries the offset map (see
// TestOffsetMapCrashRedoesOnlyUnfinished).
func TestNoCommitBeforeAnythingFinished(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 10, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Millisecond))
	require.NoError(t, err)
	gate := make(chan struct{})
	var handled atomic.Int64
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Partition == 0 {
			<-gate // nothing of partition 0 finishes
		}
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 5 && src.Committed(tp(1)) == 5 })
	time.Sleep(20 * time.Millisecond) // 20 commit intervals
	for _, c := range src.Commits() {
		assert.NotEqual(t, tp(0), c.TopicPartition, "partition 0 did not move: nothing to commit")
	}
	close(gate)
	eventually(t, func() bool { return src.Committed(tp(0)) == 5 })
	err, _ = stop()
	require.NoError(t, err)
}

// The rebalance hooks run after the pipeline acted: OnRevoked sees the
// revoked partition's final offset committed already.
func TestRebalanceHooks(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 2, 20, func(i int) int { return i })
	var mu sync.Mutex
	var events []string
	record := func(kind string, check func(pipeline.TopicPartition)) func([]pipeline.TopicPartition) {
		return func(tps []pipeline.TopicPartition) {
			for _, tp := range tps {
				mu.Lock()
				events = append(events, kind+" "+tp.String())
				mu.Unlock()
				if check != nil {
					check(tp)
				}
			}
		}
	}
	var committedAtRevoke atomic.Int64
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithObserver(pipeline.ObserverFuncs{
		PartitionsAssigned: record("assigned", nil),
		PartitionsRevoked:  record("revoked", func(tp pipeline.TopicPartition) { committedAtRevoke.Store(src.Committed(tp)) }),
		PartitionsLost:     record("lost", func(pipeline.TopicPartition) { panic("a hook's panic is recovered") }),
	}.Observer()))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		handled.Add(1)
		return nil
	})
	eventually(t, func() bool { return handled.Load() == 20 })
	src.Revoke(tp(0))
	assert.EqualValues(t, 10, committedAtRevoke.Load(), "OnRevoked runs after the final commit")
	src.Lose(tp(1))
	err, _ = stop()
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"assigned t[0]", "assigned t[1]", "revoked t[0]", "lost t[1]"}, events)
}

// pollLimited is a source whose consumer leaves its group after
// MaxPollInterval without a poll, like kafka.Source.
type pollLimited struct {
	*memsource.Source[string, int]
	limit time.Duration
}

func (s pollLimited) MaxPollInterval() time.Duration { return s.limit }

// A revoke timeout that does not fit in max.poll.interval.ms is refused
// before anything starts (issue 11, item 3).
func TestRevokeTimeoutMustFitMaxPollInterval(t *testing.T) {
	src := pollLimited{memsource.New[string, int](), 7 * time.Second}
	_, err := parallafka.New[string, int](src, parallafka.WithRevokeTimeout(20*time.Second))
	require.ErrorContains(t, err, "max.poll.interval.ms")
	_, err = parallafka.New[string, int](src, parallafka.WithRevokeTimeout(3*time.Second))
	require.NoError(t, err)
}

// Consume with a context cancelled already closes the source like every
// other return (issue 11, item 5), and returns nil: a stop requested before
// the start (issue 26).
func TestConsumeCancelledContextClosesTheSource(t *testing.T) {
	src := &closeCounting{Source: memsource.New[string, int]()}
	p, err := parallafka.New[string, int](src)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, p.Consume(ctx, func(context.Context, *parallafka.Message[string, int]) error { return nil }))
	assert.EqualValues(t, 1, src.closed.Load())
}

type closeCounting struct {
	*memsource.Source[string, int]
	closed atomic.Int32
}

func (s *closeCounting) Close() error { s.closed.Add(1); return s.Source.Close() }

// doubtingSource is an in-memory source whose membership can be put in
// doubt, as package kafka's Source does after every broker was down.
type doubtingSource struct {
	*memsource.Source[string, int]
	doubt atomic.Bool
}

func (s *doubtingSource) Unreachable() error      { return nil }
func (s *doubtingSource) MembershipInDoubt() bool { return s.doubt.Load() }

// Pause stops dispatching and fetching while polling goes on; Resume goes on
// where it stopped. Stats show it. A source whose membership is in doubt
// (the group may have given its partitions to another member) holds the
// same way until the doubt ends, without touching Pause.
func TestPauseAndResume(t *testing.T) {
	for _, hold := range []string{"Pause", "membership in doubt"} {
		t.Run(hold, func(t *testing.T) {
			src := &doubtingSource{Source: memsource.New[string, int]()}
			produce(src.Source, 2, 200, func(i int) int { return i % 7 })
			p, err := parallafka.New[string, int](src, parallafka.WithLogger(quiet), parallafka.WithMaxInFlight(20))
			require.NoError(t, err)
			var handled atomic.Int64
			gate := make(chan struct{}, 1000)
			stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
				<-gate
				handled.Add(1)
				return nil
			})
			for range 50 {
				gate <- struct{}{}
			}
			eventually(t, func() bool { return handled.Load() == 50 })
			byUser := hold == "Pause"
			if byUser {
				p.Pause()
			} else {
				src.doubt.Store(true)
			}
			eventually(t, func() bool {
				s := p.Stats()
				return s.UserPaused == byUser && len(s.Paused) == 2 && src.Paused(tp(0)) && src.Paused(tp(1))
			})
			for range 150 {
				gate <- struct{}{}
			}
			// What was dispatched before the hold may finish; nothing more starts.
			time.Sleep(100 * time.Millisecond)
			atHold := handled.Load()
			time.Sleep(200 * time.Millisecond)
			assert.Equal(t, atHold, handled.Load(), "nothing dispatched while held")
			assert.Less(t, atHold, int64(200))
			if byUser {
				p.Resume()
			} else {
				src.doubt.Store(false)
			}
			eventually(t, func() bool { return handled.Load() == 200 })
			assert.False(t, p.Stats().UserPaused)
			assert.False(t, src.Paused(tp(0)))
			err, _ = stop()
			require.NoError(t, err)
			assert.Equal(t, src.Len(tp(0)), src.Committed(tp(0)))
			assert.Equal(t, src.Len(tp(1)), src.Committed(tp(1)))
		})
	}
}
