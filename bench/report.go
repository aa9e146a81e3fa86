package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// result is one run: a mode and a concurrency on one workload, with the
// workload's baselines. It is printed as one JSON object per line.
type result struct {
	Source      string  `json:"source"`
	Client      string  `json:"client,omitempty"` // confluent or franz (sources embedded and kafka)
	Messages    int     `json:"messages"`         // handled in the run (with -exclude-hot: of the other keys)
	Backlog     int     `json:"backlog"`          // in the topic
	Partitions  int     `json:"partitions"`
	Keys        int     `json:"keys"`
	Dist        string  `json:"dist"`
	ZipfS       float64 `json:"zipf_s,omitempty"`
	ValueSize   int     `json:"value_size"`
	Handler     string  `json:"handler"`
	Mode        string  `json:"mode"`
	Concurrency int     `json:"concurrency"` // fixed, or the adaptive max
	// ConcurrencySpec is the -concurrency value: "16" or "adaptive:1-512".
	ConcurrencySpec string `json:"concurrency_spec"`
	MaxInFlight     int    `json:"max_in_flight"`
	GOMAXPROCS      int    `json:"gomaxprocs"`

	// Seconds runs from the first poll to the last handler end (with
	// -exclude-hot: of a message of the other keys);
	// TotalSeconds from the Consume call to its return (group join,
	// shutdown and final commit included).
	Seconds      float64 `json:"seconds"`
	TotalSeconds float64 `json:"total_seconds"`
	MsgsPerSec   float64 `json:"msgs_per_sec"`

	// IdealSeconds is the lower bound for this workload, mode and
	// concurrency from the handler durations measured in this run;
	// IdealLimit says which term bounds it ("work": total handler time /
	// concurrency, "chain": the longest key, partition or message).
	IdealSeconds   float64 `json:"ideal_seconds"`
	IdealLimit     string  `json:"ideal_limit"`
	Efficiency     float64 `json:"efficiency"`
	HandlerSeconds float64 `json:"handler_seconds"`

	// SerialSeconds is the classic loop, one consumer per partition, on
	// the same workload (measured once per workload); when it was not
	// measured (-serial=false) it is estimated as the longest partition's
	// total handler time in this run, and SerialEstimated is set.
	SerialSeconds   float64 `json:"serial_seconds"`
	SerialEstimated bool    `json:"serial_estimated,omitempty"`
	SpeedupVsSerial float64 `json:"speedup_vs_serial"`

	// The raw consume loop of the same client (confluent-kafka-go Poll or
	// franz-go PollFetches) with a no-op handler on the same topic (Kafka
	// sources), and our throughput as a fraction of it.
	RawMsgsPerSec      float64 `json:"raw_msgs_per_sec,omitempty"`
	RawCPUMicrosPerMsg float64 `json:"raw_cpu_us_per_msg,omitempty"`
	VsRaw              float64 `json:"throughput_vs_raw,omitempty"`

	// CPU (user + system, whole process) per handled message, over the
	// Consume call. With the embedded broker this includes the broker.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`

	P50LatencyMs float64 `json:"p50_latency_ms"` // poll → handler end
	P99LatencyMs float64 `json:"p99_latency_ms"`
	MaxLatencyMs float64 `json:"max_latency_ms"`

	// PeakHeapBytes is the highest sample of heap objects (live and not yet
	// collected); PeakLiveHeapBytes the highest live heap measured by a GC
	// during the run; BaseHeapBytes the live heap just before it (after a
	// forced GC: the workload tables, and the broker's log when it is
	// embedded); HeapGrowthBytes = PeakLiveHeapBytes - BaseHeapBytes.
	PeakHeapBytes     uint64 `json:"peak_heap_bytes"`
	PeakLiveHeapBytes uint64 `json:"peak_live_heap_bytes"`
	BaseHeapBytes     uint64 `json:"base_heap_bytes"`
	HeapGrowthBytes   uint64 `json:"heap_growth_bytes"`
	// With -retained: the live heap above BaseHeapBytes while every
	// handler was held and RetainedInFlight messages were in flight (after
	// two forced GCs): what the pipeline keeps for a full window.
	RetainedHeapBytes uint64 `json:"retained_heap_bytes,omitempty"`
	RetainedInFlight  int64  `json:"retained_in_flight,omitempty"`
	// The process's resident set size: at its peak during the run, and
	// just before it (librdkafka's prefetch queue lives outside the Go heap).
	PeakRSSBytes uint64 `json:"peak_rss_bytes"`
	BaseRSSBytes uint64 `json:"base_rss_bytes"`

	// The chain of the key with the most messages: the total time it
	// waited, between one message's end and the next one's start, for the
	// next to be polled (the in-flight window was full) and, once polled,
	// for a handler.
	HotKeyStarvedSeconds  float64 `json:"hot_key_starved_seconds"`
	HotKeyDispatchSeconds float64 `json:"hot_key_dispatch_seconds"`
	HotKeyFirstSeconds    float64 `json:"hot_key_first_seconds"` // from the first poll to the hot key's first handler start

	// The downstream handler model: handler calls (attempts) and those
	// that failed (shed), the latency of the calls that succeeded (queue
	// wait and service), the concurrency limit (mean and last, from 100 ms
	// samples), and with -downstream-change what the timeline showed.
	Calls        int64   `json:"calls,omitempty"`
	Failures     int64   `json:"failures,omitempty"`
	FailureRate  float64 `json:"failure_rate,omitempty"`
	HandlerP50Ms float64 `json:"handler_p50_ms,omitempty"`
	HandlerP99Ms float64 `json:"handler_p99_ms,omitempty"`
	// ModelP50Ms and ModelP99Ms are the latency the downstream imposed
	// (the wait for a server plus the base time): the handler latency
	// without the machine's timer overshoot, which on a shared VM adds
	// milliseconds to a 2 ms sleep at the 99th percentile.
	ModelP50Ms      float64      `json:"model_p50_ms,omitempty"`
	ModelP99Ms      float64      `json:"model_p99_ms,omitempty"`
	MeanLimit       float64      `json:"mean_limit,omitempty"`
	LastLimit       int          `json:"last_limit,omitempty"`
	Change          *changeStats `json:"change,omitempty"`
	timelineSamples []tick
	// With -batch: the largest batch, the linger, the batch handler calls
	// and the mean messages per call. The bound (IdealSeconds) of a sink
	// model counts the fewest calls a scheduler could make.
	Batch         int     `json:"batch,omitempty"`
	LingerMs      float64 `json:"linger_ms,omitempty"`
	Batches       int64   `json:"batches,omitempty"`
	MeanBatchSize float64 `json:"mean_batch_size,omitempty"`

	// With -rate-limit: the limit (records=N,bytes=N,per-key=N, the fields
	// set). Throttled is Stats().Throttled at the end of the run: the
	// times a ready message was held back by the limit.
	RateLimit string `json:"rate_limit,omitempty"`
	Throttled int64  `json:"throttled"`
	// With -exclude-hot: the hottest keys (by message count) left out of
	// the target and their messages in the workload. Messages, Seconds and
	// MsgsPerSec then count the other keys' messages only (the first poll
	// of any message to the last handler end of theirs); the ideal and the
	// efficiency still count every handled message.
	ExcludedHotKeys  int `json:"excluded_hot_keys,omitempty"`
	ExcludedMessages int `json:"excluded_messages,omitempty"`
	// With -duration: its length; the messages whose handler ended from 1 s
	// after Consume's start to the end of the duration, per second of that
	// window; and the fewest and most of them in any whole second of it.
	DurationSeconds      float64 `json:"duration_seconds,omitempty"`
	RateWindowMsgsPerSec float64 `json:"rate_window_msgs_per_sec,omitempty"`
	RateSecondMin        int     `json:"rate_second_min,omitempty"`
	RateSecondMax        int     `json:"rate_second_max,omitempty"`

	// With -output: the output side of the run (consume, transform,
	// produce), at-least-once or in transactions.
	Output *outputStats `json:"output,omitempty"`

	Pauses          int64 `json:"pauses"`           // back-pressure pauses
	Committed       int64 `json:"committed"`        // messages covered by the committed offsets
	OrderViolations int64 `json:"order_violations"` // per-key order broken (key and partition modes)
	Duplicates      int64 `json:"duplicates"`       // messages handled twice
	Unknown         int64 `json:"unknown,omitempty"`

	Date     string `json:"date"`
	CPUs     int    `json:"cpus"`
	MemBytes uint64 `json:"mem_bytes"`

	partitionSeconds float64
}

