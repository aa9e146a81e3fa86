package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// committerHarness runs a committer over a memsource inside a synctest
// bubble and plays the coordinator (offsets, final) and the poller
// (commits). Time is the bubble's: waiting for the committer's next
// question advances it to the committer's timer.
type committerHarness struct {
	t         *testing.T
	src       *memsource.Source[string, string]
	c         *committer[string, string]
	stats     *Stats
	offsets   chan offsetsQuery
	final     chan []claimOffset
	commits   chan commitRequest
	coordDone chan struct{}
	done      chan error
	deadline  time.Time // the shutdown deadline the committer sees
}

const (
	testInterval = time.Second
	testTimeout  = 5 * time.Second
)

func newCommitterHarness(t *testing.T) *committerHarness {
	h := &committerHarness{
		t: t, src: memsource.New[string, string](), stats: &Stats{},
		offsets: make(chan offsetsQuery), final: make(chan []claimOffset, 1),
		commits: make(chan commitRequest), coordDone: make(chan struct{}), done: make(chan error, 1),
	}
	h.c = &committer[string, string]{
		source: h.src, log: slog.New(slog.DiscardHandler), stats: h.stats,
		interval: testInterval, timeout: testTimeout,
		offsets: h.offsets, final: h.final, commits: h.commits, coordDone: h.coordDone,
		shutdownDeadline: func() time.Time { return h.deadline },
	}
	go func() { h.done <- h.c.run(context.Background()) }()
	return h
}

// answer waits for the committer's next question, answers it, and waits
// until the committer did what it does with the answer. It returns when
// the question came.
func (h *committerHarness) answer(offs ...claimOffset) time.Time {
	q := <-h.offsets
	at := time.Now()
	q.reply <- offs
	synctest.Wait()
	return at
}

// end hands over the final offsets and returns what run returned.
func (h *committerHarness) end(offs ...claimOffset) error {
	h.final <- offs
	close(h.coordDone)
	return <-h.done
}

func off(p int32, offset int64, claim uint64) claimOffset {
	return claimOffset{Offset: pipeline.Offset{TopicPartition: tp(p), Offset: offset}, claim: claim}
}

func (h *committerHarness) expectCommits(want ...pipeline.Offset) {
	h.t.Helper()
	got := memctl.Commits(h.src)
	sortOffsets := func(o []pipeline.Offset) {
		slices.SortFunc(o, func(a, b pipeline.Offset) int { return int(a.Partition-b.Partition)*1000 + int(a.Offset-b.Offset) })
	}
	sortOffsets(got)
	sortOffsets(want)
	if !slices.Equal(got, want) {
		h.t.Fatalf("commits %v; want %v", got, want)
	}
}

func po(p int32, offset int64) pipeline.Offset {
	return pipeline.Offset{TopicPartition: tp(p), Offset: offset}
}

// TestCommitterSkipsUnchanged: a partition is committed when its offset
// moved or its claim is new; nothing is sent when nothing moved.
func TestCommitterSkipsUnchanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		start := time.Now()
		if at := h.answer(off(0, 5, 1)); at.Sub(start) != testInterval {
			t.Fatalf("first question after %v; want %v", at.Sub(start), testInterval)
		}
		h.expectCommits(po(0, 5))
		h.answer(off(0, 5, 1))
		h.answer() // nothing committable
		h.expectCommits(po(0, 5))
		h.answer(off(0, 5, 2)) // a new claim of the partition: committed again
		h.expectCommits(po(0, 5), po(0, 5))
		h.answer(off(0, 5, 2), off(1, 3, 3)) // only partition 1 moved
		h.expectCommits(po(0, 5), po(0, 5), po(1, 3))
		if c := h.stats.Commits.Load(); c != 3 {
			t.Fatalf("Commits = %d; want 3", c)
		}
		if got := h.stats.Committed(); got[tp(0)] != 5 || got[tp(1)] != 3 {
			t.Fatalf("Stats.Committed = %v", got)
		}
		if err := h.end(off(0, 5, 2), off(1, 4, 3)); err != nil {
			t.Fatalf("run: %v", err)
		}
		h.expectCommits(po(0, 5), po(0, 5), po(1, 3), po(1, 4))
	})
}

