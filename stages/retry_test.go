package stages_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
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

// Helpers shared by the middleware stages' tests (retry, dead-letter,
// dedupe, timeout): they run the whole pipeline over the in-memory source,
// with the stages inserted through the public options, as a user would.

// fillTopic writes n records over the given partitions (record i to
// partition i % partitions) with key key(i) and value i.
func fillTopic(src *memsource.Source[string, string], partitions, n int, key func(i int) string) {
	src.AddTopic(topic, partitions)
	for i := range n {
		src.Produce(topic, int32(i%partitions), key(i), strconv.Itoa(i))
	}
}

// allCommitted reports whether every non-empty partition is committed to its end.
func allCommitted(src *memsource.Source[string, string]) func() bool {
	return func() bool {
		for _, part := range src.Partitions() {
			if n := src.Len(part); n > 0 && src.Committed(part) != n {
				return false
			}
		}
		return true
	}
}

func newPipeline(t *testing.T, src *memsource.Source[string, string], opts ...parallafka.Option) *parallafka.Parallafka[string, string] {
	t.Helper()
	base := []parallafka.Option{parallafka.WithLogger(quiet), parallafka.WithCommitInterval(2 * time.Millisecond)}
	p, err := parallafka.New[string, string](src, append(base, opts...)...)
	require.NoError(t, err)
	return p
}

// pipelineRun is a Consume call running on its own goroutine.
type pipelineRun struct {
	cancel context.CancelFunc
	done   chan error
}

func runPipeline(p *parallafka.Parallafka[string, string], h parallafka.Handler[string, string]) *pipelineRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &pipelineRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Consume(ctx, h) }()
	return r
}

// stop cancels Consume (a graceful stop) and returns its error and how long
// it took to return.
func (r *pipelineRun) stop(t *testing.T) (error, time.Duration) {
	t.Helper()
	began := time.Now()
	r.cancel()
	return recv(t, r.done), time.Since(began)
}

// wait waits for Consume to return on its own (a failure under the error policy).
func (r *pipelineRun) wait(t *testing.T) error {
	t.Helper()
	defer r.cancel()
	return recv(t, r.done)
}

// runUntil consumes until cond holds, then stops gracefully and returns
// Consume's error.
func runUntil(t *testing.T, p *parallafka.Parallafka[string, string], h parallafka.Handler[string, string], cond func() bool) error {
	t.Helper()
	r := runPipeline(p, h)
	deadline := time.Now().Add(wait)
	for !cond() {
		select {
		case err := <-r.done:
			r.cancel()
			return err
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			_, _ = r.stop(t)
			t.Fatal("condition not met in time")
		}
	}
	err, _ := r.stop(t)
	return err
}

// runStage runs a stage alone, outside a pipeline: the test feeds in and
// reads out. stop closes in and waits for the stage to return.
func runStage(t *testing.T, ctx context.Context, stage pipeline.Stage[string, string]) (in chan<- *M, out <-chan *M, stop func() error) {
	inCh, outCh := make(chan *M), make(chan *M, 64)
	done := make(chan error, 1)
	go func() {
		defer close(outCh)
		done <- stage(ctx, inCh, outCh)
	}()
	var once sync.Once
	return inCh, outCh, func() error {
		once.Do(func() { close(inCh) })
		return recv(t, done)
	}
}

// failedMsg is a message, outside any pipeline, whose attempt-th attempt failed.
func failedMsg(offset int64, attempt int, err error) *M {
	return &M{Topic: topic, Offset: offset, Key: "k", RawKey: k("k"), Attempt: attempt, Err: err}
}

var errTransient = errors.New("transient")

