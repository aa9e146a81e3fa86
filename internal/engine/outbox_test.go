package engine

import (
	"errors"
	"slices"
	"testing"
	"testing/synctest"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// The bookkeeping of a transactional pipeline's outputs, in the
// coordinator: what joins which transaction.

// rec is an output record valued v.
func rec(v string) pipeline.Record { return pipeline.Record{Topic: "out", Value: []byte(v)} }

// produce ends a handler call of m that produced records, with verdict v.
func (h *coordHarness) produce(m *pipeline.Message[string, string], v verdict, records ...pipeline.Record) {
	h.handlerEnd <- handlerEnded[string, string]{
		done:     completion[string, string]{msg: m, verdict: v},
		produced: []outbox.Produced[string, string]{{Msg: m, Records: records}},
	}
	synctest.Wait()
}

// outputsOf returns the outputs a transaction now would carry, per
// partition, telling the coordinator of committed first.
func (h *coordHarness) outputsOf(committed ...outputsDone) map[int32][]string {
	reply := make(chan []claimOffset, 1)
	h.offsets <- offsetsQuery{reply: reply, committed: committed}
	out := make(map[int32][]string)
	for _, off := range <-reply {
		for _, f := range off.outputs {
			out[off.Partition] = append(out[off.Partition], values(f.records)...)
		}
	}
	return out
}

func values(records []pipeline.Record) []string {
	var vs []string
	for _, r := range records {
		vs = append(vs, string(r.Value))
	}
	return vs
}

// A finished message's outputs wait in its claim, in the order the
// messages finished, until a committed transaction carried them; only
// those of messages below the committable offset go in a transaction (a
// transactional commit records no offset map); a failed or retried
// attempt's outputs are dropped, and the retry's own join.
func TestOutputsJoinOnceFinished(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assign(0)
		h.poll(0, 0, "a", 1, "b", 2, "a", 3, "c")
		h.expectDispatched(0, 1, 3)
		h.produce(h.get(0, 1), verdictFinish, rec("b1"))
		if got := h.outputsOf(); len(got[0]) != 0 {
			t.Fatalf("outputs %v; want none: 1 finished above 0, which has not", got)
		}
		h.produce(h.get(0, 0), verdictRetry, rec("a0-first")) // retried: dropped
		h.expectDispatched(0)                                 // the retry
		h.produce(h.get(0, 0), verdictFinish, rec("a0"), rec("a0'"))
		h.produce(h.get(0, 3), verdictAbandon, rec("c3")) // abandoned: dropped
		h.expectDispatched(2)
		if got := h.outputsOf(); !slices.Equal(got[0], []string{"b1", "a0", "a0'"}) {
			t.Fatalf("outputs %v; want b1 a0 a0' (below 2, in the order they finished)", got)
		}
		// Not yet told: carried again.
		if got := h.outputsOf(); !slices.Equal(got[0], []string{"b1", "a0", "a0'"}) {
			t.Fatalf("outputs %v; want b1 a0 a0'", got)
		}
		claim := h.c.claims[tp(0)].id
		// A transaction committed offset 2 with them.
		if got := h.outputsOf(outputsDone{tp: tp(0), claim: claim, below: 2}); len(got[0]) != 0 {
			t.Fatalf("outputs %v after they were committed; want none", got)
		}
		h.produce(h.get(0, 2), verdictFinish, rec("a2"))
		// A late or repeated notice changes nothing.
		if got := h.outputsOf(outputsDone{tp: tp(0), claim: claim, below: 2}); !slices.Equal(got[0], []string{"a2"}) {
			t.Fatalf("outputs %v; want a2", got)
		}
		// A notice for another claim of the partition is ignored.
		if got := h.outputsOf(outputsDone{tp: tp(0), claim: claim + 1, below: 9}); !slices.Equal(got[0], []string{"a2"}) {
			t.Fatalf("outputs %v; want a2", got)
		}
	})
}

