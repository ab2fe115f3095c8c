//go:build kerneltest

package kernel

import (
	"context"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/test/netpod"
)

// TestNoLocalFromNode: the node's own connection to a ClusterIP with
// internalTrafficPolicy Local whose only endpoint is on another node is
// dropped (as kube-proxy's iptables mode does), not refused by IPVS's ICMP
// port unreachable: IPVS's LOCAL_OUT hook runs before filter OUTPUT, so the
// drop sits in mangle OUTPUT. Once an endpoint is local, the node reaches it.
func TestNoLocalFromNode(t *testing.T) {
	c := newCluster(t, "a")
	vip := netip.AddrPortFrom(c.vip(32), 80)
	c.setService(makeService("ilocal", vip.Addr().String(), []v1.ServicePort{
		svcPort("tcp", v1.ProtocolTCP, 80, 0), svcPort("udp", v1.ProtocolUDP, 80, 0)}, internalLocalPolicy))
	slice := func(eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return makeSlice("ilocal-1", "ilocal", []discoveryv1.EndpointPort{
			slicePort("tcp", v1.ProtocolTCP, echoPort), slicePort("udp", v1.ProtocolUDP, echoPort)}, eps...)
	}
	c.setSlice(slice(remoteEndpoint(c.pods["a"])))
	p := c.startNF(c.nfConfig())

	for _, proto := range []string{tcp, udp} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		reply, err := netpod.Ask(ctx, nil, proto, vip)
		cancel()
		switch {
		case err == nil:
			t.Errorf("%s from the node: answered %q with no local endpoint", proto, reply)
		case refused(err):
			t.Errorf("%s from the node: refused (%v); want the packet dropped", proto, err)
		default:
			t.Logf("%s from the node: %v (dropped)", proto, err)
		}
	}
	if t.Failed() {
		logNetfilterState(t)
	}

	t.Log("the endpoint becomes local: the node reaches it")
	c.setSlice(slice(c.endpointsOf("a")...))
	p.QueueSync()
	if pod, _ := seenAs(t, nil, vip); pod != "a" {
		t.Errorf("answered by %s, want a", pod)
	}
}