// A message waiting for its retry delays only the later messages of its own
// key: other keys flow, its partition's commits stop just before it, and a
// shutdown abandons it uncommitted at once, though its backoff is an hour.
func TestRetryWaitDelaysOnlyItsKey(t *testing.T) {
	src := memsource.New[string, string]()
	const n = 300
	fillTopic(src, 2, n, func(i int) string { return "K" + strconv.Itoa(i%10) })
	const failing = 3 // offset 3 of partition 0 is record 6, key K6
	p := newPipeline(t, src, parallafka.WithMaxConcurrency(8),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			InitialBackoff: time.Hour, MaxBackoff: time.Hour,
		}))))
	var mu sync.Mutex
	handled := map[string]int{} // partition/offset → attempts
	h := func(ctx context.Context, m *M) error {
		mu.Lock()
		handled[fmt.Sprint(m.Partition, "/", m.Offset)]++
		mu.Unlock()
		if m.Partition == 0 && m.Offset == failing {
			return errTransient
		}
		return nil
	}
	run := runPipeline(p, h)
	eventually(t, func() bool {
		return src.Committed(tp(1)) == src.Len(tp(1)) && src.Committed(tp(0)) == failing
	}, "partition 1 done, partition 0 committed up to the waiting message")
	// Every other key of partition 0 is handled, all past the waiting message.
	eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n-(n/10-1) // all but the 29 later K6 messages (K6 is only in partition 0)
	}, "every message of other keys handled")

	mu.Lock()
	for off := int64(failing + 1); off < src.Len(tp(0)); off++ {
		if key := "K" + strconv.Itoa(int(2*off)%10); key == "K6" {
			assert.Zero(t, handled[fmt.Sprint(0, "/", off)], "K6 at %d ran while an earlier K6 waited for its retry", off)
		}
	}
	assert.Equal(t, 1, handled[fmt.Sprint(0, "/", failing)], "one attempt so far")
	mu.Unlock()
	assert.EqualValues(t, failing, src.Committed(tp(0)), "never committed past a pending retry")

	err, took := run.stop(t)
	require.NoError(t, err)
	assert.Less(t, took, 10*time.Second, "the shutdown does not wait for the backoff")
	assert.EqualValues(t, failing, src.Committed(tp(0)), "abandoned uncommitted: it will be redelivered")
	assert.Zero(t, p.Stats().Retried, "the retry was cut short by the stop: abandoned, no second attempt")
}

// Under concurrency, with messages that fail a few times each, every key's
// messages are still handled one at a time in offset order, every message
// succeeds in the end, and commits reach the end of every partition.
func TestRetryKeepsKeyOrderUnderConcurrency(t *testing.T) {
	src := memsource.New[string, string]()
	const n, partitions = 1200, 3
	fillTopic(src, partitions, n, func(i int) string { return "K" + strconv.Itoa((i*i+7*i)%23) })
	failures := func(m *M) int { v, _ := strconv.Atoi(m.Value); return v % 3 } // fails 0, 1 or 2 times
	p := newPipeline(t, src, parallafka.WithMaxConcurrency(16),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 3 * time.Millisecond, Jitter: 0.5,
		}))))
	type keyState struct {
		running bool
		last    int64
	}
	var mu sync.Mutex
	keys := map[string]*keyState{}
	var problems []string
	var succeeded atomic.Int64
	var wantRetries int64
	for i := range n {
		wantRetries += int64(i % 3)
	}
	h := func(ctx context.Context, m *M) error {
		key := fmt.Sprint(m.Partition, "/", m.Key)
		mu.Lock()
		s := keys[key]
		if s == nil {
			s = &keyState{last: -1}
			keys[key] = s
		}
		switch {
		case s.running:
			problems = append(problems, fmt.Sprintf("%s: two messages in handlers", key))
		case m.Offset < s.last:
			problems = append(problems, fmt.Sprintf("%s: offset %d after %d", key, m.Offset, s.last))
		case m.Offset == s.last && m.Attempt == 1:
			problems = append(problems, fmt.Sprintf("%s: offset %d handled twice", key, m.Offset))
		}
		s.running, s.last = true, m.Offset
		mu.Unlock()
		defer func() {
			mu.Lock()
			s.running = false
			mu.Unlock()
		}()
		if m.Attempt <= failures(m) {
			return fmt.Errorf("attempt %d: %w", m.Attempt, errTransient)
		}
		succeeded.Add(1)
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	assert.Empty(t, problems)
	assert.EqualValues(t, n, succeeded.Load())
	assert.Equal(t, wantRetries, p.Stats().Retried)
	assert.Zero(t, p.Stats().Failed)
}