// TestCommitterRetriesWithBackoff: a failed commit is retried after a
// growing backoff (never longer than the interval), asking the coordinator
// again each time; success resets it.
func TestCommitterRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		failures := 3
		memctl.SetCommitHook(h.src, func([]pipeline.Offset) error {
			if failures > 0 {
				failures--
				return errors.New("broker unavailable")
			}
			return nil
		})
		var at []time.Time
		for i := range int64(5) {
			at = append(at, h.answer(off(0, 10+i, 1)))
		}
		var gaps []time.Duration
		for i := 1; i < len(at); i++ {
			gaps = append(gaps, at[i].Sub(at[i-1]))
		}
		want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, testInterval}
		if !slices.Equal(gaps, want) {
			t.Fatalf("questions %v apart; want %v", gaps, want)
		}
		// The retry committed what the coordinator said then, not the
		// failed offsets.
		h.expectCommits(po(0, 13), po(0, 14))
		if e, c := h.stats.CommitErrors.Load(), h.stats.Commits.Load(); e != 3 || c != 2 {
			t.Fatalf("CommitErrors, Commits = %d, %d; want 3, 2", e, c)
		}
		if err := h.end(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})
}

// TestCommitterNotOwnedNotRetried: ErrNotOwned waits for the next
// interval, and a final commit refused so is not retried and not an error.
func TestCommitterNotOwnedNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		calls := 0
		memctl.SetCommitHook(h.src, func([]pipeline.Offset) error {
			calls++
			return fmt.Errorf("generation 7: %w", pipeline.ErrNotOwned)
		})
		a := h.answer(off(0, 1, 1))
		b := h.answer(off(0, 1, 1))
		if b.Sub(a) != testInterval {
			t.Fatalf("asked again after %v; want %v", b.Sub(a), testInterval)
		}
		start := time.Now()
		if err := h.end(off(0, 2, 1)); err != nil {
			t.Fatalf("run: %v; want nil (not ours any more)", err)
		}
		if calls != 3 || time.Since(start) != 0 {
			t.Fatalf("%d commit calls, the last taking %v; want 3, at once", calls, time.Since(start))
		}
	})
}

// TestCommitterFinalWithinTimeout: the final commit retries within the
// timeout, then gives up and run returns the error; a shutdown deadline
// bounds it further, but leaves it finalCommitMargin.
func TestCommitterFinalWithinTimeout(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Duration // from the final hand-over; 0: no shutdown deadline
		want     time.Duration
	}{
		{"revoke timeout", 0, testTimeout},
		{"shutdown deadline", 3 * time.Second, 3 * time.Second},
		{"shutdown deadline passed", -time.Second, finalCommitMargin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newCommitterHarness(t)
				memctl.SetCommitHook(h.src, func([]pipeline.Offset) error { return errors.New("down") })
				if tc.deadline != 0 {
					h.deadline = time.Now().Add(tc.deadline)
				}
				start := time.Now()
				err := h.end(off(0, 9, 1))
				if took := time.Since(start); took != tc.want {
					t.Fatalf("final commit gave up after %v; want %v", took, tc.want)
				}
				if err == nil {
					t.Fatal("run returned nil after the final commit failed")
				}
				h.expectCommits()
			})
		})
	}
	t.Run("succeeds after a failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := newCommitterHarness(t)
			fail := true
			memctl.SetCommitHook(h.src, func([]pipeline.Offset) error {
				if fail {
					fail = false
					return errors.New("down")
				}
				return nil
			})
			start := time.Now()
			if err := h.end(off(0, 9, 1)); err != nil {
				t.Fatalf("run: %v", err)
			}
			if took := time.Since(start); took != 50*time.Millisecond {
				t.Fatalf("final commit took %v; want one 50ms backoff", took)
			}
			h.expectCommits(po(0, 9))
		})
	})
}

// TestCommitterRevokeCommit: the poller's commit of a revoke's offsets is
// answered with its outcome, and a periodic answer with the same offsets
// is not committed again.
func TestCommitterRevokeCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		req := commitRequest{offsets: []claimOffset{off(0, 4, 1)}, reply: make(chan error, 1)}
		h.commits <- req
		if err := <-req.reply; err != nil {
			t.Fatalf("revoke commit: %v", err)
		}
		h.answer(off(0, 4, 1))
		h.expectCommits(po(0, 4))
		if err := h.end(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})
}

// TestCommitterCoordinatorFailed: the coordinator returned without final
// offsets (it failed): nothing is committed, run returns.
func TestCommitterCoordinatorFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		close(h.coordDone)
		if err := <-h.done; err != nil {
			t.Fatalf("run: %v", err)
		}
		h.expectCommits()
	})
}

