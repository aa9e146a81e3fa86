package integration_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

func randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// recorder watches one topic consumed by one or more members of a group:
// every handled message with the ownership run it belongs to, the runs
// (a member's ownership of a partition, from assign to revoke), and the
// offsets each run committed. It checks on the fly that no two handlers of
// a key overlap, in any member, and afterwards (check) that nothing was
// lost, that order held and that every duplicate is explained.
type recorder struct {
	mu       sync.Mutex
	stamp    uint64
	events   []event
	count    map[po]int
	busy     map[string]string // key → member handling it
	runs     []*run
	current  map[string]map[int32]*run // member → partition → its latest run
	handled  map[string]int            // member → messages handled
	problems []string
	// base is the group's committed offsets before the first run, and
	// baseMaps their offset maps (the offsets above base that an earlier
	// owner, outside the recorder, had finished).
	base     map[int32]int64
	baseMaps map[int32][]offsetmap.Run
	// resumes[member] holds, for each resume after a back-pressure pause,
	// how long the next message took to arrive (-1: none yet).
	resumes map[string][]time.Duration
	resumed map[string]time.Time
}

// paused notes a member's Pause (true) or Resume (false).
func (r *recorder) paused(member string, pause bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pause {
		delete(r.resumed, member)
		return
	}
	r.resumed[member] = time.Now()
}

// polled notes that Poll returned a message of partition p to member.
func (r *recorder) polled(member string, p int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ru := r.current[member][p]; ru != nil && ru.firstPoll.IsZero() {
		ru.firstPoll = time.Now()
	}
	if at, ok := r.resumed[member]; ok {
		r.resumes[member] = append(r.resumes[member], time.Since(at))
		delete(r.resumed, member)
	}
}

// resumeLatencies returns, sorted, how long the first message after each
// resume took to arrive.
func (r *recorder) resumeLatencies(member string) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.resumes[member])
	slices.Sort(out)
	return out
}

// event is one message that a handler finished successfully.
type event struct {
	member string
	run    *run
	po
	key   string
	seq   int
	stamp uint64 // order of handler starts, across members
	start time.Time
	end   time.Time
}

// run is one member's ownership of one partition.
type run struct {
	id          int
	member      string
	partition   int32
	assigned    time.Time
	revokeStart time.Time
	revokeEnd   time.Time // zero while owned
	lost        bool
	committed   int64     // highest offset this run committed; -1 if none
	metadata    string    // the offset map of its latest commit of that offset
	firstPoll   time.Time // the first message of the run was polled
	firstStart  time.Time // a handler started on the first message
	lowest      int64     // the lowest offset a handler started on; -1 before
	handled     []int64
}

func newRecorder() *recorder {
	return &recorder{
		count: map[po]int{}, busy: map[string]string{},
		current: map[string]map[int32]*run{}, handled: map[string]int{},
		base: map[int32]int64{}, baseMaps: map[int32][]offsetmap.Run{}, resumes: map[string][]time.Duration{}, resumed: map[string]time.Time{},
	}
}

func (r *recorder) problem(format string, args ...any) {
	if len(r.problems) < 50 {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

func (r *recorder) assigned(member string, parts []pipeline.TopicPartition) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current[member] == nil {
		r.current[member] = map[int32]*run{}
	}
	for _, tp := range parts {
		if old := r.current[member][tp.Partition]; old != nil && old.revokeEnd.IsZero() {
			r.problem("%s: partition %d assigned again while owned", member, tp.Partition)
		}
		ru := &run{id: len(r.runs), member: member, partition: tp.Partition, assigned: time.Now(), committed: -1, lowest: -1}
		r.runs = append(r.runs, ru)
		r.current[member][tp.Partition] = ru
	}
}

func (r *recorder) revoked(member string, parts []pipeline.TopicPartition, start, end time.Time, lost bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tp := range parts {
		ru := r.current[member][tp.Partition]
		if ru == nil || !ru.revokeEnd.IsZero() {
			r.problem("%s: partition %d revoked but not owned", member, tp.Partition)
			continue
		}
		ru.revokeStart, ru.revokeEnd, ru.lost = start, end, lost
	}
}

func (r *recorder) committed(member string, offsets []pipeline.Offset) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, off := range offsets {
		ru := r.current[member][off.Partition]
		if ru == nil {
			r.problem("%s: committed %s without owning it", member, off.TopicPartition)
			continue
		}
		if off.Offset >= ru.committed {
			ru.committed, ru.metadata = off.Offset, off.Metadata
		}
	}
}