// The handler sees attempts 1..MaxAttempts, the waits between them respect
// the backoff's lower bounds, and the last failure reaches the error policy
// with its error and attempt count.
func TestRetryAttemptsAndBackoff(t *testing.T) {
	src := memsource.New[string, string]()
	fillTopic(src, 1, 3, func(i int) string { return strconv.Itoa(i) })
	cfg := stages.RetryConfig{MaxAttempts: 4, InitialBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Multiplier: 2, Jitter: 0.5}
	var mu sync.Mutex
	var policySaw []*pipeline.MessageError
	p := newPipeline(t, src,
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](cfg))),
		parallafka.WithErrorPolicy(func(err error) pipeline.ErrorAction {
			var me *pipeline.MessageError
			require.ErrorAs(t, err, &me)
			mu.Lock()
			policySaw = append(policySaw, me)
			mu.Unlock()
			return pipeline.Skip
		}))
	var attempts []int
	var times []time.Time
	h := func(ctx context.Context, m *M) error {
		if m.Offset != 1 {
			return nil
		}
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		times = append(times, time.Now())
		mu.Unlock()
		return errTransient
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	require.Equal(t, []int{1, 2, 3, 4}, attempts)
	require.Len(t, policySaw, 1)
	assert.Equal(t, 4, policySaw[0].Attempt)
	assert.EqualValues(t, 1, policySaw[0].Offset)
	assert.ErrorIs(t, policySaw[0], errTransient)
	for i, lower := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 25 * time.Millisecond} {
		gap := times[i+1].Sub(times[i])
		assert.GreaterOrEqual(t, gap, lower, "wait before attempt %d", i+2)
		assert.Less(t, gap, 10*time.Second, "wait before attempt %d", i+2)
	}
	st := p.Stats()
	assert.EqualValues(t, 3, st.Retried)
	assert.EqualValues(t, 1, st.Skipped)
}

func TestRetryBackoffBounds(t *testing.T) {
	cfg := stages.RetryConfig{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 3, Jitter: 0.2}
	for attempt, base := range map[int]time.Duration{
		1: 100 * time.Millisecond, 2: 300 * time.Millisecond, 3: 900 * time.Millisecond, 4: time.Second, 60: time.Second,
	} {
		lo, hi := time.Duration(float64(base)*0.8), min(time.Duration(float64(base)*1.2), time.Second)
		var spread bool
		for range 1000 {
			d := stages.Backoff(cfg, attempt)
			require.GreaterOrEqual(t, d, lo, "attempt %d", attempt)
			require.LessOrEqual(t, d, hi, "attempt %d", attempt)
			spread = spread || math.Abs(float64(d-base)) > float64(base)/100
		}
		assert.True(t, spread, "attempt %d: jitter spreads the waits", attempt)
	}
	noJitter := stages.RetryConfig{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 25 * time.Millisecond}
	assert.Equal(t, 10*time.Millisecond, stages.Backoff(noJitter, 1))
	assert.Equal(t, 20*time.Millisecond, stages.Backoff(noJitter, 2))
	assert.Equal(t, 25*time.Millisecond, stages.Backoff(noJitter, 3))
	assert.Equal(t, 100*time.Millisecond, stages.Backoff(stages.RetryConfig{}, 1), "defaults")
	assert.Equal(t, 10*time.Second, stages.Backoff(stages.RetryConfig{}, 100))
}

