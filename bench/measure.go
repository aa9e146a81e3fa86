package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// recorder is one run's bookkeeping, in slices allocated before the run
// (indexed by message): when each message was polled, when its handler
// started and ended. It also checks per-key order as messages finish.
type recorder struct {
	w       *workload
	spec    handlerSpec
	base    time.Time
	pollAt  []int64 // ns since base + 1 (0: never)
	startAt []int64
	endAt   []int64

	target     int64
	handled    atomic.Int64
	counted    atomic.Int64 // handled messages that count toward target (not excluded)
	excluded   []bool       // per key: left out of target (-exclude-hot); nil: none
	dups       atomic.Int64
	unknown    atomic.Int64
	violations atomic.Int64
	busy       atomic.Int64                  // handlers running now
	calls      atomic.Int64                  // handler calls: batch calls (-batch), downstream calls (attempts)
	hotPolled  atomic.Int64                  // messages of the hottest key (rank 0) polled, for -trace
	hotHandled atomic.Int64                  // and handled
	gate       atomic.Pointer[chan struct{}] // when set, handlers wait for it to close
	checkOrder bool
	lastSeq    []int32 // per key; touched only while the key's message is in a handler

	done     chan struct{}
	doneOnce sync.Once

	ds       *downstream // the downstream handler model; nil for the others
	imposed  []int64     // downstream: the latency the service imposed on each message, ns
	failures atomic.Int64
}

func newRecorder(w *workload, spec handlerSpec, target int, checkOrder bool) *recorder {
	r := &recorder{
		w: w, spec: spec,
		pollAt: make([]int64, w.n), startAt: make([]int64, w.n), endAt: make([]int64, w.n),
		target: int64(target), checkOrder: checkOrder, done: make(chan struct{}),
	}
	if checkOrder {
		r.lastSeq = make([]int32, w.keys)
		for i := range r.lastSeq {
			r.lastSeq[i] = -1
		}
	}
	r.base = time.Now()
	return r
}

// hotPartition returns the partition of the hottest key (rank 0).
func (r *recorder) hotPartition() int32 {
	for i, k := range r.w.keyOf {
		if k == 0 {
			return r.w.partOf[i]
		}
	}
	return -1
}

func (r *recorder) now() int64 { return int64(time.Since(r.base)) + 1 }

// polled records the poll of the message at (partition, offset).
func (r *recorder) polled(p int32, offset int64) {
	if i := r.w.index(p, offset); i >= 0 && r.pollAt[i] == 0 {
		r.pollAt[i] = r.now()
		if r.w.keyOf[i] == 0 {
			r.hotPolled.Add(1)
		}
	}
}

// handle runs the handler model for the message at (partition, offset) and
// records it.
func (r *recorder) handle(p int32, offset int64) {
	i := r.w.index(p, offset)
	if i < 0 {
		r.unknown.Add(1)
		return
	}
	if g := r.gate.Load(); g != nil {
		<-*g
	}
	var t0 int64
	if r.spec.timed() {
		t0 = r.now()
	}
	r.busy.Add(1)
	r.spec.run(r.w, i)
	r.busy.Add(-1)
	t1 := r.now()
	if t0 == 0 {
		t0 = t1
	}
	r.finish(i, t0, t1)
}

func (r *recorder) finish(i int32, t0, t1 int64) {
	if r.endAt[i] != 0 {
		r.dups.Add(1) // redelivered: handled twice
		return
	}
	r.startAt[i], r.endAt[i] = t0, t1
	if r.w.keyOf[i] == 0 {
		r.hotHandled.Add(1)
	}
	if r.checkOrder {
		k := r.w.keyOf[i]
		if r.lastSeq[k]+1 != r.w.seq[i] {
			r.violations.Add(1)
		}
		r.lastSeq[k] = r.w.seq[i]
	}
	r.handled.Add(1)
	if r.counts(i) && r.counted.Add(1) == r.target {
		r.doneOnce.Do(func() { close(r.done) })
	}
}

// counts reports whether message i counts toward the target: its key is
// not excluded.
func (r *recorder) counts(i int32) bool {
	return r.excluded == nil || !r.excluded[r.w.keyOf[i]]
}

// handler is the pipeline handler of a run.
func (r *recorder) handler(_ context.Context, msg *pipeline.Message[string, []byte]) error {
	if r.ds != nil {
		return r.callDownstream(msg.Partition, msg.Offset)
	}
	r.handle(msg.Partition, msg.Offset)
	return nil
}