func writeJSON(w io.Writer, r *result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table prints results as an aligned table.
type table struct {
	tw     *tabwriter.Writer
	header bool
	extra  []column // the optional columns, chosen by the first row
}

// column is an optional column of the table: its header and a row's cell.
type column struct {
	name string
	cell func(*result) string
}

// optionalColumns are the columns of the flags r's run used: -rate-limit,
// -exclude-hot and -duration (every row of an invocation uses the same).
func optionalColumns(r *result) []column {
	var cols []column
	if r.RateLimit != "" {
		cols = append(cols,
			column{"rate limit", func(r *result) string { return r.RateLimit }},
			column{"throttled", func(r *result) string { return fmt.Sprint(r.Throttled) }})
	}
	if r.ExcludedHotKeys > 0 {
		cols = append(cols,
			column{"excluded keys", func(r *result) string { return fmt.Sprint(r.ExcludedHotKeys) }},
			column{"excluded msgs", func(r *result) string { return fmt.Sprint(r.ExcludedMessages) }})
	}
	if r.Output != nil {
		cols = append(cols,
			column{"output", func(r *result) string { return r.Output.Kind }},
			column{"visible msg/s", func(r *result) string { return fmt.Sprintf("%.0f", r.Output.MsgsPerSec) }},
			column{"out dups/missing", func(r *result) string { return fmt.Sprintf("%d/%d", r.Output.Duplicates, r.Output.Missing) }},
			column{"rec/txn", func(r *result) string { return fmt.Sprintf("%.0f", r.Output.RecordsPerTxn) }},
			column{"produce→visible p50/p99 ms", func(r *result) string {
				return fmt.Sprintf("%.1f/%.1f", r.Output.ProduceToVisibleP50Ms, r.Output.ProduceToVisibleP99Ms)
			}})
	}
	if r.DurationSeconds > 0 {
		cols = append(cols,
			column{"window msg/s", func(r *result) string { return fmt.Sprintf("%.0f", r.RateWindowMsgsPerSec) }},
			column{"second min/max", func(r *result) string { return fmt.Sprintf("%d/%d", r.RateSecondMin, r.RateSecondMax) }})
	}
	return cols
}

func newTable(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)}
}

