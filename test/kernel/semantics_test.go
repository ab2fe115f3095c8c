//go:build kerneltest

package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// startWith is cluster.start with proxier options (conntrack clearing, health
// checks) and the real kernel.
func (c *cluster) startWith(cfg proxier.Config, opts ...proxier.Option) *runningProxier {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	applyKernelSettings(t, cfg)
	p := &runningProxier{
		Proxier: proxier.New(cfg, c.state, c.ipvs, proxier.NewNetlinkAddresses(), clock.RealClock{}, opts...),
		cancel:  cancel, done: make(chan struct{}),
	}
	if err := p.Setup(ctx); err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// remoteEndpoint is a ready slice entry of pod p that claims to run on another node.
func remoteEndpoint(p *netpod.Pod) discoveryv1.Endpoint {
	ep := endpoint(p, true)
	other := "node-2"
	ep.NodeName = &other
	return ep
}

// refused reports whether err is the ECONNREFUSED that the ICMP port
// unreachable of IPVS produces (TCP connect, or a connected UDP socket).
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// podLabel names a client: a pod, or the node for nil.
func podLabel(p *netpod.Pod) string {
	if p == nil {
		return "the node"
	}
	return "pod " + p.Name
}

func internalLocalPolicy(s *v1.Service) {
	p := v1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &p
}

// TestSemanticsInternalTrafficPolicyLocal: with internalTrafficPolicy Local only
// this node's endpoints answer; with none (endpoints only on another node) the
// virtual servers have no real server and the kernel rejects TCP and UDP with
// ICMP port unreachable (no fallback to the other node's endpoints).
func TestSemanticsInternalTrafficPolicyLocal(t *testing.T) {
	c := newCluster(t, "a", "b", "c", "client")
	c.setService(c.webService(internalLocalPolicy))
	c.setSlice(webSlice(endpoint(c.pods["a"], true), endpoint(c.pods["b"], true), remoteEndpoint(c.pods["c"])))
	p := c.startWith(defaultConfig())
	ab := c.backends(echoPort, 1, "a", "b")
	c.waitTable(t, c.webTable(ab, ab))
	for _, proto := range []string{tcp, udp} {
		waitAnswering(t, nil, proto, c.web, "a", "b")
	}

	t.Log("only a remote endpoint left")
	c.setSlice(webSlice(remoteEndpoint(c.pods["c"])))
	p.QueueSync()
	// a and b had TCP connections (TIME_WAIT): they drain at weight 0, and a
	// weight-0 real server takes no new connection either.
	c.waitTable(t, c.webTable(c.backends(echoPort, 0, "a", "b"), nil))
	// IPVS answers with ICMP port unreachable: a pod's TCP connect and UDP read
	// fail with ECONNREFUSED. On the node itself the dropped UDP datagram
	// (NF_DROP in LOCAL_OUT) fails its send with EPERM instead.
	for _, from := range []*netpod.Pod{nil, c.pods["client"]} {
		for _, proto := range []string{tcp, udp} {
			reply, err := netpod.Ask(t.Context(), from, proto, c.web)
			if err == nil {
				t.Errorf("%s from %s with no local endpoint answered %q, want it refused", proto, podLabel(from), reply)
				continue
			}
			t.Logf("%s from %s with no local endpoint: %v", proto, podLabel(from), err)
			if !refused(err) && !(from == nil && proto == udp && errors.Is(err, syscall.EPERM)) {
				t.Errorf("%s from %s with no local endpoint failed with %v, want ECONNREFUSED", proto, podLabel(from), err)
			}
		}
	}
	if got := p.Status(); got != nil && got.Counts.NoLocalEndpoints.Internal.IPv4 != 2 {
		t.Errorf("no-local-endpoint count %+v, want 2 internal IPv4 ports", got.Counts.NoLocalEndpoints)
	}
}

// TestSemanticsExternalTrafficPolicyLocal: a LoadBalancer Service with
// externalTrafficPolicy Local sends its LB IP and NodePort only to local
// endpoints, its ClusterIP to all; with no local endpoint the LB IP and
// NodePort refuse while the ClusterIP still answers, and the health check
// node port says 503, then 200 once a local endpoint is back.
func TestSemanticsExternalTrafficPolicyLocal(t *testing.T) {
	c := newCluster(t, "a", "b")
	lbIP := c.vip(50)
	hcPort := 32100
	svc := makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("tcp", v1.ProtocolTCP, 80, 30081)},
		func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = int32(hcPort)
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP.String()}}
		})
	slice := func(eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return makeSlice("web-1", "web", []discoveryv1.EndpointPort{slicePort("tcp", v1.ProtocolTCP, echoPort)}, eps...)
	}
	c.setService(svc)
	c.setSlice(slice(endpoint(c.pods["a"], true), remoteEndpoint(c.pods["b"])))
	hs := proxier.NewHealthCheckServer(proxier.NetListener{}, []netip.Addr{c.net.Gateway}, nil)
	t.Cleanup(hs.Close)
	p := c.startWith(defaultConfig(), proxier.WithHealthCheckServer(hs))
	lb := netip.AddrPortFrom(lbIP, 80)
	nodePort := netip.AddrPortFrom(c.net.Gateway, 30081)
	waitAnswering(t, nil, tcp, c.web, "a", "b")
	waitAnswering(t, nil, tcp, lb, "a")
	waitAnswering(t, nil, tcp, nodePort, "a")
	hcURL := fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(c.net.Gateway, uint16(hcPort)))
	waitHealth(t, hcURL, 200, `"localEndpoints": 1`)

	t.Log("the local endpoint goes away")
	c.setSlice(slice(remoteEndpoint(c.pods["b"])))
	p.QueueSync()
	waitHealth(t, hcURL, 503, `"localEndpoints": 0`)
	waitAnswering(t, nil, tcp, c.web, "b")
	for _, to := range []netip.AddrPort{lb, nodePort} {
		waitFor(t, converge, fmt.Sprintf("%s to refuse", to), func() error {
			reply, err := netpod.Ask(t.Context(), nil, tcp, to)
			if err == nil {
				return fmt.Errorf("answered %q", reply)
			}
			if !refused(err) {
				return fmt.Errorf("failed with %v, want ECONNREFUSED", err)
			}
			return nil
		})
	}
}

