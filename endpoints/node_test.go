package endpoints

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeWith builds a Node with status addresses given as "Type=address".
func nodeWith(addrs ...v1.NodeAddress) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1.NodeStatus{Addresses: addrs}}
}

func internal(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: a} }
func external(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeExternalIP, Address: a} }

func TestParseNodePrimaryIPs(t *testing.T) {
	hostname := v1.NodeAddress{Type: v1.NodeHostName, Address: "n1"}
	for _, tc := range []struct {
		name  string
		addrs []v1.NodeAddress
		want  []string
	}{
		{"none", nil, nil},
		{"hostname only", []v1.NodeAddress{hostname}, nil},
		{"first InternalIP of the family", []v1.NodeAddress{hostname, internal("10.0.0.1"), internal("10.0.0.2")}, []string{"10.0.0.1"}},
		{"InternalIP before an earlier ExternalIP", []v1.NodeAddress{external("203.0.113.1"), internal("10.0.0.1")}, []string{"10.0.0.1"}},
		{"ExternalIP when no InternalIP", []v1.NodeAddress{external("203.0.113.1")}, []string{"203.0.113.1"}},
		{"dual-stack, IPv6 first", []v1.NodeAddress{internal("fd00::1"), internal("10.0.0.1"), internal("fd00::2")}, []string{"fd00::1", "10.0.0.1"}},
		{"other family from an ExternalIP", []v1.NodeAddress{internal("10.0.0.1"), internal("10.0.0.2"), external("2001:db8::1")}, []string{"10.0.0.1", "2001:db8::1"}},
		{"unparsable skipped", []v1.NodeAddress{internal("not-an-ip"), internal("10.0.0.3")}, []string{"10.0.0.3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []netip.Addr
			for _, s := range tc.want {
				want = append(want, netip.MustParseAddr(s))
			}
			got := ParseNode(nodeWith(tc.addrs...)).PrimaryIPs
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("PrimaryIPs (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNodeAddressChangeIsNodeChange: a change of the primary addresses is a
// Node change, so that NodePort virtual servers follow it.
func TestNodeAddressChangeIsNodeChange(t *testing.T) {
	s := NewState("n1")
	a := nodeWith(internal("10.0.0.1"))
	s.OnNodeUpdate(nil, a)
	if snap := s.Apply(); !snap.NodeChanged {
		t.Fatalf("first Node: NodeChanged false")
	}
	b := nodeWith(internal("10.0.0.2"))
	s.OnNodeUpdate(a, b)
	snap := s.Apply()
	if !snap.NodeChanged || len(snap.Node.PrimaryIPs) != 1 || snap.Node.PrimaryIPs[0] != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("after the address change: NodeChanged %v, PrimaryIPs %v", snap.NodeChanged, snap.Node.PrimaryIPs)
	}
	s.OnNodeUpdate(b, nodeWith(internal("10.0.0.2")))
	if snap := s.Apply(); snap.NodeChanged {
		t.Errorf("an identical Node counted as changed")
	}
}
