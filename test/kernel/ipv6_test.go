//go:build kerneltest

package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/test/netpod"
)

// TestIPv6Netfilter: an IPv6 ClusterIP and NodePort Service with the
// netfilter layer on ip6tables and the KIPVS6- sets: a pod inside the IPv6
// cluster CIDR reaches the ClusterIP with its own address; a client outside it
// is masqueraded to the node's address on the pods' bridge, for the ClusterIP
// and for the NodePort (externalTrafficPolicy Cluster) on the node's IPv6
// address of the client's network.
func TestIPv6Netfilter(t *testing.T) {
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		t.Fatalf("the VM kernel has no IPv6: %v", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	c.net = netpod.NewNet(t, netpod.NetOptions{DualStack: true})
	for _, name := range []string{"a", "client"} {
		pod := c.net.AddPod(t, name)
		pod.ServeEcho(t, echoPort)
		c.pods[name] = pod
	}
	outside := netpod.NewNet(t, netpod.NetOptions{DualStack: true})
	ext := outside.AddPod(t, "ext")
	vip := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", 0x600+int(c.n))), 80)
	c.setService(makeService("web6", vip.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30600)},
		nodePortType, func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} }))
	ep := endpoint(c.pods["a"], true)
	ep.Addresses = []string{c.pods["a"].IPv6.String()}
	s := makeSlice("web6-1", "web6", []discoveryv1.EndpointPort{slicePort("http", v1.ProtocolTCP, echoPort)}, ep)
	s.AddressType = discoveryv1.AddressTypeIPv6
	c.setSlice(s)
	cfg := c.nfConfig()
	cfg.ClusterCIDRs = []netip.Prefix{c.net.PodCIDR, c.net.PodCIDRv6}
	c.startNFFamilies(cfg, true)
	defer func() {
		if t.Failed() {
			for _, cmd := range [][]string{{"ip6tables-save", "-c"}, {"ipset", "list"}, {"ipvsadm", "-Lnc"}} {
				out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
				t.Logf("%s (%v):\n%s", strings.Join(cmd, " "), err, out)
			}
		}
	}()

	client := c.pods["client"]
	if pod, src := seenAs(t, client, vip); pod != "a" || src != client.IPv6 {
		t.Errorf("ClusterIP from a pod in the cluster CIDR: answered by %s, seen from %s; want a seeing the pod's %s", pod, src, client.IPv6)
	}
	if pod, src := seenAs(t, ext, vip); pod != "a" || src != c.net.Gateway6 {
		t.Errorf("ClusterIP from %s outside the cluster CIDR: answered by %s, seen from %s; want a seeing the node's %s", ext.IPv6, pod, src, c.net.Gateway6)
	}
	nodePort := netip.AddrPortFrom(outside.Gateway6, 30600)
	if pod, src := seenAs(t, ext, nodePort); pod != "a" || src != c.net.Gateway6 {
		t.Errorf("NodePort %s from %s: answered by %s, seen from %s; want a seeing the node's %s", nodePort, ext.IPv6, pod, src, c.net.Gateway6)
	}

	save, err := exec.Command("ip6tables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("ip6tables-save: %v\n%s", err, save)
	}
	for _, want := range []string{":KIPVS-POSTROUTING", "KIPVS6-CLUSTER-IP", "KIPVS6-NODE-PORT-TCP"} {
		if !strings.Contains(string(save), want) {
			t.Errorf("ip6tables-save has no %s", want)
		}
	}
	set, err := exec.Command("ipset", "list", "KIPVS6-CLUSTER-IP").CombinedOutput()
	if err != nil {
		t.Fatalf("ipset list KIPVS6-CLUSTER-IP: %v\n%s", err, set)
	}
	if !strings.Contains(string(set), "family inet6") || !strings.Contains(string(set), vip.Addr().String()+",tcp:80") {
		t.Errorf("KIPVS6-CLUSTER-IP does not hold %s,tcp:80:\n%s", vip.Addr(), set)
	}
}
