package endpoints_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kipvs/kipvs/endpoints"
)

// FuzzParseIP: ParseIP never panics, and what it accepts is a valid, unzoned,
// unmapped address that parses back to itself from its canonical text.
func FuzzParseIP(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "010.000.000.001", "::ffff:10.0.0.1", "fe80::1%eth0", "fd00::1", "", "1.2.3",
		"256.1.1.1", "1.2.3.4.5", "0x1.1.1.1", " 1.1.1.1", "::", "1111.1.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := endpoints.ParseIP(s)
		if !ok {
			if a.IsValid() {
				t.Errorf("ParseIP(%q) refused but returned %s", s, a)
			}
			return
		}
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			t.Errorf("ParseIP(%q) = %s: invalid, zoned or mapped", s, a)
		}
		if b, ok := endpoints.ParseIP(a.String()); !ok || b != a {
			t.Errorf("ParseIP(%q) = %s, which parses back as %s, %v", s, a, b, ok)
		}
	})
}

// stateBytes hands out the fuzzer's bytes; past the end it returns zeros.
type stateBytes []byte

func (b *stateBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func choose[T any](b *stateBytes, list []T) T { return list[int(b.next())%len(list)] }

var (
	fzNames = []string{"a", "b", "c"}
	fzIPs   = []string{"10.96.0.1", "10.96.0.2", "fd00::1", "bad", "", "None"}
	fzAddrs = []string{"10.244.0.1", "10.244.0.2", "fd00:10::1", "x", ""}
	fzPorts = []int32{80, 0, 70000, 8080}
	fzProto = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, "ICMP", ""}
	fzPName = []string{"", "http", "dns"}
	fzBool  = []*bool{nil, ptr(true), ptr(false)}
	fzAType = []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN}
)

func fzService(b *stateBytes) *v1.Service {
	s := service("ns", choose(b, fzNames), choose(b, fzIPs))
	s.Spec.Ports = nil
	for range int(b.next() % 3) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: choose(b, fzPName), Protocol: choose(b, fzProto), Port: choose(b, fzPorts)})
	}
	if b.next()%4 == 0 {
		s.Spec.Type = v1.ServiceTypeExternalName
	}
	return s
}

func fzSlice(b *stateBytes) *discoveryv1.EndpointSlice {
	s := slice("ns", fmt.Sprintf("s%d", b.next()%4), choose(b, append([]string{""}, fzNames...)))
	s.AddressType = choose(b, fzAType)
	s.Ports = nil
	for range int(b.next() % 3) {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr(choose(b, fzPName)), Protocol: ptr(choose(b, fzProto)), Port: ptr(choose(b, fzPorts))})
	}
	for range int(b.next() % 4) {
		e := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: choose(b, fzBool), Serving: choose(b, fzBool), Terminating: choose(b, fzBool)}}
		if a := choose(b, fzAddrs); a != "" || b.next()%2 == 0 {
			e.Addresses = []string{a}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

// FuzzState applies a random sequence of Service and EndpointSlice adds,
// updates and deletes to a State, applying (as a sync would) at random points.
// Nothing may panic; the endpoint lists are sorted, unique and valid; and the
// final ServiceMap and EndpointsMap equal those of a fresh State given only
// the surviving objects: incremental tracking loses and invents nothing.
func FuzzState(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00\x00\x00\x01\x01\x00\x01\x03\x00\x01\x00\x00\x02\x00\x01\x00\x00\x00"))
	f.Add([]byte("\x01\x00\x00\x01\x01\x01\x01\x03\x00\x03\x00\x01\x00\x02\x00\x00\x00\x01\x00\x00\x01\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b := stateBytes(data)
		st := endpoints.NewState("node1")
		st.SetSynced()
		svcs := map[string]*v1.Service{}
		slices := map[string]*discoveryv1.EndpointSlice{}
		for steps := 0; len(b) > 0 && steps < 64; steps++ {
			switch b.next() % 5 {
			case 0, 1:
				s := fzService(&b)
				st.OnServiceUpdate(svcs[s.Name], s)
				svcs[s.Name] = s
			case 2:
				name := choose(&b, fzNames)
				if prev := svcs[name]; prev != nil {
					st.OnServiceUpdate(prev, nil)
					delete(svcs, name)
				}
			case 3:
				s := fzSlice(&b)
				st.OnEndpointSliceUpdate(slices[s.Name], s)
				slices[s.Name] = s
			case 4:
				if b.next()%2 == 0 {
					checkSnapshot(t, st.Apply())
				} else if name := fmt.Sprintf("s%d", b.next()%4); slices[name] != nil {
					st.OnEndpointSliceUpdate(slices[name], nil)
					delete(slices, name)
				}
			}
		}
		got := st.Apply()
		checkSnapshot(t, got)
		fresh := endpoints.NewState("node1")
		for _, s := range svcs {
			fresh.OnServiceUpdate(nil, s)
		}
		for _, s := range slices {
			fresh.OnEndpointSliceUpdate(nil, s)
		}
		want := fresh.Apply()
		opts := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
			cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
			cmp.Comparer(func(a, b error) bool { return (a == nil) == (b == nil) && (a == nil || a.Error() == b.Error()) })}
		if diff := cmp.Diff(want.Services, got.Services, opts); diff != "" {
			t.Errorf("ServiceMap after incremental updates differs from a fresh State (-fresh +incremental):\n%s", diff)
		}
		if diff := cmp.Diff(want.Endpoints, got.Endpoints, opts); diff != "" {
			t.Errorf("EndpointsMap after incremental updates differs from a fresh State (-fresh +incremental):\n%s", diff)
		}
		if diff := cmp.Diff(fresh.Rejected(), st.Rejected()); diff != "" {
			t.Errorf("Rejected differs from a fresh State (-fresh +incremental):\n%s", diff)
		}
	})
}

// checkSnapshot checks what every Snapshot must hold.
func checkSnapshot(t *testing.T, snap endpoints.Snapshot) {
	t.Helper()
	for name, svc := range snap.Services {
		if svc.Name != name {
			t.Errorf("Service keyed %s is named %s", name, svc.Name)
		}
		for _, p := range svc.Ports {
			if p.Port == 0 || p.Name.NamespacedName != name || (p.Protocol != v1.ProtocolTCP && p.Protocol != v1.ProtocolUDP && p.Protocol != v1.ProtocolSCTP) {
				t.Errorf("Service %s has an invalid port %+v", name, p)
			}
		}
	}
	for key, eps := range snap.Endpoints {
		if len(eps) == 0 {
			t.Errorf("%s has an empty endpoint list", key)
		}
		for i, e := range eps {
			if !e.Address.IsValid() || e.Port == 0 || e.Address.Is4In6() {
				t.Errorf("%s: invalid endpoint %+v", key, e)
			}
			if i > 0 {
				prev := eps[i-1].AddrPort()
				if c := prev.Addr().Compare(e.Address); c > 0 || c == 0 && prev.Port() >= e.Port {
					t.Errorf("%s: endpoints not sorted and unique: %s then %s", key, prev, e.AddrPort())
				}
			}
		}
	}
	for n := range snap.Changed {
		if n == (types.NamespacedName{}) {
			t.Error("Changed holds an empty name")
		}
	}
}
