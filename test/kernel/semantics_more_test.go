//go:build kerneltest

package kernel

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// servingTerminating is the slice entry of a pod on this node that is shutting
// down but still serving: ready=false, serving=true, terminating=true.
func servingTerminating(p *netpod.Pod) discoveryv1.Endpoint {
	ep := endpoint(p, false)
	serving, terminating := true, true
	ep.Conditions.Serving, ep.Conditions.Terminating = &serving, &terminating
	return ep
}

// TestSemanticsServingTerminatingFallback (KEP-1669): when every endpoint of a
// Service is serving and terminating, they take the traffic rather than none;
// once a ready endpoint appears, only it answers.
func TestSemanticsServingTerminatingFallback(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	c.setService(c.webService())
	c.setSlice(webSlice(servingTerminating(c.pods["a"]), servingTerminating(c.pods["b"])))
	p := c.startWith(defaultConfig())
	ab := c.backends(echoPort, 1, "a", "b")
	c.waitTable(t, c.webTable(ab, ab))
	for _, proto := range []string{tcp, udp} {
		waitAnswering(t, nil, proto, c.web, "a", "b")
	}

	t.Log("pod c becomes ready: the terminating endpoints stop taking new traffic")
	c.setSlice(webSlice(servingTerminating(c.pods["a"]), servingTerminating(c.pods["b"]), endpoint(c.pods["c"], true)))
	p.QueueSync()
	for _, proto := range []string{tcp, udp} {
		waitAnswering(t, nil, proto, c.web, "c")
	}
}

// conntrackTo returns the conntrack entries of proto ("udp", "sctp") whose
// original destination is vip and whose reply comes from replySrc (the VIP
// itself for an entry that no real server answered).
func conntrackTo(t *testing.T, proto string, vip netip.AddrPort, replySrc netip.Addr) []string {
	t.Helper()
	out, err := exec.Command("conntrack", "-L", "-p", proto).Output()
	if err != nil {
		t.Fatalf("conntrack -L -p %s: %v", proto, err)
	}
	var found []string
	for line := range strings.Lines(string(out)) {
		var src, dst, dport []string
		for _, w := range strings.Fields(line) {
			switch k, v, _ := strings.Cut(w, "="); k {
			case "src":
				src = append(src, v)
			case "dst":
				dst = append(dst, v)
			case "dport":
				dport = append(dport, v)
			}
		}
		// The original direction's fields come first, then the reply's.
		if len(src) == 2 && len(dst) >= 1 && len(dport) >= 1 && dst[0] == vip.Addr().String() &&
			dport[0] == strconv.Itoa(int(vip.Port())) && src[1] == replySrc.String() {
			found = append(found, strings.TrimSpace(line))
		}
	}
	return found
}

// TestSemanticsUDPFirstEndpointFlushesConntrack (kubernetes #105192): a UDP
// client that sends to a ClusterIP while the Service has no endpoint gets no
// answer; when the first endpoint appears, the SAME socket (same source port,
// like a resolver retrying) gets answers, because the conntrack entry left
// from the time without endpoints is deleted.
//
// On this kernel IPVS rejects a datagram to a virtual server without real
// servers in LOCAL_IN, before conntrack confirms the entry, so that datagram
// leaves none; the stale entry of #105192 is one confirmed while the VIP was
// not served at all (the datagram routed off the node before kipvs bound the
// VIP: reply expected from the VIP itself). The test inserts that entry for
// the client's socket with conntrack -I.
func TestSemanticsUDPFirstEndpointFlushesConntrack(t *testing.T) {
	c := newCluster(t, "a", "client")
	client := c.pods["client"]
	c.setService(c.webService())
	// Netfilter's rules are what turn connection tracking on in the netns.
	p := c.startNF(c.nfConfig(), proxier.WithConntrack(proxier.NewNetlinkConntrack()))
	c.waitTable(t, c.webTable(nil, nil))

	conn, err := netpod.Dial(t.Context(), client, udp, c.web)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.Timeout = time.Second
	if got, err := sendUDP(conn); err == nil {
		t.Fatalf("a Service without endpoints answered (%s)", got)
	} else {
		t.Logf("datagram from %s with no endpoint: %v", conn.LocalAddr(), err)
	}
	src := conn.LocalAddr()
	if out, err := exec.Command("conntrack", "-I", "-p", "udp",
		"-s", src.Addr().String(), "-d", c.web.Addr().String(), "--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(c.web.Port())),
		"-r", c.web.Addr().String(), "-q", src.Addr().String(), "--reply-port-src", strconv.Itoa(int(c.web.Port())), "--reply-port-dst", strconv.Itoa(int(src.Port())),
		"-t", "120").CombinedOutput(); err != nil {
		t.Fatalf("conntrack -I: %v\n%s", err, out)
	}
	if got := conntrackTo(t, udp, c.web, c.web.Addr()); len(got) == 0 {
		logNetfilterState(t)
		t.Fatalf("no unanswered UDP conntrack entry to %s", c.web)
	} else {
		t.Logf("stale entry: %s", got[0])
	}

	t.Log("the first endpoint appears")
	since := time.Now()
	c.setSlice(webSlice(c.endpointsOf("a")...))
	p.QueueSync()
	a := c.backends(echoPort, 1, "a")
	c.waitTable(t, c.webTable(a, a))
	p.waitSynced(t, since, false)
	// Retry like a resolver; each try waits up to a second, and every try
	// refreshes a stale entry's 30 s timeout, so only its deletion helps.
	var tries []string
	for range 5 {
		got, err := sendUDP(conn)
		if err == nil && got == "a" {
			t.Logf("answered by a after %d failed tries %v", len(tries), tries)
			return
		}
		tries = append(tries, fmt.Sprintf("%q %v", got, err))
		time.Sleep(200 * time.Millisecond)
	}
	logNetfilterState(t)
	t.Errorf("the UDP socket that sent while %s had no endpoint gets no answer from a: %v", c.web, tries)
}

