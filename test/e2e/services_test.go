//go:build e2etest

package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/test/netpod"
)

const tcp, udp = netpod.TCP, netpod.UDP

// httpPorts are the slice ports of a Service with the default port "http".
var httpPorts = []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, echoPort)}

// TestClusterIP: every ready endpoint of a ClusterIP Service answers on its
// VIP, which is bound to kube-ipvs0, with one real server per endpoint.
func TestClusterIP(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b", "pod-c")
	svc := e.createService("web")
	e.setSlice("web-1", "web", httpPorts, "pod-a", "pod-b", "pod-c")
	to := vip(t, svc, 80)
	waitAnswering(t, tcp, to, "pod-a", "pod-b", "pod-c")
	if !slices.Contains(boundVIPs(t), to.Addr()) {
		t.Errorf("VIP %s answers but is not on kube-ipvs0: %v", to.Addr(), boundVIPs(t))
	}
	vs := virtualServer(t, vsKey(tcp, to))
	if vs == nil {
		t.Fatalf("no virtual server %s", vsKey(tcp, to))
	}
	var got []string
	for _, rs := range vs.RealServers {
		got = append(got, fmt.Sprintf("%s w%d", rs.RealServerKey, rs.Weight))
	}
	want := []string{e.pods["pod-a"].IP.String() + ":8080 w1", e.pods["pod-b"].IP.String() + ":8080 w1", e.pods["pod-c"].IP.String() + ":8080 w1"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("real servers of %s = %v, want %v", vs.VirtualServerKey, got, want)
	}
}

// TestMultiport: a Service with two ports, each to its own target port, in
// one slice: each port reaches the pods on its own target.
func TestMultiport(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("multi", withPorts(
		port("http", corev1.ProtocolTCP, 80, echoPort), port("alt", corev1.ProtocolTCP, 81, altPort)))
	e.setSlice("multi-1", "multi", []discoveryv1.EndpointPort{
		slicePort("http", corev1.ProtocolTCP, echoPort), slicePort("alt", corev1.ProtocolTCP, altPort)}, "pod-a", "pod-b")
	waitAnswering(t, tcp, vip(t, svc, 80), "pod-a", "pod-b")
	waitAnswering(t, tcp, vip(t, svc, 81), "pod-a", "pod-b")
	for _, c := range []struct {
		port   uint16
		target uint16
	}{{80, echoPort}, {81, altPort}} {
		vs := virtualServer(t, vsKey(tcp, vip(t, svc, c.port)))
		if vs == nil || len(vs.RealServers) != 2 {
			t.Fatalf("virtual server for port %d: %+v, want 2 real servers", c.port, vs)
		}
		for _, rs := range vs.RealServers {
			if rs.Port != c.target {
				t.Errorf("port %d: real server %s, want target port %d", c.port, rs.RealServerKey, c.target)
			}
		}
	}
}

// TestSamePortTCPAndUDP: one Service port number on TCP and on UDP gives two
// virtual servers, and both protocols reach the pods.
func TestSamePortTCPAndUDP(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("dns", withPorts(
		port("tcp", corev1.ProtocolTCP, 53, echoPort), port("udp", corev1.ProtocolUDP, 53, echoPort)))
	e.setSlice("dns-1", "dns", []discoveryv1.EndpointPort{
		slicePort("tcp", corev1.ProtocolTCP, echoPort), slicePort("udp", corev1.ProtocolUDP, echoPort)}, "pod-a", "pod-b")
	waitAnswering(t, tcp, vip(t, svc, 53), "pod-a", "pod-b")
	waitAnswering(t, udp, vip(t, svc, 53), "pod-a", "pod-b")
}

// TestNodePort: a NodePort Service answers on its node port on every node IP
// (eth0 and the pod bridge) and on its cluster IP.
func TestNodePort(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("np", nodePort)
	e.setSlice("np-1", "np", httpPorts, "pod-a", "pod-b")
	waitAnswering(t, tcp, vip(t, svc, 80), "pod-a", "pod-b")
	for _, to := range e.nodeAddrs(nodePortOf(t, svc, 0)) {
		waitAnswering(t, tcp, to, "pod-a", "pod-b")
	}
}

