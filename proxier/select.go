package proxier

import "github.com/kipvs/kipvs/endpoints"

// selectEndpoints picks the endpoints of a Service port's virtual servers with
// endpoints.Select (ready endpoints, serving-terminating fallback, topology).
//
// Like kube-proxy's IPVS mode (syncEndpoint, k/k PR #97081), a Local traffic
// policy uses the local endpoints when there are any and falls back to the
// Cluster set otherwise: IPVS cannot tell a pod's connection from an external
// one, and pods on a node without local endpoints must still reach the Service.
// With internalTrafficPolicy Local on a port that is not externally accessible,
// Select computes no Cluster set, so no local endpoint means no real server.
func selectEndpoints(sp *endpoints.ServicePort, eps []*endpoints.Endpoint, node *NodeInfo) selected {
	sel := endpoints.Select(eps, sp, node.Node)
	pick := func(local bool) []*endpoints.Endpoint {
		if local && len(sel.Local) > 0 {
			return sel.Local
		}
		return sel.Cluster
	}
	return selected{internal: pick(sp.InternalPolicyLocal), external: pick(sp.ExternalPolicyLocal)}
}
