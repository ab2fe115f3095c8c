package report

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// GoBench is the parsed output of `go test -bench -benchmem`.
type GoBench struct {
	// CPU is the "cpu:" line of the output (the last one seen).
	CPU string
	// Results are the benchmark lines, in the order they appeared.
	Results []GoBenchResult
}

// GoBenchResult is one benchmark line: "BenchmarkX/10k-2  5  123 ns/op  8016 B/op  39 allocs/op".
type GoBenchResult struct {
	// Pkg is the package of the latest "pkg:" line before it.
	Pkg string
	// Name is the benchmark name without the -GOMAXPROCS suffix.
	Name       string
	Iterations int
	// Metrics maps a unit ("ns/op", "B/op", "allocs/op", "ops/sync") to its value.
	Metrics map[string]float64
}

var (
	// benchName is the start of a benchmark line: its name, then its results
	// or nothing (a log line can come between the name and the results).
	benchName = regexp.MustCompile(`^(Benchmark\S+?)(?:-(\d+))?(?:\s+(.*))?$`)
	// benchFigures are a benchmark's results: iterations, then value-unit pairs.
	benchFigures = regexp.MustCompile(`^\s*(\d+)\s+([-0-9.e+]+ \S+.*)$`)
)

// ParseGoBench reads `go test -bench` output. Lines it does not know (log
// lines, PASS, ok) are skipped; a benchmark whose results were separated from
// its name by log lines is still read.
func ParseGoBench(r io.Reader) (*GoBench, error) {
	gb := &GoBench{}
	var pkg, pending string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t")
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimPrefix(line, "pkg: ")
		case strings.HasPrefix(line, "cpu: "):
			gb.CPU = strings.TrimPrefix(line, "cpu: ")
		case benchName.MatchString(line):
			m := benchName.FindStringSubmatch(line)
			pending = m[1]
			if m[3] == "" {
				continue
			}
			if res, ok := parseFigures(pkg, pending, m[3]); ok {
				gb.Results = append(gb.Results, res)
				pending = ""
			}
		case pending != "" && benchFigures.MatchString(line):
			if res, ok := parseFigures(pkg, pending, line); ok {
				gb.Results = append(gb.Results, res)
				pending = ""
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return gb, nil
}

// parseFigures parses "5  123 ns/op  8016 B/op" into a result of name.
func parseFigures(pkg, name, s string) (GoBenchResult, bool) {
	m := benchFigures.FindStringSubmatch(s)
	if m == nil {
		return GoBenchResult{}, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return GoBenchResult{}, false
	}
	fields := strings.Fields(m[2])
	if len(fields)%2 != 0 {
		return GoBenchResult{}, false
	}
	res := GoBenchResult{Pkg: pkg, Name: name, Iterations: n, Metrics: map[string]float64{}}
	for i := 0; i < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return GoBenchResult{}, false
		}
		res.Metrics[fields[i+1]] = v
	}
	if _, ok := res.Metrics["ns/op"]; !ok {
		return GoBenchResult{}, false
	}
	return res, true
}

// standardUnits are the columns every micro-benchmark table has, in order.
var standardUnits = []string{"ns/op", "B/op", "allocs/op"}

// writeGoBench writes the Micro-benchmarks section: a row per benchmark (the
// median when it ran several times), the standard units first, then the
// custom metrics (ops/plan, writes/sync).
func writeGoBench(b *strings.Builder, gb *GoBench) {
	b.WriteString("## Micro-benchmarks\n\n")
	b.WriteString("`go test -bench` over the in-memory fakes: kipvs's own CPU and allocations, without the kernel. ")
	if gb.CPU != "" {
		fmt.Fprintf(b, "CPU: %s. ", escapeCell(gb.CPU))
	}
	b.WriteString("Each row is the median over the lines of that benchmark.\n\n")
	type key struct{ pkg, name string }
	var keys []key
	vals := map[key]map[string][]float64{}
	var extra []string
	for _, r := range gb.Results {
		k := key{r.Pkg, r.Name}
		if vals[k] == nil {
			keys = append(keys, k)
			vals[k] = map[string][]float64{}
		}
		for u, v := range r.Metrics {
			vals[k][u] = append(vals[k][u], v)
			if !slices.Contains(standardUnits, u) && !slices.Contains(extra, u) {
				extra = append(extra, u)
			}
		}
	}
	slices.Sort(extra)
	units := append(slices.Clone(standardUnits), extra...)
	b.WriteString("| Package | Benchmark | time/op | bytes/op | " + strings.Join(units[2:], " | ") + " |\n")
	b.WriteString(strings.Repeat("|---", len(units)+2) + "|\n")
	for _, k := range keys {
		row := []string{"`" + k.pkg + "`", "`" + k.name + "`"}
		for _, u := range units {
			vs := vals[k][u]
			if len(vs) == 0 {
				row = append(row, "–")
				continue
			}
			slices.Sort(vs)
			med := vs[len(vs)/2]
			if len(vs)%2 == 0 {
				med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
			}
			switch u {
			case "ns/op":
				row = append(row, FormatSeconds(med/1e9))
			case "B/op":
				row = append(row, FormatBytes(med))
			default:
				row = append(row, FormatCount(med))
			}
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	b.WriteString("\n")
}
