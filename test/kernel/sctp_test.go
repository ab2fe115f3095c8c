//go:build kerneltest

package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// TestSCTPClusterIP: a ClusterIP Service with an SCTP port gets an SCTP
// virtual server, and SCTP associations from the node and from a pod reach
// both endpoints (one-to-one SCTP sockets; IPVS's SCTP support and the sctp
// module of the VM's kernel). With the netfilter layer, a client outside the
// cluster CIDR is masqueraded over SCTP too.
func TestSCTPClusterIP(t *testing.T) {
	if _, err := os.Stat("/proc/net/sctp"); err != nil {
		t.Fatalf("the VM kernel has no SCTP (module sctp not loaded?): %v", err)
	}
	c := newCluster(t, "client")
	for _, name := range []string{"a", "b"} {
		p := c.net.AddPod(t, name)
		p.ServeEcho(t, echoPort, netpod.SCTP)
		c.pods[name] = p
	}
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	vip := netip.AddrPortFrom(c.vip(60), 80)
	c.setService(makeService("sctp", vip.Addr().String(), []v1.ServicePort{svcPort("sctp", v1.ProtocolSCTP, 80, 0)}))
	c.setSlice(makeSlice("sctp-1", "sctp", []discoveryv1.EndpointPort{slicePort("sctp", v1.ProtocolSCTP, echoPort)},
		c.endpointsOf("a", "b")...))
	c.startNFFamilies(c.nfConfig(), false)
	c.waitTable(t, table(entry(key("SCTP", vip), c.backends(echoPort, 1, "a", "b"))))
	if out := ipvsadm(t, "-Ln"); !regexp.MustCompile(`(?m)^SCTP\s+` + regexp.QuoteMeta(vip.String()) + `\s+rr`).MatchString(out) {
		t.Errorf("ipvsadm does not show the SCTP virtual server:\n%s", out)
	}
	waitAnswering(t, nil, netpod.SCTP, vip, "a", "b")
	waitAnswering(t, c.pods["client"], netpod.SCTP, vip, "a", "b")
	ask := func(from *netpod.Pod) netip.Addr {
		t.Helper()
		var r netpod.Reply
		waitFor(t, converge, fmt.Sprintf("SCTP %s from %s", vip, podLabel(from)), func() error {
			reply, err := netpod.Ask(t.Context(), from, netpod.SCTP, vip)
			if err != nil {
				return err
			}
			r, err = netpod.ParseReply(reply)
			return err
		})
		return r.Client.Addr()
	}
	src := ask(c.pods["client"])
	t.Logf("SCTP from pod client (%s) seen from %s", c.pods["client"].IP, src)
	if src != c.pods["client"].IP {
		t.Errorf("SCTP from a pod in the cluster CIDR seen from %s, want the pod's %s", src, c.pods["client"].IP)
	}
	src = ask(ext)
	t.Logf("SCTP from %s outside the cluster CIDR seen from %s", ext.IP, src)
	if src != c.net.Gateway {
		t.Errorf("SCTP from %s outside the cluster CIDR seen from %s, want the node's %s", ext.IP, src, c.net.Gateway)
	}
}

// TestSCTPEndpointRemoved: an SCTP real server is not drained like a TCP one:
// when its endpoint goes, the real server is gone in the sync that removes it
// even with an association open on it, and its conntrack entries are gone
// (after there was one), so that the client's next INIT is scheduled afresh.
//
// On this kernel the conntrack half holds even without kipvs's clearing: with
// expire_nodest_conn=1, deleting a real server queues the expiry of its IPVS
// connections, which drops their conntrack entries (Linux 5.9, "ipvs: queue
// delayed work to expire no destination connections if expire_nodest_conn=1").
// The entries that only kipvs clears (created while a Service had no real
// server) are TestSemanticsUDPFirstEndpointFlushesConntrack's case; the unit
// test TestSCTPConntrackClearedWhenEndpointGoes covers SCTP's filters.
func TestSCTPEndpointRemoved(t *testing.T) {
	if _, err := os.Stat("/proc/net/sctp"); err != nil {
		t.Fatalf("the VM kernel has no SCTP (module sctp not loaded?): %v", err)
	}
	c := newCluster(t, "client")
	for _, name := range []string{"a", "b"} {
		p := c.net.AddPod(t, name)
		p.ServeEcho(t, echoPort, netpod.SCTP)
		c.pods[name] = p
	}
	client := c.pods["client"]
	vip := netip.AddrPortFrom(c.vip(61), 80)
	slice := func(names ...string) *discoveryv1.EndpointSlice {
		return makeSlice("sctp-1", "sctp", []discoveryv1.EndpointPort{slicePort("sctp", v1.ProtocolSCTP, echoPort)},
			c.endpointsOf(names...)...)
	}
	c.setService(makeService("sctp", vip.Addr().String(), []v1.ServicePort{svcPort("sctp", v1.ProtocolSCTP, 80, 0)}))
	c.setSlice(slice("a", "b"))
	// With the netfilter layer, as kipvs runs: its rules are what enable
	// connection tracking in the netns. DrainTimeout is an hour.
	p := c.startNF(c.nfConfig(), proxier.WithConntrack(proxier.NewNetlinkConntrack()))
	c.waitTable(t, table(entry(key("SCTP", vip), c.backends(echoPort, 1, "a", "b"))))

	conn, err := netpod.Dial(t.Context(), client, netpod.SCTP, vip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reply, err := conn.Send("hello")
	if err != nil {
		t.Fatal(err)
	}
	r, err := netpod.ParseReply(reply)
	if err != nil {
		t.Fatal(err)
	}
	gone, keep := r.Pod, "a"
	if gone == "a" {
		keep = "b"
	}
	if rs, ok := c.realServer(t, key("SCTP", vip), gone); !ok || rs.ActiveConns+rs.InactiveConns == 0 {
		t.Fatalf("the association to %s is not counted on its real server: %s (present %v)", gone, rsString(rs), ok)
	}
	if got := conntrackTo(t, "sctp", vip, c.pods[gone].IP); len(got) == 0 {
		logNetfilterState(t)
		t.Fatalf("no SCTP conntrack entry to %s through %s before the removal", gone, vip)
	}

	t.Logf("association answered by %s; removing %s", gone, gone)
	since := time.Now()
	c.setSlice(slice(keep))
	p.QueueSync()
	p.waitSynced(t, since, false)
	// At once: right after the sync that removed it, not after a drain.
	if rs, ok := c.realServer(t, key("SCTP", vip), gone); ok {
		t.Errorf("the SCTP real server of %s is still there after the sync: %s", gone, rsString(rs))
	}
	c.waitTable(t, table(entry(key("SCTP", vip), c.backends(echoPort, 1, keep))))
	if got := conntrackTo(t, "sctp", vip, c.pods[gone].IP); len(got) > 0 {
		t.Errorf("SCTP conntrack entries to the removed %s remain:\n%s", gone, strings.Join(got, "\n"))
	}
	if got := p.LastSync(); got.Err != nil {
		t.Errorf("sync error: %v", got.Err)
	}
	// A new association goes to the endpoint left.
	waitAnswering(t, client, netpod.SCTP, vip, keep)
}