// TestNetfilterMasqueradeAll: with --masquerade-all a pod inside the cluster
// CIDR reaches the backend from the node's address (without it the pod's own
// address, TestNetfilterMasquerade), and the MASQUERADE rule has
// --random-fully, which the VM's kernel and iptables support.
func TestNetfilterMasqueradeAll(t *testing.T) {
	c := newCluster(t, "a", "client")
	c.setService(makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
	c.setSlice(httpSlice("web-1", "web", c.endpointsOf("a")...))
	cfg := c.nfConfig()
	cfg.MasqueradeAll = true
	c.startNF(cfg)

	if pod, src := seenAs(t, c.pods["client"], c.web); pod != "a" || src != c.net.Gateway {
		t.Errorf("with masquerade-all, from a pod in the cluster CIDR: answered by %s, seen from %s; want a seeing the node's %s",
			pod, src, c.net.Gateway)
	}
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	var masq []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "KIPVS") && strings.Contains(line, "-j MASQUERADE") {
			masq = append(masq, strings.TrimSpace(line))
		}
	}
	if len(masq) == 0 {
		t.Fatalf("no KIPVS MASQUERADE rule in iptables-save:\n%s", out)
	}
	for _, r := range masq {
		if !strings.Contains(r, "--random-fully") {
			t.Errorf("MASQUERADE rule without --random-fully: %s", r)
		}
	}
}

// TestSemanticsExternalIPs: a Service's externalIPs answer clients outside the
// cluster CIDR. With externalTrafficPolicy Cluster every endpoint serves and
// the backend sees the node's address (masqueraded); with Local only this
// node's endpoints serve and the backend sees the client's own address.
func TestSemanticsExternalIPs(t *testing.T) {
	c := newCluster(t, "a", "b")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	extCluster := netip.AddrFrom4([4]byte{192, 0, 2, c.n})
	extLocal := netip.AddrFrom4([4]byte{198, 51, 100, c.n})
	externalIP := func(ip netip.Addr, policy v1.ServiceExternalTrafficPolicy) svcOption {
		return func(s *v1.Service) {
			s.Spec.ExternalIPs = []string{ip.String()}
			s.Spec.ExternalTrafficPolicy = policy
		}
	}
	c.setService(makeService("cluster", c.vip(40).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)},
		externalIP(extCluster, v1.ServiceExternalTrafficPolicyCluster)))
	c.setSlice(httpSlice("cluster-1", "cluster", endpoint(c.pods["a"], true), remoteEndpoint(c.pods["b"])))
	c.setService(makeService("local", c.vip(41).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)},
		externalIP(extLocal, v1.ServiceExternalTrafficPolicyLocal)))
	// b claims another node: with policy Local it must get no external traffic.
	c.setSlice(httpSlice("local-1", "local", endpoint(c.pods["a"], true), remoteEndpoint(c.pods["b"])))
	c.startNF(c.nfConfig())
	defer func() {
		if t.Failed() {
			logNetfilterState(t)
		}
	}()

	cluster, local := netip.AddrPortFrom(extCluster, 80), netip.AddrPortFrom(extLocal, 80)
	waitAnswering(t, ext, tcp, cluster, "a", "b")
	if _, src := seenAs(t, ext, cluster); src != c.net.Gateway {
		t.Errorf("externalIP, policy Cluster, from %s outside the cluster CIDR: seen from %s, want the node's %s", ext.IP, src, c.net.Gateway)
	}
	waitAnswering(t, ext, tcp, local, "a")
	if pod, src := seenAs(t, ext, local); pod != "a" || src != ext.IP {
		t.Errorf("externalIP, policy Local: answered by %s, seen from %s; want a seeing the client's %s", pod, src, ext.IP)
	}
	// The ClusterIP of the Local Service still uses every endpoint.
	waitAnswering(t, nil, tcp, netip.AddrPortFrom(c.vip(41), 80), "a", "b")
}
