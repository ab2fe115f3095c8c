package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kipvs/kipvs/test/apiserver"
	"github.com/kipvs/kipvs/test/bench/record"
	"github.com/kipvs/kipvs/test/bench/results"
	"github.com/kipvs/kipvs/test/vm"
)

// Guest paths of the files copied into every VM.
const (
	guestDir        = "/bench"
	guestKubeconfig = guestDir + "/admin.kubeconfig"
	guestKipvs      = guestDir + "/kipvs"
	guestKubeProxy  = guestDir + "/kube-proxy"
	guestModules    = guestDir + "/modules"
)

// runner holds what every VM of a run shares.
type runner struct {
	o            *options
	agent, kipvs string
	kubeProxy    string
	modules      string
	agg          *record.Aggregator
	file         *results.File
	base         *results.File // -merge
	start        time.Time
	logDir       string
	mu           sync.Mutex
	recordErrs   int
}

func run(ctx context.Context, o *options, command string) error {
	r := &runner{o: o, agg: record.NewAggregator(o.eps), start: time.Now()}
	if o.merge != "" {
		var err error
		if r.base, err = results.Read(o.merge); err != nil {
			return fmt.Errorf("-merge: %w", err)
		}
	}
	if reason, ok := apiserver.Available(); !ok {
		return errors.New(reason)
	}
	if reason, ok := vm.Available(); !ok {
		return errors.New(reason)
	}
	img, err := vm.EnsureImage(ctx)
	if err != nil {
		return err
	}
	build, err := os.MkdirTemp("", "kipvs-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(build)
	r.modules = filepath.Join(build, "modules")
	if err := extractRejectModules(ctx, img, r.modules); err != nil {
		return err
	}
	if r.logDir = o.logDir; r.logDir == "" {
		r.logDir = filepath.Join(build, "logs")
	}
	if err := os.MkdirAll(r.logDir, 0o755); err != nil {
		return err
	}
	r.agent, r.kipvs = filepath.Join(build, "agent"), filepath.Join(build, "kipvs")
	r.kubeProxy = filepath.Join(apiserver.BinDir(), apiserver.KubeProxyBinary)
	version := gitDescribe(ctx)
	for _, b := range []struct{ out, pkg, ldflags string }{
		{r.agent, "./test/bench/agent", "-s -w"},
		{r.kipvs, "./cmd/kipvs", "-s -w -X main.version=" + version},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", b.ldflags, "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	r.file = &results.File{
		Date: r.start.UTC().Format(time.RFC3339), Command: command, GoVersion: runtime.Version(),
		KipvsVersion: version, KubeProxyVersion: kubeProxyVersion(ctx, r.kubeProxy), Machine: machine(),
		Runs: o.runs, CapSeconds: o.capDur.Seconds(), Scenarios: []results.Scenario{},
	}
	logf("console logs in %s", r.logDir)
	for _, n := range o.scales {
		if err := r.scale(ctx, n); err != nil {
			r.write()
			return err
		}
	}
	return r.write()
}

// scale runs every proxy and run at n Services against a fresh API server.
func (r *runner) scale(ctx context.Context, n int) error {
	s, err := apiserver.Start(ctx, apiserver.Options{})
	if err != nil {
		return fmt.Errorf("start API server: %w", err)
	}
	defer s.Stop()
	if err := populate(ctx, s, n, r.o.eps); err != nil {
		return fmt.Errorf("populate %d Services: %w", n, err)
	}
	guestServer := "https://" + vm.GuestForwardIP + ":" + strconv.Itoa(s.Port)
	kubeconfig, err := s.TokenKubeconfig(s.AdminToken, guestServer)
	if err != nil {
		return err
	}
	for run := 1; run <= r.o.runs; run++ {
		for _, proxy := range r.o.proxies {
			scen := r.scenariosFor(proxy)
			if len(scen) == 0 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := r.vmRun(ctx, s, kubeconfig, proxy, n, run, scen); err != nil {
				logf("%s at %d Services, run %d: %v", proxy, n, run, err)
			}
			if err := restore(ctx, s, n, r.o.eps); err != nil {
				return fmt.Errorf("restore slices: %w", err)
			}
			if err := r.write(); err != nil {
				return err
			}
		}
	}
	return nil
}

// scenariosFor returns the selected scenarios proxy takes part in.
func (r *runner) scenariosFor(proxy string) []string {
	var out []string
	for _, s := range r.o.scenarios {
		switch {
		case s == results.Floor && proxy != results.Kipvs:
		case proxy == results.KubeProxyIPTables && s != results.PacketCost && s != results.Throughput:
		default:
			out = append(out, s)
		}
	}
	return out
}

// vmRun boots one VM for proxy at n Services and collects its records.
func (r *runner) vmRun(ctx context.Context, s *apiserver.Server, kubeconfig, proxy string, n, run int, scen []string) error {
	name := fmt.Sprintf("%s-%d-run%d", proxy, n, run)
	logFile, err := os.Create(filepath.Join(r.logDir, name+".log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	logf("VM %s: %s (console: %s)", name, strings.Join(scen, ","), logFile.Name())
	args := []string{
		"-proxy", proxy, "-services", strconv.Itoa(n), "-endpoints", strconv.Itoa(r.o.eps),
		"-scenarios", strings.Join(scen, ","), "-cap", r.o.capDur.String(), "-churn", r.o.churn.String(),
		"-churn-rate", strconv.FormatFloat(r.o.churnRate, 'f', -1, 64), "-stream", r.o.stream.String(),
		"-min-sync-period", r.o.minSync.String(),
		"-kubeconfig", guestKubeconfig, "-kipvs", guestKipvs, "-kube-proxy", guestKubeProxy,
	}
	files := map[string]string{kubeconfig: guestKubeconfig, r.modules: guestModules}
	if proxy == results.Kipvs {
		files[r.kipvs] = guestKipvs
	} else {
		files[r.kubeProxy] = guestKubeProxy
	}
	mem := 2048
	if n > 2000 {
		mem = 3072
	}
	// Cold start and restart may each take the cap; one-change and churn
	// are bounded by 2 min per change; boot and the rest fit in 15 min.
	timeout := 2*r.o.capDur + r.o.churn + 15*time.Minute
	start := time.Now()
	code, err := vm.Run(ctx, vm.Options{
		Binary:   r.agent,
		Args:     args,
		Timeout:  timeout,
		MemoryMB: mem,
		Network:  &vm.Network{ForwardPort: s.Port, HostAddr: "127.0.0.1:" + strconv.Itoa(s.Port)},
		Files:    files,
		Stdout:   &lineWriter{fn: func(line string) { r.consoleLine(logFile, line) }},
	})
	logf("VM %s ended in %s with status %d", name, time.Since(start).Round(time.Second), code)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("agent exited with status %d (console: %s)", code, logFile.Name())
	}
	return nil
}

// consoleLine logs a console line and folds a record line into the results.
func (r *runner) consoleLine(log io.Writer, line string) {
	fmt.Fprintln(log, line)
	rec, ok, err := record.Parse(line)
	if err != nil {
		logf("%v", err)
		r.mu.Lock()
		r.recordErrs++
		r.mu.Unlock()
		return
	}
	if !ok {
		if strings.HasPrefix(line, "bench ") {
			logf("  guest: %s", line)
		}
		return
	}
	r.mu.Lock()
	r.agg.Add(rec)
	r.mu.Unlock()
	if rec.Metric != "" {
		logf("  %s %s %d %s = %g%s", rec.Scenario, rec.Proxy, rec.Services, rec.Metric, rec.Value, cappedMark(rec))
	}
}

func cappedMark(rec record.Record) string {
	switch {
	case rec.Capped:
		return " (capped)"
	case rec.NotMeasured:
		return " (not measured)"
	}
	return ""
}

// write stores the results gathered so far.
func (r *runner) write() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file.Kernel = r.agg.Info()["kernel"]
	r.file.WallSeconds = time.Since(r.start).Seconds()
	r.file.Scenarios = r.agg.Scenarios(allScenarios, describe)
	if dir := filepath.Dir(r.o.out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if r.base != nil {
		return results.Write(r.o.out, results.Merge(r.base, r.file))
	}
	return results.Write(r.o.out, r.file)
}

// lineWriter calls fn for every complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}
