package proxier_test

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// fuzzBytes hands out the fuzzer's bytes; past the end it returns zeros.
type fuzzBytes []byte

func (b *fuzzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

// pick returns one element of list chosen by the next byte.
func pick[T any](b *fuzzBytes, list []T) T { return list[int(b.next())%len(list)] }

// Pools the fuzzer picks from: valid and invalid values of every field, IPv4
// and IPv6, some inside fuzzExclude.
var (
	fuzzIPs = []string{"10.96.0.1", "10.96.0.2", "10.96.0.200", "fd00::1", "fd00::2", "fd00::ff01", "203.0.113.1",
		"2001:db8::5", "::ffff:10.96.0.3", "", "None", "300.1.1.1", "fe80::1%eth0", "010.096.000.004", "192.168.1.10"}
	fuzzEndpointIPs = []string{"10.244.0.1", "10.244.0.2", "10.244.1.1", "fd00:10::1", "fd00:10::2", "", "x",
		"10.96.0.200", "::ffff:10.244.0.9", "fe80::1%eth0", "0.0.0.0", "::"}
	fuzzPorts     = []int32{80, 443, 53, 0, -1, 65535, 65536, 1 << 30, 8080}
	fuzzProtocols = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP, "", "ICMP", "tcp"}
	fuzzPortNames = []string{"", "http", "dns", "http"}
	fuzzTypes     = []v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer,
		v1.ServiceTypeExternalName, ""}
	fuzzSchedulers = []string{"", "rr", "mh", "sh", "nope", "RR"}
	fuzzAffinity   = []*int32{nil, ptr(int32(0)), ptr(int32(1)), ptr(int32(86400)), ptr(int32(-5)), ptr(int32(1<<31 - 1))}
	fuzzAddrTypes  = []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN}
	fuzzBools      = []*bool{nil, ptr(true), ptr(false)}
	fuzzNodes      = []string{"", "node1", "node2"}
	fuzzExclude    = []netip.Prefix{netip.MustParsePrefix("10.96.0.128/25"), netip.MustParsePrefix("fd00::ff00/120")}
	fuzzNames      = []string{"a", "b", "c", "d"}
)

func ptr[T any](v T) *T { return &v }

// fuzzService builds a v1 Service ns/name from the fuzzer's bytes.
func fuzzService(b *fuzzBytes, name string) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
	s.Spec.Type = pick(b, fuzzTypes)
	for range 1 + int(b.next()%2) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, pick(b, fuzzIPs))
	}
	s.Spec.ClusterIP = s.Spec.ClusterIPs[0]
	for range int(b.next() % 3) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: pick(b, fuzzPortNames), Protocol: pick(b, fuzzProtocols),
			Port: pick(b, fuzzPorts), NodePort: pick(b, []int32{0, 0, 30080, 30081, 70000, -3})})
	}
	for range int(b.next() % 3) {
		s.Spec.ExternalIPs = append(s.Spec.ExternalIPs, pick(b, fuzzIPs))
	}
	for range int(b.next() % 2) {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: pick(b, fuzzIPs),
			Hostname: pick(b, []string{"", "lb.example.com"})})
	}
	if t := pick(b, fuzzAffinity); t != nil || b.next()%2 == 1 {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: t}}
	}
	if sch := pick(b, fuzzSchedulers); sch != "" {
		s.Annotations = map[string]string{proxier.SchedulerAnnotation: sch}
	}
	if b.next()%2 == 1 {
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = pick(b, []int32{0, 32000, 70000})
	}
	if b.next()%2 == 1 {
		s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
	}
	return s
}

// fuzzSlice builds a v1 EndpointSlice of ns/svc from the fuzzer's bytes.
func fuzzSlice(b *fuzzBytes, name, svc string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: pick(b, fuzzAddrTypes),
	}
	if b.next()%8 == 0 {
		s.Labels = nil
	}
	for range int(b.next() % 3) {
		p := discoveryv1.EndpointPort{Protocol: ptr(pick(b, fuzzProtocols)), Port: ptr(pick(b, fuzzPorts))}
		if n := pick(b, fuzzPortNames); n != "" || b.next()%2 == 0 {
			p.Name = &n
		}
		s.Ports = append(s.Ports, p)
	}
	for range int(b.next() % 5) {
		e := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{
			Ready: pick(b, fuzzBools), Serving: pick(b, fuzzBools), Terminating: pick(b, fuzzBools)}}
		for range int(b.next() % 3) {
			e.Addresses = append(e.Addresses, pick(b, fuzzEndpointIPs))
		}
		if n := pick(b, fuzzNodes); n != "" {
			e.NodeName = &n
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return s
}

