package endpoints

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
)

// Endpoint mutators for Select tests.
func notReady(e *Endpoint)        { e.Ready = false; e.Serving = false }
func terminating(e *Endpoint)     { e.Ready = false; e.Serving = true; e.Terminating = true }
func deadTerminating(e *Endpoint) { e.Ready = false; e.Serving = false; e.Terminating = true }
func node(n string) func(*Endpoint) {
	return func(e *Endpoint) { e.NodeName = n }
}
func zoneHints(z ...string) func(*Endpoint) { return func(e *Endpoint) { e.ZoneHints = z } }
func nodeHints(n ...string) func(*Endpoint) { return func(e *Endpoint) { e.NodeHints = n } }

// addrsOf renders endpoints as "ip" strings, nil for a nil list.
func addrsOf(eps []*Endpoint) []string {
	if eps == nil {
		return nil
	}
	out := []string{}
	for _, e := range eps {
		out = append(out, e.Address.String())
	}
	return out
}

func TestSelect(t *testing.T) {
	clusterPort := &ServicePort{Port: 80}
	itpLocal := &ServicePort{Port: 80, InternalPolicyLocal: true}
	etpLocal := &ServicePort{Port: 80, NodePort: 30080, ExternalPolicyLocal: true}
	etpLocalNoExternal := &ServicePort{Port: 80, ExternalPolicyLocal: true}
	me := Node{Name: "n1", Zone: "z1"}
	e := func(ip string, m ...func(*Endpoint)) *Endpoint { return makeEndpoint(ip, 8080, m...) }

	tests := []struct {
		name         string
		port         *ServicePort
		node         Node
		eps          []*Endpoint
		wantCluster  []string
		wantLocal    []string
		wantAll      []string
		wantHasAny   bool
		wantTopology string
	}{
		{name: "no endpoints", port: clusterPort, node: me},
		{
			name: "ready only",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1"), e("10.0.0.2", notReady), e("10.0.0.3", terminating)},
			wantCluster: []string{"10.0.0.1"}, wantAll: []string{"10.0.0.1"}, wantHasAny: true,
		},
		{
			name: "no ready: serving terminating fallback",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1", notReady), e("10.0.0.2", terminating), e("10.0.0.3", deadTerminating)},
			wantCluster: []string{"10.0.0.2"}, wantAll: []string{"10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "nothing usable",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1", notReady), e("10.0.0.3", deadTerminating)},
			wantCluster: []string{}, wantAll: []string{},
		},
		{
			name: "zone hints for my zone (PreferClose/PreferSameZone)",
			port: clusterPort, node: me,
			eps: []*Endpoint{e("10.0.0.1", zoneHints("z1")), e("10.0.0.2", zoneHints("z2")),
				e("10.0.0.3", zoneHints("z1", "z2")), e("10.0.0.4", notReady)},
			wantCluster: []string{"10.0.0.1", "10.0.0.3"}, wantAll: []string{"10.0.0.1", "10.0.0.3"},
			wantHasAny: true, wantTopology: v1.ServiceTrafficDistributionPreferSameZone,
		},
		{
			name: "one ready endpoint without a zone hint: no topology",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1", zoneHints("z1")), e("10.0.0.2")},
			wantCluster: []string{"10.0.0.1", "10.0.0.2"}, wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "no hint for my zone: no topology",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1", zoneHints("z2")), e("10.0.0.2", zoneHints("z3"))},
			wantCluster: []string{"10.0.0.1", "10.0.0.2"}, wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "node without zone label: no topology",
			port: clusterPort, node: Node{Name: "n1"},
			eps:         []*Endpoint{e("10.0.0.1", zoneHints("z1")), e("10.0.0.2", zoneHints("z2"))},
			wantCluster: []string{"10.0.0.1", "10.0.0.2"}, wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "node hints for my node (PreferSameNode)",
			port: clusterPort, node: me,
			eps: []*Endpoint{e("10.0.0.1", nodeHints("n1"), zoneHints("z1")), e("10.0.0.2", nodeHints("n2"), zoneHints("z1")),
				e("10.0.0.3", nodeHints("n3"), zoneHints("z2"))},
			wantCluster: []string{"10.0.0.1"}, wantAll: []string{"10.0.0.1"},
			wantHasAny: true, wantTopology: v1.ServiceTrafficDistributionPreferSameNode,
		},
		{
			name: "node hints but none for my node: falls back to zone hints",
			port: clusterPort, node: me,
			eps: []*Endpoint{e("10.0.0.2", nodeHints("n2"), zoneHints("z1")),
				e("10.0.0.3", nodeHints("n3"), zoneHints("z2"))},
			wantCluster: []string{"10.0.0.2"}, wantAll: []string{"10.0.0.2"},
			wantHasAny: true, wantTopology: v1.ServiceTrafficDistributionPreferSameZone,
		},
		{
			name: "hinted endpoints not ready: terminating fallback ignores topology",
			port: clusterPort, node: me,
			eps:         []*Endpoint{e("10.0.0.1", terminating, zoneHints("z2")), e("10.0.0.2", terminating, zoneHints("z1"))},
			wantCluster: []string{"10.0.0.1", "10.0.0.2"}, wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "internalTrafficPolicy Local: only local endpoints",
			port: itpLocal, node: me,
			eps:       []*Endpoint{e("10.0.0.1", node("n1")), e("10.0.0.2", node("n2")), e("10.0.0.3", node("n1"), notReady)},
			wantLocal: []string{"10.0.0.1"}, wantAll: []string{"10.0.0.1"}, wantHasAny: true,
		},
		{
			name: "internalTrafficPolicy Local without local endpoints: HasAny but nothing reachable",
			port: itpLocal, node: me,
			eps:       []*Endpoint{e("10.0.0.2", node("n2"))},
			wantLocal: []string{}, wantAll: []string{}, wantHasAny: true,
		},
		{
			name: "internalTrafficPolicy Local: local terminating fallback even with remote ready ones",
			port: itpLocal, node: me,
			eps: []*Endpoint{e("10.0.0.1", node("n1"), terminating), e("10.0.0.2", node("n2")),
				e("10.0.0.3", node("n1"), deadTerminating)},
			wantLocal: []string{"10.0.0.1"}, wantAll: []string{"10.0.0.1"}, wantHasAny: true,
		},
		{
			name: "externalTrafficPolicy Local: cluster for internal, local for external",
			port: etpLocal, node: me,
			eps:         []*Endpoint{e("10.0.0.2", node("n2")), e("10.0.0.1", node("n1"))},
			wantCluster: []string{"10.0.0.2", "10.0.0.1"}, wantLocal: []string{"10.0.0.1"},
			wantAll: []string{"10.0.0.2", "10.0.0.1"}, wantHasAny: true,
		},
		{
			name: "externalTrafficPolicy Local with only a terminating local endpoint: union",
			port: etpLocal, node: me,
			eps:         []*Endpoint{e("10.0.0.1", node("n1"), terminating), e("10.0.0.2", node("n2"))},
			wantCluster: []string{"10.0.0.2"}, wantLocal: []string{"10.0.0.1"},
			wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
		{
			name: "externalTrafficPolicy Local with topology: union keeps local endpoints outside the zone",
			port: etpLocal, node: me,
			eps: []*Endpoint{e("10.0.0.1", node("n1"), zoneHints("z2")), e("10.0.0.2", node("n2"), zoneHints("z1")),
				e("10.0.0.3", node("n3"), zoneHints("z2"))},
			wantCluster: []string{"10.0.0.2"}, wantLocal: []string{"10.0.0.1"},
			wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
			wantTopology: v1.ServiceTrafficDistributionPreferSameZone,
		},
		{
			name: "externalTrafficPolicy Local without external access: Cluster only",
			port: etpLocalNoExternal, node: me,
			eps:         []*Endpoint{e("10.0.0.1", node("n1")), e("10.0.0.2", node("n2"))},
			wantCluster: []string{"10.0.0.1", "10.0.0.2"}, wantAll: []string{"10.0.0.1", "10.0.0.2"}, wantHasAny: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Select(tt.eps, tt.port, tt.node)
			if diff := cmp.Diff(tt.wantCluster, addrsOf(got.Cluster)); diff != "" {
				t.Errorf("Cluster (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLocal, addrsOf(got.Local)); diff != "" {
				t.Errorf("Local (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAll, addrsOf(got.AllReachable)); diff != "" {
				t.Errorf("AllReachable (-want +got):\n%s", diff)
			}
			if got.HasAny != tt.wantHasAny {
				t.Errorf("HasAny = %v, want %v", got.HasAny, tt.wantHasAny)
			}
			if got.Topology != tt.wantTopology {
				t.Errorf("Topology = %q, want %q", got.Topology, tt.wantTopology)
			}
		})
	}
}

func TestServicePortPolicies(t *testing.T) {
	tests := []struct {
		name                   string
		port                   ServicePort
		wantCluster, wantLocal bool
	}{
		{"cluster", ServicePort{}, true, false},
		{"itp local", ServicePort{InternalPolicyLocal: true}, false, true},
		{"itp local with external IP", ServicePort{InternalPolicyLocal: true, ExternalIPs: []netip.Addr{addr("192.0.2.1")}}, true, true},
		{"etp local with node port", ServicePort{ExternalPolicyLocal: true, NodePort: 30000}, true, true},
		{"etp local with LB IP", ServicePort{ExternalPolicyLocal: true, LoadBalancerIPs: []netip.Addr{addr("192.0.2.1")}}, true, true},
	}
	for _, tt := range tests {
		if got := tt.port.UsesClusterEndpoints(); got != tt.wantCluster {
			t.Errorf("%s: UsesClusterEndpoints = %v", tt.name, got)
		}
		if got := tt.port.UsesLocalEndpoints(); got != tt.wantLocal {
			t.Errorf("%s: UsesLocalEndpoints = %v", tt.name, got)
		}
	}
}
