package report

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/test/bench/results"
)

func TestPlotSpecs(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    *results.File
		want []string // File/Metric of each spec
	}{
		{"empty", file(), nil},
		{"cold start with RSS", smallFile(), []string{"cold-start.png/seconds", "rss.png/peak_rss_bytes"}},
		{"every plot", fullFile(), []string{"cold-start.png/seconds", "one-change.png/p50_seconds", "packet-cost.png/p50_seconds", "rss.png/peak_rss_bytes"}},
		{"one change falls back to seconds", file(scen(results.OneChange, meas(results.Kipvs, results.Seconds, 100, 0.1))),
			[]string{"one-change.png/seconds"}},
		{"only capped or zero values on a log axis: nothing to draw", file(scen(results.ColdStart,
			capped(meas(results.Kipvs, results.KernelOps, 100, 5)), meas(results.Kipvs, results.Seconds, 100, 0))), nil},
		{"capped time is drawn at the cap", file(scen(results.ColdStart, capped(meas(results.KubeProxyIPVS, results.Seconds, 10000)))),
			[]string{"cold-start.png/seconds"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, s := range PlotSpecs(tc.f) {
				got = append(got, s.File+"/"+s.Metric)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("PlotSpecs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlotSeries(t *testing.T) {
	f := file(scen(results.ColdStart,
		meas(results.Kipvs, results.Seconds, 100, 1, 2, 3),
		meas(results.Kipvs, results.Seconds, 1000, 0), // not drawable on a log axis
		capped(meas(results.KubeProxyIPVS, results.Seconds, 10000)),
		results.Measurement{Proxy: results.Kipvs, Services: 100, EndpointsPerService: 100, Metric: results.Seconds, Values: []float64{9}},
	))
	ss := plotSeries(f, &f.Scenarios[0], PlotSpec{Scenario: results.ColdStart, Metric: results.Seconds, YScale: 1, LogY: true})
	type point struct{ X, Y, Low, High float64 }
	got := map[string][]point{}
	for _, s := range ss {
		for i, p := range s.Points {
			got[s.Proxy] = append(got[s.Proxy], point{p.X, p.Y, s.Errs[i].Low, s.Errs[i].High})
		}
		for _, p := range s.Capped {
			got[s.Proxy+" capped"] = append(got[s.Proxy+" capped"], point{X: p.X, Y: p.Y})
		}
	}
	want := map[string][]point{
		results.Kipvs:                     {{X: 100, Y: 2, Low: 1, High: 1}},
		results.KubeProxyIPVS + " capped": {{X: 10000, Y: 900}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("plotSeries (-want +got):\n%s", diff)
	}
}

func TestWritePlots(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plots")
	written, err := WritePlots(fullFile(), dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range written {
		names = append(names, filepath.Base(p))
	}
	want := []string{"cold-start.png", "one-change.png", "packet-cost.png", "rss.png"}
	if !slices.Equal(names, want) {
		t.Errorf("wrote %v, want %v", names, want)
	}
	for _, p := range written {
		r, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(r)
		r.Close()
		if err != nil {
			t.Errorf("%s is not a PNG: %v", p, err)
			continue
		}
		if cfg.Width < 300 || cfg.Height < 200 {
			t.Errorf("%s is %dx%d, want a readable size", p, cfg.Width, cfg.Height)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("%s holds %d files, want %d", dir, len(entries), len(want))
	}
}

func TestWritePlotsNothingToDraw(t *testing.T) {
	dir := t.TempDir()
	written, err := WritePlots(file(), dir)
	if err != nil || len(written) != 0 {
		t.Errorf("WritePlots(empty) = %v, %v; want nothing written", written, err)
	}
}