// TestTypeChanges walks a Service through ExternalName -> ClusterIP ->
// NodePort -> ClusterIP -> ExternalName: its VIP and node ports appear and
// disappear with its type, and an ExternalName gets no virtual server.
func TestTypeChanges(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	before := vsKeys(t)
	e.createService("mutable", externalName)
	e.setSlice("mutable-1", "mutable", httpPorts, "pod-a", "pod-b")
	e.assertNoNewVirtualServers(before)

	svc := e.updateService("mutable", clusterIP, func(s *corev1.Service) { s.Spec.ExternalName = "" })
	cip := vip(t, svc, 80)
	waitAnswering(t, tcp, cip, "pod-a", "pod-b")

	svc = e.updateService("mutable", nodePort)
	np := nodePortOf(t, svc, 0)
	for _, to := range e.nodeAddrs(np) {
		waitAnswering(t, tcp, to, "pod-a", "pod-b")
	}
	if got := vip(t, svc, 80); got != cip {
		t.Fatalf("cluster IP changed from %s to %s with the type", cip, got)
	}

	svc = e.updateService("mutable", clusterIP)
	if svc.Spec.Ports[0].NodePort != 0 {
		t.Fatalf("node port %d kept after the change to ClusterIP", svc.Spec.Ports[0].NodePort)
	}
	for _, to := range e.nodeAddrs(np) {
		waitVirtualServer(t, vsKey(tcp, to), false, nil)
		waitNoAnswer(t, tcp, to)
	}
	waitAnswering(t, tcp, cip, "pod-a", "pod-b")

	e.updateService("mutable", externalName)
	waitVirtualServer(t, vsKey(tcp, cip), false, nil)
	waitVIPBound(t, cip.Addr(), false)
	waitNoAnswer(t, tcp, cip)
	e.assertNoNewVirtualServers(before)
}

// vsKeys returns the keys of the kernel's virtual servers.
func vsKeys(t *testing.T) map[ipvs.VirtualServerKey]bool {
	t.Helper()
	keys := map[ipvs.VirtualServerKey]bool{}
	for _, vs := range virtualServers(t) {
		keys[vs.VirtualServerKey] = true
	}
	return keys
}

// assertNoNewVirtualServers checks that, once kipvs has caught up with every
// change made so far, the kernel has no virtual server that was not in
// before. The barrier is a marker Service created now: kipvs sees Service
// events in order, so once the marker's virtual server exists, every earlier
// Service change was synced. The marker is deleted again.
func (e *env) assertNoNewVirtualServers(before map[ipvs.VirtualServerKey]bool) {
	t := e.t
	t.Helper()
	marker := e.createService("barrier-" + randomSuffix())
	key := vsKey(tcp, vip(t, marker, 80))
	waitVirtualServer(t, key, true, nil)
	var extra []string
	for k := range vsKeys(t) {
		if !before[k] && k != key {
			extra = append(extra, k.String())
		}
	}
	if len(extra) > 0 {
		t.Errorf("unexpected virtual servers: %v\n%s", extra, run(t, "ipvsadm", "-Ln"))
	}
	e.deleteService(marker.Name)
	waitVirtualServer(t, key, false, nil)
}

