// Command report writes BENCHMARKS.md and the plots from a benchmark results
// file (issue 7); `make bench-report` runs it. All logic is in test/bench/report.
//
//	go run ./test/bench/cmd/report -in docs/bench/results.json -md BENCHMARKS.md -plots docs/bench [-gobench bench.txt]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kipvs/kipvs/test/bench/report"
	"github.com/kipvs/kipvs/test/bench/results"
)

func main() {
	in := flag.String("in", "docs/bench/results.json", "results file written by the benchmark runner; several, comma-separated, are folded left to right with results.Merge (a later file's measurements replace an earlier one's)")
	md := flag.String("md", "BENCHMARKS.md", "Markdown file to write")
	plots := flag.String("plots", "docs/bench", "directory for the PNG plots")
	gobench := flag.String("gobench", "", "optional `go test -bench -benchmem` output for the Micro-benchmarks section")
	analysis := flag.String("analysis", "", "optional Markdown file with a person's analysis of the figures (docs/bench/analysis.md)")
	flag.Parse()
	if err := run(*in, *md, *plots, *gobench, *analysis); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(in, md, plotDir, gobench, analysis string) error {
	var f *results.File
	for _, path := range strings.Split(in, ",") {
		g, err := results.Read(path)
		if err != nil {
			return err
		}
		if f == nil {
			f = g
		} else {
			f = results.Merge(f, g)
		}
	}
	opt := report.Options{Source: filepath.ToSlash(strings.ReplaceAll(in, ",", " + "))}
	if gobench != "" {
		r, err := os.Open(gobench)
		if err != nil {
			return err
		}
		opt.GoBench, err = report.ParseGoBench(r)
		r.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", gobench, err)
		}
	}
	if analysis != "" {
		a, err := os.ReadFile(analysis)
		if err != nil {
			return err
		}
		opt.Analysis, opt.AnalysisSource = string(a), filepath.ToSlash(analysis)
	}
	rel, err := filepath.Rel(filepath.Dir(md), plotDir)
	if err != nil {
		return err
	}
	opt.PlotDir = filepath.ToSlash(rel)
	written, err := report.WritePlots(f, plotDir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(md, []byte(report.Markdown(f, opt)), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %d plot(s) in %s\n", md, len(written), plotDir)
	return nil
}