// handler returns the member's handler: it notes the message's start,
// checks that no other handler holds its key, runs w, and records the
// message as handled if w succeeds.
func (r *recorder) handler(member string, w work) parallafka.Handler[string, []byte] {
	return func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
		key, seq, perr := keyed.Parse(msg.Value)
		r.mu.Lock()
		if perr != nil || key != msg.Key {
			r.problem("%s: message %s: key %q, value %q", member, msg, msg.Key, msg.Value)
		}
		r.stamp++
		ev := event{member: member, po: po{msg.Partition, msg.Offset}, key: key, seq: seq, stamp: r.stamp, start: time.Now()}
		ru := r.current[member][msg.Partition]
		switch {
		case ru == nil:
			r.problem("%s: handling %s of a partition never assigned", member, msg)
		case !ru.revokeEnd.IsZero():
			r.problem("%s: handling %s after its partition was revoked", member, msg)
		case ru.firstStart.IsZero():
			ru.firstStart = ev.start
		}
		if ru != nil && (ru.lowest < 0 || msg.Offset < ru.lowest) {
			ru.lowest = msg.Offset
		}
		ev.run = ru
		if other, ok := r.busy[key]; ok {
			r.problem("%s: key %s handled by %s and %s at once (%s)", member, key, other, member, msg)
		}
		r.busy[key] = member
		r.mu.Unlock()

		err := w(ctx, msg)

		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.busy, key)
		if err != nil {
			return err
		}
		ev.end = time.Now()
		r.events = append(r.events, ev)
		r.count[ev.po]++
		r.handled[member]++
		if ru != nil {
			ru.handled = append(ru.handled, msg.Offset)
		}
		return nil
	}
}

// distinct returns how many different records were handled.
func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.count)
}

// counts returns how many times each record was handled.
func (r *recorder) counts() map[po]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.count)
}

// handledBy returns how many messages member handled.
func (r *recorder) handledBy(member string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.handled[member]
}

// owned returns the partitions member owns now.
func (r *recorder) owned(member string) []int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int32
	for p, ru := range r.current[member] {
		if ru.revokeEnd.IsZero() {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// runsCopy returns copies of the runs, for conditions and reports.
func (r *recorder) runsCopy() []run {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]run, len(r.runs))
	for i, ru := range r.runs {
		out[i] = *ru
		out[i].handled = nil
	}
	return out
}

// handover is one partition's move from a run to the next.
type handover struct {
	partition  int32
	from, to   string
	at         time.Time     // the old owner's revoke began
	callback   time.Duration // the old owner's revoke callback took
	firstPoll  time.Duration // from the revoke's start to the new owner's first message polled
	firstStart time.Duration // ... and to a handler starting on it, after the new owner's backlog of other partitions
}

// result is what check found.
type result struct {
	duplicates int // handlings of records handled before
	// beyondCommit counts the records a run finished at or past the offset
	// it committed last (past a message it had not finished when it gave
	// the partition up); the next run redoes them.
	beyondCommit int
	handovers    []handover
	// overtaken counts the runs that gave a partition up with records
	// finished past their last commit, where the first unfinished record
	// was not waiting behind its own key (its key's previous record was
	// not handled in that run): it was dispatchable, and later records of
	// other keys went first. With first-come-first-served dispatch this
	// cannot happen; it measures how much the router's scheduling adds to
	// the records redone after a revoke or a stop.
	overtaken  int
	firstStart time.Time
	lastEnd    time.Time
}

