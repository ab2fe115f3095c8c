// Command bench runs kipvs's scalability benchmarks (issue 7): for each scale
// it starts a fresh API server (test/apiserver), creates the Services and
// EndpointSlices from the host, and boots one VM (test/vm) per proxy and run,
// in which the agent (test/bench/agent) starts the proxy under test and
// measures. The records the agents print are folded into one results file
// (test/bench/results).
//
//	go run ./test/bench/cmd/bench -out docs/bench/results.json -scales 100 -runs 1 -churn 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kipvs/kipvs/test/bench/results"
)

// options is the command line.
type options struct {
	out       string
	scales    []int
	runs      int
	capDur    time.Duration
	proxies   []string
	scenarios []string
	churn     time.Duration
	churnRate float64
	stream    time.Duration
	minSync   time.Duration
	eps       int
	logDir    string
	merge     string
}

var allProxies = []string{results.Kipvs, results.KubeProxyIPVS, results.KubeProxyNFTables, results.KubeProxyIPTables}

var allScenarios = []string{results.ColdStart, results.OneChange, results.Restart, results.Churn,
	results.PacketCost, results.Throughput, results.Floor}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var scales, proxies, scenarios string
	fs.StringVar(&o.out, "out", "docs/bench/results.json", "results file to write (rewritten after every VM)")
	fs.StringVar(&scales, "scales", "100,1000,5000,10000", "numbers of Services, comma-separated")
	fs.IntVar(&o.runs, "runs", 3, "runs (fresh VM each) per proxy and scale")
	fs.DurationVar(&o.capDur, "cap", 15*time.Minute, "cap per measurement; a run over it is recorded as capped and its proxy killed")
	fs.StringVar(&proxies, "proxies", strings.Join(allProxies, ","), "proxies to compare")
	fs.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "scenarios to run")
	fs.DurationVar(&o.churn, "churn", time.Minute, "duration of the churn scenario")
	fs.Float64Var(&o.churnRate, "churn-rate", 2, "endpoint changes per second during churn")
	fs.DurationVar(&o.stream, "stream", 5*time.Second, "duration of each throughput stream")
	fs.DurationVar(&o.minSync, "min-sync-period", time.Second, "minimum sync period given to every proxy (kube-proxy's default)")
	fs.IntVar(&o.eps, "endpoints", 10, "endpoints per Service")
	fs.StringVar(&o.merge, "merge", "", "an earlier results file: this run's measurements replace its ones of the same scenario, proxy, scale and metric, the rest are kept (e.g. re-run -proxies kipvs after a change)")
	fs.StringVar(&o.logDir, "logdir", "", "directory for the VM console logs (default: a new temporary directory)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if o.scales, err = parseInts(scales); err != nil {
		return nil, fmt.Errorf("-scales: %w", err)
	}
	if o.proxies, err = parseList(proxies, allProxies); err != nil {
		return nil, fmt.Errorf("-proxies: %w", err)
	}
	if o.scenarios, err = parseList(scenarios, allScenarios); err != nil {
		return nil, fmt.Errorf("-scenarios: %w", err)
	}
	if o.runs < 1 || o.eps < 1 || o.eps > 15 || o.capDur <= 0 || o.churnRate <= 0 {
		return nil, fmt.Errorf("-runs >= 1, 1 <= -endpoints <= 15, -cap > 0 and -churn-rate > 0 are required")
	}
	return o, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseList splits a comma list and checks every item is in known.
func parseList(s string, known []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ok := false
		for _, k := range known {
			ok = ok || k == f
		}
		if !ok {
			return nil, fmt.Errorf("unknown %q (known: %s)", f, strings.Join(known, ","))
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty")
	}
	return out, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, args...)...)
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, "go run ./test/bench/cmd/bench "+strings.Join(os.Args[1:], " ")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