// waitHealth polls a health check URL until it answers code with a body
// containing want.
func waitHealth(t *testing.T, url string, code int, want string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, converge, url+" to answer "+fmt.Sprint(code), func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != code || !strings.Contains(string(body), want) {
			return fmt.Errorf("status %d body %s", resp.StatusCode, body)
		}
		return nil
	})
}

// TestSemanticsUDPConntrackFlushed: a UDP client that keeps its source port
// (like a DNS resolver) reaches the new pod after its server pod is replaced,
// because the stale conntrack entry is deleted after the real server is.
func TestSemanticsUDPConntrackFlushed(t *testing.T) {
	c := newCluster(t, "old")
	c.setService(c.webService())
	c.setSlice(webSlice(c.endpointsOf("old")...))
	p := c.startWith(defaultConfig(), proxier.WithConntrack(proxier.NewNetlinkConntrack()))
	c.waitTable(t, c.webTable(c.backends(echoPort, 1, "old"), c.backends(echoPort, 1, "old")))
	conn, err := netpod.Dial(t.Context(), nil, udp, c.web)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ask := func() (string, error) {
		reply, err := conn.Send("dns?")
		if err != nil {
			return "", err
		}
		r, err := netpod.ParseReply(reply)
		return r.Pod, err
	}
	if got, err := ask(); err != nil || got != "old" {
		t.Fatalf("first datagram answered by %q, %v", got, err)
	}

	t.Log("replacing pod old with pod new")
	newPod := c.net.AddPod(t, "new")
	newPod.ServeEcho(t, echoPort)
	c.pods["new"] = newPod
	c.setSlice(webSlice(c.endpointsOf("new")...))
	p.QueueSync()
	c.waitTable(t, c.webTable(c.backends(echoPort, 1, "new"), c.backends(echoPort, 1, "new")))
	c.pods["old"].Delete(t)
	// Same socket, same source port: the very next datagram must reach new.
	waitFor(t, converge, "the same UDP flow to reach the new pod", func() error {
		got, err := ask()
		if err != nil {
			return err
		}
		if got != "new" {
			return fmt.Errorf("answered by %s", got)
		}
		return nil
	})
}

