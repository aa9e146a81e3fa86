package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/stages"
)

// downstreamRetry is the error handling of the downstream model's runs: a
// shed call is retried (1 ms, doubling, at most 20 ms, ±20 % jitter) until
// it succeeds, keeping its key, so that every run handles every message
// and what overload costs shows as failed calls and retries, not as lost
// messages. Each attempt is a call, counted in Calls.
var downstreamRetry = func() parallafka.Option {
	retry, err := stages.Retry[string, []byte](stages.RetryConfig{
		MaxAttempts: math.MaxInt32, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Multiplier: 2, Jitter: 0.2,
	})
	if err != nil {
		panic(err) // a constant configuration
	}
	return parallafka.WithAfterHandle("retry", retry)
}()

// tickEvery is the timeline's resolution.
const tickEvery = 100 * time.Millisecond

// tick is one timeline sample, taken every tickEvery; the rates and the
// p99 are over the interval that ends at T.
type tick struct {
	T           float64 // seconds since Consume was called
	Limit       int     // the concurrency limit in force
	Handled     int64
	Calls       int64
	Failures    int64
	MsgsPerSec  float64
	FailPerSec  float64
	HandlerP99  float64 // ms, of the calls that succeeded in the interval
	HandlerP90  float64 // ms, the same calls' 90th percentile (what the adaptive limit goes by)
	ModelP99    float64 // ms, the latency the downstream imposed on them
	Busy        int64   // handlers in a call
	startOffset int64   // recorder clock at T, ns
}

