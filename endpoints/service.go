package endpoints

import (
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	// LabelServiceProxyName marks Services and EndpointSlices that another proxy
	// implementation owns; kipvs (like kube-proxy) ignores them.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless is set by the EndpointSlice controller on the slices of headless
	// Services (v1.IsHeadlessService); kipvs ignores those slices.
	LabelHeadless = v1.IsHeadlessService
	// DefaultStickyMaxAgeSeconds is the ClientIP session affinity timeout the API
	// server defaults to (3 hours) when sessionAffinityConfig is unset.
	DefaultStickyMaxAgeSeconds = 10800
	// TaintToBeDeletedByClusterAutoscaler is the taint the cluster autoscaler puts on
	// a Node before removing it; kube-proxy's /healthz fails once it is present.
	TaintToBeDeletedByClusterAutoscaler = "ToBeDeletedByClusterAutoscaler"
)

// Rejection names an object, or a part of one, that kipvs cannot program, with
// the reason. Kind is "Service", "EndpointSlice" or "Node"; the rest of the object
// is still used when only a part of it is rejected.
type Rejection struct {
	Kind      string
	Namespace string
	Name      string
	Reason    string
}

// String renders "Kind ns/name: reason".
func (r Rejection) String() string {
	return fmt.Sprintf("%s %s/%s: %s", r.Kind, r.Namespace, r.Name, r.Reason)
}

// supportedProtocol reports whether IPVS can proxy p (TCP, UDP and SCTP).
func supportedProtocol(p v1.Protocol) bool {
	return p == v1.ProtocolTCP || p == v1.ProtocolUDP || p == v1.ProtocolSCTP
}

// ParseService turns a Service object into what the proxier needs. It returns a
// nil Service and a non-empty skip reason for Services kipvs does not proxy at
// all (another proxy's, ExternalName, headless); these are not rejections. Parts
// of the Service that cannot be programmed (bad ports, unparseable IPs or CIDRs)
// are left out and reported as Rejections; the rest of the Service still works.
// A Service with no usable cluster IP is returned with Err set.
func ParseService(svc *v1.Service) (parsed *Service, skip string, rejections []Rejection) {
	if owner, ok := svc.Labels[LabelServiceProxyName]; ok {
		return nil, fmt.Sprintf("owned by service proxy %q (label %s)", owner, LabelServiceProxyName), nil
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, "type ExternalName is not proxied", nil
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil, "headless Service (no cluster IP) is not proxied", nil
	}

	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	reject := func(format string, args ...any) {
		rejections = append(rejections, Rejection{
			Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: fmt.Sprintf(format, args...),
		})
	}
	parsed = &Service{Name: nn, Type: svc.Spec.Type}
	if len(svc.Annotations) > 0 {
		parsed.Annotations = maps.Clone(svc.Annotations)
	}

	clusterIPs := parseIPs(clusterIPStrings(svc), func(s string) { reject("clusterIPs: %q is not an IP address", s) })
	if len(clusterIPs) == 0 {
		parsed.Err = fmt.Errorf("service %s has no valid cluster IP (%q)", nn, svc.Spec.ClusterIP)
		reject("%v", parsed.Err)
		return parsed, "", rejections
	}
	base := ServicePort{
		ClusterIPs:          clusterIPs,
		ExternalIPs:         parseIPs(svc.Spec.ExternalIPs, func(s string) { reject("externalIPs: %q is not an IP address", s) }),
		LoadBalancerIPs:     loadBalancerIPs(svc, reject),
		StickyMaxAgeSeconds: stickyMaxAgeSeconds(svc),
		ExternalPolicyLocal: externalPolicyLocal(svc),
		InternalPolicyLocal: svc.Spec.InternalTrafficPolicy != nil &&
			*svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
	}
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			reject("loadBalancerSourceRanges: %q is not a CIDR", r)
			continue
		}
		base.LoadBalancerSourceRanges = append(base.LoadBalancerSourceRanges, p.Masked())
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && base.ExternalPolicyLocal {
		if hc := svc.Spec.HealthCheckNodePort; hc > 0 && hc <= 65535 {
			base.HealthCheckNodePort = uint16(hc)
		} else {
			reject("healthCheckNodePort %d is not a valid port", hc)
		}
	}
	if svc.Spec.TrafficDistribution != nil {
		base.TrafficDistribution = *svc.Spec.TrafficDistribution
	}

	seen := map[ServicePortName]bool{}
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		port, reason := parseServicePort(nn, sp, &base)
		if reason == "" && seen[port.Name] {
			reason = "duplicate port name and protocol"
		}
		if reason != "" {
			reject("port %q (%d/%s): %s", sp.Name, sp.Port, sp.Protocol, reason)
			continue
		}
		seen[port.Name] = true
		parsed.Ports = append(parsed.Ports, port)
	}
	return parsed, "", rejections
}

