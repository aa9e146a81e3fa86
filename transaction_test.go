package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// echo is a transactional handler: one output per input, keyed as its
// input, valued "partition@offset", to topic "out".
func echo(ctx context.Context, m *parallafka.Message[string, int]) error {
	return parallafka.Produce(ctx, m, outputOf(m))
}

func outputOf(m *parallafka.Message[string, int]) pipeline.Record {
	return pipeline.Record{Topic: "out", Key: m.RawKey, Value: fmt.Appendf(nil, "%d@%d", m.Partition, m.Offset)}
}

// checkOutputs requires every one of the n inputs' outputs exactly once,
// and each key's outputs in the order of their inputs.
func checkOutputs(t *testing.T, src *memsource.Source[string, int], n int) {
	t.Helper()
	seen := make(map[string]int)
	last := make(map[string]int64) // key → offset of its last output's input
	for _, r := range src.Produced() {
		v := string(r.Value)
		seen[v]++
		_, off, _ := strings.Cut(v, "@")
		o, err := strconv.ParseInt(off, 10, 64)
		require.NoError(t, err)
		if prev, ok := last[string(r.Key)]; ok && prev >= o {
			t.Errorf("key %s: the output of offset %d after that of %d", r.Key, o, prev)
		}
		last[string(r.Key)] = o
	}
	dups := 0
	for _, c := range seen {
		if c > 1 {
			dups++
		}
	}
	assert.Zero(t, dups, "inputs with more than one output")
	if !assert.Equal(t, n, len(seen), "inputs with an output") {
		missing := 0
		for _, part := range memctl.Partitions(src) {
			for off := range memctl.Len(src, part) {
				if v := fmt.Sprintf("%d@%d", part.Partition, off); seen[v] == 0 && missing < 10 {
					missing++
					t.Logf("no output for %s", v)
				}
			}
		}
	}
}

func committedAll(src *memsource.Source[string, int]) bool {
	for _, part := range memctl.Partitions(src) {
		if src.Committed(part) != memctl.Len(src, part) {
			return false
		}
	}
	return true
}

// Every input's output is written exactly once, in key order, by the
// transactions that commit the inputs.
func TestTransactionsWriteEachOutputOnce(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 5000
	produce(src, 4, n, func(i int) int { return i % 40 })
	var transactions, records atomic.Int64
	observer := pipeline.ObserverFuncs{Committed: func(c pipeline.CommitInfo) {
		if c.Transaction && c.Err == nil {
			transactions.Add(1)
			records.Add(int64(c.Records))
		}
	}}.Observer()
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(20*time.Millisecond), parallafka.WithObserver(observer))
	require.NoError(t, err)
	stop, _ := start(p, echo)
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
	assert.Equal(t, p.Stats().Commits, transactions.Load(), "the observer sees each transaction")
	assert.EqualValues(t, n, records.Load(), "and its records: each output once")
}

// A transaction that fails is aborted: nothing of it is recorded, and the
// next one carries its outputs with the newer ones.
func TestFailedTransactionsAreRetriedWithTheirOutputs(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	produce(src, 3, n, func(i int) int { return i % 30 })
	var calls, failed atomic.Int64
	memctl.SetTransactHook(src, func([]pipeline.Record, []pipeline.Offset) error {
		if calls.Add(1)%2 == 1 {
			failed.Add(1)
			return errors.New("broker says no")
		}
		return nil
	})
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(10*time.Millisecond))
	require.NoError(t, err)
	stop, _ := start(p, echo)
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	assert.Positive(t, failed.Load())
	assert.Positive(t, p.Stats().CommitErrors)
	checkOutputs(t, src, n)
}

// A message whose handler fails contributes nothing; retried by the retry
// stage, its last attempt's outputs alone are written.
func TestTransactionsDropOutputsOfFailedAttempts(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	produce(src, 2, n, func(i int) int { return i % 20 })
	retry, err := stages.Retry[string, int](stages.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(10*time.Millisecond), parallafka.WithAfterHandle("retry", retry))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		require.NoError(t, parallafka.Produce(ctx, m, outputOf(m)))
		if m.Offset%7 == 0 && m.Attempt < 3 {
			return errors.New("try again")
		}
		return nil
	})
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
}

