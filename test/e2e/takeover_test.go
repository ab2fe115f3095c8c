//go:build e2etest

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/test/netpod"
)

// kubeProxyConfig is kube-proxy's configuration in the takeover test: IPVS
// mode, this node, the admin kubeconfig, and ports apart from kipvs's.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clusterCIDR: 10.244.0.0/16
hostnameOverride: ` + nodeName + `
clientConnection:
  kubeconfig: ` + GuestAdminKubeconfig + `
metricsBindAddress: 127.0.0.1:10259
healthzBindAddress: 127.0.0.1:10266
ipvs:
  scheduler: rr
  syncPeriod: 10s
  minSyncPeriod: 200ms
conntrack:
  maxPerCore: 0
`

// kubeProxyNATRules are rules of kube-proxy's nat table in the takeover
// test: the jump, the cluster IP mark and the masquerade.
var kubeProxyNATRules = []*regexp.Regexp{
	regexp.MustCompile(`(?m)^-A OUTPUT .*-j KUBE-SERVICES$`),
	regexp.MustCompile(`(?m)^-A KUBE-SERVICES .*--match-set KUBE-CLUSTER-IP dst,dst .*-j KUBE-MARK-MASQ$`),
	regexp.MustCompile(`(?m)^-A KUBE-POSTROUTING .*-j MASQUERADE`),
}

// startProcess starts bin with args like startKipvs does.
func startProcess(name, bin string, args ...string) (*kipvsProcess, error) {
	p := &kipvsProcess{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			fmt.Fprintf(os.Stdout, "%s| %s\n", p.name, sc.Text())
			p.mu.Lock()
			p.log.Write(sc.Bytes())
			p.log.WriteByte('\n')
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() {
		p.err = p.cmd.Wait()
		w.Close()
		<-copied
		close(p.done)
	}()
	return p, nil
}

// trafficLoop sends one request every interval, alternating over targets,
// each on a new connection, until stop is closed or max requests were sent.
type trafficLoop struct {
	mu       sync.Mutex
	ok, fail int
	errs     []string
	done     chan struct{}
}

func startTraffic(ctx context.Context, stop <-chan struct{}, interval time.Duration, max int, targets ...netip.AddrPort) *trafficLoop {
	l := &trafficLoop{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; i < max; i++ {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			to := targets[i%len(targets)]
			_, err := netpod.Ask(ctx, nil, tcp, to)
			l.mu.Lock()
			if err != nil {
				l.fail++
				if len(l.errs) < 10 {
					l.errs = append(l.errs, fmt.Sprintf("%s: %s: %v", time.Now().Format("15:04:05.000"), to, err))
				}
			} else {
				l.ok++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *trafficLoop) counts() (int, int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.fail, append([]string(nil), l.errs...)
}

// kubeProxyLeftovers lists kube-proxy's IPVS-mode chains and sets still present.
func kubeProxyLeftovers(t *testing.T) []string {
	t.Helper()
	var left []string
	chains := regexp.MustCompile(`(?m)^:(KUBE-(SERVICES|POSTROUTING|NODE-PORT|LOAD-BALANCER|MARK-MASQ|FORWARD|PROXY-FIREWALL|SOURCE-RANGES-FIREWALL|IPVS-FILTER|IPVS-OUT-FILTER)) `)
	for _, table := range []string{"nat", "filter"} {
		for _, m := range chains.FindAllStringSubmatch(run(t, "iptables-save", "-t", table), -1) {
			left = append(left, table+"/"+m[1])
		}
	}
	for _, s := range strings.Fields(run(t, "ipset", "list", "-n")) {
		if strings.HasPrefix(s, "KUBE-") {
			left = append(left, "ipset "+s)
		}
	}
	return left
}

// kipvsOps scrapes kipvs_kernel_operations_total{result="succeeded"} by operation.
func kipvsOps(t *testing.T) map[string]int {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatalf("scrape kipvs metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^kipvs_kernel_operations_total\{operation="([a-z_]+)",result="succeeded"\} (\d+)`)
	out := map[string]int{}
	for _, m := range re.FindAllStringSubmatch(string(body), -1) {
		out[m[1]], _ = strconv.Atoi(m[2])
	}
	return out
}

