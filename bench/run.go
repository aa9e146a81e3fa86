package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

func ordering(mode string) (parallafka.Ordering, error) {
	switch mode {
	case "key":
		return parallafka.OrderByKey, nil
	case "partition":
		return parallafka.OrderByPartition, nil
	case "unordered":
		return parallafka.Unordered, nil
	}
	return 0, fmt.Errorf("-mode: want key, partition or unordered, got %q", mode)
}

// runPipeline consumes the workload once with Parallafka and measures it.
// topic is the loaded topic for the Kafka sources.
func runPipeline(c *config, w *workload, b *broker, topic, mode string, conc concSpec, stderr io.Writer) (*result, error) {
	concurrency := conc.n
	rec := newRecorder(w, c.handler, c.messages, mode != "unordered")
	if c.handler.kind == "downstream" {
		rec.ds = newDownstream(c.handler)
		rec.imposed = make([]int64, w.n)
	}
	hotMessages, err := excludeHot(c, w, rec)
	if err != nil {
		return nil, err
	}
	var src pipeline.Source[string, []byte]
	if c.source == "mem" {
		src = memSource(w)
	} else {
		if c.inputRate > 0 { // -input-rate: a topic of the run's own, fed during it
			topic = kafkatest.UniqueTopic("parallafka-bench-paced")
			if err := b.cluster.CreateTopic(context.Background(), topic, w.partitions); err != nil {
				return nil, err
			}
			defer func() { _ = b.cluster.DeleteTopic(context.Background(), topic) }()
			clear(w.base)
		}
		s, err := b.source(topic, c.client)
		if err != nil {
			return nil, err
		}
		src = s
	}
	ord, err := ordering(mode)
	if err != nil {
		return nil, err
	}
	logger := quiet
	if c.debugLog != "" {
		f, err := os.OpenFile(c.debugLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts := []parallafka.Option{parallafka.WithOrdering(ord), parallafka.WithLogger(logger)}
	handler := rec.handler
	var out *outputRun
	if c.output != "" {
		o, extra, err := startOutput(context.Background(), c, b, src, topic, rec)
		if err != nil {
			_ = src.Close()
			return nil, err
		}
		defer o.close()
		out, handler = o, o.handler
		opts = append(opts, extra...)
	}
	if conc.adaptive() {
		opts = append(opts, parallafka.WithAdaptiveConcurrency(conc.min, conc.n))
	} else {
		opts = append(opts, parallafka.WithMaxConcurrency(concurrency))
	}
	if rec.ds != nil {
		opts = append(opts, downstreamRetry)
	}
	if c.maxInFlight > 0 {
		opts = append(opts, parallafka.WithMaxInFlight(c.maxInFlight))
	}
	if c.rateLimit != (parallafka.RateLimit{}) {
		opts = append(opts, parallafka.WithRateLimit(c.rateLimit))
	}
	if c.batch > 0 {
		opts = append(opts, parallafka.WithMaxBatch(c.batch, 4<<20), parallafka.WithBatchLinger(c.linger))
	}
	p, err := parallafka.New[string, []byte](&timedSource[string, []byte]{Source: src, rec: rec}, opts...)
	if err != nil {
		_ = src.Close()
		return nil, err
	}

	runtime.GC()
	runtime.GC() // a second cycle frees what the first only finalized, as measureRetained does
	_, baseLive := readHeap()
	baseRSS := rss()
	heap := startHeapSampler(10 * time.Millisecond)
	label := fmt.Sprintf("%s %s c=%s", w.dist, mode, conc)
	if c.output != "" {
		label += " output=" + c.output
	}
	bar := startProgress(stderr, c.progress, label, rec.counted.Load, rec.target)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cpu0, start, startNs := cpuTime(), time.Now(), rec.now()
	timeUp := after(c.duration)
	consumed := make(chan error, 1)
	go func() {
		if c.batch > 0 {
			consumed <- p.ConsumeBatch(ctx, rec.batchHandler)
		} else {
			consumed <- p.Consume(ctx, handler)
		}
	}()
	fed := make(chan error, 1)
	if c.inputRate > 0 {
		go func() { fed <- b.feed(ctx, w, topic, c.inputRate) }()
	} else {
		fed <- nil
	}
	var tl *timeline
	if rec.ds != nil {
		tl = startTimeline(p, rec, rec.ds, c.change)
	}
	stopTrace := startTrace(c.trace, label, p, rec)
	defer stopTrace()
	retained := make(chan retainedHeap, 1)
	if c.retained {
		go func() { retained <- measureRetained(p, rec, c.inFlightLimit(concurrency), baseLive) }()
	} else {
		retained <- retainedHeap{}
	}
	waitErr, consumeErr, returned := waitDone(rec, consumed, timeUp, c.stall)
	cancel()
	if !returned {
		consumeErr = <-consumed
	}
	total, cpu := time.Since(start), cpuTime()-cpu0
	if tl != nil {
		tl.stop()
	}
	stopTrace()
	bar.Stop()
	peakHeap, peakLive, peakRSS := heap.Stop()
	if err := errors.Join(waitErr, consumeErr, <-fed); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}

	kept := <-retained
	stats := p.Stats()
	n := rec.handled.Load()
	span := rec.span()
	bound := rec.ideal(mode, concurrency)
	if c.handler.kind == "sink" {
		bound = c.handler.sinkBound(int(n), concurrency, max(1, c.batch), rec.longestChain(mode))
	}
	p50, p99, pmax := rec.latencies()
	starved, dispatch, hotFirst := rec.hotKeyGaps()
	r := &result{
		Source: c.source, Client: c.clientName(), Messages: int(n), Backlog: w.n, Partitions: w.partitions, Keys: w.keys, Dist: w.dist,
		ValueSize: c.valueSize, Handler: c.handler.String(), Mode: mode, Concurrency: concurrency, ConcurrencySpec: conc.String(),
		MaxInFlight: c.inFlightLimit(concurrency), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Seconds: span.Seconds(), TotalSeconds: total.Seconds(),
		IdealSeconds: bound.seconds, IdealLimit: bound.limit, HandlerSeconds: bound.handlerSeconds,
		CPUMicrosPerMsg: float64(cpu.Microseconds()) / float64(max(n, 1)),
		P50LatencyMs:    ms(p50), P99LatencyMs: ms(p99), MaxLatencyMs: ms(pmax),
		PeakHeapBytes: peakHeap, PeakLiveHeapBytes: peakLive, BaseHeapBytes: baseLive,
		PeakRSSBytes: peakRSS, BaseRSSBytes: baseRSS,
		Pauses: stats.Pauses, OrderViolations: rec.violations.Load(), Duplicates: rec.dups.Load(),
		Unknown: rec.unknown.Load(), partitionSeconds: bound.partitionSeconds,
		HotKeyStarvedSeconds: starved, HotKeyDispatchSeconds: dispatch, HotKeyFirstSeconds: hotFirst,
		RetainedHeapBytes: kept.bytes, RetainedInFlight: kept.inFlight,
		Batch: c.batch, Batches: stats.Batches, MeanBatchSize: stats.MeanBatchSize,
		RateLimit: rateLimitString(c.rateLimit), Throttled: stats.Throttled,
	}
	if c.batch > 0 {
		r.LingerMs = ms(c.linger)
	}
	if w.dist == "zipf" {
		r.ZipfS = w.zipfS
	}
	if peakLive > baseLive {
		r.HeapGrowthBytes = peakLive - baseLive
	}
	if span > 0 {
		r.MsgsPerSec = float64(n) / span.Seconds()
	}
	if r.Seconds > 0 && r.IdealSeconds > 0 {
		r.Efficiency = r.IdealSeconds / r.Seconds
	}
	if c.excludeHot > 0 {
		countNonHot(r, rec, c.excludeHot, hotMessages)
	}
	if c.duration > 0 {
		r.DurationSeconds = c.duration.Seconds()
		r.RateWindowMsgsPerSec, r.RateSecondMin, r.RateSecondMax = rec.rateWindow(startNs+int64(time.Second), startNs+int64(c.duration))
	}
	if tl != nil {
		tl.summarize(r, rec, c.change)
	}
	if out != nil {
		r.Output = out.finish(rec.firstPoll())
	}
	for tp, off := range stats.Committed {
		r.Committed += off - w.base[tp.Partition]
	}
	return r, nil
}

// excludeHot leaves the -exclude-hot hottest keys out of rec's target: it
// becomes the other keys' messages (at most -messages). It returns the
// number of the hot keys' messages in the workload.
func excludeHot(c *config, w *workload, rec *recorder) (hotMessages int, err error) {
	if c.excludeHot == 0 {
		return 0, nil
	}
	rec.excluded, hotMessages = w.hotKeys(c.excludeHot)
	rec.target = int64(min(c.messages, w.n-hotMessages))
	if rec.target == 0 {
		return 0, fmt.Errorf("-exclude-hot %d leaves no message of the workload to measure", c.excludeHot)
	}
	return hotMessages, nil
}

// countNonHot makes r's messages, seconds and rate those of the messages
// that count toward the target (-exclude-hot): from the first poll of any
// message to the last handler end of a counted one. The efficiency keeps
// the ideal of every handled message, hot keys' included.
func countNonHot(r *result, rec *recorder, hotKeys, hotMessages int) {
	span, n := rec.countedSpan()
	r.ExcludedHotKeys, r.ExcludedMessages = hotKeys, hotMessages
	r.Messages, r.Seconds, r.MsgsPerSec, r.Efficiency = n, span.Seconds(), 0, 0
	if span > 0 {
		r.MsgsPerSec = float64(n) / span.Seconds()
	}
	if r.Seconds > 0 && r.IdealSeconds > 0 {
		r.Efficiency = r.IdealSeconds / r.Seconds
	}
}

// after returns a channel that receives once d from now, or nil (never)
// when d is 0.
func after(d time.Duration) <-chan time.Time {
	if d == 0 {
		return nil
	}
	return time.After(d)
}

// waitDone waits until every message of the run's target was handled, the
// time was up (-duration), Consume returned early (returned is then true,
// with Consume's error), or no message finished for stall.
func waitDone(rec *recorder, consumed <-chan error, timeUp <-chan time.Time, stall time.Duration) (err, consumeErr error, returned bool) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastChange := rec.handled.Load(), time.Now()
	for {
		select {
		case <-rec.done:
			return nil, nil, false
		case <-timeUp:
			return nil, nil, false
		case consumeErr := <-consumed:
			return fmt.Errorf("Consume returned after %d of %d messages", rec.counted.Load(), rec.target), consumeErr, true
		case <-tick.C:
			if n := rec.handled.Load(); n != last {
				last, lastChange = n, time.Now()
			} else if time.Since(lastChange) > stall {
				return fmt.Errorf("stalled: %d of %d messages handled, none for %v", n, rec.target, stall), nil, false
			}
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// startTrace samples the run every 10 ms into a CSV file (appended to, one
// block per run) until the returned function is called.
func startTrace(path, label string, p *parallafka.Parallafka[string, []byte], rec *recorder) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		defer f.Close()
		w := bufio.NewWriter(f)
		defer w.Flush()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			st := p.Stats()
			hotPaused := 0
			for _, tp := range st.Paused {
				if tp.Partition == rec.hotPartition() {
					hotPaused = 1
				}
			}
			fmt.Fprintf(w, "%s,%.3f,%d,%d,%d,%d,%d,%d,%d,%d\n", label, float64(rec.now())/1e9, rec.handled.Load(),
				st.InFlight, st.Queued, rec.busy.Load(), len(st.Paused), rec.hotPolled.Load(), rec.hotHandled.Load(), hotPaused)
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

type retainedHeap struct {
	bytes    uint64
	inFlight int64
}

// measureRetained waits until half of the run was handled, then holds every
// handler until the pipeline has limit messages in flight (or 10 s passed)
// and nothing moves, forces two garbage collections and returns the live
// heap above base (the live heap before the run) with the in-flight count
// at that moment; then lets the handlers go on.
func measureRetained(p *parallafka.Parallafka[string, []byte], rec *recorder, limit int, base uint64) retainedHeap {
	for rec.counted.Load() < rec.target/2 {
		select {
		case <-rec.done:
			return retainedHeap{}
		case <-time.After(10 * time.Millisecond):
		}
	}
	gate := make(chan struct{})
	rec.gate.Store(&gate)
	defer func() { rec.gate.Store(nil); close(gate) }()
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().InFlight < int64(limit) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let the poller settle (held prefetch, pause)
	runtime.GC()
	runtime.GC()
	_, live := readHeap()
	r := retainedHeap{inFlight: p.Stats().InFlight}
	if live > base {
		r.bytes = live - base
	}
	return r
}