// TestSemanticsDrainEndsPromptly: with full resyncs only every 30 s, a
// draining real server is deleted within a few seconds of its last connection
// closing (the proxier polls while drains are pending), and its established
// connection keeps working while new ones go elsewhere.
func TestSemanticsDrainEndsPromptly(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.setService(c.webService())
	c.setSlice(webSlice(c.endpointsOf("a", "b")...))
	p := c.startWith(defaultConfig()) // SyncPeriod 30s
	both := c.backends(echoPort, 1, "a", "b")
	c.waitTable(t, c.webTable(both, both))
	conn, gone := dialLong(t, c.web)
	keep := "a"
	if gone == "a" {
		keep = "b"
	}
	c.setSlice(webSlice(c.endpointsOf(keep)...))
	p.QueueSync()
	c.waitTable(t, c.webTable(append(c.backends(echoPort, 1, keep), c.backends(echoPort, 0, gone)...),
		c.backends(echoPort, 1, keep)))
	waitAnswering(t, nil, tcp, c.web, keep)
	if got, err := conn.ask(); err != nil || got != gone {
		t.Errorf("established connection while draining: answered by %q, %v; want %s", got, err, gone)
	}
	if err := conn.reset(); err != nil {
		t.Fatal(err)
	}
	// IPVS keeps a reset connection in CLOSE for 10 s before it stops counting.
	closed := time.Now()
	waitFor(t, 20*time.Second, gone+" to be deleted", func() error {
		if rs, ok := c.realServer(t, key("TCP", c.web), gone); ok {
			return fmt.Errorf("still there: %+v", rs)
		}
		return nil
	})
	took := time.Since(closed)
	t.Logf("%s deleted %s after its connection was reset", gone, took.Round(time.Millisecond))
	if took > 17*time.Second {
		t.Errorf("drain ended %s after the reset, want within the 10 s CLOSE state plus a few seconds", took)
	}
}

// TestSemanticsAffinityLeavesDrainingServer (#71809): with ClientIP affinity,
// a client pinned to a real server that starts draining keeps its established
// connection, and its new connections go to another real server (the kernel
// expires the persistence template of a weight-0 server with
// expire_quiescent_template=1).
func TestSemanticsAffinityLeavesDrainingServer(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.setService(c.webService(clientIPAffinity(600)))
	c.setSlice(webSlice(c.endpointsOf("a", "b")...))
	p := c.startWith(defaultConfig())
	both := c.backends(echoPort, 1, "a", "b")
	c.waitTable(t, c.webTable(both, both, persistent(600)))
	conn, pinned := dialLong(t, c.web)
	other := "a"
	if pinned == "a" {
		other = "b"
	}
	got, _, err := answering(t.Context(), nil, tcp, c.web, 4)
	if err != nil || len(got) != 1 || got[0] != pinned {
		t.Fatalf("with affinity new connections answered by %v (%v), want only %s", got, err, pinned)
	}
	c.setSlice(webSlice(c.endpointsOf(other)...))
	p.QueueSync()
	c.waitTable(t, c.webTable(append(c.backends(echoPort, 1, other), c.backends(echoPort, 0, pinned)...),
		c.backends(echoPort, 1, other), persistent(600)))
	waitAnswering(t, nil, tcp, c.web, other)
	if got, err := conn.ask(); err != nil || got != pinned {
		t.Errorf("established connection of the pinned client: answered by %q, %v; want %s", got, err, pinned)
	}
}

// TestSemanticsIPv6ClusterIP: an IPv6 Service with IPv6 endpoints answers
// from the node and from a pod, over TCP and UDP.
func TestSemanticsIPv6ClusterIP(t *testing.T) {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		t.Fatalf("the VM kernel has no IPv6: %v", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	c.net = netpod.NewNet(t, netpod.NetOptions{DualStack: true})
	for _, name := range []string{"a", "b", "client"} {
		pod := c.net.AddPod(t, name)
		pod.ServeEcho(t, echoPort)
		c.pods[name] = pod
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("fd00:96::%d", c.n)), 80)
	c.setService(makeService("web6", vip.Addr().String(), []v1.ServicePort{
		svcPort("tcp", v1.ProtocolTCP, 80, 0), svcPort("udp", v1.ProtocolUDP, 80, 0),
	}, func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} }))
	var eps []discoveryv1.Endpoint
	for _, n := range []string{"a", "b"} {
		ep := endpoint(c.pods[n], true)
		ep.Addresses = []string{c.pods[n].IPv6.String()}
		eps = append(eps, ep)
	}
	s := makeSlice("web6-1", "web6", []discoveryv1.EndpointPort{
		slicePort("tcp", v1.ProtocolTCP, echoPort), slicePort("udp", v1.ProtocolUDP, echoPort)}, eps...)
	s.AddressType = discoveryv1.AddressTypeIPv6
	c.setSlice(s)
	c.startWith(defaultConfig())
	for _, proto := range []string{tcp, udp} {
		waitAnswering(t, nil, proto, vip, "a", "b")
		waitAnswering(t, c.pods["client"], proto, vip, "a", "b")
	}
}