// A revoke's final offsets carry the outputs of the messages that finished
// before it was answered, those of handlers still running when it came
// included; a lost partition's outputs go with it.
func TestOutputsOnRevokeAndLoss(t *testing.T) {
	coordTest(t, coordOptions{concurrency: 4}, func(h *coordHarness) {
		h.assign(0, 1)
		h.poll(0, 0, "a", 1, "b")
		h.poll(1, 0, "a")
		h.expectDispatched(0, 1, 0)
		h.produce(h.get(0, 0), verdictFinish, rec("p0-0"))
		reply := h.rebalance(rebalanceRevoke, tp(0))
		h.produce(h.get(0, 1), verdictFinish, rec("p0-1"))
		offs, ok := replied(reply)
		if !ok || len(offs) != 1 {
			t.Fatalf("revoke reply %v, %v", offs, ok)
		}
		var got []string
		for _, f := range offs[0].outputs {
			got = append(got, values(f.records)...)
		}
		if !slices.Equal(got, []string{"p0-0", "p0-1"}) {
			t.Fatalf("revoke outputs %v; want p0-0 p0-1", got)
		}
		h.produce(h.get(1, 0), verdictFinish, rec("p1-0"))
		h.rebalance(rebalanceLost, tp(1))
		if got := h.outputsOf(); len(got) != 0 {
			t.Fatalf("outputs %v after the loss; want none", got)
		}
	})
}

// withOutputs is off with one output each, valued vs, for the messages at
// offsets from, from+1, ...
func withOutputs(o claimOffset, from int64, vs ...string) claimOffset {
	for i, v := range vs {
		o.outputs = append(o.outputs, finishedOutputs{offset: from + int64(i), records: []pipeline.Record{rec(v)}})
	}
	return o
}

// The committer's side: a transaction carries each output once. Outputs a
// committed transaction carried are told to the coordinator with the next
// question, and left out of a revoke's offsets that come before it; an
// aborted transaction's outputs go in the next one.
func TestCommitterTransactsEachOutputOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		h.c.transactor = h.src
		fail := false
		memctl.SetTransactHook(h.src, func([]pipeline.Record, []pipeline.Offset) error {
			if fail {
				fail = false
				return errors.New("aborted")
			}
			return nil
		})
		h.answer(withOutputs(off(0, 2, 1), 0, "a", "b"))
		if got := values(h.src.Produced()); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("produced %v; want a b", got)
		}
		// A revoke's offsets, before the coordinator heard of a and b.
		req := commitRequest{offsets: []claimOffset{withOutputs(off(0, 3, 1), 0, "a", "b", "c")}, reply: make(chan error, 1)}
		h.commits <- req
		if err := <-req.reply; err != nil {
			t.Fatal(err)
		}
		if got := values(h.src.Produced()); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("produced %v; want a b c", got)
		}
		// The next question tells the coordinator of both transactions.
		q := <-h.offsets
		if want := []outputsDone{{tp: tp(0), claim: 1, below: 2}, {tp: tp(0), claim: 1, below: 3}}; !slices.Equal(q.committed, want) {
			t.Fatalf("told %v; want %v", q.committed, want)
		}
		// An aborted transaction: its outputs and its offset go in the next.
		fail = true
		q.reply <- []claimOffset{withOutputs(off(1, 1, 2), 0, "x")}
		synctest.Wait()
		if got := values(h.src.Produced()); len(got) != 3 {
			t.Fatalf("produced %v after an abort; want a b c", got)
		}
		q = <-h.offsets
		if len(q.committed) != 0 {
			t.Fatalf("told %v after an abort; want nothing", q.committed)
		}
		q.reply <- []claimOffset{withOutputs(off(1, 2, 2), 0, "x", "y")}
		synctest.Wait()
		if got := values(h.src.Produced()); !slices.Equal(got, []string{"a", "b", "c", "x", "y"}) {
			t.Fatalf("produced %v; want a b c x y", got)
		}
		h.expectCommits(po(0, 2), po(0, 3), po(1, 2))
		if err := h.end(); err != nil {
			t.Fatal(err)
		}
	})
}
