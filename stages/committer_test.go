package stages_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

func newCommitter(t *testing.T, partitions int, interval time.Duration) (*stages.Committer[string, string], *memsource.Source[string, string]) {
	t.Helper()
	src := memsource.New[string, string]()
	src.AddTopic(topic, partitions)
	env, _ := newEnv(src)
	return &stages.Committer[string, string]{Env: env, Interval: interval, FinalTimeout: wait}, src
}

// runCommitter runs c.Run; closing the returned channel is the collector
// finishing, and the returned function waits for Run to return.
func runCommitter(t *testing.T, ctx context.Context, c *stages.Committer[string, string]) (collected chan struct{}, returned func()) {
	collected = make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, collected) }()
	var once sync.Once
	returned = func() {
		once.Do(func() {
			select {
			case <-collected:
			default:
				close(collected)
			}
			require.NoError(t, recv(t, done))
		})
	}
	t.Cleanup(returned)
	return collected, returned
}

// commitsOf returns the offsets committed for partition p, in order.
func commitsOf(src *memsource.Source[string, string], p int32) []int64 {
	var offs []int64
	for _, o := range src.Commits() {
		if o.TopicPartition == tp(p) {
			offs = append(offs, o.Offset)
		}
	}
	return offs
}

func TestCommitterCommitsOnlyPartitionsThatMoved(t *testing.T) {
	c, src := newCommitter(t, 3, time.Hour)
	env := c.Env
	m0 := newMsg(env, 0, 0, k("A"))
	m1 := newMsg(env, 1, 0, k("A"))
	newMsg(env, 2, 5, k("A")) // never finishes
	// A claim that never committed commits its first polled offset; after
	// that, only movement counts.
	c.CommitFinal(env.Tracker.Claims())
	require.Equal(t, []int64{0}, commitsOf(src, 0))
	require.Equal(t, []int64{0}, commitsOf(src, 1))
	require.Equal(t, []int64{5}, commitsOf(src, 2))
	require.EqualValues(t, 1, env.Counters.Commits.Load(), "one call for all partitions")

	pipeline.Finish(m0)
	c.CommitFinal(env.Tracker.Claims())
	require.Equal(t, []int64{0, 1}, commitsOf(src, 0))
	require.Equal(t, []int64{0}, commitsOf(src, 1), "partition 1 did not move")
	require.Equal(t, []int64{5}, commitsOf(src, 2))
	require.EqualValues(t, 2, env.Counters.Commits.Load())

	c.CommitFinal(env.Tracker.Claims())
	require.EqualValues(t, 2, env.Counters.Commits.Load(), "nothing moved: no call at all")

	pipeline.Finish(m1)
	c.CommitFinal(env.Tracker.Claims())
	require.Equal(t, []int64{0, 1}, commitsOf(src, 0))
	require.Equal(t, []int64{0, 1}, commitsOf(src, 1))
	require.Equal(t, int64(1), env.Tracker.Claim(tp(1)).LastCommitted())
	require.Zero(t, env.Counters.CommitErrors.Load())
}

func TestCommitterNeverCommitsPastAnUnfinishedOffset(t *testing.T) {
	c, src := newCommitter(t, 1, time.Hour)
	env := c.Env
	ms := make([]*M, 5)
	for i := range ms {
		ms[i] = newMsg(env, 0, int64(10+2*i), k("A")) // 10 12 14 16 18: gaps
	}
	c.CommitFinal(env.Tracker.Claims())
	pipeline.Finish(ms[1])
	pipeline.Finish(ms[3])
	c.CommitFinal(env.Tracker.Claims())
	require.Equal(t, []int64{10}, commitsOf(src, 0), "10 holds everything back")
	pipeline.Finish(ms[0])
	c.CommitFinal(env.Tracker.Claims())
	pipeline.Abandon(ms[2])
	c.CommitFinal(env.Tracker.Claims())
	pipeline.Finish(ms[4])
	c.CommitFinal(env.Tracker.Claims())
	require.Equal(t, []int64{10, 14}, commitsOf(src, 0), "14 was abandoned: it is delivered again")
}

