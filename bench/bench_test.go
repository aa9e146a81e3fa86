package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestHarnessMem runs the harness on a tiny in-memory workload: a sweep of
// two modes and two concurrencies with the serial baseline, JSON output and
// a chart.
func TestHarnessMem(t *testing.T) {
	chart := filepath.Join(t.TempDir(), "chart.png")
	c, err := parseFlags([]string{
		"-source", "mem", "-messages", "1000", "-partitions", "3", "-keys", "1,50", "-dist", "zipf",
		"-handler", "sleep:0ms-100us", "-mode", "key,unordered", "-concurrency", "1,8",
		"-json", "-progress=false", "-plot", chart,
	}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(c, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var results []result
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		results = append(results, r)
	}
	if len(results) != 2*2*2 {
		t.Fatalf("%d results, want 8:\n%s", len(results), stdout.String())
	}
	for _, r := range results {
		switch {
		case r.Messages != 1000 || r.Committed != 1000:
			t.Errorf("%+v: handled %d, committed %d, want 1000", r, r.Messages, r.Committed)
		case r.OrderViolations != 0 || r.Duplicates != 0 || r.Unknown != 0:
			t.Errorf("%+v: order violations, duplicates or unknown messages", r)
		case r.Seconds <= 0 || r.MsgsPerSec <= 0 || r.IdealSeconds <= 0 || r.SerialSeconds <= 0 || r.SerialEstimated:
			t.Errorf("%+v: missing measurements", r)
		case r.Efficiency <= 0 || r.Efficiency > 1.05:
			t.Errorf("%+v: efficiency %.3f out of range", r, r.Efficiency)
		case r.PeakHeapBytes == 0 || r.CPUMicrosPerMsg <= 0 || r.P99LatencyMs < r.P50LatencyMs:
			t.Errorf("%+v: heap, CPU or latency missing", r)
		}
	}
	if fi, err := os.Stat(chart); err != nil || fi.Size() == 0 {
		t.Errorf("no chart: %v", err)
	}
	if !strings.Contains(stderr.String(), "serial baseline") {
		t.Errorf("no serial baseline on stderr:\n%s", stderr.String())
	}
}

// TestHarnessEmbeddedClients runs the harness on the embedded broker with
// each client: its serial and raw baselines and a Parallafka run, the row
// naming the client.
func TestHarnessEmbeddedClients(t *testing.T) {
	for _, client := range []string{"confluent", "franz"} {
		t.Run(client, func(t *testing.T) {
			c, err := parseFlags([]string{
				"-source", "embedded", "-client", client, "-messages", "2000", "-partitions", "3", "-keys", "50",
				"-handler", "noop", "-mode", "key", "-concurrency", "8", "-json", "-progress=false",
			}, os.Stderr)
			if err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			if err := run(c, &stdout, &stderr); err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			var r result
			if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &r); err != nil {
				t.Fatalf("%q: %v", stdout.String(), err)
			}
			switch {
			case r.Client != client || r.Source != "embedded":
				t.Errorf("client %q source %q, want %q embedded", r.Client, r.Source, client)
			case r.Messages != 2000 || r.Committed != 2000 || r.OrderViolations != 0 || r.Duplicates != 0:
				t.Errorf("%+v: handled %d, committed %d", r, r.Messages, r.Committed)
			case r.RawMsgsPerSec <= 0 || r.RawCPUMicrosPerMsg <= 0 || r.SerialSeconds <= 0 || r.SerialEstimated:
				t.Errorf("%+v: raw or serial baseline missing", r)
			}
			if want := "raw consumer (" + client + ")"; !strings.Contains(stderr.String(), want) {
				t.Errorf("no %q on stderr:\n%s", want, stderr.String())
			}
		})
	}
}

