// Package layout is the benchmark's object layout, shared by the host runner
// that creates the objects and the in-guest agent that changes them: names,
// the Node, and which endpoint addresses each Service gets.
package layout

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Fixed names and addresses of the benchmark.
const (
	// Namespace holds every benchmark Service and EndpointSlice.
	Namespace = "bench"
	// NodeName is the Node the proxies run as (--hostname-override).
	NodeName = "bench-node"
	// NodeIP is the guest's eth0 address (test/vm's /init).
	NodeIP = "10.0.2.15"
	// PortName and Port are the single port of every Service; TargetPort is
	// the endpoints' port.
	PortName   = "http"
	Port       = 80
	TargetPort = 8080
	// NodePortServices is how many of the first Services are type NodePort.
	NodePortServices = 10
	// MutableServices bounds the Services the agent changes (one-change,
	// churn), so the host restores only these between runs.
	MutableServices = 100
	// ProbeService is the Service whose endpoint is a real pod in the guest
	// (packet cost, throughput); the agent creates it.
	ProbeService = "probe"
	// ClusterCIDR covers the guest's pod networks (198.18.0.0/15, test/netpod);
	// the proxies get it as --cluster-cidr.
	ClusterCIDR = "198.18.0.0/15"
)

// endpointBase is the first endpoint address: 10.128.0.0/9 has room for 16
// addresses per Service for half a million Services. These addresses exist
// nowhere; packets are only sent to the probe Service.
var endpointBase = netip.MustParseAddr("10.128.0.0")

// ServiceName is the name of Service i (0-based).
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// SliceName is the name of Service i's EndpointSlice.
func SliceName(i int) string { return ServiceName(i) + "-1" }

// EndpointIP is endpoint j (0..15) of Service i. Endpoints 0..n-1 are
// created; the agent adds endpoint n as "one more endpoint".
func EndpointIP(i, j int) netip.Addr {
	if j < 0 || j > 15 {
		panic(fmt.Sprintf("layout: endpoint index %d out of 0..15", j))
	}
	b := endpointBase.As4()
	off := uint32(i)*16 + uint32(j)
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Service returns Service i: ClusterIP, or NodePort for the first
// NodePortServices, one TCP port.
func Service(i int) *corev1.Service {
	typ := corev1.ServiceTypeClusterIP
	if i < NodePortServices {
		typ = corev1.ServiceTypeNodePort
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: ServiceName(i)},
		Spec: corev1.ServiceSpec{
			Type:  typ,
			Ports: []corev1.ServicePort{{Name: PortName, Protocol: corev1.ProtocolTCP, Port: Port}},
		},
	}
}

// Slice returns the EndpointSlice of Service i with endpoints 0..n-1, all
// ready, on NodeName.
func Slice(i, n int) *discoveryv1.EndpointSlice {
	addrs := make([]netip.Addr, n)
	for j := range addrs {
		addrs[j] = EndpointIP(i, j)
	}
	return SliceFor(ServiceName(i), SliceName(i), TargetPort, addrs...)
}

// SliceFor returns an EndpointSlice named name of Service svc with ready
// endpoints at addrs on port.
func SliceFor(svc, name string, port int32, addrs ...netip.Addr) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "kipvs-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(PortName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(NodeName),
		})
	}
	return s
}