// TestCommitterUnderConcurrentFinishes: handlers finish in random order
// while the committer commits every millisecond; every commit, checked the
// moment the source receives it, covers finished offsets only, and commits
// never go backwards.
func TestCommitterUnderConcurrentFinishes(t *testing.T) {
	const partitions, perPartition = 3, 400
	c, src := newCommitter(t, partitions, time.Millisecond)
	env := c.Env
	var mu sync.Mutex
	finished := make([]map[int64]bool, partitions)
	for p := range finished {
		finished[p] = map[int64]bool{}
	}
	var problems []string
	src.SetCommitHook(func(offs []pipeline.Offset) error {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range offs {
			for off := int64(0); off < o.Offset; off++ {
				if !finished[o.Partition][off] {
					problems = append(problems, o.String()+" committed before an unfinished offset")
					break
				}
			}
		}
		return nil
	})
	var all []*M
	for p := range int32(partitions) {
		for i := range int64(perPartition) {
			all = append(all, newMsg(env, p, i, k("A")))
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	_, returned := runCommitter(t, context.Background(), c)
	work := make(chan *M)
	var workers sync.WaitGroup
	for range 4 {
		workers.Go(func() {
			for m := range work {
				mu.Lock()
				finished[m.Partition][m.Offset] = true
				mu.Unlock()
				pipeline.Finish(m)
				if m.Offset%50 == 0 {
					runtime.Gosched()
				}
			}
		})
	}
	for _, m := range all {
		work <- m
	}
	close(work)
	workers.Wait()
	returned() // the final commit
	for p := range int32(partitions) {
		offs := commitsOf(src, p)
		require.NotEmpty(t, offs)
		require.True(t, slices.IsSorted(offs), "commits of partition %d went backwards: %v", p, offs)
		require.Equal(t, int64(perPartition), offs[len(offs)-1])
		require.Equal(t, int64(perPartition), src.Committed(tp(p)))
	}
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, problems)
}

func TestCommitterRetriesFailedCommitsWithBackoff(t *testing.T) {
	const interval = 250 * time.Millisecond
	c, src := newCommitter(t, 2, interval)
	env := c.Env
	refused := errors.New("coordinator not available")
	var mu sync.Mutex
	var calls []time.Time
	var seen [][]pipeline.Offset
	src.SetCommitHook(func(offs []pipeline.Offset) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		seen = append(seen, offs)
		if len(calls) <= 3 {
			return refused
		}
		return nil
	})
	a := newMsg(env, 0, 0, k("A"))
	b := newMsg(env, 0, 1, k("B"))
	newMsg(env, 1, 0, k("C")) // never finishes
	pipeline.Finish(a)
	start := time.Now()
	_, returned := runCommitter(t, context.Background(), c)
	eventually(t, func() bool { return env.Counters.CommitErrors.Load() == 2 })
	// b finishes while commits fail: the retry recomputes the offsets.
	pipeline.Finish(b)
	eventually(t, func() bool { return src.Committed(tp(0)) == 2 })
	returned()

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, calls, 4, "three failures, then the commit")
	require.EqualValues(t, 3, env.Counters.CommitErrors.Load())
	require.EqualValues(t, 1, env.Counters.Commits.Load())
	// The backoff grows (100 ms, 200 ms), capped by the interval.
	require.GreaterOrEqual(t, calls[0].Sub(start), interval)
	require.GreaterOrEqual(t, calls[1].Sub(calls[0]), 100*time.Millisecond)
	require.GreaterOrEqual(t, calls[2].Sub(calls[1]), 200*time.Millisecond)
	require.GreaterOrEqual(t, calls[3].Sub(calls[2]), interval)
	// Partition 1 never moved past its first offset after the first success.
	require.Equal(t, []int64{0}, commitsOf(src, 1))
	require.Equal(t, []int64{2}, commitsOf(src, 0), "the failed ones recorded nothing")
	for _, offs := range seen {
		for _, o := range offs {
			if o.Partition == 0 {
				require.LessOrEqual(t, o.Offset, int64(2))
			}
		}
	}
}

// A periodic commit refused because the partitions are not owned (a
// rebalance under way) is not retried sooner than the interval, and is not
// logged as a failure being retried.
func TestCommitterDoesNotRetryNotOwnedCommits(t *testing.T) {
	const interval = 150 * time.Millisecond
	c, src := newCommitter(t, 1, interval)
	var logs bytes.Buffer
	c.Env.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var mu sync.Mutex
	var calls []time.Time
	src.SetCommitHook(func([]pipeline.Offset) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		if len(calls) <= 2 {
			return fmt.Errorf("generation moved on: %w", pipeline.ErrNotOwned)
		}
		return nil
	})
	pipeline.Finish(newMsg(c.Env, 0, 0, k("A")))
	_, returned := runCommitter(t, context.Background(), c)
	eventually(t, func() bool { return src.Committed(tp(0)) == 1 })
	returned()

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, calls, 3)
	require.GreaterOrEqual(t, calls[1].Sub(calls[0]), interval, "no backoff retry")
	require.GreaterOrEqual(t, calls[2].Sub(calls[1]), interval)
	require.Contains(t, logs.String(), "not owned")
	require.NotContains(t, logs.String(), "retrying")
}

