// Package endpoints keeps what the API server told kipvs: Services, their
// EndpointSlices and this node's Node, through client-go informers and change
// trackers that report which Services changed. Which endpoints a Service port uses
// is a pure function of this state (see Select).
package endpoints

import (
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// ServicePortName identifies one port of one Service: namespace/name, the port's
// name (matched by name between the Service and its EndpointSlices) and protocol.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String renders "ns/name:port" (or "ns/name" for an unnamed port).
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return fmt.Sprintf("%s:%s", n.NamespacedName.String(), n.Port)
}

// ServicePort is one port of a Service as the proxier needs it: parsed and
// validated, with every address family's VIPs.
type ServicePort struct {
	Name     ServicePortName
	Protocol v1.Protocol
	Port     uint16
	// NodePort is 0 when the Service has none for this port.
	NodePort uint16
	// ClusterIPs holds the Service's cluster IPs, one per family (spec.clusterIPs).
	ClusterIPs []netip.Addr
	// ExternalIPs holds spec.externalIPs that parsed.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs holds status.loadBalancer.ingress[].ip (hostnames are ignored),
	// except ingresses with ipMode Proxy, which the load balancer handles itself.
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges holds spec.loadBalancerSourceRanges.
	LoadBalancerSourceRanges []netip.Prefix
	// StickyMaxAgeSeconds is the ClientIP session affinity timeout; 0 means no affinity.
	StickyMaxAgeSeconds uint32
	// ExternalPolicyLocal is externalTrafficPolicy: Local (only for NodePort and LoadBalancer).
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort is spec.healthCheckNodePort, 0 when unset.
	HealthCheckNodePort uint16
	// TrafficDistribution is spec.trafficDistribution, "" when unset.
	TrafficDistribution string
}

// Service is a Service that kipvs proxies, as the proxier needs it.
type Service struct {
	Name  types.NamespacedName
	Type  v1.ServiceType
	Ports []*ServicePort
	// Annotations are the Service's annotations (kipvs.io/scheduler is read by the proxier).
	Annotations map[string]string
	// Err is set when the Service is invalid as a whole; the proxier programs nothing
	// for it and reports Err against the object.
	Err error
}

// ServiceMap holds the Services kipvs proxies, keyed by namespace/name. Services
// that kipvs skips (ExternalName, headless, another proxy's) are absent.
type ServiceMap map[types.NamespacedName]*Service

// Endpoint is one endpoint address for one Service port, merged from the
// Service's EndpointSlices.
type Endpoint struct {
	Address netip.Addr
	Port    uint16
	// Ready, Serving and Terminating are the slice's conditions; a nil ready
	// condition counts as ready, a nil serving condition as equal to ready, as the API says.
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	// ZoneHints and NodeHints are the slice's hints.forZones and hints.forNodes.
	ZoneHints []string
	NodeHints []string
	// PodName is targetRef namespace/name when the target is a Pod, else "".
	PodName string
}

// AddrPort is the endpoint's address and port.
func (e *Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Address, e.Port) }

// EndpointsMap holds, per Service port, its endpoints merged from all of its
// slices, with duplicates dropped and sorted by address and port.
type EndpointsMap map[ServicePortName][]*Endpoint

// Node is what kipvs needs to know about the node it runs on.
type Node struct {
	Name   string
	Labels map[string]string
	// Zone is the topology.kubernetes.io/zone label, "" when unset.
	Zone string
	// Deleting is true when the Node has a deletionTimestamp or the
	// ToBeDeletedByClusterAutoscaler taint.
	Deleting bool
	// PrimaryIPs are the Node's primary addresses, at most one per family
	// (first the family of the first one): per family the first InternalIP of
	// status.addresses, else its first ExternalIP, as kube-proxy's
	// GetNodeHostIPs (k8s.io/kubernetes pkg/util/node) picks them. They are what
	// nodePortAddresses ["primary"] means.
	PrimaryIPs []netip.Addr
}

// Snapshot is what State.Apply hands the proxier: the current Services,
// endpoints and Node after applying pending changes, and what changed since the
// previous Apply. The maps are owned by State and must only be read between two
// Apply calls, from the goroutine that calls Apply.
// Everything reachable from a Snapshot (Services, ServicePorts, Endpoints and
// their slices, which ports of one Service share) is read-only.
type Snapshot struct {
	Services  ServiceMap
	Endpoints EndpointsMap
	Node      Node
	// Changed names every Service whose Service object or endpoints changed
	// (including Services that were deleted or are no longer proxied).
	Changed sets.Set[types.NamespacedName]
	// NodeChanged is true when the Node's labels, zone or deletion state changed;
	// topology-aware selection then needs every Service rebuilt.
	NodeChanged bool
	// ServiceChanges and EndpointChanges count the object updates merged into this
	// snapshot (for kubeproxy_sync_proxy_rules_*_changes_total).
	ServiceChanges  int
	EndpointChanges int
	// TriggerTimes are the endpoints.kubernetes.io/last-change-trigger-time
	// annotations of the slice updates merged into this snapshot (for
	// kubeproxy_network_programming_duration_seconds).
	TriggerTimes []time.Time
}
