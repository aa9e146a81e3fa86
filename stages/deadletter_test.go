package stages_test

import (
	"context"
	"errors"
	"fmt"
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

// memDLQ is an in-memory stages.DeadLetterWriter. Writes wait for gate, if
// set, and fail with fail, if set.
type memDLQ struct {
	gate    chan struct{}
	fail    error
	started chan struct{} // one token per write begun, if set

	mu                    sync.Mutex
	letters               []pipeline.DeadLetter
	inFlight, maxInFlight int
}

func (w *memDLQ) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	w.mu.Lock()
	w.inFlight++
	w.maxInFlight = max(w.maxInFlight, w.inFlight)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.inFlight--
		w.mu.Unlock()
	}()
	if w.started != nil {
		w.started <- struct{}{}
	}
	if w.gate != nil {
		select {
		case <-w.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if w.fail != nil {
		return w.fail
	}
	w.mu.Lock()
	w.letters = append(w.letters, dl)
	w.mu.Unlock()
	return nil
}

func (w *memDLQ) written() []pipeline.DeadLetter {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]pipeline.DeadLetter(nil), w.letters...)
}

func header(dl pipeline.DeadLetter, key string) string {
	for _, h := range dl.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return "<missing>"
}

// Retry, then dead-letter: every message either succeeds or lands in the
// dead-letter topic once, after its last attempt, with headers that say
// where it came from and why it failed; poison pills go there unhandled.
// Commits reach the end: a dead-lettered message counts as finished.
func TestDeadLetterAfterRetries(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic(topic, 2)
	const n = 200
	for i := range n {
		r := memsource.Record[string, string]{Topic: topic, Partition: int32(i % 2), Key: "K" + strconv.Itoa(i%5), Value: strconv.Itoa(i)}
		r.Headers = []pipeline.Header{{Key: "trace", Value: []byte("t" + strconv.Itoa(i))}}
		if i%50 == 3 {
			r.Err = errors.New("cannot deserialize")
		}
		if i == 7 { // a message dead-lettered before and replayed: old headers are replaced
			r.Headers = append(r.Headers, pipeline.Header{Key: stages.HeaderAttempts, Value: []byte("99")})
		}
		src.ProduceRecord(r)
	}
	dlq := &memDLQ{}
	p := newPipeline(t, src, parallafka.WithMaxConcurrency(8),
		parallafka.WithAfterHandle("retry", must(stages.Retry[string, string](stages.RetryConfig{
			MaxAttempts: 3, InitialBackoff: time.Millisecond,
		}))),
		parallafka.WithAfterHandle("dead-letter", must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{
			Writer: dlq, Topic: "orders-dlq",
		}))))
	var handled sync.Map // value → succeeded
	h := func(ctx context.Context, m *M) error {
		if v, _ := strconv.Atoi(m.Value); v%10 == 7 {
			return fmt.Errorf("value %d is cursed", v)
		}
		handled.Store(m.Value, true)
		return nil
	}
	require.NoError(t, runUntil(t, p, h, allCommitted(src)))

	letters := dlq.written()
	byValue := map[string]pipeline.DeadLetter{}
	for _, dl := range letters {
		// The memory source keeps no raw value: identify letters by offset.
		id := fmt.Sprint(dl.Original.Partition, "/", dl.Offset)
		_, dup := byValue[id]
		require.False(t, dup, "dead-lettered twice: %s", id)
		byValue[id] = dl
	}
	for i := range n {
		part, off := int32(i%2), int64(i/2)
		dl, lettered := byValue[fmt.Sprint(part, "/", off)]
		_, ok := handled.Load(strconv.Itoa(i))
		switch {
		case i%50 == 3:
			require.True(t, lettered, "poison pill %d", i)
			assert.False(t, ok)
			assert.Equal(t, "0", header(dl, stages.HeaderAttempts))
			assert.Equal(t, "cannot deserialize", header(dl, stages.HeaderError))
		case i%10 == 7:
			require.True(t, lettered, "cursed %d", i)
			assert.False(t, ok)
			assert.Equal(t, "3", header(dl, stages.HeaderAttempts))
			assert.Equal(t, fmt.Sprintf("value %d is cursed", i), header(dl, stages.HeaderError))
			assert.Equal(t, 3, dl.Attempts)
			assert.ErrorContains(t, dl.Err, "cursed")
		default:
			assert.False(t, lettered, "%d was handled, yet dead-lettered", i)
			assert.True(t, ok, "%d neither handled nor dead-lettered", i)
			continue
		}
		assert.Equal(t, "orders-dlq", dl.Topic)
		assert.Equal(t, topic, header(dl, stages.HeaderOriginalTopic))
		assert.Equal(t, strconv.Itoa(int(part)), header(dl, stages.HeaderOriginalPartition))
		assert.Equal(t, strconv.FormatInt(off, 10), header(dl, stages.HeaderOriginalOffset))
		assert.Equal(t, pipeline.TopicPartition{Topic: topic, Partition: part}, dl.Original)
		assert.Equal(t, []byte("K"+strconv.Itoa(i%5)), dl.Key, "the raw key")
		assert.Equal(t, "t"+strconv.Itoa(i), header(dl, "trace"), "the original headers are kept")
		assert.Len(t, dl.Headers, 6)
	}
	st := p.Stats()
	assert.EqualValues(t, len(letters), st.Dropped, "dead-lettered messages count as dropped")
	assert.Zero(t, st.Failed, "no failure reached the error policy")
	assert.EqualValues(t, 20*2, st.Retried, "20 cursed messages, two retries each")
}