func TestRetryConfigValidate(t *testing.T) {
	_, err := stages.Retry[string, string](stages.RetryConfig{})
	require.NoError(t, err)
	for name, cfg := range map[string]stages.RetryConfig{
		"negative attempts":   {MaxAttempts: -1},
		"negative backoff":    {InitialBackoff: -time.Second},
		"max below initial":   {InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
		"multiplier below 1":  {Multiplier: 0.5},
		"jitter above 1":      {Jitter: 1.5},
		"jitter 2":            {Jitter: 2},
		"negative jitter":     {Jitter: -0.1},
		"not-a-number jitter": {Jitter: math.NaN()},
	} {
		t.Run(name, func(t *testing.T) {
			// Issue 26: Retry returns the error; it does not panic.
			stage, err := stages.Retry[string, string](cfg)
			require.ErrorContains(t, err, "stages: RetryConfig")
			require.Nil(t, stage)
		})
	}
}

// Not retried: successes, NonRetryable failures, failures the predicate
// refuses, and poison pills (never handled). They leave with Err set.
func TestRetryPassesOnWhatItMustNotRetry(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic(topic, 1)
	errPermanent := errors.New("permanent")
	errRefused := errors.New("refused by the predicate")
	src.Produce(topic, 0, "a", "ok")
	src.Produce(topic, 0, "b", "non-retryable")
	src.Produce(topic, 0, "c", "refused")
	src.ProduceRecord(memsource.Record[string, string]{Topic: topic, Key: "d", Err: errors.New("cannot deserialize")})
	var mu sync.Mutex
	var policySaw []*pipeline.MessageError
	p := newPipeline(t, src,
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			InitialBackoff: time.Millisecond,
			Retryable:      func(err error) bool { return !errors.Is(err, errRefused) && !stages.IsNonRetryable(err) },
		}))),
		parallafka.WithErrorPolicy(func(err error) pipeline.ErrorAction {
			var me *pipeline.MessageError
			require.ErrorAs(t, err, &me)
			mu.Lock()
			policySaw = append(policySaw, me)
			mu.Unlock()
			return pipeline.Skip
		}))
	var calls sync.Map
	h := func(ctx context.Context, m *M) error {
		n, _ := calls.LoadOrStore(m.Value, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		switch m.Value {
		case "non-retryable":
			return stages.NonRetryable(fmt.Errorf("bad input: %w", errPermanent))
		case "refused":
			return errRefused
		}
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	for _, v := range []string{"ok", "non-retryable", "refused"} {
		n, _ := calls.Load(v)
		assert.EqualValues(t, 1, n.(*atomic.Int64).Load(), v)
	}
	require.Len(t, policySaw, 3)
	attempts := map[int64]int{}
	for _, me := range policySaw {
		attempts[me.Offset] = me.Attempt
	}
	assert.Equal(t, map[int64]int{1: 1, 2: 1, 3: 0}, attempts, "the poison pill was never handled")
	assert.True(t, stages.IsNonRetryable(policySaw[0]) || stages.IsNonRetryable(policySaw[1]) || stages.IsNonRetryable(policySaw[2]))
	assert.Zero(t, p.Stats().Retried)

	require.NoError(t, stages.NonRetryable(nil))
	wrapped := stages.NonRetryable(errPermanent)
	assert.ErrorIs(t, wrapped, errPermanent)
	assert.Equal(t, "permanent", wrapped.Error())
	assert.False(t, stages.IsNonRetryable(errPermanent))
}

// A revoke does not wait for a pending retry's backoff: the waiting message
// goes back at once and is abandoned uncommitted, for the next owner.
func TestRetryPendingIsReleasedOnRevoke(t *testing.T) {
	src := memsource.New[string, string]()
	fillTopic(src, 2, 40, func(i int) string { return "K" + strconv.Itoa(i%4) })
	p := newPipeline(t, src, parallafka.WithRevokeTimeout(time.Minute),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			InitialBackoff: time.Hour, MaxBackoff: time.Hour,
		}))))
	var attempts atomic.Int64
	run := runPipeline(p, func(ctx context.Context, m *M) error {
		if m.Partition == 0 && m.Offset == 5 {
			attempts.Add(1)
			return errTransient
		}
		return nil
	})
	eventually(t, func() bool { return attempts.Load() == 1 && src.Committed(tp(0)) == 5 && src.Committed(tp(1)) == 20 })
	began := time.Now()
	src.Revoke(tp(0))
	assert.Less(t, time.Since(began), 10*time.Second, "the revoke did not wait out the backoff (nor its timeout)")
	assert.EqualValues(t, 5, src.Committed(tp(0)), "the pending retry stays uncommitted")
	err, _ := run.stop(t)
	require.NoError(t, err)
	assert.EqualValues(t, 1, attempts.Load())
}

