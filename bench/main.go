// Command bench is Parallafka's benchmark harness: it generates a workload
// (keys with a uniform or Zipf distribution over partitions, a handler
// model), consumes it with Parallafka over a sweep of ordering modes and
// concurrencies, and measures each run against baselines on the same
// workload: the serial classic loop (one consumer per partition), the
// ideal (the lower bound of any scheduler that keeps the order, from the
// handler durations measured in the run) and, on Kafka, the raw consume
// loop of the client the source uses (-client confluent or franz).
//
//	go run ./bench -source mem -messages 10000 -keys 1,10,1000 -handler sleep:0ms-5ms -concurrency 100
//	go run ./bench -source embedded -messages 1000000 -handler noop -json
//	go run ./bench -source embedded -client franz -messages 1000000 -handler noop -json
//
// See bench/README.md for the workloads and the results.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// run runs every combination of the sweep and reports each run on stdout.
func run(c *config, stdout, stderr io.Writer) error {
	ctx := context.Background()
	if c.gogc != 0 {
		defer debug.SetGCPercent(debug.SetGCPercent(c.gogc))
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	m := machineInfo()
	fmt.Fprintf(stderr, "# %s; %s\n", m, strings.Join(os.Args, " "))
	var b *broker
	if c.source != "mem" {
		var err error
		if b, err = startBroker(c); err != nil {
			return err
		}
		defer b.Close()
	}
	tbl := newTable(stdout)
	var results []*result
	for _, dist := range c.dists {
		for _, keys := range c.keys {
			w := newWorkload(c, dist, keys)
			fmt.Fprintf(stderr, "# workload: %d messages, %s, %d partitions (hottest key %.1f%% of messages), handler %s\n",
				w.n, w, w.partitions, 100*w.hottestKeyShare(), c.handler)
			rs, err := sweep(ctx, c, b, w, stdout, stderr, tbl)
			results = append(results, rs...)
			if err != nil {
				return err
			}
		}
	}
	if err := reportTimelines(c, results, stderr); err != nil {
		return err
	}
	if c.plot != "" && len(results) > 0 {
		if err := writePlot(c.plot, results); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Fprintf(stderr, "# chart written to %s\n", c.plot)
	}
	return nil
}

// sweep measures the baselines of one workload, then runs every mode and
// concurrency on it.
func sweep(ctx context.Context, c *config, b *broker, w *workload, stdout, stderr io.Writer, tbl *table) ([]*result, error) {
	topic := ""
	if b != nil && c.inputRate == 0 {
		var err error
		if topic, err = b.load(ctx, w, c.keepTopic, stderr); err != nil {
			return nil, err
		}
		if c.keepTopic == "" {
			defer func() { _ = b.cluster.DeleteTopic(ctx, topic) }()
		}
	}

	var serial, raw *baseline
	if c.serial && c.backlog == c.messages {
		rec := newRecorder(w, c.handler, w.n, true)
		bar := startProgress(stderr, c.progress, "serial baseline", rec.handled.Load, int64(w.n))
		var s baseline
		var err error
		if b == nil {
			s, err = serialMem(rec, c.stall)
		} else if c.client == "franz" {
			s, err = serialFranz(b, topic, rec, c.stall)
		} else {
			s, err = serialKafka(b, topic, rec, c.stall)
		}
		bar.Stop()
		if err != nil {
			return nil, fmt.Errorf("serial baseline: %w", err)
		}
		if v := rec.violations.Load() + rec.dups.Load(); v != 0 {
			return nil, fmt.Errorf("serial baseline: %d order violations or duplicates", v)
		}
		serial = &s
		fmt.Fprintf(stderr, "# serial baseline: %.3f s, %.0f msg/s, %.2f µs CPU/msg\n", s.seconds, s.msgsPerSec, micros(s.cpuPerMsg))
	}
	if c.raw && (b != nil || c.handler.kind == "noop") {
		rec := newRecorder(w, handlerSpec{kind: "noop", text: "noop"}, c.messages, false)
		bar := startProgress(stderr, c.progress, "raw consumer", rec.handled.Load, int64(c.messages))
		var r baseline
		var err error
		if b == nil {
			r, err = rawMem(w, rec, c.messages, c.stall)
		} else if c.client == "franz" {
			r, err = rawFranz(b, topic, rec, c.stall)
		} else {
			r, err = rawKafka(b, topic, rec, c.stall)
		}
		bar.Stop()
		if err != nil {
			return nil, fmt.Errorf("raw consumer baseline: %w", err)
		}
		raw = &r
		fmt.Fprintf(stderr, "# raw consumer (%s): %.3f s, %.0f msg/s, %.2f µs CPU/msg\n", cmp.Or(c.clientName(), "memsource"), r.seconds, r.msgsPerSec, micros(r.cpuPerMsg))
	}

	var results []*result
	defer tbl.flush()
	outputs := c.outputs
	if len(outputs) == 0 {
		outputs = []string{""}
	}
	for _, mode := range c.modes {
		for _, conc := range c.concurrency {
			for _, output := range outputs {
				rc := *c
				rc.output = output
				r, err := runPipeline(&rc, w, b, topic, mode, conc, stderr)
				if err != nil {
					return results, err
				}
				if serial != nil {
					r.SerialSeconds = serial.seconds
				} else {
					r.SerialSeconds, r.SerialEstimated = r.partitionSeconds, true
				}
				if r.Seconds > 0 {
					r.SpeedupVsSerial = r.SerialSeconds / r.Seconds
				}
				if raw != nil {
					r.RawMsgsPerSec, r.RawCPUMicrosPerMsg = raw.msgsPerSec, micros(raw.cpuPerMsg)
					if raw.msgsPerSec > 0 {
						r.VsRaw = r.MsgsPerSec / raw.msgsPerSec
					}
				}
				r.Date = time.Now().UTC().Format(time.RFC3339)
				r.CPUs, r.MemBytes = runtime.NumCPU(), totalMemory()
				results = append(results, r)
				if c.json {
					if err := writeJSON(stdout, r); err != nil {
						return results, err
					}
				} else {
					tbl.add(r)
				}
			}
		}
	}
	return results, nil
}

func micros(d time.Duration) float64 { return float64(d) / 1e3 }

// machineInfo describes the machine: date, CPU model and count, memory.
func machineInfo() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %s, %d cores, %.1f GiB, %s %s/%s, GOMAXPROCS=%d",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), model, runtime.NumCPU(),
		float64(totalMemory())/(1<<30), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0))
}

// totalMemory returns the machine's memory in bytes (0 if unknown).
func totalMemory() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb uint64
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
			return kb << 10
		}
	}
	return 0
}
