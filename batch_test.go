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
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// batchChecker plays a batch handler and an AfterHandle stage that records
// every message that finishes, and checks the batch properties as it goes.
type batchChecker struct {
	t          *testing.T
	ordering   parallafka.Ordering
	maxBatch   int
	chains     map[string][]int64 // partition/key (or partition) → its offsets, in order
	mu         sync.Mutex
	finished   map[string]int // partition/key → messages of it finished
	finishedAt map[int32]map[int64]int
	active     map[string]bool
	errs       []string
	running    atomic.Int64
	maxRunning atomic.Int64
	batches    atomic.Int64
	done       atomic.Int64
}

func newBatchChecker(t *testing.T, ordering parallafka.Ordering, maxBatch int) *batchChecker {
	c := &batchChecker{t: t, ordering: ordering, maxBatch: maxBatch, chains: map[string][]int64{},
		finished: map[string]int{}, finishedAt: map[int32]map[int64]int{}, active: map[string]bool{}}
	return c
}

func (c *batchChecker) chain(msg *parallafka.Message[string, int]) string {
	if c.ordering == parallafka.OrderByPartition {
		return fmt.Sprintf("%d", msg.Partition)
	}
	return fmt.Sprintf("%d/%s", msg.Partition, msg.Key)
}

func (c *batchChecker) produced(partition int32, key string, offset int64) {
	k := fmt.Sprintf("%d/%s", partition, key)
	if c.ordering == parallafka.OrderByPartition {
		k = fmt.Sprintf("%d", partition)
	}
	c.chains[k] = append(c.chains[k], offset)
}

func (c *batchChecker) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

// begin checks a batch as its handler starts: within limits, each chain's
// messages consecutive and the next unfinished ones, no chain in another
// running batch.
func (c *batchChecker) begin(batch []*parallafka.Message[string, int]) []string {
	n := c.running.Add(1)
	for m := c.maxRunning.Load(); n > m && !c.maxRunning.CompareAndSwap(m, n); m = c.maxRunning.Load() {
	}
	c.batches.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(batch) == 0 || len(batch) > c.maxBatch {
		c.fail("batch of %d messages (max %d)", len(batch), c.maxBatch)
	}
	if c.ordering == parallafka.Unordered {
		return nil
	}
	pos := map[string]int{}
	var chains []string
	for _, msg := range batch {
		k := c.chain(msg)
		i, seen := pos[k]
		if !seen {
			if c.active[k] {
				c.fail("%s in two running batches", k)
			}
			c.active[k] = true
			chains = append(chains, k)
			i = c.finished[k]
		}
		if want := c.chains[k]; i >= len(want) || want[i] != msg.Offset {
			c.fail("%s: offset %d handled out of order (finished %d of %d)", k, msg.Offset, c.finished[k], len(want))
		}
		pos[k] = i + 1
	}
	return chains
}

func (c *batchChecker) end(chains []string) {
	c.running.Add(-1)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range chains {
		c.active[k] = false
	}
}

