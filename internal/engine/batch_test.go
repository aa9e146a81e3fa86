package engine

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// batches takes the batches the coordinator dispatched since the last look.
func (h *coordHarness) batches() [][]*pipeline.Message[string, string] {
	var out [][]*pipeline.Message[string, string]
	for {
		select {
		case j, ok := <-h.dispatch:
			if !ok {
				return out
			}
			for _, m := range j.batch.msgs {
				h.ctxs[m] = j.ctx
			}
			out = append(out, j.batch.msgs)
		default:
			return out
		}
	}
}

// expectBatches checks the offsets of the batches dispatched since the
// last look.
func (h *coordHarness) expectBatches(want ...[]int64) [][]*pipeline.Message[string, string] {
	h.t.Helper()
	got := h.batches()
	var offsets [][]int64
	for _, b := range got {
		var offs []int64
		for _, m := range b {
			offs = append(offs, m.Offset)
		}
		offsets = append(offsets, offs)
	}
	if !slices.EqualFunc(offsets, want, slices.Equal) {
		h.t.Fatalf("dispatched batches %v; want %v", offsets, want)
	}
	return got
}

// endBatch ends a batch as the pool does: the handler is free, with these
// messages settled.
func (h *coordHarness) endBatch(settled ...completion[string, string]) {
	h.handlerEnd <- handlerEnded[string, string]{settled: settled}
	synctest.Wait()
}

func done(m *pipeline.Message[string, string], v verdict) completion[string, string] {
	return completion[string, string]{msg: m, verdict: v}
}

func batchOptions(concurrency, maxMessages int, linger time.Duration) coordOptions {
	return coordOptions{concurrency: concurrency, batch: BatchLimits{MaxMessages: maxMessages, MaxBytes: 1 << 20, Linger: linger}}
}

// A batch takes a ready key's queued messages along, in offset order,
// longest backlog first, then the other ready keys.
func TestBatchTakesKeyRuns(t *testing.T) {
	coordTest(t, batchOptions(1, 10, 0), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "a", 3, "a", 4, "c")
		h.expectBatches([]int64{0, 2, 3, 1, 4})
	})
}

// A key stays held until every message of it in the batch finished: no
// key is in two batches in flight, and a batch never waits for a busy key.
func TestBatchKeyHeldUntilAllLeave(t *testing.T) {
	coordTest(t, batchOptions(2, 2, 0), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a", 3, "b")
		b := h.expectBatches([]int64{0, 1}, []int64{3})
		h.endBatch(done(b[1][0], verdictFinish))
		h.expectBatches() // a is busy: nothing else is ready
		h.endBatch(done(b[0][0], verdictFinish))
		h.expectBatches() // a's second message is still out
		h.poll(0, 4, "c")
		h.expectBatches([]int64{4}) // other keys go meanwhile
		h.finish(0, 1)              // through the stages: the key's last message out
		h.expectBatches([]int64{2})
	})
}

// A failed message's later messages of its key in the batch are requeued
// behind it; its retry takes them along again, in order.
func TestBatchRequeueBehindRetry(t *testing.T) {
	coordTest(t, batchOptions(1, 10, 0), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b", 3, "a")
		b := h.expectBatches([]int64{0, 1, 3, 2})[0]
		h.endBatch(done(b[1], verdictRequeue), done(b[2], verdictRequeue), done(b[0], verdictRetry), done(b[3], verdictFinish))
		h.expectBatches([]int64{0, 1, 3})
		h.expectCommittable(map[int32]int64{0: 0})
	})
}

// An abandoned message takes its key's queue, requeued messages included.
func TestBatchAbandonDropsKey(t *testing.T) {
	coordTest(t, batchOptions(1, 10, 0), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "b")
		b := h.expectBatches([]int64{0, 1, 2})[0]
		h.endBatch(done(b[1], verdictRequeue), done(b[0], verdictAbandon), done(b[2], verdictFinish))
		h.poll(0, 3, "a")
		h.expectBatches([]int64{3})
		h.expectCommittable(map[int32]int64{0: 0})
	})
}

// A partial batch lingers for more messages; a full one goes at once.
func TestBatchLinger(t *testing.T) {
	coordTest(t, batchOptions(1, 4, 5*time.Millisecond), func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b")
		h.expectBatches()
		time.Sleep(4 * time.Millisecond)
		synctest.Wait()
		h.expectBatches()
		time.Sleep(time.Millisecond)
		synctest.Wait()
		b := h.expectBatches([]int64{0, 1})[0]
		h.poll(0, 2, "c", 3, "d", 4, "e", 5, "f", 6, "g")
		h.expectBatches() // the handler is busy
		h.endBatch(done(b[0], verdictFinish), done(b[1], verdictFinish))
		h.expectBatches([]int64{2, 3, 4, 5}) // full: at once
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
		h.expectBatches() // the one handler is busy
	})
}

// A batch stays within its byte limit, unless its first message alone is
// larger.
func TestBatchMaxBytes(t *testing.T) {
	o := batchOptions(1, 10, 0)
	o.batch.MaxBytes = 3 * int64(messageBytes(&pipeline.Message[string, string]{RawKey: []byte("a")}))
	coordTest(t, o, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a", 2, "a", 3, "a", 4, "b")
		b := h.expectBatches([]int64{0, 1, 2})[0]
		h.endBatch(done(b[0], verdictFinish), done(b[1], verdictFinish), done(b[2], verdictFinish))
		h.expectBatches([]int64{3, 4})
	})
}

