//go:build e2etest

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// defaultOutage is TestAPIServerOutage's outage unless OutageEnv sets one.
const defaultOutage = 20 * time.Second

// outageDuration reads OutageEnv.
func outageDuration(t *testing.T) time.Duration {
	t.Helper()
	s := os.Getenv(OutageEnv)
	if s == "" {
		return defaultOutage
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 60s (%v)", OutageEnv, s, err)
	}
	return d
}

// TestAPIServerOutage: kipvs reaches the API server through a relay in this
// test that can cut it (every connection closed, new ones refused: what a node
// sees when the API server is down), while the test driver keeps its own way in
// and changes Services and EndpointSlices meanwhile. During the outage traffic
// through a ClusterIP and a NodePort never fails, the IPVS table stays exactly
// as it was (through at least one full resync when the outage is longer than
// --sync-period), /healthz answers 200 and, like /status, reports the API
// server unreachable, and kipvs logs it. Once the relay is back, kipvs
// reconnects by itself and programs the changes made meanwhile.
func TestAPIServerOutage(t *testing.T) {
	outage := outageDuration(t)
	stopSharedKipvs(t)
	relay := newAPIRelay(t)
	k, err := startKipvs("kipvs-outage", relay.kubeconfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Stop(); err != nil {
			t.Errorf("stop %s: %v", k.name, err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), readyBound)
	defer cancel()
	if err := waitKipvsReady(ctx, k); err != nil {
		t.Fatal(err)
	}

	e := newEnvNoKipvs(t, "pod-a", "pod-b", "pod-c", "client")
	steady := e.createService("steady", nodePort)
	e.setSlice("steady-1", "steady", httpPorts, "pod-a", "pod-b")
	doomed := e.createService("doomed")
	e.setSlice("doomed-1", "doomed", httpPorts, "pod-a")
	cluster, doomedVIP := vip(t, steady, 80), vip(t, doomed, 80)
	node := netip.AddrPortFrom(netip.MustParseAddr(nodeIP), nodePortOf(t, steady, 0))
	waitAnswering(t, tcp, cluster, "pod-a", "pod-b")
	waitAnswering(t, tcp, node, "pod-a", "pod-b")
	waitAnswering(t, tcp, doomedVIP, "pod-a")
	if api := apiServerOf(t, statusURL); !api.Reachable {
		t.Fatalf("/status before the outage: %+v, want reachable", api)
	}
	long := dialLong(t, e.pods["client"], cluster)

	stop := make(chan struct{})
	load := startLoad(t.Context(), stop, 50*time.Millisecond, 20000,
		[]*netpod.Pod{nil, e.pods["client"]}, []netip.AddrPort{cluster, node})
	before := tableText(t)
	fullBefore := scrapeMetrics(t).value(t, `kipvs_syncs_total{kind="full",result="success"}`)

	relay.cut()
	cut := time.Now()
	var detected time.Duration
	waitFor(t, "/healthz and /status to report the API server unreachable", func() error {
		if api := healthAPIServer(t); api.Reachable {
			return errors.New("/healthz says reachable")
		}
		if api := apiServerOf(t, statusURL); api.Reachable || api.Since == nil || api.Error == "" {
			return fmt.Errorf("/status apiServer %+v", api)
		}
		detected = time.Since(cut)
		return nil
	})
	if !strings.Contains(k.Log(), "API server unreachable") {
		t.Errorf("kipvs did not log the outage (no %q)", "API server unreachable")
	}

	// Changes kipvs cannot see yet: a new endpoint, a new Service, a deleted one.
	e.setSlice("steady-1", "steady", httpPorts, "pod-a", "pod-b", "pod-c")
	fresh := e.createService("fresh")
	e.setSlice("fresh-1", "fresh", httpPorts, "pod-c")
	e.deleteService("doomed")
	if err := admin.DiscoveryV1().EndpointSlices(e.ns).Delete(t.Context(), "doomed-1", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete EndpointSlice doomed-1: %v", err)
	}
	freshVIP := vip(t, fresh, 80)

	healthChecks := 0
	for time.Since(cut) < outage {
		if code, body := httpGet(t, healthURL+"/healthz"); code != http.StatusOK {
			t.Errorf("/healthz = %d during the API server outage, want 200: %s", code, body)
		}
		healthChecks++
		time.Sleep(time.Second)
	}
	after := tableText(t)
	fullDuring := scrapeMetrics(t).value(t, `kipvs_syncs_total{kind="full",result="success"}`) - fullBefore
	// A full resync may add what it learns from the node itself (a NodePort
	// on the new pod bridge's address), but nothing may go.
	removed, added := tableDiff(before, after)
	if len(removed) > 0 {
		t.Errorf("rules removed during the API server outage: %q\nbefore:\n%s\nafter:\n%s", removed, before, after)
	}
	if outage > syncPeriod+5*time.Second && fullDuring < 1 {
		t.Errorf("no full resync succeeded during a %s outage (--sync-period %s)", outage, syncPeriod)
	}
	long.check(t, "after the outage")

	relay.heal(t)
	healed := time.Now()
	incremental := `kipvs_syncs_total{kind="incremental",result="success"}`
	waitForWithin(t, 90*time.Second, "kipvs to reach the API server again", func() error {
		if api := apiServerOf(t, statusURL); !api.Reachable {
			return fmt.Errorf("/status apiServer %+v", api)
		}
		return nil
	})
	reconnected := time.Since(healed)
	syncsAtReconnect := scrapeMetrics(t).value(t, incremental)
	waitForWithin(t, 10*time.Second, "the changes made during the outage to be programmed", func() error {
		return changesProgrammed(t, cluster, freshVIP, doomedVIP, e.pods["pod-c"].IP)
	})
	programmed := time.Since(healed)
	syncs := scrapeMetrics(t).value(t, incremental) - syncsAtReconnect
	close(stop)
	<-load.done
	ok, fail, errs := load.counts()
	slowN, slowNotes := load.slowRequests()
	t.Logf("FIGURES outage: %s outage; detected after %s; /healthz 200 in %d of %d checks; %v full resyncs during it, IPVS lines removed %d, added %d (%q); "+
		"reconnected %s after the API server returned, changes programmed %s after (%v incremental syncs after reconnecting); "+
		"requests %d ok / %d failed (%d slower than %s: %q)",
		outage, detected.Round(time.Millisecond), healthChecks, healthChecks, fullDuring, len(removed), len(added), added,
		reconnected.Round(time.Millisecond), programmed.Round(time.Millisecond), syncs, ok, fail, slowN, netpod.DefaultTimeout, slowNotes)
	if fail != 0 || ok < 50 {
		t.Errorf("request loop: %d succeeded, %d failed, want 0 failures and at least 50 requests: %v", ok, fail, errs)
	}
	if !strings.Contains(k.Log(), "API server reachable again") {
		t.Errorf("kipvs did not log the end of the outage (no %q)", "API server reachable again")
	}
	waitAnswering(t, tcp, cluster, "pod-a", "pod-b", "pod-c")
	waitAnswering(t, tcp, freshVIP, "pod-c")
	long.check(t, "after kipvs reconnected")
}

// changesProgrammed checks the kernel holds TestAPIServerOutage's changes.
func changesProgrammed(t *testing.T, steady, fresh, doomed netip.AddrPort, podC netip.Addr) error {
	c := ipvs.RealServerKey{Address: podC, Port: echoPort}
	if vs := virtualServer(t, vsKey(tcp, steady)); vs == nil || !slices.ContainsFunc(vs.RealServers,
		func(r ipvs.RealServerStatus) bool { return r.RealServerKey == c && r.Weight > 0 }) {
		return fmt.Errorf("%s has no pod-c yet: %+v", steady, vs)
	}
	if vs := virtualServer(t, vsKey(tcp, fresh)); vs == nil || len(vs.RealServers) != 1 {
		return fmt.Errorf("new Service %s: %+v", fresh, vs)
	}
	if vs := virtualServer(t, vsKey(tcp, doomed)); vs != nil {
		return fmt.Errorf("deleted Service %s still programmed", doomed)
	}
	return nil
}

// tableDiff returns the lines of a tableText only in before (removed) and
// only in after (added). A real server line is qualified with its virtual server.
func tableDiff(before, after string) (removed, added []string) {
	lines := func(s string) []string {
		var out []string
		vs := ""
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			if strings.HasPrefix(l, "  ->") {
				out = append(out, vs+" "+strings.TrimSpace(l))
				continue
			}
			vs = l
			out = append(out, l)
		}
		return out
	}
	b, a := lines(before), lines(after)
	for _, l := range b {
		if !slices.Contains(a, l) {
			removed = append(removed, l)
		}
	}
	for _, l := range a {
		if !slices.Contains(b, l) {
			added = append(added, l)
		}
	}
	return removed, added
}

