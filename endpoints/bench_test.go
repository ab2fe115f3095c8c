package endpoints

import (
	"fmt"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
)

// BenchmarkApplyOneChange measures Apply after one EndpointSlice change with
// 10,000 Services (3 endpoints each) present: the cost must not grow with the
// number of unchanged Services.
func BenchmarkApplyOneChange(b *testing.B) {
	const services = 10000
	s := NewState("node1")
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		s.OnServiceUpdate(nil, makeService("ns", name))
		s.OnEndpointSliceUpdate(nil, makeSlice("ns", name+"-1", name, httpPort,
			ep(fmt.Sprintf("10.%d.%d.1", i/250, i%250)), ep(fmt.Sprintf("10.%d.%d.2", i/250, i%250)),
			ep(fmt.Sprintf("10.%d.%d.3", i/250, i%250))))
	}
	if snap := s.Apply(); len(snap.Endpoints) != services {
		b.Fatalf("setup: %d endpoint entries", len(snap.Endpoints))
	}
	// Alternate one endpoint of one Service between ready and not ready.
	slices := [2]*discoveryv1.EndpointSlice{
		makeSlice("ns", "svc-4242-1", "svc-4242", httpPort, ep("10.16.242.1"), ep("10.16.242.2"), ep("10.16.242.3")),
		makeSlice("ns", "svc-4242-1", "svc-4242", httpPort, ep("10.16.242.1"), ep("10.16.242.2"), ep("10.16.242.3", cond(ptr(false), nil, nil))),
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.OnEndpointSliceUpdate(slices[i%2], slices[(i+1)%2])
		if snap := s.Apply(); snap.Changed.Len() != 1 {
			b.Fatalf("iteration %d: Changed = %v", i, snap.Changed)
		}
	}
}
