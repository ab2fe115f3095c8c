//go:build kerneltest

package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

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
