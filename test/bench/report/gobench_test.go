package report

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// goBenchOutput is `go test -bench -benchmem` output of two packages, with a
// log line between a benchmark's name and its results, and a benchmark run twice.
const goBenchOutput = `goos: linux
goarch: amd64
pkg: github.com/kipvs/kipvs/endpoints
cpu: AMD EPYC
BenchmarkApplyOneChange-2   	    5000	     21000 ns/op	    4096 B/op	      12 allocs/op
PASS
ok  	github.com/kipvs/kipvs/endpoints	1.2s
goos: linux
goarch: amd64
pkg: github.com/kipvs/kipvs/proxier
cpu: AMD EPYC
BenchmarkBuildModel/10k-2         	       5	  90724930 ns/op	32797574 B/op	  148100 allocs/op
BenchmarkIncrementalSync/10k-2    	I1123 19:20:00.000000   12345 proxier.go:240] "Synced IPVS" full=true
       5	     29994 ns/op	         3.000 ops/sync	    7705 B/op	      37 allocs/op
BenchmarkBuildModel/10k-2         	       5	  80000000 ns/op	32797574 B/op	  148100 allocs/op
--- FAIL: BenchmarkBroken
BenchmarkBroken-2 	FAIL
PASS
ok  	github.com/kipvs/kipvs/proxier	33.1s
`

func TestParseGoBench(t *testing.T) {
	gb, err := ParseGoBench(strings.NewReader(goBenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	const ep, px = "github.com/kipvs/kipvs/endpoints", "github.com/kipvs/kipvs/proxier"
	want := &GoBench{CPU: "AMD EPYC", Results: []GoBenchResult{
		{Pkg: ep, Name: "BenchmarkApplyOneChange", Iterations: 5000, Metrics: map[string]float64{"ns/op": 21000, "B/op": 4096, "allocs/op": 12}},
		{Pkg: px, Name: "BenchmarkBuildModel/10k", Iterations: 5, Metrics: map[string]float64{"ns/op": 90724930, "B/op": 32797574, "allocs/op": 148100}},
		{Pkg: px, Name: "BenchmarkIncrementalSync/10k", Iterations: 5, Metrics: map[string]float64{"ns/op": 29994, "ops/sync": 3, "B/op": 7705, "allocs/op": 37}},
		{Pkg: px, Name: "BenchmarkBuildModel/10k", Iterations: 5, Metrics: map[string]float64{"ns/op": 80000000, "B/op": 32797574, "allocs/op": 148100}},
	}}
	if diff := cmp.Diff(want, gb); diff != "" {
		t.Errorf("ParseGoBench (-want +got):\n%s", diff)
	}
}

func TestMicroBenchmarkSection(t *testing.T) {
	gb, err := ParseGoBench(strings.NewReader(goBenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	md := Markdown(file(), Options{GoBench: gb})
	_, section, ok := strings.Cut(md, "## Micro-benchmarks\n")
	if !ok {
		t.Fatalf("no Micro-benchmarks section:\n%s", md)
	}
	for _, want := range []string{
		"CPU: AMD EPYC.",
		"| Package | Benchmark | time/op | bytes/op | allocs/op | ops/sync |",
		"| `github.com/kipvs/kipvs/endpoints` | `BenchmarkApplyOneChange` | 21.0 µs | 4.00 KiB | 12 | – |",
		// Two runs of BuildModel/10k: the median of 90.7 ms and 80 ms.
		"| `github.com/kipvs/kipvs/proxier` | `BenchmarkBuildModel/10k` | 85.4 ms | 31.3 MiB | 148,100 | – |",
		"| `github.com/kipvs/kipvs/proxier` | `BenchmarkIncrementalSync/10k` | 30.0 µs | 7.52 KiB | 37 | 3 |",
	} {
		if !strings.Contains(section, want) {
			t.Errorf("Micro-benchmarks section lacks %q:\n%s", want, section)
		}
	}
	if strings.Count(section, "BenchmarkBuildModel/10k") != 1 {
		t.Errorf("BuildModel/10k has more than one row:\n%s", section)
	}
}