// tableText is the IPVS table without connection counters.
func tableText(t *testing.T) string {
	vss := virtualServers(t)
	for i := range vss {
		for j := range vss[i].RealServers {
			vss[i].RealServers[j] = ipvs.RealServerStatus{RealServer: vss[i].RealServers[j].RealServer}
		}
	}
	return ipvs.FormatDump(vss)
}

// healthAPIServer reads apiServer from /healthz's body.
func healthAPIServer(t *testing.T) proxier.APIServerStatus {
	t.Helper()
	_, body := httpGet(t, healthURL+"/healthz")
	var r proxier.HealthReport
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/healthz: %v in %q", err, body)
	}
	return r.APIServer
}

// apiServerOf reads apiServer from a /status document.
func apiServerOf(t *testing.T, url string) proxier.APIServerStatus {
	t.Helper()
	_, body := httpGet(t, url+"?service=none/none")
	var st proxier.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/status: %v in %q", err, body)
	}
	if st.APIServer == nil {
		t.Fatalf("/status has no apiServer: %s", body)
	}
	return *st.APIServer
}

// apiRelay forwards TCP connections from a loopback port in the guest to the
// API server (through the VM's forward) and can cut them: cut closes every
// connection and the listener (new connections are refused), heal listens on
// the same port again. Only a kipvs given its kubeconfig goes through it.
type apiRelay struct {
	addr, target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
}

func newAPIRelay(t *testing.T) *apiRelay {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(GuestKipvsKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var target string
	for _, c := range cfg.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatal(err)
		}
		target = u.Host
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &apiRelay{addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	r.serve(ln)
	t.Cleanup(r.cut)
	return r
}

// kubeconfig writes kipvs's kubeconfig with the relay as its server.
func (r *apiRelay) kubeconfig(t *testing.T) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(GuestKipvsKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + r.addr // the serving certificate names 127.0.0.1
	}
	path := t.TempDir() + "/kipvs-relayed.kubeconfig"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func (r *apiRelay) serve(ln net.Listener) {
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.forward(c)
		}
	}()
}

// forward copies between c and a new connection to the API server.
func (r *apiRelay) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", r.target, 10*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !r.track(c, up) {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}

// track registers a connection pair, or closes it when the relay is cut.
func (r *apiRelay) track(conns ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		r.conns[c] = struct{}{}
	}
	return true
}

// cut closes the listener and every relayed connection.
func (r *apiRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
		delete(r.conns, c)
	}
}

// heal listens on the relay's port again.
func (r *apiRelay) heal(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", r.addr)
	if err != nil {
		t.Fatalf("relay: listen on %s again: %v", r.addr, err)
	}
	r.serve(ln)
}
