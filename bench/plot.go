package main

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writePlot charts throughput against concurrency, one solid line per
// measured series (key distribution, keys, mode) and, in the same colour,
// a dashed line for the series' ideal (messages / ideal seconds). Both axes
// are logarithmic. The file's extension picks the format (.png, .svg, ...).
func writePlot(path string, results []*result) error {
	type series struct {
		label           string
		measured, ideal plotter.XYs
	}
	var all []*series
	byLabel := map[string]*series{}
	concs := map[int]bool{}
	for _, r := range results {
		if r.ConcurrencySpec != strconv.Itoa(r.Concurrency) {
			continue // adaptive: no one concurrency to put it at
		}
		label := fmt.Sprintf("%s, %d keys, %s", r.Dist, r.Keys, r.Mode)
		if r.Dist == "zipf" {
			label = fmt.Sprintf("zipf s=%g, %d keys, %s", r.ZipfS, r.Keys, r.Mode)
		}
		s := byLabel[label]
		if s == nil {
			s = &series{label: label}
			byLabel[label] = s
			all = append(all, s)
		}
		concs[r.Concurrency] = true
		if r.MsgsPerSec > 0 {
			s.measured = append(s.measured, plotter.XY{X: float64(r.Concurrency), Y: r.MsgsPerSec})
		}
		if r.IdealSeconds > 0 {
			s.ideal = append(s.ideal, plotter.XY{X: float64(r.Concurrency), Y: float64(r.Messages) / r.IdealSeconds})
		}
	}
	if len(concs) < 2 {
		return fmt.Errorf("a chart needs at least two concurrency values")
	}
	first := results[0]
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Throughput vs concurrency: handler %s, %d messages, %d partitions, source %s",
		first.Handler, first.Messages, first.Partitions, first.Source)
	p.X.Label.Text = "concurrency (handlers)"
	p.Y.Label.Text = "messages per second"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	var xs []int
	for c := range concs {
		xs = append(xs, c)
	}
	slices.Sort(xs)
	var xticks plot.ConstantTicks
	for _, c := range xs {
		xticks = append(xticks, plot.Tick{Value: float64(c), Label: strconv.Itoa(c)})
	}
	p.X.Tick.Marker = xticks
	p.Y.Tick.Marker = decadeTicks{}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())

	for i, s := range all {
		col := plotutil.Color(i)
		if len(s.measured) > 0 {
			line, points, err := plotter.NewLinePoints(s.measured)
			if err != nil {
				return err
			}
			line.Color, line.Width = col, vg.Points(1.5)
			points.Color, points.Shape = col, draw.CircleGlyph{}
			p.Add(line, points)
			p.Legend.Add(s.label+": measured", line, points)
		}
		if len(s.ideal) > 0 {
			line, err := plotter.NewLine(s.ideal)
			if err != nil {
				return err
			}
			line.Color, line.Width = faded(col), vg.Points(1.2)
			line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
			p.Add(line)
			p.Legend.Add(s.label+": ideal", line)
		}
	}
	return p.Save(11*vg.Inch, 6.5*vg.Inch, path)
}

func faded(c color.Color) color.Color {
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	n.A = 170
	return n
}

// decadeTicks labels the powers of ten and marks 2× and 5× between them.
type decadeTicks struct{}

func (decadeTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		base := math.Pow(10, e)
		for _, m := range []float64{1, 2, 5} {
			v := m * base
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || hi/lo < 100 {
				t.Label = humanCount(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

func humanCount(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 3, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 3, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}
