//go:build e2etest

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kipvs/kipvs/proxier"
)

// Addresses of the kipvs that TestMain starts with the default bind addresses.
const (
	metricsURL = "http://127.0.0.1:10249/metrics"
	statusURL  = "http://127.0.0.1:10249/status"
	healthURL  = "http://127.0.0.1:10256"
	// drainTimeout is kipvs's default --drain-timeout.
	drainTimeout = 60 * time.Second
	// syncPeriod is the --sync-period of kipvsArgs: a draining real server past
	// its timeout is deleted at the latest by the next full sync.
	syncPeriod = 10 * time.Second
	// captureMarker prefixes the `kipvs status` output in the test log, to be
	// copied into the README.
	captureMarker = "STATUS-CAPTURE| "
)

// TestObservabilityMetrics: after a Service is programmed, /metrics counts a
// successful full sync, a recent last-sync timestamp, wanted virtual servers,
// succeeded add_virtual_server writes and the conntrack limit; an EndpointSlice
// with a last-change-trigger-time adds a network programming latency sample.
func TestObservabilityMetrics(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("metrics")
	e.setSlice("metrics-1", "metrics", httpPorts, "pod-a")
	to := vip(t, svc, 80)
	waitAnswering(t, tcp, to, "pod-a")

	m := scrapeMetrics(t)
	for _, c := range []struct {
		series string
		ok     func(float64) bool
		want   string
	}{
		{`kipvs_syncs_total{kind="full",result="success"}`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`kubeproxy_sync_proxy_rules_last_timestamp_seconds`, func(v float64) bool {
			return math.Abs(float64(time.Now().Unix())-v) <= 60
		}, fmt.Sprintf("within 60 s of now (%d)", time.Now().Unix())},
		{`kipvs_virtual_servers`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`kipvs_real_servers`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`kipvs_kernel_operations_total{operation="add_virtual_server",result="succeeded"}`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`kipvs_kernel_operations_total{operation="add_real_server",result="succeeded"}`, func(v float64) bool { return v >= 1 }, ">= 1"},
		{`kipvs_conntrack_limit`, func(v float64) bool { return v > 0 }, "> 0"},
	} {
		if v := m.value(t, c.series); !c.ok(v) {
			t.Errorf("%s = %v, want %s", c.series, v, c.want)
		}
	}

	const count, sum = "kubeproxy_network_programming_duration_seconds_count", "kubeproxy_network_programming_duration_seconds_sum"
	before := scrapeMetrics(t)
	trigger := time.Now()
	e.createAnnotatedSlice("metrics-2", "metrics", "pod-b", map[string]string{
		corev1.EndpointsLastChangeTriggerTime: trigger.UTC().Format(time.RFC3339),
	})
	waitAnswering(t, tcp, to, "pod-a", "pod-b")
	var after metricSamples
	waitFor(t, count+" to increase", func() error {
		after = scrapeMetrics(t)
		if after.value(t, count) <= before.value(t, count) {
			return fmt.Errorf("%s still %v", count, after.value(t, count))
		}
		return nil
	})
	// Each new sample is the time from the trigger (RFC3339, whole seconds) to
	// the sync that programmed it: between 0 and the time this test waited.
	n := after.value(t, count) - before.value(t, count)
	mean := (after.value(t, sum) - before.value(t, sum)) / n
	if bound := time.Since(trigger).Seconds() + 1; mean < 0 || mean > bound {
		t.Errorf("network programming latency: %v new samples with mean %.3fs, want between 0 and %.3fs", n, mean, bound)
	}
	t.Logf("network programming latency: %v new sample(s), mean %.3fs", n, mean)
}