// fuzzObjects turns the fuzzer's bytes into up to four Services and up to
// six EndpointSlices.
func fuzzObjects(data []byte) ([]*v1.Service, []*discoveryv1.EndpointSlice) {
	b := fuzzBytes(data)
	var svcs []*v1.Service
	for i := range 1 + int(b.next()%4) {
		svcs = append(svcs, fuzzService(&b, fuzzNames[i]))
	}
	var slices []*discoveryv1.EndpointSlice
	for i := range int(b.next() % 7) {
		slices = append(slices, fuzzSlice(&b, fmt.Sprintf("s%d", i), pick(&b, fuzzNames)))
	}
	return svcs, slices
}

// checkVirtualServer checks the invariants of one programmed or wanted
// virtual server: a scheduler the kernel has, real servers of its family, an
// address outside the excluded CIDRs.
func checkVirtualServer(t *testing.T, where string, vs ipvs.VirtualServer, rss []ipvs.RealServerKey) {
	t.Helper()
	if !ipvs.ValidScheduler(vs.Scheduler) {
		t.Errorf("%s: virtual server %s has scheduler %q", where, vs.VirtualServerKey, vs.Scheduler)
	}
	for _, p := range fuzzExclude {
		if p.Contains(vs.Address) {
			t.Errorf("%s: virtual server %s lies in excluded %s", where, vs.VirtualServerKey, p)
		}
	}
	for _, rs := range rss {
		if rs.Address.Is4() != vs.Address.Is4() {
			t.Errorf("%s: virtual server %s has real server %s of another family", where, vs.VirtualServerKey, rs)
		}
	}
}

// FuzzModel feeds random Services and EndpointSlices through endpoints.State
// into BuildModel and into a Proxier over fakes. Nothing may panic; every
// virtual server, wanted or programmed, has a valid scheduler, real servers of
// its own family and an address outside ExcludeCIDRs; no two Services get the
// same virtual server; the kernel holds exactly the model's virtual servers;
// a second sync writes nothing.
func FuzzModel(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x03\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x01\x00\x00\x00\x02\x02\x00\x00\x00"))
	f.Add([]byte("\x01\x01\x01\x03\x01\x01\x01\x04\x02\x02\x02\x02\x01\x00\x04\x03\x01\x01\x01\x02\x01\x04\x02\x01\x01\x02\x05"))
	f.Fuzz(func(t *testing.T, data []byte) {
		svcs, slices := fuzzObjects(data)
		cfg := rigConfig()
		cfg.ExcludeCIDRs = fuzzExclude
		r := newRigWithConfig(t, cfg)
		model := endpoints.NewState("node1")
		for _, s := range svcs {
			r.state.OnServiceUpdate(nil, s)
			model.OnServiceUpdate(nil, s)
		}
		for _, s := range slices {
			r.state.OnEndpointSliceUpdate(nil, s)
			model.OnEndpointSliceUpdate(nil, s)
		}
		for _, rej := range r.state.Rejected() {
			if rej.Kind == "" || rej.Name == "" || rej.Reason == "" {
				t.Errorf("rejection without kind, name or reason: %+v", rej)
			}
		}
		snap := model.Apply()
		local := []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}
		node := proxier.NodeInfo{Node: snap.Node, IPs: proxier.NodePortIPs(local, nil), LocalAddrs: local}
		node.FamiliesFrom(local)
		m := proxier.BuildModel(snap.Services, snap.Endpoints, node, cfg)
		wanted := map[ipvs.VirtualServerKey]bool{}
		for name, sm := range m.Services {
			for k, dvs := range sm.VirtualServers {
				if wanted[k] {
					t.Errorf("virtual server %s wanted by two Services (one is %s)", k, name)
				}
				wanted[k] = true
				var rss []ipvs.RealServerKey
				for rk := range dvs.RealServers {
					rss = append(rss, rk)
				}
				checkVirtualServer(t, "model "+name.String(), dvs.VirtualServer, rss)
			}
		}

		if err := r.p.Sync(r.ctx); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		dump, err := r.kernel.Dump(r.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, vs := range dump {
			var rss []ipvs.RealServerKey
			for _, rs := range vs.RealServers {
				rss = append(rss, rs.RealServerKey)
			}
			checkVirtualServer(t, "kernel", vs.VirtualServer, rss)
			if !wanted[vs.VirtualServerKey] {
				t.Errorf("kernel holds %s, which the model does not want", vs.VirtualServerKey)
			}
			delete(wanted, vs.VirtualServerKey)
		}
		for k := range wanted {
			t.Errorf("model wants %s, which the kernel lacks", k)
		}
		w := r.writes()
		if err := r.syncFull(); err != nil {
			t.Fatalf("second sync: %v", err)
		}
		if n := r.writes() - w; n != 0 {
			t.Errorf("second (full) sync of unchanged input wrote %d times", n)
		}
	})
}
