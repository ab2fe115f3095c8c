package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Ports of the proxy under test (kube-proxy's defaults, kipvs's too).
const (
	metricsURL = "http://127.0.0.1:10249/metrics"
	healthzURL = "http://127.0.0.1:10256/healthz"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat (100 on
// every Linux architecture the Debian kernel runs on).
const clockTicks = 100

// proxyProcess is the proxy under test, its output in a log file.
type proxyProcess struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	started time.Time
	done    chan struct{}
	err     error
}

// startProxy starts bin with args, its output appended to logPath.
func startProxy(name, bin, logPath string, args ...string) (*proxyProcess, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &proxyProcess{name: name, logPath: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		copyLog(name, r, log)
	}()
	go func() {
		p.err = p.cmd.Wait()
		w.Close()
		<-copied
		log.Close()
		close(p.done)
	}()
	return p, nil
}

// consoleLogLines bounds the proxy log lines copied to the console.
const consoleLogLines = 3000

// copyLog writes every line of the proxy's output to log and copies it to
// the console, prefixed with the proxy's name, except the per-object lines
// (one per Service at 10,000 Services) and anything past consoleLogLines.
func copyLog(name string, r io.Reader, log io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	shown := 0
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(log, line)
		if perObject(line) || shown >= consoleLogLines {
			continue
		}
		shown++
		fmt.Printf("%s| %s\n", name, line)
	}
	_, _ = io.Copy(io.Discard, r)
}

// perObject reports whether a log line is about one Service port (kube-proxy
// logs one per Service at V(1)); everything else, errors included, is shown.
func perObject(line string) bool {
	return strings.Contains(line, "service port") && !strings.Contains(line, "rror")
}

// exited reports whether the process has ended, with its status.
func (p *proxyProcess) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends sig and waits up to 30 s, then SIGKILL.
func (p *proxyProcess) stop(sig syscall.Signal) {
	if done, _ := p.exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// procStats are a process's peak RSS and CPU time so far.
type procStats struct {
	PeakRSSBytes float64
	CPUSeconds   float64
}

// stats reads VmHWM from /proc/<pid>/status and utime+stime from /proc/<pid>/stat.
func (p *proxyProcess) stats() (procStats, error) {
	pid := p.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStats{}, err
	}
	var st procStats
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return procStats{}, fmt.Errorf("VmHWM %q: %w", v, err)
			}
			st.PeakRSSBytes = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStats{}, err
	}
	cpu, err := parseStatCPU(string(stat))
	if err != nil {
		return procStats{}, err
	}
	st.CPUSeconds = cpu
	return st, nil
}

// parseStatCPU returns utime+stime in seconds from a /proc/<pid>/stat line.
// The command name (field 2) is in parentheses and may hold spaces, so fields
// are counted after its closing parenthesis: utime and stime are fields 14
// and 15 of the line, 12 and 13 after "(comm)".
func parseStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command name", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %q: %d fields after the name", stat, len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat %q: %w", stat, err)
	}
	return float64(u+s) / clockTicks, nil
}

// scrape fetches the proxy's metrics as name{labels} -> value.
func scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", metricsURL, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format: every sample line as its
// series (name plus labels, as printed) and value.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sumPrefix sums every series whose text starts with prefix.
func sumPrefix(m map[string]float64, prefix string) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			s += v
		}
	}
	return s
}

// kernelOpsPrefix selects kipvs's kernel writes, every operation and result.
const kernelOpsPrefix = "kipvs_kernel_operations_total{"

// lastSyncMetric is the end of the last successful sync, in Unix seconds
// (kube-proxy and kipvs alike; kube-proxy v1.37 labels it by ip_family).
const lastSyncMetric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"

// lastSync returns the latest lastSyncMetric over its series (IP families).
func lastSync(m map[string]float64) float64 {
	var v float64
	for k, x := range m {
		if k == lastSyncMetric || strings.HasPrefix(k, lastSyncMetric+"{") {
			v = max(v, x)
		}
	}
	return v
}

// healthy reports whether /healthz answers 200.
func healthy(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, healthzURL, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// syncedSince reports whether the proxy finished a sync after t and answers
// /healthz with 200.
func syncedSince(ctx context.Context, t time.Time) bool {
	m, err := scrape(ctx)
	if err != nil {
		return false
	}
	last := lastSync(m)
	return last > 0 && last >= float64(t.UnixNano())/1e9-0.001 && healthy(ctx)
}