// record is an AfterHandle stage: a message that leaves it neither failed
// nor marked for retry finishes.
func (c *batchChecker) record(ctx context.Context, in <-chan *parallafka.Message[string, int], out chan<- *parallafka.Message[string, int]) error {
	for msg := range in {
		if msg.Err == nil && !msg.RetryRequested() {
			c.mu.Lock()
			k := c.chain(msg)
			if c.ordering != parallafka.Unordered {
				if i := c.finished[k]; i >= len(c.chains[k]) || c.chains[k][i] != msg.Offset {
					c.fail("%s: offset %d finished out of order", k, msg.Offset)
				}
				c.finished[k]++
			}
			if c.finishedAt[msg.Partition] == nil {
				c.finishedAt[msg.Partition] = map[int64]int{}
			}
			c.finishedAt[msg.Partition][msg.Offset]++
			if c.finishedAt[msg.Partition][msg.Offset] > 1 {
				c.fail("%s finished twice", msg)
			}
			c.mu.Unlock()
			c.done.Add(1)
		}
		select {
		case out <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// commitHook fails a commit past an unfinished message.
func (c *batchChecker) commitHook(offsets []pipeline.Offset) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, off := range offsets {
		for o := int64(0); o < off.Offset; o++ {
			if c.finishedAt[off.Partition][o] == 0 {
				c.fail("commit of %v@%d past unfinished offset %d", off.TopicPartition, off.Offset, o)
				break
			}
		}
	}
	return nil
}

// TestBatchProperties runs ConsumeBatch over random workloads: keys uniform
// and skewed, every ordering mode, random batch handler delays and partial
// failures (retried until they succeed). Every message finishes exactly
// once; per key (per partition in partition mode) messages are handled in
// offset order, across batches and retries; no key is in two running
// batches; commits never pass an unfinished message; batches, batches in
// flight and messages in flight stay within their limits.
func TestBatchProperties(t *testing.T) {
	type workload struct {
		name        string
		ordering    parallafka.Ordering
		concurrency int
		maxBatch    int
		maxInFlight int
		linger      time.Duration
		failures    bool
		keys        func(r *rand.Rand) int
	}
	uniform := func(r *rand.Rand) int { return r.IntN(200) }
	zipf := func(r *rand.Rand) int { return zipfKey(r, 1.1, 500) }
	var cases []workload
	for _, failures := range []bool{false, true} {
		cases = append(cases,
			workload{"key/uniform/c4/b50", parallafka.OrderByKey, 4, 50, 0, time.Millisecond, failures, uniform},
			workload{"key/zipf/c8/b100", parallafka.OrderByKey, 8, 100, 400, 0, failures, zipf},
			workload{"key/zipf/c2/b7", parallafka.OrderByKey, 2, 7, 30, 2 * time.Millisecond, failures, zipf},
			workload{"key/one-key/c4/b20", parallafka.OrderByKey, 4, 20, 0, 0, failures, func(*rand.Rand) int { return 7 }},
			workload{"partition/c4/b30", parallafka.OrderByPartition, 4, 30, 100, time.Millisecond, failures, zipf},
			workload{"unordered/c8/b25", parallafka.Unordered, 8, 25, 100, 0, failures, zipf},
		)
	}
	for _, w := range cases {
		name := w.name
		if w.failures {
			name += "/failures"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			seed := rand.Uint64()
			r := rand.New(rand.NewPCG(seed, 0))
			t.Logf("seed %d", seed)
			const n, partitions = 3000, 3
			src := memsource.New[string, int]()
			c := newBatchChecker(t, w.ordering, w.maxBatch)
			src.AddTopic(topic, partitions)
			for i := range n {
				k := w.keys(r)
				part := int32(k % partitions)
				key := fmt.Sprintf("k%d", k)
				c.produced(part, key, src.Produce(topic, part, key, i))
			}
			src.SetCommitHook(c.commitHook)
			limit := 20_000 /* WithMaxInFlight's default */
			opts := []parallafka.Option{
				parallafka.WithMaxConcurrency(w.concurrency), parallafka.WithOrdering(w.ordering),
				parallafka.WithMaxBatchMessages(w.maxBatch), parallafka.WithBatchLinger(w.linger),
				parallafka.WithLogger(quiet), parallafka.WithCommitInterval(5 * time.Millisecond),
				parallafka.WithAfterHandle("retry", must(stages.Retry[string, int](stages.RetryConfig{
					MaxAttempts: 1000, InitialBackoff: 100 * time.Microsecond, MaxBackoff: time.Millisecond,
				}))),
				parallafka.WithAfterHandle("record", c.record),
			}
			if w.maxInFlight > 0 {
				limit = w.maxInFlight
				opts = append(opts, parallafka.WithMaxInFlight(w.maxInFlight))
			}
			p, err := parallafka.New(src, opts...)
			require.NoError(t, err)
			var overLimit atomic.Int64
			var hmu sync.Mutex
			hr := rand.New(rand.NewPCG(seed, 1))
			handler := func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
				chains := c.begin(batch)
				defer c.end(chains)
				if in := p.Stats().InFlight; in > int64(limit) {
					overLimit.Store(in)
				}
				hmu.Lock()
				delay := time.Duration(hr.IntN(300)) * time.Microsecond
				dice := hr.Float64()
				var failed parallafka.BatchError[string, int]
				if w.failures {
					for _, msg := range batch {
						if hr.Float64() < 0.05 {
							failed.Fail(msg, errors.New("flaky row"))
						}
					}
				}
				hmu.Unlock()
				time.Sleep(delay)
				switch {
				case w.failures && dice < 0.02:
					return errors.New("the whole batch failed")
				case w.failures && dice < 0.03:
					panic("batch handler panicked")
				}
				return failed.Err()
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.ConsumeBatch(ctx, handler) }()
			deadline := time.After(60 * time.Second)
		wait:
			for c.done.Load() < n {
				select {
				case err := <-done:
					t.Fatalf("ConsumeBatch returned early: %v", err)
				case <-deadline:
					break wait
				case <-time.After(2 * time.Millisecond):
				}
			}
			cancel()
			require.NoError(t, <-done)
			assert.EqualValues(t, n, c.done.Load(), "finished")
			c.mu.Lock()
			assert.Empty(t, c.errs)
			c.mu.Unlock()
			assert.Zero(t, overLimit.Load(), "in flight above the limit")
			assert.LessOrEqual(t, c.maxRunning.Load(), int64(w.concurrency), "batches in flight")
			for _, part := range src.Partitions() {
				if src.Len(part) > 0 {
					assert.Equal(t, src.Len(part), src.Committed(part), "final commit of %v", part)
				}
			}
			st := p.Stats()
			assert.Equal(t, c.batches.Load(), st.Batches)
			assert.Greater(t, st.MeanBatchSize, 1.0)
			t.Logf("%d batches, mean %.1f messages, %d retried, %d failed attempts", st.Batches, st.MeanBatchSize, st.Retried, st.Failed)
		})
	}
}

