package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kipvs/kipvs/test/bench/results"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "docs", "bench", "results.json")
	if err := os.MkdirAll(filepath.Dir(in), 0o755); err != nil {
		t.Fatal(err)
	}
	f := &results.File{Command: "make bench", Runs: 1, CapSeconds: 60, Scenarios: []results.Scenario{{
		ID: results.ColdStart, Title: "Cold start", Measurements: []results.Measurement{
			{Proxy: results.Kipvs, Services: 100, EndpointsPerService: 10, Metric: results.Seconds, Values: []float64{1}},
			{Proxy: results.Kipvs, Services: 1000, EndpointsPerService: 10, Metric: results.Seconds, Values: []float64{3}},
		},
	}}}
	if err := results.Write(in, f); err != nil {
		t.Fatal(err)
	}
	gobench := filepath.Join(dir, "gobench.txt")
	if err := os.WriteFile(gobench, []byte("pkg: x\nBenchmarkA-2  5  100 ns/op  0 B/op  0 allocs/op\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	analysis := filepath.Join(dir, "analysis.md")
	if err := os.WriteFile(analysis, []byte("The profile shows X.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "BENCHMARKS.md")
	if err := run(in, md, filepath.Join(dir, "docs", "bench"), gobench, analysis); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"](docs/bench/cold-start.png)", "`make bench`", "| 1,000 × 10 | 3.00 s |", "`BenchmarkA`", "## Analysis", "The profile shows X."} {
		if !strings.Contains(string(b), want) {
			t.Errorf("BENCHMARKS.md lacks %q:\n%s", want, b)
		}
	}
	r, err := os.Open(filepath.Join(dir, "docs", "bench", "cold-start.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := png.DecodeConfig(r); err != nil {
		t.Errorf("cold-start.png: %v", err)
	}
}

func TestRunMissingInput(t *testing.T) {
	dir := t.TempDir()
	if err := run(filepath.Join(dir, "none.json"), filepath.Join(dir, "B.md"), dir, "", ""); err == nil {
		t.Error("run with a missing results file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "B.md")); !os.IsNotExist(err) {
		t.Errorf("run with a missing results file wrote the Markdown (stat: %v)", err)
	}
}

func TestRunMergesInputs(t *testing.T) {
	dir := t.TempDir()
	file := func(name, version string, v float64, n int) string {
		p := filepath.Join(dir, name)
		f := &results.File{KipvsVersion: version, Runs: 1, Scenarios: []results.Scenario{{
			ID: results.ColdStart, Title: "Cold start", Measurements: []results.Measurement{
				{Proxy: results.Kipvs, Services: n, EndpointsPerService: 10, Metric: results.Seconds, Values: []float64{v}},
			},
		}}}
		if err := results.Write(p, f); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := file("a.json", "old", 9, 1000), file("b.json", "new", 2, 1000)
	md := filepath.Join(dir, "BENCHMARKS.md")
	if err := run(a+","+b, md, dir, "", ""); err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "| 1,000 × 10 | 2.00 s |") || strings.Contains(string(out), "9.00 s") {
		t.Errorf("the later file's figure does not replace the earlier one's:\n%s", out)
	}
}