// callDownstream is the downstream model's handler: one call to the
// shared service; a shed call is a failed attempt (retried), not recorded
// as handled.
func (r *recorder) callDownstream(p int32, offset int64) error {
	i := r.w.index(p, offset)
	if i < 0 {
		r.unknown.Add(1)
		return nil
	}
	t0 := r.now()
	r.busy.Add(1)
	imposed, err := r.ds.call()
	r.busy.Add(-1)
	t1 := r.now()
	r.calls.Add(1)
	if err != nil {
		r.failures.Add(1)
		return err
	}
	r.imposed[i] = int64(imposed)
	r.finish(i, t0, t1)
	return nil
}

// modelLatencies returns the 50th and 99th percentiles of the latency the
// downstream imposed on the messages that finished within [from, to) ns
// of the recorder's clock (to 0: no end): the wait for a server plus the
// base time, without the machine's timer overshoot.
func (r *recorder) modelLatencies(from, to int64) (p50, p99 time.Duration) {
	var lat []int64
	for i, end := range r.endAt {
		if end != 0 && end >= from && (to == 0 || end < to) {
			lat = append(lat, r.imposed[i])
		}
	}
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return time.Duration(lat[len(lat)/2]), time.Duration(lat[min(len(lat)-1, len(lat)*99/100)])
}