// TestObservabilityDraining: a backend removed from its Service while a TCP
// connection to it is open shows in /status and `kipvs status -o wide` as
// draining (its pod, weight 0, the open connection, the drain time left) and
// in kipvs_real_servers_draining; the connection keeps working; once it is
// closed the real server goes away when its drain time is up.
func TestObservabilityDraining(t *testing.T) {
	e := newEnv(t, "web-1", "web-2")
	svc := e.createService("web")
	e.setSlice("web-abc", "web", httpPorts, "web-1", "web-2")
	to := vip(t, svc, 80)
	waitAnswering(t, tcp, to, "web-1", "web-2")

	conn := dialPod(t, tcp, to, "web-2")
	e.setSlice("web-abc", "web", httpPorts, "web-1")
	pod2, name := e.ns+"/web-2", e.ns+"/web"
	var b *proxier.BackendStatus
	waitFor(t, pod2+" to be draining in /status", func() error {
		var err error
		b, err = backendOf(name, to.String(), pod2)
		if err == nil && b.State != proxier.StateDraining {
			err = fmt.Errorf("%s is %s, want %s", pod2, b.State, proxier.StateDraining)
		}
		return err
	})
	if b.Weight != 0 || b.ActiveConns < 1 || b.DrainSecondsLeft == nil ||
		*b.DrainSecondsLeft <= 0 || *b.DrainSecondsLeft > drainTimeout.Seconds() {
		t.Errorf("draining backend %+v (drain left %v): want weight 0, active connections >= 1, drain left in (0, %v]",
			*b, deref(b.DrainSecondsLeft), drainTimeout.Seconds())
	}
	if b1, err := backendOf(name, to.String(), e.ns+"/web-1"); err != nil || b1.State != proxier.StateReady || b1.Weight != 1 {
		t.Errorf("backend web-1: %+v, %v; want ready with weight 1", b1, err)
	}

	table := kipvsStatus(t, name)
	wide := kipvsStatus(t, name, "-o", "wide")
	for _, want := range []string{to.String(), "1 draining"} {
		if !strings.Contains(table, want) {
			t.Errorf("kipvs status %s does not contain %q:\n%s", name, want, table)
		}
	}
	if line := lineWith(wide, pod2); !strings.Contains(line, "draining (") || !strings.Contains(line, e.pods["web-2"].IP.String()) {
		t.Errorf("kipvs status %s -o wide: row of %s is %q, want its address and draining with the time left:\n%s", name, pod2, line, wide)
	}
	capture(t, "kipvs status "+name, table)
	capture(t, "kipvs status "+name+" -o wide", wide)

	drainingGauge := scrapeMetrics(t).value(t, "kipvs_real_servers_draining")
	if drainingGauge < 1 {
		t.Errorf("kipvs_real_servers_draining = %v while %s drains, want >= 1", drainingGauge, pod2)
	}
	if reply, err := conn.Send("still there?"); err != nil || !strings.HasPrefix(reply, "web-2 ") {
		t.Errorf("held connection to the draining backend: reply %q, err %v; want web-2 to answer", reply, err)
	}

	// The closed connection (and the earlier ones to web-2) stay in IPVS's
	// connection table as inactive for minutes (FIN_WAIT/TIME_WAIT), so the real
	// server is deleted by the drain timeout, at the first sync after it.
	conn.Close()
	bound := time.Duration(deref(b.DrainSecondsLeft)*float64(time.Second)) + syncPeriod + 10*time.Second
	waitForWithin(t, bound, pod2+" to leave /status", func() error {
		got, err := backendOf(name, to.String(), pod2)
		switch {
		case errors.Is(err, errNoBackend):
			return nil
		case err != nil:
			return err
		}
		return fmt.Errorf("%s still listed: %s, active %d, inactive %d, drain left %v",
			pod2, got.State, got.ActiveConns, got.InactiveConns, deref(got.DrainSecondsLeft))
	})
	if v := scrapeMetrics(t).value(t, "kipvs_real_servers_draining"); v >= drainingGauge {
		t.Errorf("kipvs_real_servers_draining = %v after %s was deleted, want less than %v", v, pod2, drainingGauge)
	}
	waitAnswering(t, tcp, to, "web-1")
}

// TestObservabilityHealth: /healthz and /livez of a kipvs that keeps up answer
// 200 with kube-proxy's JSON, healthy, and are counted by code in /metrics.
//
// The 503 case needs syncs that keep failing for 2 x --sync-period; there is
// no clean way to make the real kernel refuse writes here, so proxier's unit
// tests (health_test.go) cover it.
func TestObservabilityHealth(t *testing.T) {
	requireKipvs(t)
	for _, c := range []struct {
		path   string
		series string
		node   bool
	}{
		{"/healthz", `kubeproxy_proxy_healthz_total{code="200"}`, true},
		{"/livez", `kubeproxy_proxy_livez_total{code="200"}`, false},
	} {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			// The series appears with the first answer of its code.
			before := scrapeMetrics(t)[canonicalSeries(c.series)]
			code, body := httpGet(t, healthURL+c.path)
			var r proxier.HealthReport
			if err := json.Unmarshal(body, &r); err != nil {
				t.Fatalf("GET %s: %v in %q", c.path, err, body)
			}
			if code != http.StatusOK || !r.Healthy {
				t.Errorf("GET %s: %d %s, want 200 with healthy true", c.path, code, body)
			}
			if (r.NodeEligible != nil) != c.node || (c.node && !*r.NodeEligible) {
				t.Errorf("GET %s: nodeEligible %v, want it only on /healthz, true", c.path, deref(r.NodeEligible))
			}
			if d := r.CurrentTime.Sub(time.Now()); d < -time.Minute || d > time.Minute || r.LastUpdated.IsZero() {
				t.Errorf("GET %s: currentTime %v, lastUpdated %v; want the current time", c.path, r.CurrentTime, r.LastUpdated)
			}
			if after := scrapeMetrics(t).value(t, c.series); after < before+1 {
				t.Errorf("%s went from %v to %v, want it counted", c.series, before, after)
			}
		})
	}
}

