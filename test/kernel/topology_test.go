//go:build kerneltest

package kernel

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kipvs/kipvs/test/netpod"
)

// hinted is the slice entry of pod p with zone and node hints (none when empty).
func hinted(p *netpod.Pod, zones, nodes []string) discoveryv1.Endpoint {
	ep := endpoint(p, true)
	if len(zones)+len(nodes) == 0 {
		return ep
	}
	ep.Hints = &discoveryv1.EndpointHints{}
	for _, z := range zones {
		ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
	}
	for _, n := range nodes {
		ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
	}
	return ep
}

// zones and nodes shorten hint lists.
func zones(z ...string) []string { return z }
func nodes(n ...string) []string { return n }

// setNodeZone records this node's Node object with a zone label.
func (c *cluster) setNodeZone(prev *v1.Node, zone string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{v1.LabelTopologyZone: zone}}}
	c.state.OnNodeUpdate(prev, n)
	return n
}

// TestTopology: with EndpointSlice hints only the endpoints hinted for this
// node (forNodes, PreferSameNode) or its zone (forZones, PreferClose and
// PreferSameZone, against the Node's topology.kubernetes.io/zone label)
// answer; when a ready endpoint lacks the hint kind, or none is hinted for
// this node or zone, every endpoint answers (kube-proxy's fallbacks); a change
// of the node's zone label moves the traffic.
func TestTopology(t *testing.T) {
	c := newCluster(t, "a", "b", "c", "client")
	node := c.setNodeZone(nil, "zone-a")
	tcpPort := []discoveryv1.EndpointPort{slicePort("tcp", v1.ProtocolTCP, echoPort)}
	dist := func(d string) svcOption {
		return func(s *v1.Service) { s.Spec.TrafficDistribution = &d }
	}
	svc := func(d string) *v1.Service {
		return makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("tcp", v1.ProtocolTCP, 80, 0)}, dist(d))
	}
	a, b, cc := c.pods["a"], c.pods["b"], c.pods["c"]
	c.setService(svc(v1.ServiceTrafficDistributionPreferClose))
	c.setSlice(makeSlice("web-1", "web", tcpPort,
		hinted(a, zones("zone-a"), nil), hinted(b, zones("zone-b"), nil), hinted(cc, zones("zone-a"), nil)))
	p := c.start(defaultConfig(), nil, nil, nil)
	// sameZone hints b and c for zone-a, a for zone-b.
	sameZone := func() *discoveryv1.EndpointSlice {
		return makeSlice("web-1", "web", tcpPort,
			hinted(a, zones("zone-b"), nil), hinted(b, zones("zone-a"), nil), hinted(cc, zones("zone-a"), nil))
	}

	steps := []struct {
		name string
		do   func()
		want []string
	}{
		{"PreferClose: zone hints for zone-a", func() {}, []string{"a", "c"}},
		{"no endpoint hinted for this zone: fall back to all", func() {
			c.setSlice(makeSlice("web-1", "web", tcpPort,
				hinted(a, zones("zone-b"), nil), hinted(b, zones("zone-b"), nil), hinted(cc, zones("zone-c"), nil)))
		}, []string{"a", "b", "c"}},
		{"PreferSameZone: zone hints for zone-a", func() {
			c.setService(svc(v1.ServiceTrafficDistributionPreferSameZone))
			c.setSlice(sameZone())
		}, []string{"b", "c"}},
		{"zone hints incomplete: fall back to all", func() {
			c.setSlice(makeSlice("web-1", "web", tcpPort,
				hinted(a, zones("zone-b"), nil), hinted(b, nil, nil), hinted(cc, zones("zone-a"), nil)))
		}, []string{"a", "b", "c"}},
		{"complete zone hints again", func() { c.setSlice(sameZone()) }, []string{"b", "c"}},
		{"node zone label moves to zone-b", func() { node = c.setNodeZone(node, "zone-b") }, []string{"a"}},
		{"PreferSameNode: node hints for this node", func() {
			node = c.setNodeZone(node, "zone-a")
			c.setService(svc(v1.ServiceTrafficDistributionPreferSameNode))
			c.setSlice(makeSlice("web-1", "web", tcpPort,
				hinted(a, zones("zone-a"), nodes("node-2")), hinted(b, zones("zone-a"), nodes(nodeName)),
				hinted(cc, zones("zone-b"), nodes("node-3"))))
		}, []string{"b"}},
		{"node hints incomplete: fall back to zone hints", func() {
			c.setSlice(makeSlice("web-1", "web", tcpPort,
				hinted(a, zones("zone-a"), nodes("node-2")), hinted(b, zones("zone-a"), nil),
				hinted(cc, zones("zone-b"), nodes(nodeName))))
		}, []string{"a", "b"}},
		{"no hints: all", func() {
			c.setSlice(makeSlice("web-1", "web", tcpPort, hinted(a, nil, nil), hinted(b, nil, nil), hinted(cc, nil, nil)))
		}, []string{"a", "b", "c"}},
	}
	for _, s := range steps {
		t.Log(s.name)
		s.do()
		p.QueueSync()
		for _, from := range []*netpod.Pod{nil, c.pods["client"]} {
			waitOnlyAnswering(t, from, c.web, s.want...)
		}
	}
}

// waitOnlyAnswering waits until 2*spread TCP requests in a row are all
// answered and by exactly the pods in want. Unlike waitAnswering, a request
// that fails after the set converged (a SYN slower than the client's 2 s
// under a loaded emulator) is retried rather than fatal: the proof is one
// clean run of 2*spread answers.
func waitOnlyAnswering(t *testing.T, from *netpod.Pod, to netip.AddrPort, want ...string) {
	t.Helper()
	slices.Sort(want)
	waitFor(t, converge, fmt.Sprintf("%s from %s to be answered by exactly %v", to, podLabel(from), want), func() error {
		got, counts, err := answering(t.Context(), from, tcp, to, 2*spread)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("answered by %v, want %v", counts, want)
		}
		return nil
	})
}