// handlerLatencies returns the 50th, 90th and 99th percentiles of the
// handler time (start to end) of the messages that finished within
// [from, to) ns of the recorder's clock (to 0: no end).
func (r *recorder) handlerLatencies(from, to int64) (p50, p90, p99 time.Duration) {
	var lat []int64
	for i, end := range r.endAt {
		if end != 0 && end >= from && (to == 0 || end < to) {
			lat = append(lat, end-r.startAt[i])
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lat)
	q := func(f float64) time.Duration { return time.Duration(lat[min(len(lat)-1, int(f*float64(len(lat))))]) }
	return q(0.50), q(0.90), q(0.99)
}

// batchHandler is the batch handler of a run (-batch): a sink model sleeps
// once for the batch (F + n×P), and its messages share the call's start
// and end; the other models do each message's work in turn.
func (r *recorder) batchHandler(_ context.Context, batch []*pipeline.Message[string, []byte]) error {
	r.calls.Add(1)
	if r.spec.kind != "sink" {
		for _, msg := range batch {
			r.handle(msg.Partition, msg.Offset)
		}
		return nil
	}
	if g := r.gate.Load(); g != nil {
		<-*g
	}
	t0 := r.now()
	r.busy.Add(1)
	time.Sleep(r.spec.fixed + time.Duration(len(batch))*r.spec.perMsg)
	r.busy.Add(-1)
	t1 := r.now()
	for _, msg := range batch {
		if i := r.w.index(msg.Partition, msg.Offset); i >= 0 {
			r.finish(i, t0, t1)
		} else {
			r.unknown.Add(1)
		}
	}
	return nil
}

// longestChain returns the most messages handled that must run one after
// another in mode: a key's, a partition's, or 1 (unordered).
func (r *recorder) longestChain(mode string) int {
	var counts []int
	switch mode {
	case "key":
		counts = make([]int, r.w.keys)
	case "partition":
		counts = make([]int, r.w.partitions)
	default:
		return 1
	}
	for i, end := range r.endAt {
		if end == 0 {
			continue
		}
		if mode == "key" {
			counts[r.w.keyOf[i]]++
		} else {
			counts[r.w.partOf[i]]++
		}
	}
	return slices.Max(counts)
}

// firstPoll returns the recorder clock of the first poll (or handler
// start) of a handled message; 0 if none.
func (r *recorder) firstPoll() int64 {
	first := int64(0)
	for i, end := range r.endAt {
		if end == 0 {
			continue
		}
		start := r.pollAt[i]
		if start == 0 {
			start = r.startAt[i]
		}
		if first == 0 || start < first {
			first = start
		}
	}
	return first
}

// span returns the measured time from the first poll (or handler start,
// where polls are not recorded) to the last handler end.
func (r *recorder) span() time.Duration {
	last := int64(0)
	for _, end := range r.endAt {
		last = max(last, end)
	}
	return time.Duration(last - r.firstPoll())
}

// countedSpan returns the time from the first poll (or handler start,
// where polls are not recorded) of any message to the last handler end of
// a message that counts toward the target, and how many of those were
// handled.
func (r *recorder) countedSpan() (span time.Duration, n int) {
	first, last := int64(0), int64(0)
	for i, end := range r.endAt {
		start := r.pollAt[i]
		if start == 0 {
			start = r.startAt[i]
		}
		if start != 0 && (first == 0 || start < first) {
			first = start
		}
		if end != 0 && r.counts(int32(i)) {
			last = max(last, end)
			n++
		}
	}
	if last == 0 {
		return 0, n
	}
	return time.Duration(last - first), n
}

// rateWindow counts the handler ends within [from, to] ns of the
// recorder's clock: it returns their rate over the window and the fewest
// and most of them in any whole second of it (from from on; 0 and 0 when
// the window is shorter than a second).
func (r *recorder) rateWindow(from, to int64) (perSec float64, secMin, secMax int) {
	const second = int64(time.Second)
	buckets := make([]int, (to-from)/second)
	n := 0
	for _, end := range r.endAt {
		if end == 0 || end < from || end > to {
			continue
		}
		n++
		if b := (end - from) / second; b < int64(len(buckets)) {
			buckets[b]++
		}
	}
	if to > from {
		perSec = float64(n) / time.Duration(to-from).Seconds()
	}
	if len(buckets) == 0 {
		return perSec, 0, 0
	}
	return perSec, slices.Min(buckets), slices.Max(buckets)
}

// latencies returns the 50th and 99th percentiles and the maximum of poll →
// handler end, over the messages whose poll was recorded.
func (r *recorder) latencies() (p50, p99, maxLat time.Duration) {
	lat := make([]int64, 0, r.handled.Load())
	for i, end := range r.endAt {
		if end != 0 && r.pollAt[i] != 0 {
			lat = append(lat, end-r.pollAt[i])
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lat)
	q := func(f float64) time.Duration { return time.Duration(lat[min(len(lat)-1, int(f*float64(len(lat))))]) }
	return q(0.50), q(0.99), time.Duration(lat[len(lat)-1])
}

// idealBound is the lower bound on the time of any scheduler that keeps
// the mode's order with c workers, for the handler durations measured in
// this run: the larger of the total handler time over c (work) and the
// longest chain of messages that must run one after another (chain): a
// key's messages in key mode, a partition's in partition mode, the longest
// single message in unordered mode.
type idealBound struct {
	seconds        float64
	limit          string // "work" or "chain"
	handlerSeconds float64
	// partitionSeconds is the longest partition's total handler time: what
	// one classic loop per partition would take, without its overheads.
	partitionSeconds float64
}

func (r *recorder) ideal(mode string, c int) idealBound {
	chains := map[string][]int64{
		"key":       make([]int64, r.w.keys),
		"partition": make([]int64, r.w.partitions),
	}
	var total, longest int64
	perPart := chains["partition"]
	perKey := chains["key"]
	for i, end := range r.endAt {
		if end == 0 {
			continue
		}
		d := end - r.startAt[i]
		total += d
		longest = max(longest, d)
		perKey[r.w.keyOf[i]] += d
		perPart[r.w.partOf[i]] += d
	}
	chain := longest
	if mode != "unordered" {
		chain = slices.Max(chains[mode])
	}
	b := idealBound{
		seconds: float64(total) / float64(c) / 1e9, limit: "work",
		handlerSeconds: float64(total) / 1e9, partitionSeconds: float64(slices.Max(perPart)) / 1e9,
	}
	if float64(chain)/1e9 > b.seconds {
		b.seconds, b.limit = float64(chain)/1e9, "chain"
	}
	return b
}

// cpuTime returns the process's user + system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapSampler samples the heap every interval with runtime/metrics (which,
// unlike runtime.ReadMemStats, does not stop the world) and keeps the peaks.
type heapSampler struct {
	stop     chan struct{}
	done     chan struct{}
	peakHeap uint64 // /memory/classes/heap/objects:bytes: live and not yet swept objects
	peakLive uint64 // /gc/heap/live:bytes: live as of the last GC
	peakRSS  uint64 // resident set size of the process (Go heap, C heap: librdkafka, the embedded broker)
}

const (
	metricHeapObjects = "/memory/classes/heap/objects:bytes"
	metricHeapLive    = "/gc/heap/live:bytes"
)

func readHeap() (objects, live uint64) {
	s := []metrics.Sample{{Name: metricHeapObjects}, {Name: metricHeapLive}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 {
		objects = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindUint64 {
		live = s[1].Value.Uint64()
	}
	return objects, live
}

func startHeapSampler(interval time.Duration) *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	sample := func() {
		objects, live := readHeap()
		h.peakHeap, h.peakLive = max(h.peakHeap, objects), max(h.peakLive, live)
		h.peakRSS = max(h.peakRSS, rss())
	}
	sample()
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				sample()
			case <-h.stop:
				sample()
				return
			}
		}
	}()
	return h
}

