//go:build kerneltest

package kernel

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// startNFFamilies is startNF with the IPv6 iptables kept when ipv6 is set.
func (c *cluster) startNFFamilies(cfg proxier.Config, ipv6 bool) *runningProxier {
	t := c.t
	t.Helper()
	k := netfilterKernel(t)
	if !ipv6 {
		k.IPv6 = nil
	} else if k.IPv6 == nil {
		t.Fatal("ip6tables is not usable in the VM")
	}
	ctx, cancel := context.WithCancel(testContext(t))
	applyKernelSettings(t, cfg)
	p := &runningProxier{Proxier: proxier.New(cfg, c.state, c.ipvs, proxier.NewNetlinkAddresses(), clock.RealClock{}),
		cancel: cancel, done: make(chan struct{})}
	p.UseNetfilter(k)
	if err := p.Setup(ctx); err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	p.waitFirstSync(t)
	return p
}

// waitFirstSync waits for the first sync to finish without error (netfilter
// setup takes seconds under TCG).
func (p *runningProxier) waitFirstSync(t *testing.T) {
	t.Helper()
	start := time.Now()
	waitFor(t, time.Minute, "the first sync", func() error {
		res := p.LastSync()
		switch {
		case res.Time.IsZero():
			return errors.New("no sync yet")
		case res.Err != nil:
			return res.Err
		}
		return nil
	})
	t.Logf("first sync done after %s", time.Since(start).Round(time.Millisecond))
}

// hasVirtualServer reports whether the kernel has the virtual server k.
func (c *cluster) hasVirtualServer(t *testing.T, k ipvs.VirtualServerKey) bool {
	t.Helper()
	vss, err := c.ipvs.Dump(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range vss {
		if vs.VirtualServerKey == k {
			return true
		}
	}
	return false
}

// TestNodePortRestart: kipvs stops, a NodePort Service is deleted, kipvs
// starts again: its first full sync removes the Service's virtual server on the
// node IP (recognised from kipvs's KIPVS-NODE-PORT-TCP ipset, which still holds
// the port) and the NodePort stops answering, while a foreign virtual server on
// the same node IP (a port kipvs never had) and one on the NodePort's number
// with UDP stay. A live NodePort Service keeps its virtual server.
func TestNodePortRestart(t *testing.T) {
	c := newCluster(t, "a")
	node := c.net.Gateway
	c.setService(makeService("gone", c.vip(40).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30400)}, nodePortType))
	c.setSlice(httpSlice("gone-1", "gone", c.endpointsOf("a")...))
	c.setService(makeService("kept", c.vip(41).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30401)}, nodePortType))
	c.setSlice(httpSlice("kept-1", "kept", c.endpointsOf("a")...))
	first := c.startNFFamilies(c.nfConfig(), false)
	gone := netip.AddrPortFrom(node, 30400)
	kept := netip.AddrPortFrom(node, 30401)
	waitAnswering(t, nil, tcp, gone, "a")
	waitAnswering(t, nil, tcp, kept, "a")
	foreign := []ipvs.VirtualServerKey{
		{Address: node, Protocol: ipvs.TCP, Port: 31999},
		{Address: node, Protocol: ipvs.UDP, Port: 30400},
	}
	ipvsadm(t, "-A", "-t", netip.AddrPortFrom(node, 31999).String(), "-s", "wrr")
	ipvsadm(t, "-A", "-u", gone.String(), "-s", "wrr")

	t.Log("kipvs stops; Service gone is deleted; kipvs starts with a fresh State")
	first.stop(t)
	c.deleteService("gone")
	c.deleteSlice("gone-1")
	c.state = endpoints.NewState(nodeName)
	c.feed(c.state)
	second := c.startNFFamilies(c.nfConfig(), false)
	if !second.LastSync().Full {
		t.Errorf("the first sync after the restart was not full")
	}
	goneKey := ipvs.VirtualServerKey{Address: node, Protocol: ipvs.TCP, Port: 30400}
	waitFor(t, converge, "the deleted NodePort's virtual server to go", func() error {
		if c.hasVirtualServer(t, goneKey) {
			return errors.New("still there:\n" + ipvsadm(t, "-Ln"))
		}
		return nil
	})
	for _, k := range foreign {
		if !c.hasVirtualServer(t, k) {
			t.Errorf("foreign virtual server %s was removed", k)
		}
	}
	waitAnswering(t, nil, tcp, kept, "a")
	if reply, err := netpod.Ask(t.Context(), nil, tcp, gone); err == nil {
		t.Errorf("the deleted NodePort %s still answers: %q", gone, reply)
	} else {
		t.Logf("the deleted NodePort %s: %v", gone, err)
	}
	out, err := exec.Command("ipset", "list", "KIPVS-NODE-PORT-TCP").CombinedOutput()
	if err != nil {
		t.Fatalf("ipset list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "30400") || !strings.Contains(string(out), "30401") {
		t.Errorf("KIPVS-NODE-PORT-TCP after the restart, want 30401 only:\n%s", out)
	}
}

// TestNodePortPrimary: with nodePortAddresses ["primary"] the NodePort is
// served only on the Node's primary IP (its InternalIP in status.addresses),
// not on the node's other address; when the Node's InternalIP changes to the
// other address, the NodePort moves there.
func TestNodePortPrimary(t *testing.T) {
	c := newCluster(t, "a")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	withIP := func(ip netip.Addr) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: nodeName}, {Type: v1.NodeInternalIP, Address: ip.String()},
		}}}
	}
	n1 := withIP(c.net.Gateway)
	c.state.OnNodeUpdate(nil, n1)
	c.setService(makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30500)}, nodePortType))
	c.setSlice(httpSlice("web-1", "web", c.endpointsOf("a")...))
	cfg := defaultConfig()
	cfg.NodePortPrimaryOnly = true
	p := c.start(cfg, nil, nil, nil)
	primary, other := netip.AddrPortFrom(c.net.Gateway, 30500), netip.AddrPortFrom(outside.Gateway, 30500)
	check := func(serving, notServing netip.AddrPort) {
		t.Helper()
		c.waitTable(t, table(entry(key("TCP", c.web), c.backends(echoPort, 1, "a")),
			entry(key("TCP", serving), c.backends(echoPort, 1, "a"))))
		waitAnswering(t, nil, tcp, serving, "a")
		if reply, err := netpod.Ask(t.Context(), nil, tcp, notServing); err == nil {
			t.Errorf("NodePort on the non-primary address %s answered %q", notServing, reply)
		}
	}
	check(primary, other)
	t.Log("the Node's InternalIP changes to", outside.Gateway)
	c.state.OnNodeUpdate(n1, withIP(outside.Gateway))
	p.QueueSync()
	check(other, primary)
}
