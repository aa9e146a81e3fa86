package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// stuckRun consumes src until everything but the stuck message (partition
// 0, offset 0) and the messages queued behind its key finished and a
// periodic commit recorded them, then ends as a crash would: the final
// commit fails (nothing more reaches the broker) and handlers are
// cancelled. It returns the offsets its handlers finished.
func stuckRun(t *testing.T, src *memsource.Source[string, int], behind int, opts ...parallafka.Option) map[int64]bool {
	t.Helper()
	var mu sync.Mutex
	finished := map[int64]bool{}
	opts = append([]parallafka.Option{
		parallafka.WithLogger(quiet), parallafka.WithCommitInterval(10 * time.Millisecond),
		parallafka.WithShutdownMode(parallafka.HardStop),
	}, opts...)
	p, err := parallafka.New(src, opts...)
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset == 0 {
			<-ctx.Done() // stuck until the crash
			return ctx.Err()
		}
		mu.Lock()
		finished[m.Offset] = true
		mu.Unlock()
		return nil
	})
	total := int(memctl.Len(src, tp(0)))
	eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(finished) == total-1-behind })
	awaitCommitsSettled(t, p)
	memctl.SetCommitHook(src, func([]pipeline.Offset) error { return errors.New("crashed") })
	_, _ = stop()
	memctl.SetCommitHook(src, nil)
	require.EqualValues(t, 0, src.Committed(tp(0)), "the stuck message holds the committed offset")
	return finished
}

// awaitCommitsSettled waits until no commit was made for 20 commit
// intervals: the committer commits only what changed, so by then the last
// commit carries everything that finished.
func awaitCommitsSettled[K, V any](t *testing.T, p *parallafka.Parallafka[K, V]) {
	t.Helper()
	last, since := p.Stats().Commits, time.Now()
	eventually(t, func() bool {
		if c := p.Stats().Commits; c != last {
			last, since = c, time.Now()
		}
		return time.Since(since) > 200*time.Millisecond
	})
}

// produceStuck writes n messages to one partition over keys k0..k99: k0's
// messages (every 100th, from offset 0) queue behind the stuck one.
func produceStuck(src *memsource.Source[string, int], n int) (behind int) {
	src.AddTopic(topic, 1)
	for i := range n {
		src.Produce(topic, 0, fmt.Sprintf("k%d", i%100), i)
	}
	return (n+99)/100 - 1
}

// A crash with a stuck message at the front of a partition: the next
// owner redoes only the stuck message and what waited behind it; the
// thousands of messages that finished after it are skipped, as the offset
// map in the last commit's metadata recorded.
func TestOffsetMapCrashRedoesOnlyUnfinished(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 5000
	behind := produceStuck(src, n)
	first := stuckRun(t, src, behind)
	require.NotEmpty(t, memctl.Metadata(src, tp(0)), "the commit carries an offset map")

	var redone atomic.Int64
	var dups atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		redone.Add(1)
		if first[m.Offset] {
			dups.Add(1)
		}
		return nil
	})
	eventually(t, func() bool { return src.Committed(tp(0)) == n })
	err, _ = stop()
	require.NoError(t, err)
	t.Logf("first owner finished %d of %d; the next redid %d (the stuck one + %d behind it), %d of them finished before",
		len(first), n, redone.Load(), behind, dups.Load())
	assert.EqualValues(t, 1+behind, redone.Load(), "only the unfinished are redone")
	assert.Zero(t, dups.Load(), "nothing finished is redone")
	assert.EqualValues(t, n-1-behind, p.Stats().FinishedBefore)
}

// Without the offset map (WithOffsetMapMaxBytes(0)) the same crash redoes
// everything past the stuck message: the map is what saves the work.
func TestOffsetMapOffRedoesEverythingPastTheCommit(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	behind := produceStuck(src, n)
	stuckRun(t, src, behind, parallafka.WithOffsetMapMaxBytes(0))
	require.Empty(t, memctl.Metadata(src, tp(0)))
	var redone atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithOffsetMapMaxBytes(0))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error { redone.Add(1); return nil })
	eventually(t, func() bool { return src.Committed(tp(0)) == n })
	err, _ = stop()
	require.NoError(t, err)
	assert.EqualValues(t, n, redone.Load())
}

