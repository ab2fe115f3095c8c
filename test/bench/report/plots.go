package report

import (
	"fmt"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/kipvs/kipvs/test/bench/results"
)

// PlotSpec is one plot of a metric against the number of Services, a line per proxy.
type PlotSpec struct {
	// File is the PNG's name in the plot directory.
	File     string
	Scenario string
	// Metric is the metric drawn: the first of the candidates the scenario has.
	Metric string
	Title  string
	YLabel string
	// YScale multiplies the values (seconds to milliseconds, bytes to MiB).
	YScale float64
	// LogY draws the Y axis on a log scale (the X axis always is).
	LogY bool
}

// plotCandidate is a plot PlotSpecs draws when its scenario has one of metrics.
type plotCandidate struct {
	spec    PlotSpec
	metrics []string
}

// plotCandidates are the plots of BENCHMARKS.md.
var plotCandidates = []plotCandidate{
	{PlotSpec{File: "cold-start.png", Scenario: results.ColdStart, YLabel: "seconds", YScale: 1, LogY: true,
		Title: "Cold start: time until the kernel holds the table"}, []string{results.Seconds}},
	{PlotSpec{File: "one-change.png", Scenario: results.OneChange, YLabel: "milliseconds", YScale: 1e3, LogY: true,
		Title: "One endpoint change: API write to kernel"}, []string{results.P50Seconds, results.Seconds}},
	{PlotSpec{File: "packet-cost.png", Scenario: results.PacketCost, YLabel: "milliseconds", YScale: 1e3,
		Title: "Packet cost: connect + request through one VIP"}, []string{results.P50Seconds, results.Seconds}},
	{PlotSpec{File: "rss.png", Scenario: results.ColdStart, YLabel: "MiB", YScale: 1.0 / MiB,
		Title: "Peak RSS during cold start"}, []string{results.PeakRSSBytes}},
}

// PlotSpecs returns the plots f has data for, in the order BENCHMARKS.md shows them.
func PlotSpecs(f *results.File) []PlotSpec {
	var out []PlotSpec
	for _, c := range plotCandidates {
		sc := scenario(f, c.spec.Scenario)
		if sc == nil {
			continue
		}
		for _, metric := range c.metrics {
			spec := c.spec
			spec.Metric = metric
			if len(plotSeries(f, sc, spec)) > 0 {
				out = append(out, spec)
				break
			}
		}
	}
	return out
}

// series is one proxy's line: median points with their spread, and the
// scales at which a run hit the cap (drawn at the cap).
type series struct {
	Proxy  string
	Points plotter.XYs
	Errs   plotter.YErrors
	Capped plotter.XYs
}

// plotSeries returns the lines of spec from sc, one per proxy with at least
// one point. Only scales with 10 endpoints per Service (or an unset count) are
// drawn, so that each X has one value per proxy. Points a log axis cannot
// show (zero or negative) are left out.
func plotSeries(f *results.File, sc *results.Scenario, spec PlotSpec) []series {
	t := newTable(sc, spec.Metric)
	isTime := info(spec.Metric).Time
	var out []series
	for _, p := range t.Proxies {
		s := series{Proxy: p}
		for _, sk := range t.Scales {
			m := t.cell(p, sk)
			if m == nil || sk.Services <= 0 || sk.EndpointsPerService != 10 && sk.EndpointsPerService != 0 {
				continue
			}
			st := Summarize(*m)
			x := float64(sk.Services)
			switch {
			case st.Capped && isTime && f.CapSeconds > 0:
				s.Capped = append(s.Capped, plotter.XY{X: x, Y: f.CapSeconds * spec.YScale})
			case st.Capped || st.N == 0 || spec.LogY && st.Min <= 0:
				continue
			default:
				y := st.Median * spec.YScale
				s.Points = append(s.Points, plotter.XY{X: x, Y: y})
				s.Errs = append(s.Errs, struct{ Low, High float64 }{y - st.Min*spec.YScale, st.Max*spec.YScale - y})
			}
		}
		if len(s.Points)+len(s.Capped) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// errPoints is points with their Y errors, for plotter.NewYErrorBars.
type errPoints struct {
	plotter.XYs
	plotter.YErrors
}

// Plot draws spec from f.
func Plot(f *results.File, spec PlotSpec) (*plot.Plot, error) {
	sc := scenario(f, spec.Scenario)
	if sc == nil {
		return nil, fmt.Errorf("no scenario %q", spec.Scenario)
	}
	ss := plotSeries(f, sc, spec)
	if len(ss) == 0 {
		return nil, fmt.Errorf("scenario %q has no %s to plot", spec.Scenario, spec.Metric)
	}
	p := plot.New()
	p.Title.Text = spec.Title
	p.X.Label.Text = "Services (10 endpoints each)"
	p.Y.Label.Text = info(spec.Metric).Label + ", " + spec.YLabel + " (median; bars: min–max)"
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	if spec.LogY {
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	} else {
		p.Y.Min = 0
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	for i, s := range ss {
		if err := addSeries(p, s, i); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// addSeries draws one proxy's line, its spread and its capped points.
func addSeries(p *plot.Plot, s series, i int) error {
	if len(s.Points) > 0 {
		l, pts, err := plotter.NewLinePoints(s.Points)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Proxy, err)
		}
		l.Color, pts.Color, pts.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		l.Dashes = plotutil.Dashes(i)
		eb, err := plotter.NewYErrorBars(errPoints{s.Points, s.Errs})
		if err != nil {
			return fmt.Errorf("%s: %w", s.Proxy, err)
		}
		eb.Color = plotutil.Color(i)
		p.Add(l, pts, eb)
		p.Legend.Add(s.Proxy, l, pts)
	}
	if len(s.Capped) > 0 {
		c, err := plotter.NewScatter(s.Capped)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Proxy, err)
		}
		c.Color, c.Shape, c.Radius = plotutil.Color(i), draw.PyramidGlyph{}, vg.Points(4)
		p.Add(c)
		p.Legend.Add(s.Proxy+" > cap", c)
	}
	return nil
}

// Plot size of the PNGs.
const (
	plotWidth  = 7 * vg.Inch
	plotHeight = 4.5 * vg.Inch
)

// WritePlots draws every plot of PlotSpecs(f) into dir as PNG and returns the
// paths it wrote. It removes no other file.
func WritePlots(f *results.File, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for _, spec := range PlotSpecs(f) {
		p, err := Plot(f, spec)
		if err != nil {
			return written, err
		}
		path := filepath.Join(dir, spec.File)
		if err := p.Save(plotWidth, plotHeight, path); err != nil {
			return written, fmt.Errorf("writing %s: %w", path, err)
		}
		written = append(written, path)
	}
	return written, nil
}