// A message counts as finished only once its dead letter was written: until
// then its partition's commits stop just before it.
func TestDeadLetterCommitsOnlyAfterTheWrite(t *testing.T) {
	src := memsource.New[string, string]()
	fillTopic(src, 1, 50, func(i int) string { return "K" + strconv.Itoa(i%5) })
	const failing = 12
	dlq := &memDLQ{gate: make(chan struct{}), started: make(chan struct{}, 1)}
	p := newPipeline(t, src,
		parallafka.WithAfterHandle("dead-letter", must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq}))))
	var handled atomic.Int64
	run := runPipeline(p, func(ctx context.Context, m *M) error {
		handled.Add(1)
		if m.Offset == failing {
			return stages.NonRetryable(errors.New("bad"))
		}
		return nil
	})
	recv(t, dlq.started)
	eventually(t, func() bool { return handled.Load() == 50-(10-3) && src.Committed(tp(0)) == failing },
		"every other key handled; commits up to the message being dead-lettered")
	assert.Empty(t, dlq.written())
	assert.EqualValues(t, failing, src.Committed(tp(0)))
	close(dlq.gate) // the broker acknowledges
	eventually(t, allCommitted(src), "commits to the end once the write returned")
	err, _ := run.stop(t)
	require.NoError(t, err)
	require.Len(t, dlq.written(), 1)
	assert.Equal(t, topic+".dlq", dlq.written()[0].Topic, "the default topic")
	assert.Equal(t, "1", header(dlq.written()[0], stages.HeaderAttempts))
}

// A failed write leaves the message failed, with a *DeadLetterError, for
// the error policy: by default the pipeline stops and nothing is committed
// past it. The error does not unwrap to the handler's error, so a policy
// that skips that error does not skip a message that is in no topic.
func TestDeadLetterWriteFailureGoesToTheErrorPolicy(t *testing.T) {
	errBroker := errors.New("broker unavailable")
	errHandler := errors.New("skippable handler error")
	for _, skipHandlerErrors := range []bool{false, true} {
		t.Run(fmt.Sprint("skip handler errors: ", skipHandlerErrors), func(t *testing.T) {
			src := memsource.New[string, string]()
			fillTopic(src, 1, 20, func(i int) string { return "K" + strconv.Itoa(i%3) })
			opts := []parallafka.Option{parallafka.WithAfterHandle("dead-letter",
				must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: &memDLQ{fail: errBroker}})))}
			if skipHandlerErrors {
				opts = append(opts, parallafka.WithErrorPolicy(func(err error) pipeline.ErrorAction {
					if errors.Is(err, errHandler) {
						return pipeline.Skip
					}
					return pipeline.Stop
				}))
			}
			p := newPipeline(t, src, opts...)
			run := runPipeline(p, func(ctx context.Context, m *M) error {
				if m.Offset == 5 {
					return errHandler
				}
				return nil
			})
			err := run.wait(t)
			var dle *stages.DeadLetterError
			require.ErrorAs(t, err, &dle)
			assert.ErrorIs(t, err, errBroker)
			assert.NotErrorIs(t, err, errHandler)
			assert.Equal(t, errHandler, dle.Cause)
			assert.Equal(t, topic+".dlq", dle.Topic)
			assert.ErrorContains(t, err, "skippable handler error")
			assert.LessOrEqual(t, src.Committed(tp(0)), int64(5), "nothing committed past the message")
		})
	}
}