// TestTakeover: kube-proxy v1.37 in IPVS mode serves a ClusterIP + NodePort
// Service; it is stopped (its rules stay) and kipvs starts. A request loop
// through the ClusterIP and the NodePort sees no failure, a long-lived
// connection survives, kipvs deletes no virtual server (it adopts
// kube-proxy's) and kube-proxy's chains and ipsets are gone afterwards.
func TestTakeover(t *testing.T) {
	if _, err := os.Stat(GuestKubeProxy); err != nil {
		t.Fatalf("kube-proxy not in the guest (build it with test/apiserver/build.sh): %v", err)
	}
	requireKipvs(t)
	shared := proxy
	proxy = nil
	t.Cleanup(func() {
		if proxy != nil {
			return
		}
		p, err := startKipvs("kipvs", GuestKipvsKubeconfig)
		if err != nil {
			t.Fatalf("restart the shared kipvs: %v", err)
		}
		proxy = p
		ctx, cancel := context.WithTimeout(context.Background(), converge)
		defer cancel()
		if err := waitKipvsReady(ctx, p); err != nil {
			t.Fatal(err)
		}
	})
	if err := shared.Stop(); err != nil {
		t.Fatalf("stop the shared kipvs: %v", err)
	}
	// Start from a node kipvs never ran on.
	t.Logf("kipvs cleanup:\n%s", run(t, GuestKipvs, "cleanup"))

	// "client" is not an endpoint: it only holds a long-lived connection.
	e := newEnvNoKipvs(t, "pod-a", "pod-b", "pod-c", "client")
	svc := e.createService("takeover", nodePort)
	e.setSlice("takeover-1", "takeover", httpPorts, "pod-a", "pod-b", "pod-c")
	cluster := vip(t, svc, 80)
	node := netip.AddrPortFrom(netip.MustParseAddr(nodeIP), nodePortOf(t, svc, 0))

	if err := os.WriteFile("/tmp/kube-proxy.yaml", []byte(kubeProxyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	kp, err := startProcess("kube-proxy", GuestKubeProxy, "--config", "/tmp/kube-proxy.yaml", "--proxy-mode=ipvs", "--v=2")
	if err != nil {
		t.Fatal(err)
	}
	kpStopped := false
	defer func() {
		if !kpStopped {
			_ = kp.Stop()
		}
	}()
	// kube-proxy's sync writes IPVS first and its iptables rules last (one
	// iptables-restore, seconds later under TCG; the jumps from the builtin
	// chains come before that). Until its MASQUERADE rules are in, no rule in
	// the node's netns needs conntrack, so the kernel tracks nothing
	// (conntrack's hooks are registered on demand, nf_ct_netns_get; IPVS asks
	// for them only for FTP services) and a connection opened then is neither
	// tracked nor masqueraded. Such a connection is reset by the first rule
	// set that brings conntrack in (kube-proxy's or kipvs's): its next packet
	// is picked up mid-stream (nf_conntrack_tcp_loose=1) as a new flow and
	// masqueraded to a new source port that the backend does not know. A node
	// where kube-proxy is running has its rules in, so the test waits for them
	// (its first sync, one ipset process per entry, took over 2 minutes on a
	// loaded machine).
	kpStarted := time.Now()
	waitForWithin(t, 5*time.Minute, "kube-proxy to program the Service", func() error {
		if done, err := kp.Exited(); done {
			return fmt.Errorf("kube-proxy exited: %v", err)
		}
		for _, k := range []ipvs.VirtualServerKey{vsKey(tcp, cluster), vsKey(tcp, node)} {
			if vs := virtualServer(t, k); vs == nil || len(vs.RealServers) != 3 {
				return fmt.Errorf("virtual server %s: %+v", k, vs)
			}
		}
		nat := run(t, "iptables-save", "-t", "nat")
		for _, want := range kubeProxyNATRules {
			if !want.MatchString(nat) {
				return fmt.Errorf("kube-proxy's nat rules are not in yet (no %s)", want)
			}
		}
		return nil
	})
	t.Logf("kube-proxy programmed IPVS and its nat rules %s after it started", time.Since(kpStarted).Round(time.Millisecond))
	waitAnswering(t, tcp, cluster, "pod-a", "pod-b", "pod-c")
	waitAnswering(t, tcp, node, "pod-a", "pod-b", "pod-c")
	before := map[ipvs.VirtualServerKey]ipvs.VirtualServer{}
	for _, vs := range virtualServers(t) {
		before[vs.VirtualServerKey] = vs.VirtualServer
	}
	t.Logf("kube-proxy's IPVS table:\n%s", ipvs.FormatDump(virtualServers(t)))

	// Long-lived connections from the node (its source address is the VIP
	// itself, the VIP being local on kube-ipvs0; masqueraded) and from a pod
	// (not masqueraded, as it is inside the cluster CIDR).
	long := dialTracked(t, nil, cluster, true)
	longPod := dialTracked(t, e.pods["client"], cluster, false)
	first, firstPod := long.send(t, "before"), longPod.send(t, "before")

	stop := make(chan struct{})
	// 20 requests/s, bounded at 4 minutes' worth. Under TCG kipvs's first
	// full sync (some 70 iptables processes) alone takes 30-60 s.
	traffic := startTraffic(t.Context(), stop, 50*time.Millisecond, 4800, cluster, node)
	time.Sleep(time.Second)

	// kube-proxy has no SIGTERM handler: the signal ends it, and it cleans
	// nothing up (only --cleanup does).
	if err := kp.Stop(); !killedBy(err, syscall.SIGTERM) {
		t.Errorf("kube-proxy on SIGTERM: %v", err)
	}
	kpStopped = true
	kpStoppedAt := time.Now()
	if left := kubeProxyLeftovers(t); len(left) == 0 {
		t.Errorf("kube-proxy removed its rules on SIGTERM; the takeover test needs them in place")
	} else {
		t.Logf("kube-proxy stopped; it left %d chains and sets: %v", len(left), left)
	}
	time.Sleep(time.Second)

	k, err := startKipvs("kipvs", GuestKipvsKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	proxy = k
	started := time.Now()
	waitForWithin(t, 3*time.Minute, "kipvs to remove kube-proxy's leftovers", func() error {
		if done, err := k.Exited(); done {
			return fmt.Errorf("kipvs exited: %v", err)
		}
		if left := kubeProxyLeftovers(t); len(left) > 0 {
			return fmt.Errorf("left: %v", left)
		}
		if !strings.Contains(run(t, "iptables-save", "-t", "nat"), "-j KIPVS-SERVICES") {
			return fmt.Errorf("no KIPVS-SERVICES jump")
		}
		return nil
	})
	t.Logf("kube-proxy's leftovers gone %s after kipvs started (%s after kube-proxy stopped)",
		time.Since(started).Round(time.Millisecond), time.Since(kpStoppedAt).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	close(stop)
	<-traffic.done

	ok, fail, errs := traffic.counts()
	t.Logf("request loop: %d succeeded, %d failed", ok, fail)
	if fail != 0 || ok < 40 {
		t.Errorf("request loop: %d succeeded, %d failed, want 0 failures: %v", ok, fail, errs)
	}
	long.checkAfter(t, first)
	longPod.checkAfter(t, firstPod)

	ops := kipvsOps(t)
	t.Logf("kipvs kernel operations (succeeded): %v", ops)
	if ops["delete_virtual_server"] != 0 {
		t.Errorf("kipvs deleted %d virtual servers while taking over; want 0", ops["delete_virtual_server"])
	}
	for _, key := range []ipvs.VirtualServerKey{vsKey(tcp, cluster), vsKey(tcp, node)} {
		vs := virtualServer(t, key)
		if vs == nil || len(vs.RealServers) != 3 {
			t.Errorf("after takeover %s is %+v", key, vs)
			continue
		}
		if b := before[key]; b.Scheduler != vs.Scheduler || b.Flags != vs.Flags {
			t.Errorf("%s: kube-proxy had %s flags %#x, kipvs %s flags %#x", key, b.Scheduler, b.Flags, vs.Scheduler, vs.Flags)
		}
	}
	if log := k.Log(); !strings.Contains(log, "Removed kube-proxy's IPVS-mode iptables rules and ipsets") {
		t.Errorf("kipvs did not log the removal of kube-proxy's leftovers")
	}
}

// killedBy reports whether a process ended with err because of sig (or exited 0).
func killedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if err == nil {
		return true
	}
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// trackedConn is a long-lived TCP connection through a Service.
type trackedConn struct {
	name string
	c    *netpod.Conn
}

// dialTracked opens a long-lived connection from pod (nil: the node) to vip and
// checks that conntrack tracks it, masqueraded or not as masq says, so that
// the test starts from what a node running kube-proxy has.
func dialTracked(t *testing.T, pod *netpod.Pod, vip netip.AddrPort, masq bool) *trackedConn {
	t.Helper()
	name := "node"
	if pod != nil {
		name = "pod " + pod.Name
	}
	c, err := netpod.Dial(t.Context(), pod, tcp, vip)
	if err != nil {
		t.Fatalf("long-lived connection from the %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	l := &trackedConn{name: name, c: c}
	ct := l.conntrack(t)
	t.Logf("long-lived connection from the %s: %s -> %s; conntrack: %s", name, c.LocalAddr(), vip, ct)
	if ct == "" {
		t.Fatalf("long-lived connection from the %s is not tracked by conntrack", name)
	}
	if masqueraded := !strings.Contains(ct, fmt.Sprintf("dst=%s sport=%d dport=%d", c.LocalAddr().Addr(), echoPort, c.LocalAddr().Port())); masqueraded != masq {
		t.Fatalf("long-lived connection from the %s: masqueraded %v, want %v: %s", name, masqueraded, masq, ct)
	}
	return l
}

// conntrack returns the conntrack entry of the connection (without its timeout), or "".
func (l *trackedConn) conntrack(t *testing.T) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "conntrack", "-L", "-p", "tcp", "--orig-port-src", strconv.Itoa(int(l.c.LocalAddr().Port()))).Output()
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 3 && strings.Contains(line, "src="+l.c.LocalAddr().Addr().String()+" ") {
			return strings.Join(append(f[:2:2], f[3:]...), " ")
		}
	}
	return ""
}

// send sends one line and returns the reply, failing the test on an error.
func (l *trackedConn) send(t *testing.T, line string) string {
	t.Helper()
	reply, err := l.c.Send(line)
	if err != nil {
		t.Fatalf("long-lived connection from the %s, %q: %v", l.name, line, err)
	}
	return reply
}

// checkAfter sends a line after the takeover: the same pod must answer as before.
func (l *trackedConn) checkAfter(t *testing.T, before string) {
	t.Helper()
	ct := l.conntrack(t)
	second, err := l.c.Send("after")
	switch {
	case err != nil:
		t.Errorf("long-lived connection from the %s after the takeover: %v (conntrack before the send: %q)", l.name, err, ct)
	case strings.Fields(before)[0] != strings.Fields(second)[0]:
		t.Errorf("long-lived connection from the %s answered by %s before, %s after", l.name, strings.Fields(before)[0], strings.Fields(second)[0])
	default:
		t.Logf("long-lived connection from the %s survived (pod %s); conntrack: %s", l.name, strings.Fields(second)[0], ct)
	}
}