// A map too large for its limit is cut to a prefix: more is redone, nothing
// is lost, nothing unfinished is skipped.
func TestOffsetMapTruncatedRedoesMoreLosesNothing(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	src.AddTopic(topic, 1)
	for i := range n {
		src.Produce(topic, 0, fmt.Sprintf("k%d", i%7), i) // k0 (every 7th) is stuck: a fragmented map
	}
	behind := (n+6)/7 - 1
	first := stuckRun(t, src, behind, parallafka.WithOffsetMapMaxBytes(48))
	require.NotEmpty(t, memctl.Metadata(src, tp(0)))
	assert.LessOrEqual(t, len(memctl.Metadata(src, tp(0))), 48)
	var mu sync.Mutex
	second := map[int64]int{}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithOffsetMapMaxBytes(48))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		mu.Lock()
		second[m.Offset]++
		mu.Unlock()
		return nil
	})
	eventually(t, func() bool { return src.Committed(tp(0)) == n })
	err, _ = stop()
	require.NoError(t, err)
	for off := range int64(n) {
		if !first[off] {
			assert.Equal(t, 1, second[off], "unfinished offset %d handled by the next owner", off)
		}
	}
	assert.Greater(t, len(second), 1+behind, "a cut map redoes more")
	assert.Positive(t, p.Stats().FinishedBefore, "the prefix that fit is skipped")
	t.Logf("map limited to 48 bytes: the next owner redid %d (%d unfinished)", len(second), 1+behind)
}

// Metadata written by someone else is ignored: everything past the
// committed offset is handled.
func TestForeignCommitMetadataIsIgnored(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 100, func(i int) int { return i })
	require.NoError(t, src.Commit(context.Background(), []pipeline.Offset{{TopicPartition: tp(0), Offset: 10, Metadata: "some other tool's note"}}))
	var handled atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error { handled.Add(1); return nil })
	eventually(t, func() bool { return src.Committed(tp(0)) == 100 })
	err, _ = stop()
	require.NoError(t, err)
	assert.EqualValues(t, 90, handled.Load())
	assert.Zero(t, p.Stats().FinishedBefore)
}

// A revoke with a stuck message waits only for the running handlers (up to
// the revoke timeout), commits the offset and the map, and drops the
// backlog: the next owner redoes the stuck message and what was queued
// behind it, nothing that finished.
func TestRevokeWithStuckMessageHandsOverTheMap(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	behind := produceStuck(src, n)
	var mu sync.Mutex
	handled := map[int64]int{}
	var stuck atomic.Bool
	stuck.Store(true)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithRevokeTimeout(100*time.Millisecond))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset == 0 && stuck.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		mu.Lock()
		handled[m.Offset]++
		mu.Unlock()
		return nil
	})
	eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(handled) == n-1-behind })
	t0 := time.Now()
	src.Revoke(tp(0))
	took := time.Since(t0)
	assert.EqualValues(t, 0, src.Committed(tp(0)))
	require.NotEmpty(t, memctl.Metadata(src, tp(0)))
	stuck.Store(false)
	src.Assign(tp(0))
	eventually(t, func() bool { return src.Committed(tp(0)) == n })
	err, _ = stop()
	require.NoError(t, err)
	for off, times := range handled {
		assert.Equal(t, 1, times, "offset %d handled %d times", off, times)
	}
	assert.Len(t, handled, n)
	t.Logf("revoke with a stuck handler took %v (timeout 100ms); redone after it: %d", took, 1+behind)
}

// The byte window: with 1 MiB values and a 4 MiB bound, the bytes in
// flight never exceed the bound plus one message, while a message larger
// than the bound still gets through.
func TestMaxInFlightBytesBoundsMemory(t *testing.T) {
	src := memsource.New[string, []byte]()
	src.AddTopic(topic, 2)
	const n, size, limit = 60, 1 << 20, 4 << 20
	for i := range n {
		v := make([]byte, size)
		if i == n-1 {
			v = make([]byte, 2*limit) // larger than the bound
		}
		src.Produce(topic, int32(i%2), fmt.Sprint("k", i), v)
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxInFlightBytes(limit))
	require.NoError(t, err)
	var maxSeen atomic.Int64
	var handled atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, []byte]) error {
			if b := p.Stats().InFlightBytes; b > maxSeen.Load() {
				maxSeen.Store(b)
			}
			time.Sleep(2 * time.Millisecond)
			handled.Add(1)
			return nil
		})
	}()
	eventually(t, func() bool { return handled.Load() == n })
	cancel()
	require.NoError(t, <-done)
	assert.LessOrEqual(t, maxSeen.Load(), int64(limit+2*limit+8), "bound plus one message")
	assert.Positive(t, maxSeen.Load())
	assert.Zero(t, p.Stats().InFlightBytes)
}