// Under adaptive concurrency, with handlers whose time varies (the limit
// moves while transactions commit), each output is written once, in key
// order.
func TestTransactionsWithAdaptiveConcurrency(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	produce(src, 4, n, func(i int) int { return i % 50 })
	var highest atomic.Int64
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(10*time.Millisecond), parallafka.WithAdaptiveConcurrency(1, 32))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if m.Offset%100 < 10 {
			time.Sleep(time.Millisecond) // a slow stretch: the limit moves
		}
		if l := int64(p.Stats().ConcurrencyLimit); l > highest.Load() {
			highest.Store(l)
		}
		return parallafka.Produce(ctx, m, outputOf(m))
	})
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
	assert.Greater(t, highest.Load(), int64(1), "the limit moved up from its minimum")
}

// Partitions revoked and assigned again while messages flow: what a
// revoke commits carries its outputs, and what it abandons is handled
// again by the next owner with no output left behind.
func TestTransactionsAcrossRevokes(t *testing.T) {
	src := memsource.New[string, int]()
	const n, partitions = 20_000, 4
	produce(src, partitions, n, func(i int) int { return i % 50 })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(5*time.Millisecond), parallafka.WithMaxConcurrency(8))
	require.NoError(t, err)
	var handled atomic.Int64
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		time.Sleep(rand.N(50 * time.Microsecond))
		handled.Add(1)
		return echo(ctx, m)
	})
	r := rand.New(rand.NewPCG(9, 10))
	for handled.Load() < n/2 {
		part := tp(int32(r.IntN(partitions)))
		src.Revoke(part)
		src.Assign(part)
		time.Sleep(time.Duration(r.IntN(2000)) * time.Microsecond)
	}
	require.Eventually(t, func() bool { return committedAll(src) }, time.Minute, time.Millisecond)
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
}

// A fatal transaction error stops Consume with it and commits nothing
// more; the next run goes on from the last committed transaction, and
// every output is still written exactly once.
func TestFatalTransactionErrorStops(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	produce(src, 2, n, func(i int) int { return i % 20 })
	var calls atomic.Int64
	memctl.SetTransactHook(src, func([]pipeline.Record, []pipeline.Offset) error {
		if calls.Add(1) == 3 {
			return fmt.Errorf("fenced: %w", pipeline.ErrTransactionFatal)
		}
		return nil
	})
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	var slow atomic.Bool
	slow.Store(true)
	err = p.Consume(context.Background(), func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if slow.Load() {
			time.Sleep(100 * time.Microsecond)
		}
		return echo(ctx, m)
	})
	require.ErrorIs(t, err, pipeline.ErrTransactionFatal)
	assert.Equal(t, int64(3), calls.Load(), "no transaction after the fatal one")
	assert.False(t, committedAll(src))

	memctl.SetTransactHook(src, nil)
	p, err = parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	stop, _ := start(p, echo)
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
}

// A batch handler produces per message; a message the batch fails (by a
// *BatchError) contributes nothing, and its key's later messages wait for
// it, so the outputs keep their order.
func TestTransactionsWithBatchHandler(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 3000
	produce(src, 3, n, func(i int) int { return i % 30 })
	retry, err := stages.Retry[string, int](stages.RetryConfig{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(10*time.Millisecond), parallafka.WithMaxBatch(50, 1<<20),
		parallafka.WithAfterHandle("retry", retry))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.ConsumeBatch(ctx, func(ctx context.Context, msgs []*parallafka.Message[string, int]) error {
			var failed pipeline.BatchError[string, int]
			for _, m := range msgs {
				if err := parallafka.Produce(ctx, m, outputOf(m)); err != nil {
					return err
				}
				if m.Offset%11 == 0 && m.Attempt == 1 {
					failed.Fail(m, errors.New("try again"))
				}
			}
			if len(failed.Errors) > 0 {
				return &failed
			}
			return nil
		})
	}()
	eventually(t, func() bool { return committedAll(src) })
	cancel()
	require.NoError(t, <-done)
	checkOutputs(t, src, n)
}