func TestFlags(t *testing.T) {
	for _, bad := range [][]string{
		{"-source", "nope"},
		{"-handler", "sleep:5ms-1ms"},
		{"-handler", "cpu:x"},
		{"-mode", "random"},
		{"-dist", "normal"},
		{"-concurrency", "0"},
		{"-messages", "10", "-backlog", "5"},
		{"-source", "kafka", "-brokers", ""},
		{"-client", "sarama"},
	} {
		if _, err := parseFlags(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	c, err := parseFlags([]string{"-keys", "1,10k,1_000", "-concurrency", "1,16,100", "-handler", "sleep:0ms-5ms"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.keys; len(got) != 3 || got[1] != 10000 || got[2] != 1000 {
		t.Errorf("keys %v", got)
	}
	if c.handler.min != 0 || c.handler.max != 5*time.Millisecond {
		t.Errorf("handler %+v", c.handler)
	}
}

// TestIdeal checks the ideal bound on a hand-made run: two keys, one with
// three 10 ms messages, one with one.
func TestIdeal(t *testing.T) {
	w := &workload{keys: 2, partitions: 1, n: 4, keyOf: []int32{0, 0, 0, 1}, partOf: make([]int32, 4), seq: []int32{0, 1, 2, 0}}
	r := newRecorder(w, handlerSpec{kind: "sleep"}, 4, true)
	ms := int64(time.Millisecond)
	for i := range 4 {
		r.startAt[i], r.endAt[i] = 1+int64(i)*10*ms, 1+int64(i+1)*10*ms
	}
	if b := r.ideal("key", 4); b.limit != "chain" || b.seconds != 0.030 {
		t.Errorf("key mode, 4 workers: %+v, want the 30 ms chain", b)
	}
	if b := r.ideal("key", 1); b.limit != "work" || b.seconds != 0.040 {
		t.Errorf("key mode, 1 worker: %+v, want 40 ms of work", b)
	}
	if b := r.ideal("partition", 4); b.seconds != 0.040 {
		t.Errorf("partition mode: %+v, want the 40 ms partition", b)
	}
	if b := r.ideal("unordered", 4); b.seconds != 0.010 {
		t.Errorf("unordered, 4 workers: %+v, want 10 ms", b)
	}
}

// BenchmarkPipelineMem is the whole pipeline with a no-op handler on the
// in-memory source, as the harness runs it (1,000 keys over 4 partitions,
// 100-byte values): ns, allocations and CPU per message.
func BenchmarkPipelineMem(b *testing.B) {
	for _, mode := range []string{"key", "partition", "unordered"} {
		b.Run(mode, func(b *testing.B) {
			c, err := parseFlags([]string{"-messages", "1", "-partitions", "4", "-keys", "1000", "-concurrency", "16", "-progress=false", "-mode", mode}, &bytes.Buffer{})
			if err != nil {
				b.Fatal(err)
			}
			c.messages, c.backlog = b.N, b.N
			w := newWorkload(c, "uniform", 1000)
			b.ReportAllocs()
			b.ResetTimer()
			r, err := runPipeline(c, w, nil, "", mode, concSpec{n: 16}, &bytes.Buffer{})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(r.CPUMicrosPerMsg*1000, "cpu-ns/msg")
			b.ReportMetric(r.MsgsPerSec, "msgs/s")
		})
	}
}

// TestHarnessBatch runs the harness with a batch handler and the sink
// model: every message handled once and in key order, the batch fields
// filled in, the bound computed from the fewest calls.
func TestHarnessBatch(t *testing.T) {
	c, err := parseFlags([]string{
		"-source", "mem", "-messages", "3000", "-partitions", "3", "-keys", "100", "-dist", "zipf",
		"-handler", "sink:1ms+5us", "-mode", "key,partition", "-concurrency", "4", "-batch", "200", "-linger", "1ms",
		"-json", "-progress=false", "-serial=false",
	}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(c, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	sc := bufio.NewScanner(&stdout)
	n := 0
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		n++
		switch {
		case r.Messages != 3000 || r.Committed != 3000 || r.OrderViolations != 0 || r.Duplicates != 0:
			t.Errorf("%+v: handled, committed, order or duplicates wrong", r)
		case r.Batch != 200 || r.LingerMs != 1 || r.Batches < 15 || r.MeanBatchSize <= 1:
			t.Errorf("%+v: batch fields", r)
		case r.Efficiency <= 0 || r.Efficiency > 1.05:
			t.Errorf("%+v: efficiency %.3f out of range", r, r.Efficiency)
		}
	}
	if n != 2 {
		t.Errorf("%d results, want 2:\n%s", n, stdout.String())
	}
}

// TestSinkBound checks the sink model's bound: the fewest calls over the
// workers, or the longest chain's calls one after another.
func TestSinkBound(t *testing.T) {
	h, err := parseHandler("sink:2ms+10us")
	if err != nil {
		t.Fatal(err)
	}
	// 1,000 messages, batches of 100: 10 calls of 2 ms + 10 ms of messages, over 4.
	if b := h.sinkBound(1000, 4, 100, 10); b.limit != "work" || b.seconds < 0.00749 || b.seconds > 0.00751 {
		t.Errorf("work bound %+v, want 7.5 ms", b)
	}
	// One key of 1,000: 10 calls one after another: 30 ms.
	if b := h.sinkBound(1000, 4, 100, 1000); b.limit != "chain" || b.seconds < 0.0299 || b.seconds > 0.0301 {
		t.Errorf("chain bound %+v, want 30 ms", b)
	}
	if _, err := parseHandler("sink:2ms"); err == nil {
		t.Error("sink:2ms accepted")
	}
}

// TestDownstreamModel: the service serves capacity calls at a time, the
// rest wait their turn, and with a fail factor it sheds calls beyond it.
func TestDownstreamModel(t *testing.T) {
	h, err := parseHandler("downstream:cap=2,base=20ms,fail=2,wait=timer")
	if err != nil || h.capacity != 2 || h.min != 20*time.Millisecond || h.fail != 2 || !h.timer {
		t.Fatalf("parsed %+v, %v", h, err)
	}
	// In a synctest bubble the calls arrive at 0, 1, ... 5 ms exactly (the
	// handlers sleep: a timerfd's kernel timer is outside the bubble).
	synctest.Test(t, func(t *testing.T) {
		d := newDownstream(h)
		imposed := make(chan time.Duration, 6)
		for range 6 {
			go func() {
				lat, err := d.call()
				if err != nil {
					lat = -1
				}
				imposed <- lat
			}()
			time.Sleep(time.Millisecond)
		}
		var got []time.Duration
		for range 6 {
			got = append(got, <-imposed)
		}
		slices.Sort(got)
		// Two served at once (20 ms); the third and fourth start as those
		// end (at 20 and 21 ms, having arrived at 2 and 3: 38 ms); the
		// fifth, arrived at 4 ms with 4 calls in the service (not more
		// than 2 × 2), starts at 40 (56 ms); the sixth finds 5: shed.
		ms := time.Millisecond
		if want := []time.Duration{-1, 20 * ms, 20 * ms, 38 * ms, 38 * ms, 56 * ms}; !slices.Equal(got, want) {
			t.Errorf("imposed %v, want %v", got, want)
		}
	})
	for _, bad := range []string{"downstream:cap=0,base=1ms", "downstream:base=1ms", "downstream:cap=2,base=1ms,fail=0.5", "downstream:cap=2,base=1ms,x=1", "downstream:cap=2,base=1ms,wait=poll", "downstream:cap=2,base=1ms,jitter=1"} {
		if _, err := parseHandler(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if _, err := parseConcurrency("adaptive:8-4"); err == nil {
		t.Error("adaptive:8-4: no error")
	}
	if c, err := parseCapacityChange("2s:cap=8"); err != nil || c.at != 2*time.Second || c.capacity != 8 {
		t.Errorf("change: %+v, %v", c, err)
	}
}

// TestDownstreamJitter: with jitter, calls take base × (1 ± jitter) and are
// still served in arrival order: with one server, each starts when the
// call ahead of it ends.
func TestDownstreamJitter(t *testing.T) {
	h, err := parseHandler("downstream:cap=1,base=20ms,jitter=0.5,wait=timer")
	if err != nil || h.jitter != 0.5 {
		t.Fatalf("parsed %+v, %v", h, err)
	}
	synctest.Test(t, func(t *testing.T) {
		d := newDownstream(h)
		const calls = 8
		ends := make([]time.Duration, calls)
		var wg sync.WaitGroup
		began := time.Now()
		for i := range calls {
			wg.Go(func() {
				lat, err := d.call()
				if err != nil {
					t.Error(err)
				}
				ends[i] = time.Duration(i)*time.Millisecond + lat // arrived at i ms
			})
			time.Sleep(time.Millisecond)
		}
		wg.Wait()
		prev := time.Duration(0)
		distinct := map[time.Duration]bool{}
		for i, end := range ends {
			took := end - max(prev, time.Duration(i)*time.Millisecond)
			if took < 10*time.Millisecond || took > 30*time.Millisecond {
				t.Errorf("call %d took %v, want 10-30 ms (ends %v)", i, took, ends)
			}
			distinct[took] = true
			prev = end
		}
		if len(distinct) < calls/2 {
			t.Errorf("calls took %d distinct times: no jitter (ends %v)", len(distinct), ends)
		}
		if time.Since(began) != ends[calls-1] {
			t.Errorf("the last call ended at %v, the clock says %v", ends[calls-1], time.Since(began))
		}
	})
}

// TestHarnessDownstream runs the downstream model with a fixed and an
// adaptive concurrency and a capacity change, and writes the timeline and
// its chart.
func TestHarnessDownstream(t *testing.T) {
	dir := t.TempDir()
	c, err := parseFlags([]string{
		"-source", "mem", "-messages", "3000", "-keys", "100", "-handler", "downstream:cap=8,base=1ms,fail=2",
		"-downstream-change", "200ms:cap=4", "-concurrency", "4,adaptive:1-64", "-serial=false",
		"-json", "-progress=false", "-timeline", filepath.Join(dir, "t.csv"), "-timeline-plot", filepath.Join(dir, "t.png"),
	}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(c, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var results []result
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	if len(results) != 2 || results[1].ConcurrencySpec != "adaptive:1-64" {
		t.Fatalf("results: %+v", results)
	}
	for _, r := range results {
		if r.Messages != 3000 || r.OrderViolations != 0 || r.Duplicates != 0 || r.Calls < 3000 || r.Change == nil || r.MeanLimit <= 0 || r.ModelP99Ms < 1 {
			t.Errorf("%+v", r)
		}
	}
	for _, f := range []string{"t.csv", "t.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// By default a handler waits for its call's end on a timerfd (fdWait):
// never before the end, and woken soon after it (the bound is generous:
// the machine may be busy).
func TestDownstreamWaitsOnATimerfd(t *testing.T) {
	h, err := parseHandler("downstream:cap=4,base=3ms")
	if err != nil || h.timer {
		t.Fatalf("parsed %+v, %v", h, err)
	}
	d := newDownstream(h)
	for range 20 {
		start := time.Now()
		lat, err := d.call()
		took := time.Since(start)
		if err != nil || lat != 3*time.Millisecond {
			t.Fatalf("call: %v, %v", lat, err)
		}
		if took < 3*time.Millisecond || took > time.Second {
			t.Fatalf("the call took %v, want 3 ms or a little more", took)
		}
	}
	fdWait(time.Now().Add(-time.Millisecond)) // an end past: at once
}

// runJSON runs the harness with args (JSON output) and returns its rows.
func runJSON(t *testing.T, args ...string) []result {
	t.Helper()
	c, err := parseFlags(append(args, "-json", "-progress=false"), os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(c, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	var results []result
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		results = append(results, r)
	}
	return results
}

// TestHarnessExcludeHot runs a per-key rate limit with the three hottest
// keys left out of the target: the run ends once the other keys' messages
// are handled, long before the hot keys' could be at 100 a second, and
// counts those messages only.
func TestHarnessExcludeHot(t *testing.T) {
	const perKey = 100
	rs := runJSON(t, "-source", "mem", "-messages", "2000", "-partitions", "3", "-keys", "100", "-dist", "zipf",
		"-handler", "noop", "-concurrency", "8", "-serial=false", "-raw=false",
		"-rate-limit", fmt.Sprintf("per-key=%d", perKey), "-exclude-hot", "3")
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1", len(rs))
	}
	r := rs[0]
	switch {
	case r.RateLimit != "per-key=100" || r.Throttled <= 0:
		t.Errorf("rate limit %q, throttled %d: want per-key=100 and some throttling", r.RateLimit, r.Throttled)
	case r.ExcludedHotKeys != 3 || r.ExcludedMessages <= 0 || r.Messages != 2000-r.ExcludedMessages:
		t.Errorf("excluded %d keys, %d messages; %d messages counted: want 3 keys and the rest of 2000", r.ExcludedHotKeys, r.ExcludedMessages, r.Messages)
	case r.OrderViolations != 0 || r.Duplicates != 0 || r.Unknown != 0:
		t.Errorf("%+v: order violations, duplicates or unknown messages", r)
	case r.MsgsPerSec <= 0 || r.Seconds <= 0:
		t.Errorf("%+v: no rate", r)
	}
	// The hottest key has at least a third of the excluded messages.
	if hot := float64(r.ExcludedMessages) / 3 / perKey; r.Seconds >= hot {
		t.Errorf("the run took %.2f s: it waited for the hot keys (≥ %.2f s)", r.Seconds, hot)
	}
}

// TestHarnessDuration runs a global limit of 2,000 records a second for 3
// seconds over more messages than that: the run stops at 3 s and the rate
// from 1 s to 3 s is the limit's.
func TestHarnessDuration(t *testing.T) {
	rs := runJSON(t, "-source", "mem", "-messages", "20000", "-partitions", "3", "-keys", "100",
		"-handler", "noop", "-concurrency", "8", "-serial=false", "-raw=false",
		"-rate-limit", "records=2000", "-duration", "3s")
	if len(rs) != 1 {
		t.Fatalf("%d results, want 1", len(rs))
	}
	r := rs[0]
	switch {
	case r.RateWindowMsgsPerSec < 1800 || r.RateWindowMsgsPerSec > 2200:
		t.Errorf("window rate %.0f msg/s, want 2000 ± 10%%", r.RateWindowMsgsPerSec)
	case r.RateSecondMin < 1500 || r.RateSecondMax > 2500 || r.RateSecondMin > r.RateSecondMax:
		t.Errorf("seconds of %d to %d messages, want about 2000", r.RateSecondMin, r.RateSecondMax)
	case r.DurationSeconds != 3 || r.Messages >= 20000 || r.Throttled <= 0 || r.RateLimit != "records=2000":
		t.Errorf("%+v: want a 3 s run stopped before its 20000 messages, throttled", r)
	case r.OrderViolations != 0 || r.Duplicates != 0:
		t.Errorf("%+v: order violations or duplicates", r)
	}
}

// TestRateFlags: -rate-limit parses a subset of records, bytes and per-key
// and refuses anything else with an error naming the flag;
// -exclude-hot and -duration refuse values they cannot measure.
func TestRateFlags(t *testing.T) {
	for _, bad := range []string{
		"records", "records=", "records=x", "records=-1", "records=0", "records=NaN", "records=Inf",
		"rps=10", "=10", "records=1,records=2", "records=1,", ",", "records=1;bytes=2", "per-key=1=2",
	} {
		_, err := parseFlags([]string{"-rate-limit", bad}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "-rate-limit") {
			t.Errorf("-rate-limit %q: error %v, want one naming -rate-limit", bad, err)
		}
	}
	c, err := parseFlags([]string{"-rate-limit", " per-key=50, records=2e3,bytes=1000000"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (parallafka.RateLimit{Records: 2000, Bytes: 1e6, PerKey: 50}); c.rateLimit != want {
		t.Errorf("rate limit %+v, want %+v", c.rateLimit, want)
	}
	if s := rateLimitString(c.rateLimit); s != "records=2000,bytes=1e+06,per-key=50" {
		t.Errorf("written back as %q", s)
	}
	for _, bad := range [][]string{
		{"-exclude-hot", "-1"},
		{"-keys", "10,3", "-exclude-hot", "3"},
		{"-duration", "1s"},
		{"-duration", "-2s"},
	} {
		if _, err := parseFlags(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestTableRateColumns: the table shows the columns of -rate-limit,
// -exclude-hot and -duration only when they were used.
func TestTableRateColumns(t *testing.T) {
	var plain, rated bytes.Buffer
	tbl := newTable(&plain)
	tbl.add(&result{Dist: "zipf"})
	tbl.flush()
	tbl = newTable(&rated)
	tbl.add(&result{Dist: "zipf", RateLimit: "per-key=5", Throttled: 7, ExcludedHotKeys: 2, ExcludedMessages: 40, DurationSeconds: 3, RateWindowMsgsPerSec: 99, RateSecondMin: 98, RateSecondMax: 100})
	tbl.flush()
	for _, col := range []string{"rate limit", "throttled", "excluded keys", "window msg/s", "second min/max"} {
		if strings.Contains(plain.String(), col) || !strings.Contains(rated.String(), col) {
			t.Errorf("column %q: in the plain table %t, in the rated one %t", col, strings.Contains(plain.String(), col), strings.Contains(rated.String(), col))
		}
	}
	if !strings.Contains(rated.String(), "per-key=5") || !strings.Contains(rated.String(), "98/100") {
		t.Errorf("rated table:\n%s", rated.String())
	}
	if strings.Count(plain.String(), "\n") != 2 || strings.Count(rated.String(), "\n") != 2 {
		t.Errorf("want a header and a row:\n%s\n%s", plain.String(), rated.String())
	}
}