// check verifies, after the members stopped:
//   - every produced record was handled, and nothing else;
//   - no key was in two handlers at once, and every message was handled
//     while its partition was owned (checked on the fly);
//   - within each run, each key's messages were handled in order, at most
//     once; across runs, each key's messages were first handled in order
//     (from the first sequence number among produced, for a test that
//     checks only part of a topic);
//   - each run started exactly at the offset the group had committed when
//     it began, handled everything below what it committed, and committed
//     as far as it had finished (the offset it committed last is one it had
//     not finished), unless it lost the partition; the offset map of its
//     commit marks only offsets finished (by a run, or before the first run
//     as r.baseMaps says);
//   - every duplicate is a record that an earlier run finished at or past
//     its last commit and that the commit's offset map did not mark.
func (r *recorder) check(t testing.TB, produced []kafkatest.Record) result {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var res result
	for _, p := range r.problems {
		t.Error(p)
	}

	// Each key's records to expect: how many, from which sequence number.
	perKey := map[string]int{}
	next := map[string]int{}
	want := map[po]bool{}
	type keySeq struct {
		key string
		seq int
	}
	recordAt := map[po]keySeq{}
	offsetOf := map[keySeq]po{}
	for _, rec := range produced {
		want[po{rec.Partition, rec.Offset}] = true
		k := string(rec.Key)
		_, seq, err := keyed.Parse(rec.Value)
		if err != nil {
			t.Fatalf("produced record %d@%d: %v", rec.Partition, rec.Offset, err)
		}
		recordAt[po{rec.Partition, rec.Offset}] = keySeq{k, seq}
		offsetOf[keySeq{k, seq}] = po{rec.Partition, rec.Offset}
		if n, ok := next[k]; !ok || seq < n {
			next[k] = seq
		}
		perKey[k]++
	}
	from := maps.Clone(next)
	missing := 0
	for x := range want {
		if r.count[x] == 0 {
			if missing < 10 {
				t.Errorf("lost: record %s was never handled", x)
			}
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d records were never handled", missing, len(want))
	}
	for x, n := range r.count {
		if !want[x] {
			t.Errorf("handled %s, which was not produced", x)
		}
		res.duplicates += n - 1
	}

	// Order: within a run, strictly increasing per key; across runs, the
	// first handlings of each key's messages in sequence order.
	evs := slices.Clone(r.events)
	sort.Slice(evs, func(i, j int) bool { return evs[i].stamp < evs[j].stamp })
	type runKey struct {
		run *run
		key string
	}
	lastInRun := map[runKey]int{}
	seen := map[string]map[int]bool{}
	orderErrs := 0
	for _, e := range evs {
		if res.firstStart.IsZero() || e.start.Before(res.firstStart) {
			res.firstStart = e.start
		}
		rk := runKey{e.run, e.key}
		if last, ok := lastInRun[rk]; ok && e.seq <= last {
			if orderErrs++; orderErrs <= 10 {
				t.Errorf("order: %s handled %s seq %d after seq %d in the same run", e.member, e.key, e.seq, last)
			}
		}
		lastInRun[rk] = e.seq
		if seen[e.key] == nil {
			seen[e.key] = map[int]bool{}
		}
		if !seen[e.key][e.seq] {
			seen[e.key][e.seq] = true
			if e.seq != next[e.key] {
				if orderErrs++; orderErrs <= 10 {
					t.Errorf("order: %s first handled %s seq %d when seq %d was due", e.member, e.key, e.seq, next[e.key])
				}
			}
			next[e.key] = e.seq + 1
		}
	}
	for k, n := range perKey {
		if next[k] != from[k]+n && missing == 0 {
			t.Errorf("key %s: first handlings reached seq %d, want %d", k, next[k], from[k]+n)
		}
	}

	// Runs, partition by partition, in the order they were assigned.
	byPartition := map[int32][]*run{}
	for _, ru := range r.runs {
		byPartition[ru.partition] = append(byPartition[ru.partition], ru)
	}
	for p, runs := range byPartition {
		sort.Slice(runs, func(i, j int) bool { return runs[i].assigned.Before(runs[j].assigned) })
		position := r.base[p]  // the group's committed offset
		inMap := r.baseMaps[p] // and its offset map: finished above it
		finished := map[int64]bool{}
		for _, run := range inMap { // by an owner before the recorder's runs
			for o := run.From; o < run.To; o++ {
				finished[o] = true
			}
		}
		covered := func(o int64) bool {
			if o < position {
				return true
			}
			for _, run := range inMap {
				if run.From <= o && o < run.To {
					return true
				}
			}
			return false
		}
		var prev *run
		for _, ru := range runs {
			h := map[int64]bool{}
			lo := int64(-1)
			for _, o := range ru.handled {
				if h[o] {
					t.Errorf("%s handled %d@%d twice in one run", ru.member, p, o)
				}
				h[o] = true
				finished[o] = true
				if lo < 0 || o < lo {
					lo = o
				}
			}
			if ru.lowest >= 0 && (lo < 0 || ru.lowest < lo) {
				lo = ru.lowest // a message it started and did not finish
			}
			if lo >= 0 && lo != position {
				t.Errorf("partition %d: run of %s started at offset %d, the group had committed %d", p, ru.member, lo, position)
			}
			if ru.committed >= 0 {
				if ru.lost {
					t.Errorf("partition %d: %s committed %d in a run it lost", p, ru.member, ru.committed)
				}
				for o := position; o < ru.committed; o++ {
					if !finished[o] {
						t.Errorf("partition %d: %s committed %d though nobody finished %d", p, ru.member, ru.committed, o)
						break
					}
				}
				runs, err := offsetmap.Decode(ru.committed, ru.metadata)
				if err != nil {
					t.Errorf("partition %d: %s committed %d with metadata that is not an offset map: %v", p, ru.member, ru.committed, err)
				}
				for _, run := range runs {
					for o := run.From; o < run.To; o++ {
						if !finished[o] {
							t.Errorf("partition %d: %s's offset map marks %d finished, which nobody finished", p, ru.member, o)
							break
						}
					}
				}
				if h[ru.committed] && !ru.revokeEnd.IsZero() {
					t.Errorf("partition %d: %s finished %d but gave the partition up having committed only up to it",
						p, ru.member, ru.committed)
				}
				if ru.committed >= position {
					position, inMap = ru.committed, runs
				}
			}
			past := 0
			for o := range h {
				if !covered(o) {
					past++
				}
			}
			res.beyondCommit += past
			if past > 0 && !ru.revokeEnd.IsZero() && !ru.lost {
				ks, ok := recordAt[po{p, position}]
				prev, hasPrev := offsetOf[keySeq{ks.key, ks.seq - 1}]
				if ok && (!hasPrev || prev.p != p || !h[prev.o]) {
					res.overtaken++
				}
			}
			if prev != nil && !prev.revokeStart.IsZero() && !ru.firstPoll.IsZero() {
				h := handover{
					partition: p, from: prev.member, to: ru.member, at: prev.revokeStart,
					callback:  prev.revokeEnd.Sub(prev.revokeStart),
					firstPoll: ru.firstPoll.Sub(prev.revokeStart),
				}
				if !ru.firstStart.IsZero() {
					h.firstStart = ru.firstStart.Sub(prev.revokeStart)
				}
				res.handovers = append(res.handovers, h)
			}
			prev = ru
		}
		// The last run's finishes past its commit are redone by nobody.
		if last := runs[len(runs)-1]; last != nil {
			for _, o := range last.handled {
				if !covered(o) {
					res.beyondCommit--
				}
			}
		}
	}
	if res.duplicates != res.beyondCommit {
		t.Errorf("%d duplicates, but only %d records were finished past a run's last commit", res.duplicates, res.beyondCommit)
	}
	for _, e := range r.events {
		if e.end.After(res.lastEnd) {
			res.lastEnd = e.end
		}
	}
	sort.Slice(res.handovers, func(i, j int) bool { return res.handovers[i].at.Before(res.handovers[j].at) })
	return res
}

// describe summarizes hand-overs for the log: count, then min, median and
// max of the time from the revoke's start to the new owner's first message
// polled, to its first message handled, and of the revoke callback.
func describe(hs []handover) string {
	if len(hs) == 0 {
		return "none"
	}
	var poll, start, cb []time.Duration
	moved := 0
	for _, h := range hs {
		poll, cb = append(poll, h.firstPoll), append(cb, h.callback)
		if h.firstStart > 0 {
			start = append(start, h.firstStart)
		}
		if h.from != h.to {
			moved++
		}
	}
	stats := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		slices.Sort(ds)
		ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
		return fmt.Sprintf("%v/%v/%v", ms(ds[0]), ms(ds[len(ds)/2]), ms(ds[len(ds)-1]))
	}
	return fmt.Sprintf("%d hand-overs (%d to another member), min/median/max: revoke → new owner polls its first message %s, → handles it %s (%d of %d handled); revoke callback %s",
		len(hs), moved, stats(poll), stats(start), len(start), len(hs), stats(cb))
}

func detail(hs []handover) string {
	var b strings.Builder
	for _, h := range hs {
		fmt.Fprintf(&b, "\n  p%d %s→%s: revoke callback %v, first message polled after %v, handled after %v",
			h.partition, h.from, h.to, h.callback.Round(time.Millisecond), h.firstPoll.Round(time.Millisecond), h.firstStart.Round(time.Millisecond))
	}
	return b.String()
}