// Produce refuses with ErrNoTransaction outside a handler call of a
// transactional pipeline: without WithTransactions, with a message the
// call was not given, and after the call returned.
func TestProduceOutsideAHandler(t *testing.T) {
	msg := &parallafka.Message[string, int]{Topic: topic}
	require.ErrorIs(t, parallafka.Produce(context.Background(), msg, pipeline.Record{Topic: "out"}), parallafka.ErrNoTransaction)

	src := memsource.New[string, int]()
	produce(src, 1, 2, func(i int) int { return i })
	p, err := parallafka.New(src, parallafka.WithLogger(quiet))
	require.NoError(t, err)
	errs := make(chan error, 2)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		errs <- parallafka.Produce(ctx, m, outputOf(m))
		return nil
	})
	require.ErrorIs(t, <-errs, parallafka.ErrNoTransaction, "without WithTransactions")
	err, _ = stop()
	require.NoError(t, err)

	src = memsource.New[string, int]()
	produce(src, 1, 2, func(i int) int { return i })
	p, err = parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src), parallafka.WithMaxConcurrency(1),
		parallafka.WithCommitInterval(5*time.Millisecond))
	require.NoError(t, err)
	later := make(chan func() error, 2)
	stop, _ = start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		other := &parallafka.Message[string, int]{Topic: topic, Offset: 99}
		errs <- parallafka.Produce(ctx, other, outputOf(other))
		later <- func() error { return parallafka.Produce(ctx, m, outputOf(m)) }
		return nil
	})
	require.ErrorIs(t, <-errs, parallafka.ErrNoTransaction, "a message of another call")
	produceLater := <-later
	eventually(t, func() bool { return committedAll(src) }) // the calls returned
	require.ErrorIs(t, produceLater(), parallafka.ErrNoTransaction, "after the call returned")
	err, _ = stop()
	require.NoError(t, err)
	assert.Empty(t, src.Produced())

	_, err = parallafka.New(src, parallafka.WithTransactions(src), parallafka.WithAsyncCommits())
	require.ErrorContains(t, err, "WithAsyncCommits")
}

// recordingWriter counts the dead letters written outside transactions.
type recordingWriter struct{ writes atomic.Int64 }

func (w *recordingWriter) WriteDeadLetter(context.Context, pipeline.DeadLetter) error {
	w.writes.Add(1)
	return nil
}

// In a transactional pipeline a dead letter is an output of its message's
// transaction: the messages that fail for good have exactly one dead
// letter each, the others exactly one output, and nothing goes through
// the writer.
func TestTransactionsDeadLetterIsAnOutput(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	produce(src, 2, n, func(i int) int { return i % 20 })
	var calls atomic.Int64
	memctl.SetTransactHook(src, func([]pipeline.Record, []pipeline.Offset) error {
		if calls.Add(1)%3 == 0 {
			return errors.New("aborted") // the dead letters of an aborted transaction go in the next
		}
		return nil
	})
	w := &recordingWriter{}
	dlq, err := stages.DeadLetterQueue[string, int](stages.DeadLetterConfig{Writer: w, Topic: "dlq"})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(5*time.Millisecond), parallafka.WithAfterHandle("dead-letter", dlq))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		require.NoError(t, echo(ctx, m)) // dropped with the attempt if it fails
		if m.Offset%10 == 3 {
			return errors.New("poison")
		}
		return nil
	})
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	assert.Zero(t, w.writes.Load(), "no dead letter outside a transaction")
	outputs, deadLetters := 0, map[string]int{}
	for _, r := range src.Produced() {
		if r.Topic == "dlq" {
			var offset string
			for _, h := range r.Headers {
				if h.Key == stages.HeaderOriginalOffset {
					offset = string(h.Value)
				}
			}
			deadLetters[offset+"/"+string(r.Key)]++
			continue
		}
		_, off, _ := strings.Cut(string(r.Value), "@")
		o, _ := strconv.Atoi(off)
		assert.NotEqual(t, 3, o%10, "an output of a failed attempt")
		outputs++
	}
	assert.Equal(t, n-n/10, outputs)
	assert.Len(t, deadLetters, n/10)
	for k, c := range deadLetters {
		assert.Equal(t, 1, c, "dead letter %s", k)
	}
}

// timedTransactor is a Transactor with a transaction timeout.
type timedTransactor struct {
	pipeline.Transactor
	timeout time.Duration
}