// TestSessionAffinity: ClientIP affinity sends every request of one client to
// one pod, on the cluster IP and on node ports; switching it off spreads the
// requests again, switching it back on pins them again.
func TestSessionAffinity(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  svcOption
	}{{"ClusterIP", clusterIP}, {"NodePort", nodePort}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "pod-a", "pod-b", "pod-c")
			svc := e.createService("sticky", tc.typ, affinity(true))
			e.setSlice("sticky-1", "sticky", httpPorts, "pod-a", "pod-b", "pod-c")
			targets := []netip.AddrPort{vip(t, svc, 80)}
			if svc.Spec.Type == corev1.ServiceTypeNodePort {
				targets = e.nodeAddrs(nodePortOf(t, svc, 0))
			}
			all := []string{"pod-a", "pod-b", "pod-c"}
			persistent := func(on bool) func(ipvs.VirtualServerStatus) error {
				return func(vs ipvs.VirtualServerStatus) error {
					if got := vs.Flags&ipvs.FlagPersistent != 0; got != on {
						return fmt.Errorf("%s persistent=%v, want %v (timeout %d)", vs.VirtualServerKey, got, on, vs.Timeout)
					}
					if on && vs.Timeout != 10800 {
						return fmt.Errorf("%s persistence timeout %d, want 10800 (the API default)", vs.VirtualServerKey, vs.Timeout)
					}
					return nil
				}
			}
			for _, to := range targets {
				waitVirtualServer(t, vsKey(tcp, to), true, persistent(true))
				waitOnePod(t, tcp, to, all...)
			}
			e.updateService("sticky", affinity(false))
			for _, to := range targets {
				waitVirtualServer(t, vsKey(tcp, to), true, persistent(false))
				waitAnswering(t, tcp, to, all...)
			}
			e.updateService("sticky", affinity(true))
			for _, to := range targets {
				waitVirtualServer(t, vsKey(tcp, to), true, persistent(true))
				waitOnePod(t, tcp, to, all...)
			}
		})
	}
}

// TestMultipleSlices: a Service whose ports and endpoints are spread over
// three EndpointSlices: port http has pod-a (slice 1) and pod-c (slice 3),
// port alt has pod-b (slice 2).
func TestMultipleSlices(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b", "pod-c")
	svc := e.createService("spread", withPorts(
		port("http", corev1.ProtocolTCP, 80, echoPort), port("alt", corev1.ProtocolTCP, 81, altPort)))
	altPorts := []discoveryv1.EndpointPort{slicePort("alt", corev1.ProtocolTCP, altPort)}
	e.setSlice("spread-1", "spread", httpPorts, "pod-a")
	e.setSlice("spread-2", "spread", altPorts, "pod-b")
	e.setSlice("spread-3", "spread", httpPorts, "pod-c")
	waitAnswering(t, tcp, vip(t, svc, 80), "pod-a", "pod-c")
	waitAnswering(t, tcp, vip(t, svc, 81), "pod-b")

	// Moving pod-c from slice 3 into slice 2 (under port alt) moves it
	// between the ports.
	e.setSlice("spread-3", "spread", httpPorts)
	e.setSlice("spread-2", "spread", altPorts, "pod-b", "pod-c")
	waitAnswering(t, tcp, vip(t, svc, 80), "pod-a")
	waitAnswering(t, tcp, vip(t, svc, 81), "pod-b", "pod-c")
}

// TestEndpointRemoved: an endpoint taken out of the slice gets no new
// connections, while an established connection to it keeps working (it
// drains at weight 0).
func TestEndpointRemoved(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("shrink")
	e.setSlice("shrink-1", "shrink", httpPorts, "pod-a", "pod-b")
	to := vip(t, svc, 80)
	waitAnswering(t, tcp, to, "pod-a", "pod-b")

	conn := dialPod(t, tcp, to, "pod-b")
	e.setSlice("shrink-1", "shrink", httpPorts, "pod-a")
	waitAnswering(t, tcp, to, "pod-a")
	podB := ipvs.RealServerKey{Address: e.pods["pod-b"].IP, Port: echoPort}
	waitVirtualServer(t, vsKey(tcp, to), true, func(vs ipvs.VirtualServerStatus) error {
		for _, rs := range vs.RealServers {
			if rs.RealServerKey == podB && rs.Weight == 0 {
				return nil
			}
		}
		return fmt.Errorf("pod-b is not a draining (weight 0) real server of %s: %+v", vs.VirtualServerKey, vs.RealServers)
	})
	if reply, err := conn.Send("still there?"); err != nil || !strings.HasPrefix(reply, "pod-b ") {
		t.Errorf("established connection to the removed endpoint: reply %q, err %v; want pod-b to answer", reply, err)
	}
}