// parseServicePort copies base and fills in one spec port; a non-empty reason
// means the port cannot be proxied.
func parseServicePort(nn types.NamespacedName, sp *v1.ServicePort, base *ServicePort) (*ServicePort, string) {
	proto := sp.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP // the API server's default
	}
	if !supportedProtocol(proto) {
		return nil, fmt.Sprintf("protocol %q is not supported", proto)
	}
	if sp.Port <= 0 || sp.Port > 65535 {
		return nil, "port number out of range"
	}
	if sp.NodePort < 0 || sp.NodePort > 65535 {
		return nil, fmt.Sprintf("nodePort %d out of range", sp.NodePort)
	}
	p := *base
	p.Name = ServicePortName{NamespacedName: nn, Port: sp.Name, Protocol: proto}
	p.Protocol = proto
	p.Port = uint16(sp.Port)
	p.NodePort = uint16(sp.NodePort)
	return &p, ""
}

// clusterIPStrings returns spec.clusterIPs, or spec.clusterIP for objects written
// before dual-stack.
func clusterIPStrings(svc *v1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

// loadBalancerIPs returns the VIP-mode ingress IPs. Ingresses with ipMode Proxy
// are left to the load balancer (KEP-1860), hostname-only ingresses are ignored.
func loadBalancerIPs(svc *v1.Service, reject func(string, ...any)) []netip.Addr {
	var out []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
			continue
		}
		a, ok := ParseIP(ing.IP)
		if !ok {
			reject("status.loadBalancer.ingress: %q is not an IP address", ing.IP)
			continue
		}
		out = append(out, a)
	}
	return out
}

// stickyMaxAgeSeconds is the ClientIP affinity timeout, 0 without affinity.
func stickyMaxAgeSeconds(svc *v1.Service) uint32 {
	if svc.Spec.SessionAffinity != v1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil &&
		*c.ClientIP.TimeoutSeconds > 0 {
		return uint32(*c.ClientIP.TimeoutSeconds)
	}
	return DefaultStickyMaxAgeSeconds
}

// externalPolicyLocal is externalTrafficPolicy Local on a Service that has
// external traffic: NodePort, LoadBalancer, or ClusterIP with externalIPs (the
// API allows the field on those; k8s.io/kubernetes pkg/api/v1/service
// ExternallyAccessible and ExternalPolicyLocal, which kube-proxy uses).
func externalPolicyLocal(svc *v1.Service) bool {
	switch svc.Spec.Type {
	case v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer:
	case v1.ServiceTypeClusterIP, "":
		if len(svc.Spec.ExternalIPs) == 0 {
			return false
		}
	default:
		return false
	}
	return svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
}

// parseIPs parses each string with ParseIP, calling bad for those that fail.
func parseIPs(in []string, bad func(string)) []netip.Addr {
	var out []netip.Addr
	for _, s := range in {
		a, ok := ParseIP(s)
		if !ok {
			bad(s)
			continue
		}
		out = append(out, a)
	}
	return out
}

// ParseIP parses an IP address the way the API server has accepted them: IPv4
// octets with leading zeros are read as decimal (objects written before
// Kubernetes 1.30 may hold "010.0.0.1"), IPv4-mapped IPv6 addresses are unmapped,
// and zoned IPv6 addresses are refused.
func ParseIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err == nil {
		if a.Zone() != "" {
			return netip.Addr{}, false
		}
		return a.Unmap(), true
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		if p == "" || len(p) > 3 {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}