func (t timedTransactor) TransactionTimeout() time.Duration { return t.timeout }

// New refuses a commit interval that a transaction's timeout would not
// outlast: the broker would abort the transactions before they commit.
func TestTransactionTimeoutMustExceedCommitInterval(t *testing.T) {
	src := memsource.New[string, int]()
	_, err := parallafka.New(src, parallafka.WithTransactions(timedTransactor{src, 500 * time.Millisecond}))
	require.ErrorContains(t, err, "transaction timeout (500ms) must be longer than the commit interval (1s)")
	_, err = parallafka.New(src, parallafka.WithTransactions(timedTransactor{src, 500 * time.Millisecond}),
		parallafka.WithCommitInterval(100*time.Millisecond))
	require.NoError(t, err)
}

// Outputs waiting for a transaction count in the in-flight byte window:
// while transactions fail, polling stops once the outputs fill it, instead
// of holding ever more outputs in memory; once they commit, it goes on.
func TestTransactionOutputsCountInTheByteWindow(t *testing.T) {
	src := memsource.New[string, int]()
	const n = 2000
	produce(src, 2, n, func(i int) int { return i % 20 })
	var failing atomic.Bool
	failing.Store(true)
	memctl.SetTransactHook(src, func([]pipeline.Record, []pipeline.Offset) error {
		if failing.Load() {
			return errors.New("not now")
		}
		return nil
	})
	const window = 64 << 10
	big := make([]byte, 1<<10)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
		parallafka.WithCommitInterval(5*time.Millisecond), parallafka.WithMaxInFlightBytes(window), parallafka.WithMaxInFlight(100))
	require.NoError(t, err)
	stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
		r := outputOf(m)
		r.Headers = []pipeline.Header{{Key: "padding", Value: big}}
		return parallafka.Produce(ctx, m, r)
	})
	// The messages are tiny: 100 at a time in flight (WithMaxInFlight), and
	// their 1 KiB outputs fill the window after about 64.
	eventually(t, func() bool { return p.Stats().Polled > 0 })
	time.Sleep(300 * time.Millisecond)
	polled := p.Stats().Polled
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, polled, p.Stats().Polled, "polling stopped while the outputs fill the window")
	assert.Less(t, polled, int64(n/4))
	// Past the window by at most the outputs of the messages in flight
	// when it filled (up to 100 of about 1 KiB).
	assert.LessOrEqual(t, p.Stats().InFlightBytes, int64(window+110<<10))
	failing.Store(false)
	eventually(t, func() bool { return committedAll(src) })
	err, _ = stop()
	require.NoError(t, err)
	checkOutputs(t, src, n)
}

// A transaction carries the outputs of the messages below the offset it
// commits, never those of messages finished above a gap: the commit's
// offset map may be off, cut to fit, or refused, and a next owner that
// does not know a message finished would write its outputs again. Every
// tenth message is held back, then the partition is lost and assigned
// again: each output once, whatever the map's size.
func TestTransactionsCarryNothingAboveAGap(t *testing.T) {
	for _, mapBytes := range []int{0, 16, 4096} {
		t.Run(fmt.Sprint(mapBytes), func(t *testing.T) {
			src := memsource.New[string, int]()
			const n = 400
			produce(src, 1, n, func(i int) int { return i })
			p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithTransactions(src),
				parallafka.WithCommitInterval(5*time.Millisecond), parallafka.WithOffsetMapMaxBytes(mapBytes),
				parallafka.WithMaxConcurrency(32))
			require.NoError(t, err)
			release := make(chan struct{})
			var handled atomic.Int64
			stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
				if m.Offset%10 == 0 && m.Attempt == 1 {
					select {
					case <-release:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				handled.Add(1)
				return echo(ctx, m)
			})
			eventually(t, func() bool { return handled.Load() >= 20 })
			time.Sleep(50 * time.Millisecond) // transactions on the interval, with messages finished above the gap
			assert.Empty(t, src.Produced(), "no output above the gap at offset 0")
			src.Lose(tp(0))
			src.Assign(tp(0))
			close(release)
			eventually(t, func() bool { return committedAll(src) })
			err, _ = stop()
			require.NoError(t, err)
			checkOutputs(t, src, n)
		})
	}
}