// Stop stops sampling and returns the peaks.
func (h *heapSampler) Stop() (peakHeap, peakLive, peakRSS uint64) {
	close(h.stop)
	<-h.done
	return h.peakHeap, h.peakLive, h.peakRSS
}

// rss returns the process's resident set size in bytes (0 if unknown).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, resident uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &size, &resident); err != nil {
		return 0
	}
	return resident * uint64(os.Getpagesize())
}

// progress draws a progress bar on w for a run that lasts more than a
// second, until stopped.
type progress struct {
	stop chan struct{}
	done chan struct{}
}

func startProgress(w io.Writer, enabled bool, label string, count func() int64, total int64) *progress {
	p := &progress{stop: make(chan struct{}), done: make(chan struct{})}
	if !enabled {
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		start := time.Now()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		drawn := false
		for {
			select {
			case <-p.stop:
				if drawn {
					fmt.Fprintf(w, "\r%s\r", strings.Repeat(" ", 100))
				}
				return
			case <-t.C:
			}
			elapsed := time.Since(start)
			if elapsed < time.Second {
				continue
			}
			n := count()
			frac := min(1, float64(n)/float64(total))
			const width = 30
			bar := strings.Repeat("#", int(frac*width)) + strings.Repeat("-", width-int(frac*width))
			rate := float64(n) / elapsed.Seconds()
			eta := "?"
			if rate > 0 {
				eta = time.Duration(float64(total-n) / rate * float64(time.Second)).Round(time.Second).String()
			}
			line := fmt.Sprintf("%s [%s] %3.0f%% %d/%d %.0f msg/s eta %s", label, bar, 100*frac, n, total, rate, eta)
			if len(line) > 99 {
				line = line[:99]
			}
			fmt.Fprintf(w, "\r%-99s", line)
			drawn = true
		}
	}()
	return p
}

func (p *progress) Stop() {
	select {
	case <-p.done:
	default:
		close(p.stop)
		<-p.done
	}
}

// hotKeyGaps looks at the chain of the key with the most handled messages:
// between the end of one of its messages and the start of the next, the key
// either waited for the next to be polled (starved: the in-flight window was
// full of other messages) or, once it was polled, for a handler (dispatch).
// It returns the total of each, and how late the chain began (first: from
// the run's first poll to the start of the key's first message: its
// partition read last, or its first message queued behind others), in
// seconds.
func (r *recorder) hotKeyGaps() (starved, dispatch, first float64) {
	count := make([]int, r.w.keys)
	for i, end := range r.endAt {
		if end != 0 {
			count[r.w.keyOf[i]]++
		}
	}
	hot := int32(0)
	for k, n := range count {
		if n > count[hot] {
			hot = int32(k)
		}
	}
	var chain []int32
	for i, end := range r.endAt {
		if end != 0 && r.w.keyOf[i] == hot {
			chain = append(chain, int32(i))
		}
	}
	slices.SortFunc(chain, func(a, b int32) int { return int(r.w.seq[a] - r.w.seq[b]) })
	if len(chain) > 0 {
		if begin := r.firstPoll(); begin > 0 {
			first = float64(r.startAt[chain[0]]-begin) / 1e9
		}
	}
	var s, d int64
	for j := 1; j < len(chain); j++ {
		prevEnd, poll, start := r.endAt[chain[j-1]], r.pollAt[chain[j]], r.startAt[chain[j]]
		if poll > prevEnd {
			s += poll - prevEnd
			d += start - poll
		} else {
			d += start - prevEnd
		}
	}
	return float64(s) / 1e9, float64(d) / 1e9, first
}
