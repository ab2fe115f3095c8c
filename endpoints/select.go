package endpoints

import (
	"cmp"
	"slices"

	v1 "k8s.io/api/core/v1"
)

// ExternallyAccessible reports whether the port takes traffic other than to its
// cluster IPs (NodePort, external IPs or load-balancer IPs).
func (p *ServicePort) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0
}

// UsesClusterEndpoints reports whether any traffic to the port follows the
// Cluster policy: internal traffic with internalTrafficPolicy Cluster, or any
// external traffic (even with externalTrafficPolicy Local, traffic from inside
// the cluster to an external VIP is short-circuited to cluster endpoints).
func (p *ServicePort) UsesClusterEndpoints() bool {
	return !p.InternalPolicyLocal || p.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether any traffic to the port follows the Local
// policy (internalTrafficPolicy Local, or externalTrafficPolicy Local on an
// externally accessible port).
func (p *ServicePort) UsesLocalEndpoints() bool {
	return p.InternalPolicyLocal || (p.ExternalPolicyLocal && p.ExternallyAccessible())
}

// Selection is the endpoints one Service port uses on this node.
type Selection struct {
	// Cluster is the endpoints for Cluster-policy traffic after topology
	// filtering; nil when the port never uses the Cluster policy.
	Cluster []*Endpoint
	// Local is the endpoints on this node for Local-policy traffic; nil when the
	// port never uses the Local policy (and empty when it has no local endpoint).
	Local []*Endpoint
	// AllReachable is the union of Cluster and Local, sorted by address and port:
	// every endpoint this node may send the port's traffic to.
	AllReachable []*Endpoint
	// HasAny is true when the port has a usable (ready, or serving and
	// terminating) endpoint anywhere in the cluster, even if none is reachable
	// from here.
	HasAny bool
	// Topology is the topology mode applied to Cluster: "",
	// v1.ServiceTrafficDistributionPreferSameZone or
	// v1.ServiceTrafficDistributionPreferSameNode.
	Topology string
}

// Select picks the endpoints a Service port uses on node, like kube-proxy's
// CategorizeEndpoints (pkg/proxy/topology.go):
//
//   - Usable endpoints are the ready ones; when there is none, the serving and
//     terminating ones (decided separately for Cluster and for Local).
//   - Topology follows the hints the EndpointSlice controller wrote for the
//     Service's trafficDistribution (or the topology-mode annotation): when every
//     ready endpoint has a node hint and one is hinted for this node, Cluster
//     uses the endpoints hinted for this node (PreferSameNode); otherwise, when
//     every ready endpoint has a zone hint and one is hinted for this node's zone,
//     those hinted for the zone (PreferSameZone, formerly PreferClose); otherwise
//     all of them. The hints, not spec.trafficDistribution, decide: the
//     controller only writes them when the Service asks for it and it is safe.
//   - Local is the usable endpoints whose NodeName is this node.
func Select(eps []*Endpoint, port *ServicePort, node Node) Selection {
	var sel Selection
	if len(eps) == 0 {
		return sel
	}
	useCluster, useLocal := port.UsesClusterEndpoints(), port.UsesLocalEndpoints()
	if useCluster {
		sel.Topology = topologyMode(eps, node)
		sel.Cluster = filter(eps, func(e *Endpoint) bool { return e.Ready && availableForTopology(e, sel.Topology, node) })
		if len(sel.Cluster) == 0 {
			// Topology is only applied when a ready endpoint matches it, so
			// nothing is ready anywhere: fall back to terminating endpoints.
			sel.Cluster = filter(eps, servingTerminating)
		}
		sel.HasAny = len(sel.Cluster) > 0
	}
	if !useLocal {
		sel.AllReachable = sel.Cluster
		return sel
	}

	local := func(e *Endpoint) bool { return node.Name != "" && e.NodeName == node.Name }
	sel.Local = filter(eps, func(e *Endpoint) bool { return local(e) && e.Ready })
	localFallback := false
	if len(sel.Local) == 0 {
		sel.Local = filter(eps, func(e *Endpoint) bool { return local(e) && servingTerminating(e) })
		localFallback = len(sel.Local) > 0
	}
	if !sel.HasAny {
		sel.HasAny = slices.ContainsFunc(eps, func(e *Endpoint) bool { return e.Ready || servingTerminating(e) })
	}
	switch {
	case !useCluster:
		sel.AllReachable = sel.Local
	case sel.Topology == "" && !localFallback:
		// Cluster holds every ready endpoint, a superset of the ready Local ones.
		sel.AllReachable = sel.Cluster
	default:
		sel.AllReachable = union(sel.Cluster, sel.Local)
	}
	return sel
}

// servingTerminating is the fallback condition: still serving while terminating.
func servingTerminating(e *Endpoint) bool { return e.Serving && e.Terminating }

// topologyMode decides which hints apply to this node (see Select).
func topologyMode(eps []*Endpoint, node Node) string {
	anyReady := false
	allNode, forNode := true, false
	allZone, forZone := true, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		anyReady = true
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if slices.Contains(e.NodeHints, node.Name) {
			forNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if slices.Contains(e.ZoneHints, node.Zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return ""
	case allNode && forNode && node.Name != "":
		return v1.ServiceTrafficDistributionPreferSameNode
	case allZone && forZone && node.Zone != "":
		return v1.ServiceTrafficDistributionPreferSameZone
	}
	return ""
}

// availableForTopology reports whether e is used under the given mode.
func availableForTopology(e *Endpoint, mode string, node Node) bool {
	switch mode {
	case v1.ServiceTrafficDistributionPreferSameNode:
		return slices.Contains(e.NodeHints, node.Name)
	case v1.ServiceTrafficDistributionPreferSameZone:
		return slices.Contains(e.ZoneHints, node.Zone)
	}
	return true
}

// filter returns the endpoints that keep, in order; never nil.
func filter(eps []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	out := make([]*Endpoint, 0, len(eps))
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// union merges two endpoint lists, dropping duplicate address/port pairs and
// sorting by address and port.
func union(a, b []*Endpoint) []*Endpoint {
	out := make([]*Endpoint, 0, len(a)+len(b))
	out = append(append(out, a...), b...)
	slices.SortStableFunc(out, compareEndpoints)
	return slices.CompactFunc(out, func(x, y *Endpoint) bool { return x.Address == y.Address && x.Port == y.Port })
}

// compareEndpoints orders endpoints by address, then port.
func compareEndpoints(a, b *Endpoint) int {
	return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Port, b.Port))
}
