// Command agent runs inside the benchmark VM (test/bench): it starts one proxy
// under test against the API server the host prepared, measures the selected
// scenarios by polling the kernel, and prints each figure as a record line
// (test/bench/record) on the console for the host to collect.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kipvs/kipvs/test/bench/record"
	"github.com/kipvs/kipvs/test/bench/results"
)

// config is the agent's command line.
type config struct {
	proxy         string
	services, eps int
	scenarios     map[string]bool
	capDur        time.Duration
	churn         time.Duration
	churnRate     float64
	changes       int
	requests      int
	streamDur     time.Duration
	minSync       time.Duration
	kubeconfig    string
	kipvs         string
	kubeProxy     string
}

func parseFlags() *config {
	c := &config{}
	var scen string
	flag.StringVar(&c.proxy, "proxy", results.Kipvs, "proxy under test")
	flag.IntVar(&c.services, "services", 100, "benchmark Services present")
	flag.IntVar(&c.eps, "endpoints", 10, "endpoints per Service")
	flag.StringVar(&scen, "scenarios", "", "comma-separated scenario IDs")
	flag.DurationVar(&c.capDur, "cap", 15*time.Minute, "cap per measurement")
	flag.DurationVar(&c.churn, "churn", time.Minute, "churn duration")
	flag.Float64Var(&c.churnRate, "churn-rate", 2, "endpoint changes per second during churn")
	flag.IntVar(&c.changes, "changes", 20, "single changes in the one-change scenario")
	flag.IntVar(&c.requests, "requests", 200, "requests in the packet-cost scenario")
	flag.DurationVar(&c.streamDur, "stream", 5*time.Second, "duration of each throughput stream")
	flag.DurationVar(&c.minSync, "min-sync-period", time.Second, "--min-sync-period / minSyncPeriod of every proxy")
	flag.StringVar(&c.kubeconfig, "kubeconfig", "", "admin kubeconfig")
	flag.StringVar(&c.kipvs, "kipvs", "", "kipvs binary")
	flag.StringVar(&c.kubeProxy, "kube-proxy", "", "kube-proxy binary")
	flag.Parse()
	c.scenarios = map[string]bool{}
	for _, s := range strings.Split(scen, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.scenarios[s] = true
		}
	}
	return c
}

func main() {
	c := parseFlags()
	ctx := context.Background()
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		emit(record.Record{Info: map[string]string{"kernel": strings.TrimSpace(string(out))}})
	}
	if err := runAgent(ctx, c); err != nil {
		fmt.Printf("bench agent: %v\n", err)
		os.Exit(1)
	}
}

// emit prints r as a record line.
func emit(r record.Record) { fmt.Println(record.Format(r)) }

// logf prints a progress line (not a record).
func logf(format string, args ...any) {
	fmt.Printf("bench %s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05.000")}, args...)...)
}

// bench is one proxy's run in this VM.
type bench struct {
	c     *config
	api   *api
	view  kernelView
	proxy *proxyProcess
	pods  *pods
	probe netip.Addr
}

func runAgent(ctx context.Context, c *config) error {
	b := &bench{c: c}
	if err := loadModules(); err != nil {
		logf("extra kernel modules: %v", err)
	}
	if c.scenarios[results.Floor] {
		if err := b.floor(ctx); err != nil {
			logf("floor: %v", err)
		}
	}
	var err error
	if b.api, err = newAPI(c.kubeconfig); err != nil {
		return err
	}
	if c.scenarios[results.PacketCost] || c.scenarios[results.Throughput] {
		if b.pods, err = newPods(); err != nil {
			return fmt.Errorf("pods: %w", err)
		}
		defer b.pods.close()
		if b.probe, err = b.api.createProbe(ctx, b.pods.server.IP); err != nil {
			return err
		}
	}
	if !c.needsProxy() {
		return nil
	}
	defer b.dumpLog()
	if !b.coldStart(ctx) {
		return nil
	}
	defer b.proxy.stop(syscall.SIGTERM)
	steps := []struct {
		id string
		fn func(context.Context) error
	}{
		{results.OneChange, b.oneChange},
		{results.Churn, b.churnScenario},
		{results.PacketCost, b.packetCost},
		{results.Throughput, b.throughput},
		{results.Restart, b.restart},
	}
	for _, s := range steps {
		if !c.scenarios[s.id] || !supports(c.proxy, s.id) {
			continue
		}
		logf("scenario %s", s.id)
		if err := s.fn(ctx); err != nil {
			logf("scenario %s: %v", s.id, err)
		}
		if done, err := b.proxy.exited(); done {
			return fmt.Errorf("%s exited during %s: %v", c.proxy, s.id, err)
		}
	}
	return nil
}

// needsProxy reports whether a selected scenario needs the proxy running.
func (c *config) needsProxy() bool {
	for s := range c.scenarios {
		if s != results.Floor && supports(c.proxy, s) {
			return true
		}
	}
	return false
}

// supports says which scenarios are run for which proxy: kube-proxy's
// iptables mode only where the scenario is about packet cost.
func supports(proxy, scenario string) bool {
	switch scenario {
	case results.Floor:
		return proxy == results.Kipvs
	case results.PacketCost, results.Throughput:
		return true
	}
	return proxy != results.KubeProxyIPTables
}

// dumpLog prints the size of the proxy's log (its lines went to the
// console as they came, see copyLog).
func (b *bench) dumpLog() {
	if st, err := os.Stat(logPath(b.c.proxy)); err == nil {
		fmt.Printf("=== %s log: %d bytes ===\n", b.c.proxy, st.Size())
	}
}

func logPath(proxy string) string { return "/tmp/" + proxy + ".log" }