// The stage alone: writes run concurrently up to the limit while other
// messages pass; a writer's panic is a failed write; a hard stop returns
// once the writes did.
func TestDeadLetterStage(t *testing.T) {
	t.Run("concurrent writes, others pass", func(t *testing.T) {
		dlq := &memDLQ{gate: make(chan struct{}), started: make(chan struct{}, 10)}
		in, out, stop := runStage(t, context.Background(),
			must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Concurrency: 3})))
		for i := range 3 {
			send(t, in, failedMsg(int64(i), 1, errTransient))
			recv(t, dlq.started)
		}
		ok := failedMsg(9, 1, nil)
		send(t, in, ok)
		require.Same(t, ok, recv(t, out), "a success passes while dead letters are written")
		go func() {
			// At the limit the stage waits for a slot: these two wait for the gate.
			in <- failedMsg(3, 1, errTransient)
			in <- failedMsg(4, 1, errTransient)
		}()
		close(dlq.gate)
		for range 5 {
			m := recv(t, out)
			assert.True(t, m.Dropped())
			assert.NoError(t, m.Err)
		}
		require.NoError(t, stop())
		assert.Equal(t, 3, dlq.maxInFlight)
		assert.Len(t, dlq.written(), 5)
	})
	t.Run("writer panic", func(t *testing.T) {
		in, out, stop := runStage(t, context.Background(),
			must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: panickyWriter{}})))
		m := failedMsg(0, 1, errTransient)
		send(t, in, m)
		require.Same(t, m, recv(t, out))
		var dle *stages.DeadLetterError
		require.ErrorAs(t, m.Err, &dle)
		assert.ErrorContains(t, dle, "writer bug")
		assert.False(t, m.Dropped())
		require.NoError(t, stop())
	})
	t.Run("passes what is not failed for good", func(t *testing.T) {
		dlq := &memDLQ{}
		in, out, stop := runStage(t, context.Background(),
			must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq})))
		retrying := failedMsg(0, 1, errTransient)
		retrying.Retry()
		dropped := failedMsg(1, 1, nil)
		dropped.Drop()
		for _, m := range []*M{retrying, dropped, failedMsg(2, 1, nil)} {
			send(t, in, m)
			require.Same(t, m, recv(t, out))
		}
		require.NoError(t, stop())
		assert.Empty(t, dlq.written())
	})
	t.Run("hard stop", func(t *testing.T) {
		dlq := &memDLQ{gate: make(chan struct{}), started: make(chan struct{}, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		in, _, stop := runStage(t, ctx, must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq})))
		send(t, in, failedMsg(0, 1, errTransient))
		recv(t, dlq.started)
		cancel()
		require.NoError(t, stop())
	})
	// Issue 26: a bad configuration is an error, not a panic.
	_, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{})
	require.ErrorContains(t, err, "stages: DeadLetterQueue: nil Writer")
	_, err = stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: &memDLQ{}, Concurrency: -1})
	require.ErrorContains(t, err, "stages: DeadLetterQueue: negative Concurrency")
}

type panickyWriter struct{}

func (panickyWriter) WriteDeadLetter(context.Context, pipeline.DeadLetter) error { panic("writer bug") }