// TestObservabilityHealthStalls: when syncs keep failing, an update queued
// after the failures starts is not synced, and /healthz and /livez turn 503
// after 2 x syncPeriod; once syncs succeed again they answer 200. The fault is
// a real one: the iptables binaries disappear, so every full sync (due every
// syncPeriod, and every retry after a failed one) fails in its netfilter part.
func TestObservabilityHealthStalls(t *testing.T) {
	e := newEnv(t, "pod-a")
	save, err := exec.LookPath("iptables-save")
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	multi, err := filepath.EvalSymlinks(save)
	if err != nil {
		t.Fatalf("resolving %s: %v", save, err)
	}
	hidden := multi + ".hidden-by-test"
	restore := func() {
		if _, err := os.Stat(hidden); err == nil {
			if err := os.Rename(hidden, multi); err != nil {
				t.Errorf("restoring %s: %v", multi, err)
			}
		}
	}
	t.Cleanup(restore)
	failed := `kipvs_syncs_total{kind="full",result="error"}`
	before := scrapeMetrics(t)[canonicalSeries(failed)]
	if err := os.Rename(multi, hidden); err != nil {
		t.Fatalf("hiding %s: %v", multi, err)
	}
	// Wait for a full sync to fail, so that every later sync is a failing full one.
	waitForWithin(t, 3*syncPeriod, "a failed full sync", func() error {
		if v := scrapeMetrics(t)[canonicalSeries(failed)]; v <= before {
			return fmt.Errorf("%s = %v", failed, v)
		}
		return nil
	})
	// The update cannot be queued before the create is sent; kipvs may queue it
	// before Create returns, so the clock starts here.
	queued := time.Now()
	e.createService("late") // an update that cannot be synced now
	for _, path := range []string{"/healthz", "/livez"} {
		waitForWithin(t, 2*syncPeriod+40*time.Second, path+" 503", func() error {
			return wantCode(t, path, http.StatusServiceUnavailable)
		})
	}
	if d := time.Since(queued); d < 2*syncPeriod {
		t.Errorf("unhealthy %v after the update was queued, before the 2 x syncPeriod bound", d)
	}
	if v := scrapeMetrics(t)[canonicalSeries(`kubeproxy_proxy_healthz_total{code="503"}`)]; v < 1 {
		t.Errorf("kubeproxy_proxy_healthz_total{code=\"503\"} = %v, want >= 1", v)
	}
	restore()
	for _, path := range []string{"/healthz", "/livez"} {
		waitForWithin(t, 90*time.Second, path+" 200 after syncs recover", func() error {
			return wantCode(t, path, http.StatusOK)
		})
	}
}

// wantCode GETs path on the health server and fails unless it answers code.
func wantCode(t *testing.T, path string, code int) error {
	if got, body := httpGet(t, healthURL+path); got != code {
		return fmt.Errorf("GET %s: %d %s", path, got, body)
	}
	return nil
}

// TestObservabilityStatusUnreachable: `kipvs status` against an address where
// nothing listens fails and says why.
func TestObservabilityStatusUnreachable(t *testing.T) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), GuestKipvs, "status", "--address", "http://127.0.0.1:1/status")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("kipvs status --address http://127.0.0.1:1/status: %v, want a non-zero exit", err)
	}
	if want := "is kipvs running on this node?"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q does not contain %q", stderr.String(), want)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
}

// localClient talks to the kipvs on this node.
var localClient = &http.Client{Timeout: 10 * time.Second}

// errNoBackend is returned by backendOf when the VIP does not list the pod.
var errNoBackend = errors.New("no such backend")

// backendOf reads /status?service=name and returns the backend of pod on the
// virtual server vip ("IP:port").
func backendOf(name, vip, pod string) (*proxier.BackendStatus, error) {
	resp, err := localClient.Get(statusURL + "?service=" + name)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: %s: %s", resp.Status, body)
	}
	var st proxier.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("GET /status: %w", err)
	}
	for _, sp := range st.Services {
		for _, vs := range sp.VirtualServers {
			if vs.VIP != vip {
				continue
			}
			for i, b := range vs.Backends {
				if b.Pod == pod {
					return &vs.Backends[i], nil
				}
			}
			return nil, fmt.Errorf("%s: %w %s in %+v", vip, errNoBackend, pod, vs.Backends)
		}
	}
	return nil, fmt.Errorf("/status of %s has no virtual server %s: %s", name, vip, body)
}