// WithCommitEvery commits between intervals; the observer sees every
// commit with its metadata, the final one marked; async commits deliver
// the same offsets.
func TestCommitOptions(t *testing.T) {
	for _, async := range []bool{false, true} {
		t.Run(fmt.Sprint("async=", async), func(t *testing.T) {
			src := memsource.New[string, int]()
			produce(src, 2, 2000, func(i int) int { return i % 50 })
			var mu sync.Mutex
			var events []pipeline.CommitInfo
			opts := []parallafka.Option{
				parallafka.WithLogger(quiet), parallafka.WithCommitInterval(time.Hour), parallafka.WithCommitEvery(100),
				parallafka.WithObserver(pipeline.ObserverFuncs{Committed: func(e pipeline.CommitInfo) { mu.Lock(); events = append(events, e); mu.Unlock() }}.Observer()),
			}
			if async {
				opts = append(opts, parallafka.WithAsyncCommits())
			}
			p, err := parallafka.New(src, opts...)
			require.NoError(t, err)
			var handled atomic.Int64
			stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
				time.Sleep(50 * time.Microsecond)
				handled.Add(1)
				return nil
			})
			eventually(t, func() bool { return handled.Load() == 2000 })
			eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(events) >= 3 })
			err, _ = stop()
			require.NoError(t, err)
			mu.Lock()
			defer mu.Unlock()
			periodic := 0
			for _, e := range events {
				require.NoError(t, e.Err)
				require.NotEmpty(t, e.Offsets)
				if !e.Final {
					periodic++
				}
			}
			assert.GreaterOrEqual(t, periodic, 3, "commits every 100 offsets, not hourly")
			for _, part := range memctl.Partitions(src) {
				assert.EqualValues(t, 1000, src.Committed(part))
			}
			assert.Equal(t, p.Stats().Commits, int64(len(events)))
		})
	}
}

// A revoke with a full 20,000-message window of skewed keys (workload 2 of
// bench/README.md) takes about as long as the longest running handler plus
// a commit: nothing queued is handled inside the rebalance callback. The
// next owner (the same member, assigned again) redoes nothing.
func TestRevokeWithFullWindowIsQuick(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 60_000
	r := rand.New(rand.NewPCG(5, 6))
	produce(src, 12, n, func(int) int { return zipfKey(r, 1.1, 10_000) })
	var seen sync.Map
	var total atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(16))
	require.NoError(t, err)
	stop, _ := start(p, countingHandler(&seen, &total, time.Millisecond))
	eventually(t, func() bool { return p.Stats().InFlight >= 20_000*3/4 /* WithMaxInFlight's default */ })
	hot := tp(0) // key 0, the hottest, is in partition 0
	queued := p.Stats().Queued
	t0 := time.Now()
	src.Revoke(hot)
	took := time.Since(t0)
	src.Assign(hot)
	t.Logf("revoke of the hot key's partition with %d in flight (%d queued behind keys) took %v; handlers take up to 1 ms",
		p.Stats().InFlight, queued, took)
	// The hot key's chain alone is about 9,000 handler calls of 1 ms, which
	// take 15-20 s on a loaded 2-core machine: a bound of its own.
	if !assert.Eventually(t, func() bool { return total.Load() == n }, 2*time.Minute, time.Millisecond) {
		logUnhandled(t, src, &seen)
		t.FailNow()
	}
	err, _ = stop()
	require.NoError(t, err)
	assert.Zero(t, handledTwice(&seen), "redone after the revoke")
}

// Partitions revoked and assigned again in quick succession, while
// messages flow: every message is handled. A poll cycle the poller handed
// over just before a rebalance request must reach the coordinator before
// the request does: taken after a new assignment of its partition, its
// stale messages would start the new claim's window past offsets not yet
// polled again, and those would count as a gap and be committed unhandled.
func TestQuickRevokeAndAssignLoseNothing(t *testing.T) {
	src := memsource.New[string, int]()
	const n, partitions = 30_000, 4
	produce(src, partitions, n, func(i int) int { return i % 50 })
	var seen sync.Map
	var total atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(8))
	require.NoError(t, err)
	stop, _ := start(p, countingHandler(&seen, &total, 50*time.Microsecond))
	r := rand.New(rand.NewPCG(7, 8))
	for total.Load() < n*3/4 {
		part := tp(int32(r.IntN(partitions)))
		src.Revoke(part)
		src.Assign(part)
		time.Sleep(time.Duration(r.IntN(500)) * time.Microsecond)
	}
	if !assert.Eventually(t, func() bool { return total.Load() == n }, time.Minute, time.Millisecond) {
		logUnhandled(t, src, &seen)
	}
	err, _ = stop()
	require.NoError(t, err)
}

// logUnhandled says, per partition, how many messages countingHandler never
// saw, the first of them, and the committed offset.
func logUnhandled(t *testing.T, src *memsource.Source[string, int], seen *sync.Map) {
	t.Helper()
	for _, part := range memctl.Partitions(src) {
		missing, first := 0, int64(-1)
		for off := range memctl.Len(src, part) {
			if _, ok := seen.Load(fmt.Sprintf("%d@%d", part.Partition, off)); !ok {
				if first < 0 {
					first = off
				}
				missing++
			}
		}
		t.Logf("partition %d: %d unhandled, the first at %d; committed %d", part.Partition, missing, first, src.Committed(part))
	}
}
