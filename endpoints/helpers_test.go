package endpoints

import (
	"net/netip"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// cmpOpts compares netip values and errors (by message).
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b error) bool {
		if a == nil || b == nil {
			return a == nil && b == nil
		}
		return a.Error() == b.Error()
	}),
}

func nn(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

func spn(ns, name, port string, proto v1.Protocol) ServicePortName {
	return ServicePortName{NamespacedName: nn(ns, name), Port: port, Protocol: proto}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ptr[T any](v T) *T { return &v }

// makeService builds a ClusterIP Service 10.0.0.1 with one TCP port "http" 80,
// then applies the mutators.
func makeService(ns, name string, mutate ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.0.0.1",
			ClusterIPs: []string{"10.0.0.1"},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(svc)
	}
	return svc
}

// withPorts replaces the Service's ports.
func withPorts(ports ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

// makeSlice builds an IPv4 EndpointSlice of Service svc with the given ports and endpoints.
func makeSlice(ns, name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, ResourceVersion: "1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
	if svc == "" {
		s.Labels = nil
	}
	return s
}

// port builds an EndpointSlice port.
func port(name string, proto v1.Protocol, num int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(num)}
}

// httpPort is the slice port matching makeService's default port.
var httpPort = []discoveryv1.EndpointPort{port("http", v1.ProtocolTCP, 8080)}

// ep builds a slice endpoint with all conditions unset (so: ready, serving, not terminating).
func ep(address string, mutate ...func(*discoveryv1.Endpoint)) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{address}}
	for _, m := range mutate {
		m(&e)
	}
	return e
}

// cond sets the endpoint's conditions; nil leaves one unset.
func cond(ready, serving, terminating *bool) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) {
		e.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

// onNode sets the endpoint's node name.
func onNode(node string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) { e.NodeName = ptr(node) }
}

// makeEndpoint builds a parsed Endpoint for expectations: ready and serving.
func makeEndpoint(address string, p uint16, mutate ...func(*Endpoint)) *Endpoint {
	e := &Endpoint{Address: addr(address), Port: p, Ready: true, Serving: true}
	for _, m := range mutate {
		m(e)
	}
	return e
}