// kipvsStatus runs the kipvs binary's status subcommand and returns its output.
func kipvsStatus(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), GuestKipvs, append([]string{"status"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kipvs status %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// capture logs a command's output, each line prefixed with captureMarker.
func capture(t *testing.T, command, out string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s$ %s\n", captureMarker, command)
	for line := range strings.Lines(out) {
		b.WriteString(captureMarker + line)
	}
	t.Log(b.String())
}

// lineWith returns the first line of s that contains sub, or "".
func lineWith(s, sub string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			return strings.TrimRight(line, "\n")
		}
	}
	return ""
}

// createAnnotatedSlice creates EndpointSlice name of Service svc with one
// ready endpoint, pod, and annotations.
func (e *env) createAnnotatedSlice(name, svc, pod string, annotations map[string]string) {
	e.t.Helper()
	p := e.pods[pod]
	if p == nil {
		e.t.Fatalf("no pod %q", pod)
	}
	ready, node := true, nodeName
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: e.ns, Name: name, Annotations: annotations,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "kipvs-e2e"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       httpPorts,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: e.ns, Name: pod},
		}},
	}
	if _, err := admin.DiscoveryV1().EndpointSlices(e.ns).Create(e.ctx, slice, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create EndpointSlice %s: %v", name, err)
	}
}

// metricSamples are the samples of one scrape by series, labels sorted by
// name: `name{a="x",b="y"}`.
type metricSamples map[string]float64

// scrapeMetrics reads kipvs's /metrics.
func scrapeMetrics(t *testing.T) metricSamples {
	t.Helper()
	code, body := httpGet(t, metricsURL)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", metricsURL, code, body)
	}
	m, err := parseSamples(string(body))
	if err != nil {
		t.Fatalf("GET %s: %v", metricsURL, err)
	}
	return m
}

// value returns the sample of series and fails t when there is none.
func (m metricSamples) value(t *testing.T, series string) float64 {
	t.Helper()
	v, ok := m[canonicalSeries(series)]
	if !ok {
		t.Fatalf("/metrics has no sample %s", series)
	}
	return v
}

// parseSamples reads the Prometheus text format (without timestamps, as
// component-base writes it); label values must not contain commas.
func parseSamples(text string) (metricSamples, error) {
	m := metricSamples{}
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("sample line %q has no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("sample line %q: %w", line, err)
		}
		m[canonicalSeries(line[:i])] = v
	}
	return m, nil
}

// canonicalSeries sorts a series' labels by name.
func canonicalSeries(s string) string {
	name, labels, ok := strings.Cut(s, "{")
	if !ok {
		return s
	}
	pairs := strings.Split(strings.TrimSuffix(labels, "}"), ",")
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// httpGet GETs url and returns the status code and body.
func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := localClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, body
}

// deref returns *p, or the zero value for nil (for messages).
func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestObservabilityBindAddresses: kipvs started without --metrics-bind-address
// or --healthz-bind-address (kipvsArgs passes neither) serves /metrics and
// /status on loopback only, like kube-proxy (127.0.0.1:10249): a connection to
// the node's address on that port is refused while 127.0.0.1 answers. The
// health server is on 0.0.0.0:10256, as kube-proxy's, so the node address
// answers /healthz too (load balancers probe it there).
func TestObservabilityBindAddresses(t *testing.T) {
	requireKipvs(t)
	for _, c := range []struct {
		addr   string
		path   string
		listen bool
	}{
		{"127.0.0.1:10249", "/metrics", true},
		{nodeIP + ":10249", "/metrics", false},
		{"127.0.0.1:10256", "/healthz", true},
		{nodeIP + ":10256", "/healthz", true},
	} {
		conn, err := net.DialTimeout("tcp", c.addr, 2*time.Second)
		if !c.listen {
			if err == nil {
				conn.Close()
				t.Errorf("dial %s succeeded: the metrics server listens beyond loopback", c.addr)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial %s: %v, want connection refused", c.addr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("dial %s: %v, want it to answer", c.addr, err)
			continue
		}
		conn.Close()
		if code, body := httpGet(t, "http://"+c.addr+c.path); code != http.StatusOK {
			t.Errorf("GET http://%s%s: %d %.200s, want 200", c.addr, c.path, code, body)
		}
	}
}
