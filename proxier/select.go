package proxier

import "github.com/kipvs/kipvs/endpoints"

// selectEndpoints picks the endpoints of a Service port's virtual servers with
// endpoints.Select (ready endpoints, serving-terminating fallback, topology).
//
// A Local traffic policy uses only this node's endpoints, like kube-proxy's
// iptables and nftables modes: with none, the virtual servers of that policy get
// no real server (and noLocal* is set) instead of falling back to the Cluster set
// as kube-proxy's IPVS mode does (k/k PR #97081). IPVS answers a packet for a
// virtual server without real servers with an ICMP port unreachable, TCP and UDP
// alike (net/netfilter/ipvs/ip_vs_core.c ip_vs_leave); the netfilter layer may
// drop such traffic before IPVS sees it (DesiredVirtualServer.NoLocalEndpoints).
//
// In-cluster clients of an externalTrafficPolicy Local VIP must still reach the
// Cluster set (kube-proxy short-circuits them, #115931, #93456): IPVS cannot tell
// their packets apart, so that is the netfilter layer's job (it redirects
// in-cluster sources to the cluster IP, which keeps the Cluster policy).
//
// noLocal* follow kube-proxy's sync_proxy_rules_no_local_endpoints_total: only a
// port with usable endpoints somewhere in the cluster counts; with none at all
// the traffic is rejected, not dropped, and not counted.
func selectEndpoints(sp *endpoints.ServicePort, eps []*endpoints.Endpoint, node *NodeInfo) selected {
	sel := endpoints.Select(eps, sp, node.Node)
	s := selected{internal: sel.Cluster, external: sel.Cluster}
	if sp.InternalPolicyLocal {
		s.internal = sel.Local
		s.noLocalInternal = sel.HasAny && len(sel.Local) == 0
	}
	if sp.ExternalPolicyLocal && sp.ExternallyAccessible() {
		s.external = sel.Local
		s.noLocalExternal = sel.HasAny && len(sel.Local) == 0
	}
	return s
}
