package endpoints

import (
	"cmp"
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// sliceInfo is what kipvs keeps of one EndpointSlice: its ports and its
// endpoints (with Port 0), both sorted so that two slices with the same content
// compare equal whatever their order in the object.
type sliceInfo struct {
	ports     []slicePort
	endpoints []*Endpoint
}

// equal reports whether two slice infos (nil = absent) hold the same content.
func (a *sliceInfo) equal(b *sliceInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.Equal(a.ports, b.ports) && endpointsEqual(a.endpoints, b.endpoints)
}

// endpointsEqual reports whether two endpoint lists are equal element by element.
func endpointsEqual(a, b []*Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y *Endpoint) bool {
		return x.Address == y.Address && x.Port == y.Port && x.Ready == y.Ready && x.Serving == y.Serving &&
			x.Terminating == y.Terminating && x.NodeName == y.NodeName && x.Zone == y.Zone &&
			x.PodName == y.PodName && slices.Equal(x.ZoneHints, y.ZoneHints) && slices.Equal(x.NodeHints, y.NodeHints)
	})
}

// slicePort is one EndpointSlice port, defaults applied.
type slicePort struct {
	name     string
	protocol v1.Protocol
	port     uint16
}

// sliceOwner returns the Service an EndpointSlice belongs to (its
// kubernetes.io/service-name label) and whether it has one.
func sliceOwner(slice *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := slice.Labels[discoveryv1.LabelServiceName]
	return types.NamespacedName{Namespace: slice.Namespace, Name: name}, name != ""
}

// parseSlice turns an EndpointSlice into a sliceInfo. It returns a nil info when
// kipvs ignores the whole slice (another proxy's, a headless Service's, FQDN,
// unknown address type), and Rejections for what it leaves out.
func parseSlice(slice *discoveryv1.EndpointSlice) (*sliceInfo, []Rejection) {
	var rejections []Rejection
	reject := func(format string, args ...any) {
		rejections = append(rejections, Rejection{
			Kind: "EndpointSlice", Namespace: slice.Namespace, Name: slice.Name, Reason: fmt.Sprintf(format, args...),
		})
	}
	if _, ok := slice.Labels[LabelServiceProxyName]; ok {
		return nil, nil
	}
	if _, ok := slice.Labels[LabelHeadless]; ok {
		return nil, nil
	}
	var want4 bool
	switch slice.AddressType {
	case discoveryv1.AddressTypeIPv4:
		want4 = true
	case discoveryv1.AddressTypeIPv6:
	default:
		reject("addressType %q is not proxied", slice.AddressType)
		return nil, rejections
	}

	info := &sliceInfo{}
	for _, p := range slice.Ports {
		sp := slicePort{protocol: v1.ProtocolTCP}
		if p.Name != nil {
			sp.name = *p.Name
		}
		if p.Protocol != nil {
			sp.protocol = *p.Protocol
		}
		switch {
		case !supportedProtocol(sp.protocol):
			reject("port %q: protocol %q is not supported", sp.name, sp.protocol)
		case p.Port == nil:
			reject("port %q: no port number", sp.name)
		case *p.Port <= 0 || *p.Port > 65535:
			reject("port %q: port number %d out of range", sp.name, *p.Port)
		default:
			sp.port = uint16(*p.Port)
			info.ports = append(info.ports, sp)
		}
	}
	slices.SortFunc(info.ports, func(a, b slicePort) int {
		return cmp.Or(cmp.Compare(a.name, b.name), cmp.Compare(a.protocol, b.protocol), cmp.Compare(a.port, b.port))
	})

	for i := range slice.Endpoints {
		ep, reason := parseEndpoint(&slice.Endpoints[i], want4)
		if reason != "" {
			reject("%s", reason)
			continue
		}
		info.endpoints = append(info.endpoints, ep)
	}
	slices.SortStableFunc(info.endpoints, func(a, b *Endpoint) int { return a.Address.Compare(b.Address) })
	return info, rejections
}

// parseEndpoint converts one slice endpoint (its first address, as kube-proxy
// does: the others are the same Pod's and not load-balanced to).
func parseEndpoint(e *discoveryv1.Endpoint, want4 bool) (*Endpoint, string) {
	if len(e.Addresses) == 0 {
		return nil, "endpoint without addresses"
	}
	addr, ok := ParseIP(e.Addresses[0])
	if !ok {
		return nil, fmt.Sprintf("endpoint address %q is not an IP address", e.Addresses[0])
	}
	if addr.Is4() != want4 {
		return nil, fmt.Sprintf("endpoint address %q does not match the slice's address type", e.Addresses[0])
	}
	ep := &Endpoint{
		Address:     addr,
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	ep.Serving = ep.Ready
	if e.Conditions.Serving != nil {
		ep.Serving = *e.Conditions.Serving
	}
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			ep.ZoneHints = append(ep.ZoneHints, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			ep.NodeHints = append(ep.NodeHints, n.Name)
		}
	}
	if r := e.TargetRef; r != nil && r.Kind == "Pod" {
		ep.PodName = r.Namespace + "/" + r.Name
	}
	return ep, ""
}

// endpointRank orders duplicates of one address and port: the ready copy wins,
// then a serving one, then a non-terminating one.
func endpointRank(e *Endpoint) int {
	r := 0
	if e.Ready {
		r += 4
	}
	if e.Serving {
		r += 2
	}
	if !e.Terminating {
		r++
	}
	return r
}

// buildEndpoints merges a Service's slices into its per-port endpoint lists.
// Slices are visited in name order and duplicates (same address and port) are
// resolved by endpointRank, then by that order, so the result does not depend on
// map iteration. Ports without endpoints are left out.
func buildEndpoints(svc types.NamespacedName, slicesByName map[string]*sliceInfo) map[ServicePortName][]*Endpoint {
	if len(slicesByName) == 0 {
		return nil
	}
	names := make([]string, 0, len(slicesByName))
	for name := range slicesByName {
		names = append(names, name)
	}
	slices.Sort(names)

	out := map[ServicePortName][]*Endpoint{}
	for _, name := range names {
		info := slicesByName[name]
		for _, p := range info.ports {
			key := ServicePortName{NamespacedName: svc, Port: p.name, Protocol: p.protocol}
			for _, ep := range info.endpoints {
				c := *ep
				c.Port = p.port
				out[key] = append(out[key], &c)
			}
		}
	}
	for key, eps := range out {
		slices.SortStableFunc(eps, func(a, b *Endpoint) int {
			return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Port, b.Port), endpointRank(b)-endpointRank(a))
		})
		eps = slices.CompactFunc(eps, func(a, b *Endpoint) bool { return a.Address == b.Address && a.Port == b.Port })
		if len(eps) == 0 {
			delete(out, key)
			continue
		}
		out[key] = slices.Clip(eps)
	}
	return out
}