func TestCommitFinal(t *testing.T) {
	t.Run("retries until it succeeds", func(t *testing.T) {
		c, src := newCommitter(t, 1, time.Hour)
		fails := 2
		src.SetCommitHook(func([]pipeline.Offset) error {
			if fails > 0 {
				fails--
				return errors.New("refused")
			}
			return nil
		})
		m := newMsg(c.Env, 0, 0, k("A"))
		pipeline.Finish(m)
		c.CommitFinal(c.Env.Tracker.Claims())
		require.Equal(t, int64(1), src.Committed(tp(0)))
		require.EqualValues(t, 2, c.Env.Counters.CommitErrors.Load())
	})
	t.Run("gives up after FinalTimeout", func(t *testing.T) {
		c, src := newCommitter(t, 1, time.Hour)
		c.FinalTimeout = 200 * time.Millisecond
		src.SetCommitHook(func([]pipeline.Offset) error { return errors.New("refused") })
		pipeline.Finish(newMsg(c.Env, 0, 0, k("A")))
		start := time.Now()
		c.CommitFinal(c.Env.Tracker.Claims())
		require.GreaterOrEqual(t, time.Since(start), c.FinalTimeout)
		require.GreaterOrEqual(t, c.Env.Counters.CommitErrors.Load(), int64(2))
		require.Equal(t, int64(-1), src.Committed(tp(0)))
		require.Equal(t, int64(-1), c.Env.Tracker.Claim(tp(0)).LastCommitted())
	})
}

func TestCommitterRun(t *testing.T) {
	t.Run("commits on the interval", func(t *testing.T) {
		c, src := newCommitter(t, 1, 2*time.Millisecond)
		m0, m1 := newMsg(c.Env, 0, 0, k("A")), newMsg(c.Env, 0, 1, k("A"))
		runCommitter(t, context.Background(), c)
		pipeline.Finish(m0)
		eventually(t, func() bool { return src.Committed(tp(0)) == 1 })
		pipeline.Finish(m1)
		eventually(t, func() bool { return src.Committed(tp(0)) == 2 })
	})
	t.Run("final commit once the collector finished", func(t *testing.T) {
		c, src := newCommitter(t, 1, time.Hour)
		m := newMsg(c.Env, 0, 0, k("A"))
		_, returned := runCommitter(t, context.Background(), c)
		pipeline.Finish(m)
		returned()
		require.Equal(t, int64(1), src.Committed(tp(0)))
	})
	t.Run("a hard stop waits for the collector, then commits what finished", func(t *testing.T) {
		c, src := newCommitter(t, 1, time.Hour)
		m0, m1 := newMsg(c.Env, 0, 0, k("A")), newMsg(c.Env, 0, 1, k("A"))
		ctx, cancel := context.WithCancel(context.Background())
		collected, returned := runCommitter(t, ctx, c)
		pipeline.Finish(m0)
		cancel()
		// A handler finishing during the hard stop still counts.
		pipeline.Finish(m1)
		close(collected)
		returned()
		require.Equal(t, int64(2), src.Committed(tp(0)))
	})
}

// waitForGoroutine waits until one goroutine's stack holds every one of
// parts (say, a function blocked on a mutex), which no channel can tell.
func waitForGoroutine(t *testing.T, parts ...string) {
	t.Helper()
	eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		for g := range bytes.SplitSeq(buf[:runtime.Stack(buf, true)], []byte("\n\n")) {
			all := true
			for _, p := range parts {
				all = all && bytes.Contains(g, []byte(p))
			}
			if all {
				return true
			}
		}
		return false
	}, "no goroutine in", parts)
}

// TestCommitterSkipsPartitionsLostWhileItWaited: a periodic commit lists the
// assigned partitions, then waits for the commit lock (held here by a slow
// final commit of another partition). A partition lost meanwhile must not be
// committed once the lock is free: PartitionsLost already returned, and the
// partition may be another member's by now (whose commits this one could
// move backwards).
func TestCommitterSkipsPartitionsLostWhileItWaited(t *testing.T) {
	c, src := newCommitter(t, 2, time.Millisecond)
	env := c.Env
	pipeline.Finish(newMsg(env, 0, 0, k("A")))
	pipeline.Finish(newMsg(env, 1, 0, k("B")))
	lost, other := env.Tracker.Claim(tp(0)), env.Tracker.Claim(tp(1))

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	src.SetCommitHook(func(offs []pipeline.Offset) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return nil
	})
	finalDone := make(chan struct{})
	go func() {
		defer close(finalDone)
		c.CommitFinal([]*pipeline.Claim{other}) // holds the commit lock in the hook
	}()
	recv(t, entered)
	_, returned := runCommitter(t, context.Background(), c)
	// The periodic commit listed both partitions and waits for the lock.
	waitForGoroutine(t, "(*Committer[...]).Run", "Mutex).Lock")

	for _, claim := range env.Tracker.Stop([]pipeline.TopicPartition{tp(0)}) {
		claim.Freeze() // what PartitionsLost does
	}
	close(release)
	recv(t, finalDone)
	returned()
	assert.Empty(t, commitsOf(src, 0), "a lost partition was committed after PartitionsLost returned")
	assert.Equal(t, []int64{1}, commitsOf(src, 1))
	assert.Equal(t, int64(-1), lost.LastCommitted())
}