// TestCommitterOffsetMap: the offsets' maps go into the commit metadata;
// a commit of the same offset with a grown map is sent again; a broker
// refusing the metadata as too large makes the committer halve the map's
// limit until it fits.
func TestCommitterOffsetMap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		h.c.mapMaxBytes = 4096
		var runs []offsetmap.Run
		for i := int64(0); i < 300; i++ {
			from := 10 + i*10 + i%7 // irregular gaps: little to compress
			runs = append(runs, offsetmap.Run{From: from, To: from + 1 + i%3})
		}
		withRuns := func(offset int64, runs []offsetmap.Run) claimOffset {
			o := off(0, offset, 1)
			o.runs = runs
			return o
		}
		h.answer(withRuns(5, runs[:1]))
		got, err := offsetmap.Decode(5, memctl.Metadata(h.src, tp(0)))
		if err != nil || !slices.Equal(got, runs[:1]) {
			t.Fatalf("metadata decodes to %v, %v; want %v", got, err, runs[:1])
		}
		h.answer(withRuns(5, runs[:2])) // same offset, the map grew: sent
		if n := len(memctl.Commits(h.src)); n != 2 {
			t.Fatalf("%d commits; want 2", n)
		}
		h.answer(withRuns(5, runs[:2])) // nothing changed: not sent
		if n := len(memctl.Commits(h.src)); n != 2 {
			t.Fatalf("%d commits; want 2 (unchanged map)", n)
		}
		const brokerLimit = 200
		memctl.SetCommitHook(h.src, func(offs []pipeline.Offset) error {
			for _, o := range offs {
				if len(o.Metadata) > brokerLimit {
					return fmt.Errorf("%w: %d bytes", pipeline.ErrMetadataTooLarge, len(o.Metadata))
				}
			}
			return nil
		})
		for range 8 {
			h.answer(withRuns(5, runs))
		}
		md := memctl.Metadata(h.src, tp(0))
		if len(md) > brokerLimit || len(md) == 0 {
			t.Fatalf("metadata of %d bytes committed; want within the broker's %d", len(md), brokerLimit)
		}
		if h.c.mapMaxBytes >= 4096 {
			t.Fatalf("map limit %d; want halved", h.c.mapMaxBytes)
		}
		if got, err := offsetmap.Decode(5, md); err != nil || len(got) == 0 || !slices.Equal(got, runs[:len(got)]) {
			t.Fatalf("committed map %v, %v; want a prefix of the runs", got, err)
		}
		if err := h.end(); err != nil {
			t.Fatal(err)
		}
	})
}

// lockedBuffer is a log's output, safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// A claim's held keys go into its metadata with the offset map, newest
// first within the limit; leaving some out is warned once per number.
func TestCommitterHeldKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newCommitterHarness(t)
		var logs lockedBuffer
		h.c.log = slog.New(slog.NewTextHandler(&logs, nil))
		h.c.mapMaxBytes = 300
		var held []offsetmap.Held
		for i := range 40 {
			key := fmt.Appendf(nil, "%016x", uint64(i+1)*0x9E3779B97F4A7C15) // little to compress
			held = append(held, offsetmap.Held{Key: key, Offset: int64(i), Since: int64(1000 + i)})
		}
		withHeld := func(offset int64, held []offsetmap.Held) claimOffset {
			o := off(0, offset, 1)
			o.runs = []offsetmap.Run{{From: offset + 2, To: offset + 4}}
			o.held = held
			return o
		}
		h.answer(withHeld(30, held[:2]))
		runs, got, err := offsetmap.DecodeHeld(30, memctl.Metadata(h.src, tp(0)))
		if err != nil || len(runs) != 1 || len(got) != 2 || string(got[1].Key) != string(held[1].Key) {
			t.Fatalf("metadata decodes to %v, %v, %v; want the run and 2 held keys", runs, got, err)
		}
		for range 3 {
			h.answer(withHeld(31, held))
		}
		_, got, err = offsetmap.DecodeHeld(31, memctl.Metadata(h.src, tp(0)))
		if err != nil || len(got) == 0 || len(got) == len(held) || string(got[len(got)-1].Key) != string(held[len(held)-1].Key) {
			t.Fatalf("metadata holds %d of %d keys (%v); want the newest that fit", len(got), len(held), err)
		}
		if n := logs.count("held keys do not all fit"); n != 1 {
			t.Fatalf("warned %d times; want once", n)
		}
		h.c.mapMaxBytes = 0 // no map: held keys are not recorded, and that is said once
		h.answer(withHeld(32, held[:1]))
		h.answer(withHeld(33, held[:1]))
		if n := logs.count("held keys are not recorded"); n != 1 {
			t.Fatalf("warned %d times; want once", n)
		}
		if err := h.end(); err != nil {
			t.Fatal(err)
		}
	})
}