// timeline samples a run of the downstream model and applies its
// capacity change.
type timeline struct {
	start int64 // recorder clock when Consume was called
	ticks []tick
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func startTimeline(p *parallafka.Parallafka[string, []byte], rec *recorder, ds *downstream, change *capacityChange) *timeline {
	tl := &timeline{start: rec.now(), done: make(chan struct{})}
	tl.wg.Go(func() {
		t := time.NewTicker(tickEvery)
		defer t.Stop()
		var changeC <-chan time.Time
		if change != nil {
			ct := time.NewTimer(change.at)
			defer ct.Stop()
			changeC = ct.C
		}
		for {
			select {
			case <-tl.done:
				return
			case <-changeC:
				ds.setCapacity(change.capacity)
			case <-t.C:
				now := rec.now()
				tl.ticks = append(tl.ticks, tick{
					T: float64(now-tl.start) / 1e9, Limit: p.Stats().ConcurrencyLimit,
					Handled: rec.handled.Load(), Calls: rec.calls.Load(), Failures: rec.failures.Load(),
					Busy: rec.busy.Load(), startOffset: now,
				})
			}
		}
	})
	return tl
}

func (tl *timeline) stop() {
	tl.once.Do(func() { close(tl.done) })
	tl.wg.Wait()
}

// changeStats is what a run's timeline showed around -downstream-change.
type changeStats struct {
	At          float64 `json:"at_seconds"`
	NewCapacity int     `json:"new_capacity"`
	// LimitSettleSeconds: from the change until the limit is within
	// 0.75×–1.5× of the new capacity (the new optimum) for the rest of
	// the run, the limit taken as the median of the last half second's
	// samples (so that a probe window, 100 ms at half the limit every
	// 2.5 s, does not count as leaving the band); -1 if it never is.
	LimitSettleSeconds float64 `json:"limit_settle_seconds"`
	// Over the second before the change, and from 2 s after it to 1 s
	// before the run's last tick (the backlog's tail excluded).
	MsgsPerSecBefore float64 `json:"msgs_per_sec_before"`
	MsgsPerSecAfter  float64 `json:"msgs_per_sec_after"`
	P99MsBefore      float64 `json:"handler_p99_ms_before"`
	P99MsAfter       float64 `json:"handler_p99_ms_after"`
	ModelP99MsBefore float64 `json:"model_p99_ms_before"`
	ModelP99MsAfter  float64 `json:"model_p99_ms_after"`
	// RecoverySeconds: from the change until the throughput over the next
	// second is at least 0.9 of the best fixed concurrency's
	// MsgsPerSecAfter in the same invocation; -1 if never. It needs every
	// run of the invocation, so it is in the summary on stderr, not in the
	// JSON line (written as the run ends).
	RecoverySeconds float64 `json:"-"`
}

// summarize fills the run's downstream measurements from its timeline.
func (tl *timeline) summarize(r *result, rec *recorder, change *capacityChange) {
	r.Calls, r.Failures = rec.calls.Load(), rec.failures.Load()
	if r.Calls > 0 {
		r.FailureRate = float64(r.Failures) / float64(r.Calls)
	}
	p50, _, p99 := rec.handlerLatencies(0, 0)
	r.HandlerP50Ms, r.HandlerP99Ms = ms(p50), ms(p99)
	p50, p99 = rec.modelLatencies(0, 0)
	r.ModelP50Ms, r.ModelP99Ms = ms(p50), ms(p99)
	prev := tick{startOffset: tl.start}
	sum := 0.0
	for i := range tl.ticks {
		t := &tl.ticks[i]
		dt := t.T - prev.T
		t.MsgsPerSec = float64(t.Handled-prev.Handled) / dt
		t.FailPerSec = float64(t.Failures-prev.Failures) / dt
		_, p90, p99 := rec.handlerLatencies(prev.startOffset, t.startOffset)
		t.HandlerP90, t.HandlerP99 = ms(p90), ms(p99)
		_, mp99 := rec.modelLatencies(prev.startOffset, t.startOffset)
		t.ModelP99 = ms(mp99)
		sum += float64(t.Limit)
		prev = *t
	}
	if n := len(tl.ticks); n > 0 {
		r.MeanLimit, r.LastLimit = sum/float64(n), tl.ticks[n-1].Limit
	}
	r.timelineSamples = tl.ticks
	if change == nil || len(tl.ticks) == 0 {
		return
	}
	at := change.at.Seconds()
	cs := &changeStats{At: at, NewCapacity: change.capacity, LimitSettleSeconds: -1, RecoverySeconds: -1}
	lo, hi := 0.75*float64(change.capacity), 1.5*float64(change.capacity)
	for i := len(tl.ticks) - 1; i >= 0 && tl.ticks[i].T > at; i-- {
		var recent []int
		for j := i; j >= 0 && tl.ticks[j].T > tl.ticks[i].T-0.5; j-- {
			recent = append(recent, tl.ticks[j].Limit)
		}
		slices.Sort(recent)
		if l := float64(recent[len(recent)/2]); l < lo || l > hi {
			break
		}
		cs.LimitSettleSeconds = max(0, tl.ticks[i].T-at)
	}
	end := tl.ticks[len(tl.ticks)-1].T - 1
	cs.MsgsPerSecBefore, _ = tl.rate(at-1, at)
	cs.MsgsPerSecAfter, _ = tl.rate(at+2, end)
	_, _, p := rec.handlerLatencies(tl.at(at-1), tl.at(at))
	cs.P99MsBefore = ms(p)
	_, _, p = rec.handlerLatencies(tl.at(at+2), tl.at(end))
	cs.P99MsAfter = ms(p)
	_, p = rec.modelLatencies(tl.at(at-1), tl.at(at))
	cs.ModelP99MsBefore = ms(p)
	_, p = rec.modelLatencies(tl.at(at+2), tl.at(end))
	cs.ModelP99MsAfter = ms(p)
	r.Change = cs
}

// rate returns the messages handled per second over [from, to] (seconds
// since the start, to the nearest ticks).
func (tl *timeline) rate(from, to float64) (float64, bool) {
	var a, b *tick
	for i := range tl.ticks {
		t := &tl.ticks[i]
		if a == nil && t.T >= from {
			a = t
		}
		if t.T <= to {
			b = t
		}
	}
	if a == nil || b == nil || b.T <= a.T {
		return 0, false
	}
	return float64(b.Handled-a.Handled) / (b.T - a.T), true
}

// at returns the recorder clock at the tick nearest after s seconds.
func (tl *timeline) at(s float64) int64 {
	for _, t := range tl.ticks {
		if t.T >= s {
			return t.startOffset
		}
	}
	return 0
}

// reportTimelines computes the adaptive runs' recovery against the best
// fixed run, prints a summary of every change, and writes the CSV and the
// chart.
func reportTimelines(c *config, results []*result, stderr io.Writer) error {
	var withTimeline []*result
	best := 0.0
	for _, r := range results {
		if r.timelineSamples == nil {
			continue
		}
		withTimeline = append(withTimeline, r)
		if r.Change != nil && !strings.HasPrefix(r.ConcurrencySpec, "adaptive") {
			best = max(best, r.Change.MsgsPerSecAfter)
		}
	}
	for _, r := range withTimeline {
		cs := r.Change
		if cs == nil {
			continue
		}
		if best > 0 {
			tl := &timeline{ticks: r.timelineSamples}
			for _, t := range tl.ticks {
				if t.T < cs.At {
					continue
				}
				if rate, ok := tl.rate(t.T, t.T+1); ok && rate >= 0.9*best {
					cs.RecoverySeconds = max(0, t.T-cs.At)
					break
				}
			}
		}
		fmt.Fprintf(stderr, "# %s: capacity → %d at %.1fs: limit in 0.75-1.5× of it from %s after; msg/s %.0f → %.0f (≥ 0.9 of the best fixed run's %.0f from %s after); handler p99 %.2f → %.2f ms, downstream-imposed p99 %.2f → %.2f ms\n",
			r.ConcurrencySpec, cs.NewCapacity, cs.At, seconds(cs.LimitSettleSeconds), cs.MsgsPerSecBefore, cs.MsgsPerSecAfter,
			best, seconds(cs.RecoverySeconds), cs.P99MsBefore, cs.P99MsAfter, cs.ModelP99MsBefore, cs.ModelP99MsAfter)
	}
	if c.timeline != "" && len(withTimeline) > 0 {
		if err := writeTimelineCSV(c.timeline, withTimeline); err != nil {
			return fmt.Errorf("timeline: %w", err)
		}
	}
	if c.timelinePNG != "" && len(withTimeline) > 0 {
		if err := writeTimelinePlot(c.timelinePNG, withTimeline); err != nil {
			return fmt.Errorf("timeline plot: %w", err)
		}
		fmt.Fprintf(stderr, "# timeline chart written to %s\n", c.timelinePNG)
	}
	return nil
}

// seconds formats a delay, -1 as never.
func seconds(s float64) string {
	if s < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1fs", s)
}

func writeTimelineCSV(path string, results []*result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "handler,concurrency,seconds,limit,msgs_per_sec,handler_p99_ms,model_p99_ms,failures_per_sec,busy,handler_p90_ms")
	for _, r := range results {
		for _, t := range r.timelineSamples {
			fmt.Fprintf(w, "%q,%s,%.2f,%d,%.0f,%.3f,%.3f,%.0f,%d,%.3f\n", r.Handler, r.ConcurrencySpec, t.T, t.Limit, t.MsgsPerSec, t.HandlerP99, t.ModelP99, t.FailPerSec, t.Busy, t.HandlerP90)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeTimelinePlot charts, one above the other, the concurrency limit,
// the throughput, the handler p99 (wall time) and the p99 of the latency
// the downstream imposed over time, one line per run, with the capacity
// change marked.
func writeTimelinePlot(path string, results []*result) error {
	type panel struct {
		title string
		y     func(tick) float64
		log   bool
	}
	panels := []panel{
		{"concurrency limit", func(t tick) float64 { return float64(t.Limit) }, true},
		{"messages per second", func(t tick) float64 { return t.MsgsPerSec }, false},
		{"handler p99 (ms)", func(t tick) float64 { return t.HandlerP99 }, false},
		{"downstream-imposed p99 (ms)", func(t tick) float64 { return t.ModelP99 }, false},
	}
	first := results[0]
	plots := make([][]*plot.Plot, len(panels))
	for i, pn := range panels {
		p := plot.New()
		if i == 0 {
			p.Title.Text = fmt.Sprintf("handler %s, %d messages over %d keys, source %s", first.Handler, first.Messages, first.Keys, first.Source)
			if first.Change != nil {
				p.Title.Text += fmt.Sprintf("; capacity → %d at %.0f s", first.Change.NewCapacity, first.Change.At)
			}
		}
		p.Y.Label.Text = pn.title
		if i == len(panels)-1 {
			p.X.Label.Text = "seconds since Consume started"
		}
		if pn.log {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		}
		p.Add(plotter.NewGrid())
		top := 1.0
		for j, r := range results {
			var xys plotter.XYs
			for _, t := range r.timelineSamples {
				y := pn.y(t)
				if pn.log && y <= 0 {
					continue
				}
				xys = append(xys, plotter.XY{X: t.T, Y: y})
				top = max(top, y)
			}
			if len(xys) == 0 {
				continue
			}
			line, err := plotter.NewLine(xys)
			if err != nil {
				return err
			}
			line.Color, line.Width = plotutil.Color(j), vg.Points(1.3)
			p.Add(line)
			if i == 0 {
				p.Legend.Add("c="+r.ConcurrencySpec, line)
			}
		}
		if first.Change != nil {
			bottom := 0.0
			if pn.log {
				bottom = 0.1
			}
			mark, err := plotter.NewLine(plotter.XYs{{X: first.Change.At, Y: bottom + 1e-9}, {X: first.Change.At, Y: top}})
			if err != nil {
				return err
			}
			mark.Color, mark.Dashes = plotutil.Color(7), []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(mark)
		}
		p.Legend.Top, p.Legend.Left = true, false
		plots[i] = []*plot.Plot{p}
	}
	img := vgimg.New(11*vg.Inch, 11*vg.Inch)
	dc := draw.New(img)
	canvases := plot.Align(plots, draw.Tiles{Rows: len(panels), Cols: 1, PadY: vg.Points(6), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(8)}, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