// Partition mode: a partition is in one batch at a time; unordered: any.
func TestBatchModes(t *testing.T) {
	o := batchOptions(2, 10, 0)
	o.ordering = OrderByPartition
	coordTest(t, o, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "b")
		h.poll(1, 0, "c")
		h.expectBatches([]int64{0, 1}, []int64{0})
		h.poll(0, 2, "d")
		h.expectBatches()
	})
	o.ordering = Unordered
	coordTest(t, o, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "a")
		b := h.expectBatches([]int64{0, 1})[0]
		h.poll(0, 2, "a")
		h.expectBatches([]int64{2})
		_ = b
	})
}

// A batch of two partitions is cancelled when one of their claims ends;
// the other claim's messages are requeued by the pool (see the pool test).
func TestBatchContextOfSeveralPartitions(t *testing.T) {
	coordTest(t, batchOptions(1, 10, 0), func(h *coordHarness) {
		h.assign(0, 1)
		h.polled <- cycleOf([]*pipeline.Message[string, string]{h.msg(0, 0, "a"), h.msg(1, 0, "b")})
		synctest.Wait()
		b := h.expectBatches([]int64{0, 0})[0]
		ctx := h.ctxs[b[0]]
		h.rebalance(rebalanceLost, tp(1))
		if ctx.Err() == nil {
			t.Fatal("the batch's context survived the loss of one of its partitions")
		}
		h.endBatch(done(b[0], verdictRequeue), done(b[1], verdictAbandon))
		h.expectBatches([]int64{0})
	})
}

// The pool gives each message its outcome: nil finishes all, an error fails
// all, a BatchError the ones it names; a failed message's later messages
// of its key are requeued; dropped and undeserializable messages are not
// given to the handler.
func TestBatchPoolOutcomes(t *testing.T) {
	mk := func(off int64, key string) *pipeline.Message[string, string] {
		return &pipeline.Message[string, string]{Topic: "t", Offset: off, RawKey: []byte(key)}
	}
	run := func(handler pipeline.BatchHandler[string, string], msgs []*pipeline.Message[string, string], prev []int32) map[int64]verdict {
		t.Helper()
		dispatch := make(chan job[string, string], 1)
		ends := make(chan handlerEnded[string, string], 1)
		p := &handlerPool[string, string]{concurrency: 1, batchHandler: handler, log: slog.New(slog.DiscardHandler),
			collector: &collector[string, string]{policy: func(error) pipeline.ErrorAction { return pipeline.Skip }, failed: make(chan error, 1), stats: &Stats{}, log: slog.New(slog.DiscardHandler)},
			stats:     &Stats{}, dispatch: dispatch, handlerEnd: ends}
		ctxs := make([]context.Context, len(msgs))
		for i := range ctxs {
			ctxs[i] = context.Background()
		}
		dispatch <- job[string, string]{ctx: context.Background(), batch: &batch[string, string]{msgs: msgs, prev: prev, claimCtx: ctxs}}
		close(dispatch)
		if err := p.run(context.Background()); err != nil {
			t.Fatal(err)
		}
		ended := <-ends
		got := map[int64]verdict{}
		for _, d := range ended.settled {
			got[d.msg.Offset] = d.verdict
		}
		return got
	}
	msgs := func() []*pipeline.Message[string, string] {
		return []*pipeline.Message[string, string]{mk(0, "a"), mk(2, "a"), mk(1, "b")}
	}
	prev := []int32{-1, 0, -1}
	ok := func(context.Context, []*pipeline.Message[string, string]) error { return nil }
	if got := run(ok, msgs(), prev); got[0] != verdictFinish || got[1] != verdictFinish || got[2] != verdictFinish {
		t.Errorf("nil: %v", got)
	}
	boom := func(context.Context, []*pipeline.Message[string, string]) error { return errors.New("boom") }
	if got := run(boom, msgs(), prev); got[0] != verdictFinish || got[2] != verdictRequeue || got[1] != verdictFinish {
		// skipped by the policy (finish), the follower requeued
		t.Errorf("error: %v", got)
	}
	m := msgs()
	partial := func(ctx context.Context, b []*pipeline.Message[string, string]) error {
		var failed pipeline.BatchError[string, string]
		failed.Fail(m[0], errors.New("row"))
		return failed.Err()
	}
	if got := run(partial, m, prev); got[2] != verdictRequeue || got[1] != verdictFinish || m[0].Err == nil || m[1].Err != nil || m[1].Attempt != 0 {
		t.Errorf("batch error: %v (attempt of the requeued %d)", got, m[1].Attempt)
	}
	m = msgs()
	panicky := func(context.Context, []*pipeline.Message[string, string]) error { panic("bug") }
	var pe *pipeline.PanicError
	if got := run(panicky, m, prev); got[2] != verdictRequeue || !errors.As(m[0].Err, &pe) || !errors.As(m[2].Err, &pe) {
		t.Errorf("panic: %v, %v", got, m[0].Err)
	}
	m = msgs()
	m[0].Drop()
	m[1].Err = errors.New("undeserializable")
	var given []*pipeline.Message[string, string]
	spy := func(ctx context.Context, b []*pipeline.Message[string, string]) error { given = b; return nil }
	run(spy, m, prev)
	if len(given) != 1 || given[0] != m[2] {
		t.Errorf("handler given %v; want only the third message", given)
	}
}
