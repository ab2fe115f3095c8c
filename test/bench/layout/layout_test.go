package layout

import (
	"net/netip"
	"testing"
)

func TestEndpointIP(t *testing.T) {
	tests := []struct {
		i, j int
		want string
	}{
		{0, 0, "10.128.0.0"},
		{0, 10, "10.128.0.10"},
		{1, 0, "10.128.0.16"},
		{16, 3, "10.128.1.3"},
		{9999, 15, "10.130.112.255"},
	}
	for _, tt := range tests {
		if got := EndpointIP(tt.i, tt.j); got != netip.MustParseAddr(tt.want) {
			t.Errorf("EndpointIP(%d, %d) = %s, want %s", tt.i, tt.j, got, tt.want)
		}
	}
}

func TestEndpointIPsDistinct(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for i := range 300 {
		for j := range 16 {
			a := EndpointIP(i, j)
			if seen[a] {
				t.Fatalf("EndpointIP(%d, %d) = %s twice", i, j, a)
			}
			seen[a] = true
		}
	}
}

func TestSlice(t *testing.T) {
	s := Slice(3, 10)
	if s.Name != "svc-00003-1" || s.Labels["kubernetes.io/service-name"] != "svc-00003" || len(s.Endpoints) != 10 {
		t.Fatalf("Slice(3, 10) = %s %v with %d endpoints", s.Name, s.Labels, len(s.Endpoints))
	}
	if got := s.Endpoints[9].Addresses[0]; got != "10.128.0.57" {
		t.Errorf("last endpoint %s, want 10.128.0.57", got)
	}
	if Service(9).Spec.Type != "NodePort" || Service(10).Spec.Type != "ClusterIP" {
		t.Errorf("NodePort only for the first %d Services", NodePortServices)
	}
}