func (t *table) add(r *result) {
	if !t.header {
		fmt.Fprint(t.tw, "dist\tkeys\tmode\tconc\tlimit\th p50 ms\th p99 ms\tmodel p99 ms\tfail %\tseconds\tmsg/s\tideal s\teff\tserial s\tspeedup\tp50 ms\tp99 ms\tcpu µs/msg\tpeak heap MB\theap growth MB\tvs raw\thot starved s\thot dispatch s\tviolations\tbatch (max/mean)\t")
		t.extra = optionalColumns(r)
		for _, col := range t.extra {
			fmt.Fprintf(t.tw, "%s\t", col.name)
		}
		fmt.Fprintln(t.tw)
		t.header = true
	}
	serial := fmt.Sprintf("%.3f", r.SerialSeconds)
	if r.SerialEstimated {
		serial += "~"
	}
	vsRaw := "-"
	if r.VsRaw > 0 {
		vsRaw = fmt.Sprintf("%.2f", r.VsRaw)
	}
	limit, hp50, hp99, mp99, fail := "-", "-", "-", "-", "-"
	if r.Handler != "" && r.MeanLimit > 0 {
		limit, fail = fmt.Sprintf("%.1f", r.MeanLimit), fmt.Sprintf("%.3f", 100*r.FailureRate)
		hp50, hp99, mp99 = fmt.Sprintf("%.2f", r.HandlerP50Ms), fmt.Sprintf("%.2f", r.HandlerP99Ms), fmt.Sprintf("%.2f", r.ModelP99Ms)
	}
	batch := "-"
	if r.Batch > 0 {
		batch = fmt.Sprintf("%d/%.1f", r.Batch, r.MeanBatchSize)
	}
	fmt.Fprintf(t.tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%.0f\t%.3f\t%.3f\t%s\t%.1f\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%s\t%.3f\t%.3f\t%d\t%s\t",
		r.Dist, r.Keys, r.Mode, r.ConcurrencySpec, limit, hp50, hp99, mp99, fail, r.Seconds, r.MsgsPerSec, r.IdealSeconds, r.Efficiency,
		serial, r.SpeedupVsSerial, r.P50LatencyMs, r.P99LatencyMs, r.CPUMicrosPerMsg,
		mb(r.PeakHeapBytes), mb(r.HeapGrowthBytes), vsRaw, r.HotKeyStarvedSeconds, r.HotKeyDispatchSeconds, r.OrderViolations, batch)
	for _, col := range t.extra {
		fmt.Fprintf(t.tw, "%s\t", col.cell(r))
	}
	fmt.Fprintln(t.tw)
}

func (t *table) flush() { t.tw.Flush() }

func mb(b uint64) float64 { return float64(b) / (1 << 20) }