// The stage alone: a draining pipeline gets every waiting message back at
// once, still marked for retry, and a hard stop returns without sending.
func TestRetryStageDrainAndHardStop(t *testing.T) {
	stage := must(stages.Retry[string, string](stages.RetryConfig{InitialBackoff: time.Hour, MaxBackoff: time.Hour}))
	t.Run("drain", func(t *testing.T) {
		draining := make(chan struct{})
		in, out, stop := runStage(t, pipeline.WithDraining(context.Background(), draining), stage)
		a, b := failedMsg(0, 1, errTransient), failedMsg(1, 2, errTransient)
		ok := failedMsg(2, 1, nil)
		send(t, in, a)
		send(t, in, b)
		send(t, in, ok)
		require.Same(t, ok, recv(t, out), "a success passes while retries wait")
		close(draining)
		got := []*M{recv(t, out), recv(t, out)}
		assert.ElementsMatch(t, []*M{a, b}, got)
		for _, m := range got {
			assert.True(t, m.RetryRequested())
			assert.ErrorIs(t, m.Err, errTransient)
		}
		late := failedMsg(3, 1, errTransient)
		send(t, in, late)
		require.Same(t, late, recv(t, out), "after the drain began, a retry goes back at once")
		assert.True(t, late.RetryRequested())
		require.NoError(t, stop())
	})
	t.Run("hard stop", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		in, out, stop := runStage(t, ctx, stage)
		send(t, in, failedMsg(0, 1, errTransient))
		cancel()
		require.NoError(t, stop())
		_, open := <-out
		assert.False(t, open, "nothing sent on a hard stop")
	})
	t.Run("exhausted", func(t *testing.T) {
		in, out, stop := runStage(t, context.Background(), stage)
		last := failedMsg(0, 5 /* MaxAttempts's default */, errTransient)
		send(t, in, last)
		require.Same(t, last, recv(t, out))
		assert.False(t, last.RetryRequested())
		assert.ErrorIs(t, last.Err, errTransient, "the error stays for the next stage")
		require.NoError(t, stop())
	})
}

// No commit ever moves past a message while its retry is pending: every
// commit the source sees is checked against the message's state.
func TestRetryNeverCommitsPastAPendingRetry(t *testing.T) {
	src := memsource.New[string, string]()
	fillTopic(src, 1, 200, func(i int) string { return "K" + strconv.Itoa(i%7) })
	const failing = 10
	var succeeded atomic.Bool
	var violations atomic.Int64
	src.SetCommitHook(func(offsets []pipeline.Offset) error {
		for _, o := range offsets {
			if o.Offset > failing && !succeeded.Load() {
				violations.Add(1)
			}
		}
		return nil
	})
	p := newPipeline(t, src, parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(time.Millisecond),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond,
		}))))
	h := func(ctx context.Context, m *M) error {
		if m.Offset != failing {
			return nil
		}
		if m.Attempt < 3 {
			return errTransient
		}
		succeeded.Store(true) // before the handler returns, so before the message can finish
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))
	assert.True(t, succeeded.Load())
	assert.Zero(t, violations.Load(), "a commit passed the message while its retry was pending")
	assert.NotEmpty(t, src.Commits())
}