// countingBatch counts every message handled, and how often.
func countingBatch(seen *sync.Map, total *atomic.Int64, delay time.Duration) parallafka.BatchHandler[string, int] {
	return func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
		time.Sleep(delay)
		for _, msg := range batch {
			n, _ := seen.LoadOrStore(msg.String(), new(atomic.Int64))
			if n.(*atomic.Int64).Add(1) == 1 {
				total.Add(1)
			}
		}
		return nil
	}
}

func startBatch(p *parallafka.Parallafka[string, int], h parallafka.BatchHandler[string, int]) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- p.ConsumeBatch(ctx, h) }()
	return func() error { cancel(); return <-ch }
}

// Revokes while batches run hand partitions over without duplicates: the
// revoke waits for the running batches, commits, and the next owner (the
// same member, assigned again) goes on from there.
func TestBatchRevokeHandsOverWithoutDuplicates(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 6000
	r := rand.New(rand.NewPCG(3, 4))
	produce(src, 3, n, func(int) int { return zipfKey(r, 1.2, 100) })
	var seen sync.Map
	var total atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
		parallafka.WithMaxBatchMessages(50), parallafka.WithMaxInFlight(400))
	require.NoError(t, err)
	stop := startBatch(p, countingBatch(&seen, &total, 2*time.Millisecond))
	for round := int64(1); total.Load() < n; round++ {
		target := min(int64(n), round*700)
		eventually(t, func() bool { return total.Load() >= target })
		part := tp(int32(round % 3))
		src.Revoke(part)
		src.Assign(part)
	}
	require.NoError(t, stop())
	assert.Zero(t, handledTwice(&seen), "redone after a revoke")
	for _, part := range src.Partitions() {
		assert.Equal(t, src.Len(part), src.Committed(part))
	}
	assert.Greater(t, p.Stats().MeanBatchSize, 1.0)
}

// A revoke gives a batch that outlives the revoke timeout up: its context
// is cancelled, what finished is committed, and a batch spanning the
// revoked partition and another one hands the other one's messages back
// to be handled again (nothing of it is lost).
func TestBatchRevokeTimeoutCancelsTheBatch(t *testing.T) {
	src := memsource.New[string, int]()
	src.AddTopic(topic, 2)
	for i := range 20 {
		src.Produce(topic, int32(i%2), fmt.Sprintf("k%d", i), i)
	}
	var cancelled atomic.Int64
	var handled sync.Map
	var total atomic.Int64
	first := make(chan struct{})
	var once sync.Once
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1),
		parallafka.WithMaxBatchMessages(100), parallafka.WithBatchLinger(20*time.Millisecond),
		parallafka.WithRevokeTimeout(50*time.Millisecond))
	require.NoError(t, err)
	stop := startBatch(p, func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
		hangs := false
		if batch[0].Partition != batch[len(batch)-1].Partition { // a batch of both partitions
			once.Do(func() { hangs = true; close(first) })
		}
		if hangs {
			<-ctx.Done() // the first batch, of both partitions, hangs until cancelled
			cancelled.Add(1)
			return ctx.Err()
		}
		for _, msg := range batch {
			if _, dup := handled.LoadOrStore(msg.String(), true); !dup {
				total.Add(1)
			}
		}
		return nil
	})
	select {
	case <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("no batch of both partitions")
	}
	src.Revoke(tp(0))
	eventually(t, func() bool { return cancelled.Load() == 1 }) // the batch was cancelled
	assert.EqualValues(t, -1, src.Committed(tp(0)), "nothing of p0 finished")
	eventually(t, func() bool { return total.Load() == 10 && src.Committed(tp(1)) == 10 })
	require.NoError(t, stop())
}

// The error policy sees each failed message of a batch; Stop leaves it
// uncommitted, and the later messages of its key do not finish.
func TestBatchErrorPolicyStop(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 30, func(i int) int { return i % 3 })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1), parallafka.WithBatchLinger(0))
	require.NoError(t, err)
	err = p.ConsumeBatch(context.Background(), func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
		var failed parallafka.BatchError[string, int]
		for _, msg := range batch {
			if msg.Offset == 4 {
				failed.Fail(msg, errors.New("constraint violated"))
			}
		}
		return failed.Err()
	})
	var me *pipeline.MessageError
	require.ErrorAs(t, err, &me)
	assert.EqualValues(t, 4, me.Offset)
	assert.EqualValues(t, 4, src.Committed(tp(0)), "stops just before the failed message")
}