// dialPod opens connections to to until one reaches pod and returns it open.
func dialPod(t *testing.T, proto string, to netip.AddrPort, pod string) *netpod.Conn {
	t.Helper()
	for range 2 * spread {
		c, err := netpod.Dial(t.Context(), nil, proto, to)
		if err != nil {
			t.Fatalf("dial %s: %v", to, err)
		}
		reply, err := c.Send("who?")
		if err == nil && strings.HasPrefix(reply, pod+" ") {
			t.Cleanup(func() { c.Close() })
			return c
		}
		c.Close()
	}
	t.Fatalf("no connection to %s reached %s", to, pod)
	return nil
}

// TestServiceDeleted: once a Service is deleted its VIP stops answering and
// kipvs removes it from kube-ipvs0 and from the IPVS table.
func TestServiceDeleted(t *testing.T) {
	e := newEnv(t, "pod-a")
	svc := e.createService("doomed", withPorts(
		port("http", corev1.ProtocolTCP, 80, echoPort), port("dns", corev1.ProtocolUDP, 53, echoPort)))
	e.setSlice("doomed-1", "doomed", []discoveryv1.EndpointPort{
		slicePort("http", corev1.ProtocolTCP, echoPort), slicePort("dns", corev1.ProtocolUDP, echoPort)}, "pod-a")
	to := vip(t, svc, 80)
	waitAnswering(t, tcp, to, "pod-a")
	waitAnswering(t, udp, vip(t, svc, 53), "pod-a")
	waitVIPBound(t, to.Addr(), true)

	e.deleteService("doomed")
	waitNoAnswer(t, tcp, to)
	waitNoAnswer(t, udp, vip(t, svc, 53))
	waitVIPBound(t, to.Addr(), false)
	waitVirtualServer(t, vsKey(tcp, to), false, nil)
	waitVirtualServer(t, vsKey(udp, vip(t, svc, 53)), false, nil)
	if out := run(t, "ipvsadm", "-Ln"); strings.Contains(out, to.Addr().String()+":") {
		t.Errorf("ipvsadm -Ln still lists %s:\n%s", to.Addr(), out)
	}
}

// TestUDPServerPodCycles: a UDP client that keeps its source port (like
// conformance's `nc -u -p 12345` loop) keeps getting answers when the only
// server pod is deleted and replaced by a new pod with another IP.
func TestUDPServerPodCycles(t *testing.T) {
	for _, tc := range []struct {
		name string
		typ  svcOption
	}{{"ClusterIP", clusterIP}, {"NodePort", nodePort}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "server-1")
			svc := e.createService("udp", tc.typ, withPorts(port("udp", corev1.ProtocolUDP, 80, echoPort)))
			udpPorts := []discoveryv1.EndpointPort{slicePort("udp", corev1.ProtocolUDP, echoPort)}
			e.setSlice("udp-1", "udp", udpPorts, "server-1")
			to := vip(t, svc, 80)
			if svc.Spec.Type == corev1.ServiceTypeNodePort {
				to = e.nodeAddrs(nodePortOf(t, svc, 0))[0]
			}
			waitAnswering(t, udp, to, "server-1")
			conn, err := netpod.Dial(t.Context(), nil, udp, to)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			waitReplyFrom(t, conn, "server-1")

			e.pods["server-1"].Delete(t)
			e.setSlice("udp-1", "udp", udpPorts)
			e.addPod("server-2")
			e.setSlice("udp-1", "udp", udpPorts, "server-2")
			waitAnswering(t, udp, to, "server-2")
			waitReplyFrom(t, conn, "server-2")
		})
	}
}

// waitReplyFrom sends on conn (same source port every time) until pod answers.
func waitReplyFrom(t *testing.T, conn *netpod.Conn, pod string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s to answer the client %s", pod, conn.LocalAddr()), func() error {
		reply, err := conn.SendContext(t.Context(), "hostname")
		if err != nil {
			return err
		}
		if !strings.HasPrefix(reply, pod+" ") {
			return fmt.Errorf("answered by %q", reply)
		}
		return nil
	})
}