func TestConsumeBatchMisuse(t *testing.T) {
	ok := func(context.Context, []*parallafka.Message[string, int]) error { return nil }
	p, err := parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet))
	require.NoError(t, err)
	require.ErrorIs(t, p.ConsumeBatch(context.Background(), nil), parallafka.ErrNilHandler)
	require.ErrorIs(t, p.ConsumeBatch(context.Background(), ok), parallafka.ErrConsumed, "a nil handler consumes the Parallafka too")
	p, err = parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, p.ConsumeBatch(ctx, ok), "a requested stop, before the start")
	require.ErrorIs(t, p.ConsumeBatch(context.Background(), ok), parallafka.ErrConsumed)

	p, err = parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet),
		parallafka.WithMiddleware(func(h parallafka.Handler[string, int]) parallafka.Handler[string, int] { return h }))
	require.NoError(t, err)
	require.ErrorContains(t, p.ConsumeBatch(context.Background(), ok), "WithMiddleware wraps a single-message handler")

	p, err = parallafka.New(memsource.New[string, int](), parallafka.WithLogger(quiet),
		parallafka.WithBatchMiddleware(func(h parallafka.BatchHandler[string, int]) parallafka.BatchHandler[string, int] { return h }))
	require.NoError(t, err)
	require.ErrorContains(t, p.Consume(context.Background(), func(context.Context, *parallafka.Message[string, int]) error { return nil }), "WithBatchMiddleware wraps a batch handler")

	for name, opt := range map[string]parallafka.Option{
		"zero batch":                parallafka.WithMaxBatchMessages(0),
		"zero batch bytes":          parallafka.WithMaxBatchBytes(0),
		"negative linger":           parallafka.WithBatchLinger(-time.Millisecond),
		"nil batch middleware":      parallafka.WithBatchMiddleware[string, int](nil),
		"batch middleware of types": parallafka.WithBatchMiddleware(func(h parallafka.BatchHandler[int, int]) parallafka.BatchHandler[int, int] { return h }),
	} {
		_, err := parallafka.New(memsource.New[string, int](), opt)
		assert.Error(t, err, name)
	}
}

// Batch middleware wraps the handler, first given outermost.
func TestBatchMiddlewareOrder(t *testing.T) {
	src := memsource.New[string, int]()
	produce(src, 1, 5, func(i int) int { return i })
	var mu sync.Mutex
	var order []string
	mw := func(name string) parallafka.BatchMiddleware[string, int] {
		return func(next parallafka.BatchHandler[string, int]) parallafka.BatchHandler[string, int] {
			return func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				return next(ctx, batch)
			}
		}
	}
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1), parallafka.WithBatchMiddleware(mw("outer"), mw("inner")))
	require.NoError(t, err)
	var total atomic.Int64
	stop := startBatch(p, func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
		mu.Lock()
		order = append(order, "handler")
		mu.Unlock()
		total.Add(int64(len(batch)))
		return nil
	})
	eventually(t, func() bool { return total.Load() == 5 })
	require.NoError(t, stop())
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"outer", "inner", "handler"}, order[:3])
}

// Shutdowns with batches running: a graceful stop lets the running batch
// finish and commits it; a hard stop cancels it and commits only what
// finished before.
func TestBatchShutdowns(t *testing.T) {
	for name, mode := range map[string]parallafka.ShutdownMode{"graceful": parallafka.Graceful, "hard": parallafka.HardStop} {
		t.Run(name, func(t *testing.T) {
			src := memsource.New[string, int]()
			produce(src, 1, 100, func(i int) int { return i }) // distinct keys: batches in offset order
			started := make(chan struct{})
			var once sync.Once
			var finished atomic.Int64
			p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1),
				parallafka.WithMaxBatchMessages(30), parallafka.WithShutdownMode(mode))
			require.NoError(t, err)
			stop := startBatch(p, func(ctx context.Context, batch []*parallafka.Message[string, int]) error {
				if finished.Load() >= 30 { // the second batch runs during the stop
					once.Do(func() { close(started) })
					select {
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				finished.Add(int64(len(batch)))
				return nil
			})
			<-started
			require.NoError(t, stop())
			if mode == parallafka.Graceful {
				assert.EqualValues(t, 60, finished.Load(), "the running batch finished")
				assert.EqualValues(t, 60, src.Committed(tp(0)), "and was committed")
			} else {
				assert.EqualValues(t, 30, finished.Load(), "the running batch was cancelled")
				assert.EqualValues(t, 30, src.Committed(tp(0)), "only what finished is committed")
			}
		})
	}
}
