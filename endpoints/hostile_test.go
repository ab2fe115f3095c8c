package endpoints_test

// A catalogue of hostile and malformed API objects, driven end to end: v1
// objects into endpoints.State, a Proxier over fake kernels, the kernel read
// back. Each case must not crash, must be reported with a message naming the
// object and the reason (a Rejection or a Service error), and must leave a
// healthy control Service exactly as it was.

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// ipv4OnlyNode has no IPv6 address at all, not even ::1: IPv6 is disabled.
const ipv4OnlyNode = "eth0: 192.168.1.10\nlo: 127.0.0.1\n"

// controlVIP is the cluster IP of the healthy control Service control/healthy.
const controlVIP = "10.96.0.1"

// svcOpt changes a v1 Service under construction.
type svcOpt func(*v1.Service)

// service builds a ClusterIP Service ns/name with one TCP port "http" 80.
func service(ns, name, clusterIP string, opts ...svcOpt) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func ports(ps ...v1.ServicePort) svcOpt { return func(s *v1.Service) { s.Spec.Ports = ps } }

func clusterIPs(ips ...string) svcOpt {
	return func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips }
}

func nodePort(n int32) svcOpt {
	return func(s *v1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, n }
}

func affinity(seconds *int32) svcOpt {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		if seconds != nil {
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: seconds}}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// slice builds an EndpointSlice of Service ns/svc ("" for no label) with one
// port "http" TCP 8080 and ready endpoints at addrs; IPv6 when the first
// address contains a colon.
func slice(ns, name, svc string, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	if svc == "" {
		s.Labels = nil
	}
	if len(addrs) > 0 && strings.Contains(addrs[0], ":") {
		s.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

// manyAddrs returns n IPv4 addresses from 10.200.0.1 on.
func manyAddrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.200.%d.%d", (i+1)/256, (i+1)%256)
	}
	return out
}

// hostileRig is a Proxier fed by an endpoints.State over fake kernels.
type hostileRig struct {
	t     *testing.T
	ctx   context.Context
	state *endpoints.State
	ipvs  *ipvs.Fake
	addrs *proxier.FakeAddresses
	clk   *testclock.FakeClock
	p     *proxier.Proxier
}

func newHostileRig(t *testing.T, nodeAddrs string) *hostileRig {
	t.Helper()
	fa, err := proxier.NewFakeAddressesFromText(nodeAddrs)
	if err != nil {
		t.Fatal(err)
	}
	r := &hostileRig{t: t, ctx: klog.NewContext(context.Background(), logr.Discard()), state: endpoints.NewState("node1"),
		ipvs: ipvs.NewFake(), addrs: fa, clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	cfg := proxier.Config{NodeName: "node1", Scheduler: "rr", DummyLink: proxier.DefaultDummyLink,
		SyncPeriod: 30 * time.Second, MinSyncPeriod: time.Second}
	r.p = proxier.New(cfg, r.state, r.ipvs, fa, r.clk)
	if err := r.p.Setup(r.ctx); err != nil {
		t.Fatal(err)
	}
	r.state.SetSynced()
	return r
}

func (r *hostileRig) sync(full bool) {
	r.t.Helper()
	if full {
		r.clk.Step(30 * time.Second)
	} else {
		r.clk.Step(time.Second)
	}
	// Service errors are not sync errors: the sync itself must succeed.
	if err := r.p.Sync(r.ctx); err != nil {
		r.t.Fatalf("Sync: %v", err)
	}
}

// virtualServers lists the kernel's virtual servers as "KEY sched rs=N",
// with " persistent=T" for session affinity, leaving out those on the
// control Service's VIP.
func (r *hostileRig) virtualServers() (others, control []string) {
	r.t.Helper()
	vss, err := r.ipvs.Dump(r.ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, vs := range vss {
		line := fmt.Sprintf("%s %s rs=%d", vs.VirtualServerKey, vs.Scheduler, len(vs.RealServers))
		if vs.Flags&ipvs.FlagPersistent != 0 {
			line += fmt.Sprintf(" persistent=%d", vs.Timeout)
		}
		if vs.Address.String() == controlVIP {
			for _, rs := range vs.RealServers {
				line += fmt.Sprintf(" %s w%d", rs.RealServerKey, rs.Weight)
			}
			control = append(control, line)
			continue
		}
		others = append(others, line)
	}
	return others, control
}

// problems returns every Rejection (as "Kind ns/name: reason") and every
// Service error of the last sync (its own message), sorted.
func (r *hostileRig) problems() []string {
	var out []string
	for _, rej := range r.state.Rejected() {
		out = append(out, rej.String())
	}
	for _, err := range r.p.LastSync().ServiceErrors {
		out = append(out, err.Error())
	}
	slices.Sort(out)
	return out
}

// problem is a message that must be reported: it names the object (ns/name,
// and the kind for a Rejection) and contains the reason.
type problem struct {
	object, reason string
}

type hostileCase struct {
	name      string
	nodeAddrs string // "" for dual-stack
	services  []*v1.Service
	slices    []*discoveryv1.EndpointSlice
	want      []problem
	// wantSkipped are Services not programmed on this node without an error
	// (ServiceModel.Skipped): object is ns/name.
	wantSkipped []problem
	// wantVS are the virtual servers outside the control VIP, as virtualServers renders them.
	wantVS []string
	// countVS, when > 0, replaces wantVS by a count (for the big cases).
	countVS int
}

func hostileCases() []hostileCase {
	web := func(name, ip string, opts ...svcOpt) *v1.Service { return service("hostile", name, ip, opts...) }
	return []hostileCase{{
		name:     "cluster IP that is not an IP",
		services: []*v1.Service{web("bad-ip", "10.96.0.300")},
		want: []problem{{"Service hostile/bad-ip", `clusterIPs: "10.96.0.300" is not an IP address`},
			{"hostile/bad-ip", "no valid cluster IP"}},
	}, {
		name:     "IPv6 endpoint in an IPv4 slice",
		services: []*v1.Service{web("mixed", "10.96.0.5")},
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("hostile", "mixed-1", "mixed", "10.244.1.1")
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{"fd00::1"}})
			return s
		}()},
		want:   []problem{{"EndpointSlice hostile/mixed-1", `endpoint address "fd00::1" does not match the slice's address type`}},
		wantVS: []string{"TCP/10.96.0.5:80 rr rs=1"},
	}, {
		name:      "IPv6 Service on an IPv4-only node",
		nodeAddrs: ipv4OnlyNode,
		services:  []*v1.Service{web("v6", "fd00::10")},
		slices:    []*discoveryv1.EndpointSlice{slice("hostile", "v6-1", "v6", "fd00:10::1")},
		// Nothing is programmed and no Service error (an Event per Service)
		// is raised: the proxier logs the missing family once, and /status
		// shows the Service as skipped with the reason.
		want:        nil,
		wantSkipped: []problem{{"hostile/v6", "this node has no IPv6 address"}},
	}, {
		name:      "dual-stack Service on an IPv4-only node keeps its IPv4 half",
		nodeAddrs: ipv4OnlyNode,
		services:  []*v1.Service{web("dual", "10.96.0.7", clusterIPs("10.96.0.7", "fd00::7"))},
		slices:    []*discoveryv1.EndpointSlice{slice("hostile", "dual-4", "dual", "10.244.1.7"), slice("hostile", "dual-6", "dual", "fd00:10::7")},
		wantVS:    []string{"TCP/10.96.0.7:80 rr rs=1"},
	}, {
		name:     "Service port 0",
		services: []*v1.Service{web("port0", "10.96.0.8", ports(v1.ServicePort{Name: "http", Port: 0}))},
		want:     []problem{{"Service hostile/port0", "port number out of range"}},
	}, {
		name:     "Service port above 65535",
		services: []*v1.Service{web("port70k", "10.96.0.9", ports(v1.ServicePort{Name: "http", Port: 70000}))},
		want:     []problem{{"Service hostile/port70k", "port number out of range"}},
	}, {
		name:     "unknown Service protocol",
		services: []*v1.Service{web("icmp", "10.96.0.11", ports(v1.ServicePort{Name: "p", Port: 7, Protocol: "ICMP"}))},
		want:     []problem{{"Service hostile/icmp", `protocol "ICMP" is not supported`}},
	}, {
		name:     "unknown EndpointSlice port protocol and port 0",
		services: []*v1.Service{web("slice-ports", "10.96.0.12")},
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("hostile", "slice-ports-1", "slice-ports", "10.244.1.12")
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr("x"), Protocol: ptr(v1.Protocol("ICMP")), Port: ptr(int32(1))},
				discoveryv1.EndpointPort{Name: ptr("y"), Port: ptr(int32(0))})
			return s
		}()},
		want: []problem{{"EndpointSlice hostile/slice-ports-1", `port "x": protocol "ICMP" is not supported`},
			{"EndpointSlice hostile/slice-ports-1", `port "y": port number 0 out of range`}},
		wantVS: []string{"TCP/10.96.0.12:80 rr rs=1"},
	}, {
		name:     "slice without the service-name label",
		services: []*v1.Service{web("orphan", "10.96.0.13")},
		slices:   []*discoveryv1.EndpointSlice{slice("hostile", "orphan-1", "", "10.244.1.13")},
		want:     []problem{{"EndpointSlice hostile/orphan-1", "no kubernetes.io/service-name label"}},
		wantVS:   []string{"TCP/10.96.0.13:80 rr rs=0"},
	}, {
		name:     "FQDN slice",
		services: []*v1.Service{web("fqdn", "10.96.0.14")},
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("hostile", "fqdn-1", "fqdn")
			s.AddressType = discoveryv1.AddressTypeFQDN
			s.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}
			return s
		}()},
		want:   []problem{{"EndpointSlice hostile/fqdn-1", `addressType "FQDN" is not proxied`}},
		wantVS: []string{"TCP/10.96.0.14:80 rr rs=0"},
	}, {
		name:     "duplicate endpoints across slices are merged",
		services: []*v1.Service{web("dup", "10.96.0.15")},
		slices: []*discoveryv1.EndpointSlice{slice("hostile", "dup-1", "dup", "10.244.1.15", "10.244.1.16"),
			slice("hostile", "dup-2", "dup", "10.244.1.16", "10.244.1.15", "10.244.1.17")},
		wantVS: []string{"TCP/10.96.0.15:80 rr rs=3"},
	}, {
		name:     "endpoints with no address and a non-IP address",
		services: []*v1.Service{web("empty", "10.96.0.16")},
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("hostile", "empty-1", "empty", "10.244.1.18", "not-an-ip")
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{})
			return s
		}()},
		want: []problem{{"EndpointSlice hostile/empty-1", "endpoint without addresses"},
			{"EndpointSlice hostile/empty-1", `endpoint address "not-an-ip" is not an IP address`}},
		wantVS: []string{"TCP/10.96.0.16:80 rr rs=1"},
	}, {
		name: "conflicting port names",
		services: []*v1.Service{web("dupname", "10.96.0.17", ports(v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolTCP},
			v1.ServicePort{Name: "http", Port: 81, Protocol: v1.ProtocolTCP}))},
		want:   []problem{{"Service hostile/dupname", "duplicate port name and protocol"}},
		wantVS: []string{"TCP/10.96.0.17:80 rr rs=0"},
	}, {
		name:     "affinity timeout 0 takes the default",
		services: []*v1.Service{web("aff0", "10.96.0.18", affinity(ptr(int32(0))))},
		wantVS:   []string{"TCP/10.96.0.18:80 rr rs=0 persistent=10800"},
	}, {
		name:     "affinity timeout huge",
		services: []*v1.Service{web("affhuge", "10.96.0.19", affinity(ptr(int32(math.MaxInt32))))},
		wantVS:   []string{fmt.Sprintf("TCP/10.96.0.19:80 rr rs=0 persistent=%d", math.MaxInt32)},
	}, {
		name:     "unknown scheduler annotation",
		services: []*v1.Service{web("sched", "10.96.0.20", func(s *v1.Service) { s.Annotations = map[string]string{proxier.SchedulerAnnotation: "fastest"} })},
		want:     []problem{{"hostile/sched", `unknown IPVS scheduler "fastest"`}},
	}, {
		name: "LoadBalancer ingress with only a hostname",
		services: []*v1.Service{web("lbhost", "10.96.0.21", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example.com"}}
		})},
		wantVS: []string{"TCP/10.96.0.21:80 rr rs=0"},
	}, {
		name:     "invalid externalIPs",
		services: []*v1.Service{web("extip", "10.96.0.22", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"300.1.1.1", "198.51.100.22"} })},
		want:     []problem{{"Service hostile/extip", `externalIPs: "300.1.1.1" is not an IP address`}},
		wantVS:   []string{"TCP/10.96.0.22:80 rr rs=0", "TCP/198.51.100.22:80 rr rs=0"},
	}, {
		name:     "NodePort above 65535",
		services: []*v1.Service{web("np70k", "10.96.0.23", nodePort(70000))},
		want:     []problem{{"Service hostile/np70k", "nodePort 70000 out of range"}},
	}, {
		name:     "negative NodePort",
		services: []*v1.Service{web("npneg", "10.96.0.24", nodePort(-1))},
		want:     []problem{{"Service hostile/npneg", "nodePort -1 out of range"}},
	}, {
		name:     "two Services claim the same VIP:port",
		services: []*v1.Service{web("first", "10.96.0.25"), web("second", "10.96.0.25")},
		slices:   []*discoveryv1.EndpointSlice{slice("hostile", "first-1", "first", "10.244.1.25"), slice("hostile", "second-1", "second", "10.244.1.26", "10.244.1.27")},
		want:     []problem{{"hostile/second", "virtual server TCP/10.96.0.25:80 is already claimed by service hostile/first"}},
		wantVS:   []string{"TCP/10.96.0.25:80 rr rs=1"},
	}, {
		name:     "a Service claims the control Service's VIP:port",
		services: []*v1.Service{web("thief", controlVIP)},
		slices:   []*discoveryv1.EndpointSlice{slice("hostile", "thief-1", "thief", "10.244.1.66")},
		want:     []problem{{"hostile/thief", "virtual server TCP/10.96.0.1:80 is already claimed by service control/healthy"}},
	}, {
		name: "invalid loadBalancerSourceRanges and healthCheckNodePort",
		services: []*v1.Service{web("lbbad", "10.96.0.26", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33"}
		})},
		want: []problem{{"Service hostile/lbbad", `loadBalancerSourceRanges: "10.0.0.0/33" is not a CIDR`},
			{"Service hostile/lbbad", "healthCheckNodePort 0 is not a valid port"}},
		wantVS: []string{"TCP/10.96.0.26:80 rr rs=0"},
	}, {
		name:     "zoned IPv6 endpoint address",
		services: []*v1.Service{web("zoned", "fd00::27")},
		slices:   []*discoveryv1.EndpointSlice{slice("hostile", "zoned-1", "zoned", "fe80::1%eth0", "fd00:10::27")},
		want:     []problem{{"EndpointSlice hostile/zoned-1", `endpoint address "fe80::1%eth0" is not an IP address`}},
		wantVS:   []string{"TCP/[fd00::27]:80 rr rs=1"},
	}, {
		name:     "slice with 1,000 endpoints",
		services: []*v1.Service{web("big", "10.96.0.28")},
		slices:   []*discoveryv1.EndpointSlice{slice("hostile", "big-1", "big", manyAddrs(1000)...)},
		wantVS:   []string{"TCP/10.96.0.28:80 rr rs=1000"},
	}, {
		name: "20,000 Services arriving at once",
		services: func() []*v1.Service {
			out := make([]*v1.Service, 20000)
			for i := range out {
				out[i] = service("bulk", fmt.Sprintf("s%d", i), fmt.Sprintf("10.97.%d.%d", i/250, i%250+1))
			}
			return out
		}(),
		countVS: 20000,
	}}
}

func TestHostileInput(t *testing.T) {
	control := service("control", "healthy", controlVIP)
	controlSlice := slice("control", "healthy-1", "healthy", "10.244.0.1", "10.244.0.2")
	wantControl := []string{"TCP/10.96.0.1:80 rr rs=2 10.244.0.1:8080 w1 10.244.0.2:8080 w1"}
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			nodeAddrs := tc.nodeAddrs
			if nodeAddrs == "" {
				nodeAddrs = "eth0: 192.168.1.10 2001:db8::10\nlo: 127.0.0.1 ::1\n"
			}
			r := newHostileRig(t, nodeAddrs)
			r.state.OnServiceUpdate(nil, control)
			r.state.OnEndpointSliceUpdate(nil, controlSlice)
			r.sync(false)
			if _, got := r.virtualServers(); !cmp.Equal(got, wantControl) {
				t.Fatalf("control Service before the hostile objects: %v, want %v", got, wantControl)
			}

			for _, s := range tc.services {
				r.state.OnServiceUpdate(nil, s)
			}
			for _, s := range tc.slices {
				r.state.OnEndpointSliceUpdate(nil, s)
			}
			start := time.Now()
			r.sync(false) // incremental: only the hostile objects changed
			t.Logf("incremental sync with the hostile objects took %s", time.Since(start).Round(time.Millisecond))
			r.checkControl(wantControl, "incremental sync")
			r.sync(true)
			r.checkControl(wantControl, "full sync")

			got := r.problems()
			for _, w := range tc.want {
				if !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, w.object) && strings.Contains(p, w.reason) }) {
					t.Errorf("no problem naming %q with reason %q; problems:\n  %s", w.object, w.reason, strings.Join(got, "\n  "))
				}
			}
			for _, w := range tc.wantSkipped {
				ns, name, _ := strings.Cut(w.object, "/")
				var reason string
				if e := r.p.Status().Services[types.NamespacedName{Namespace: ns, Name: name}]; e != nil {
					reason = e.Model.Skipped
				}
				if !strings.Contains(reason, w.reason) {
					t.Errorf("%s skipped %q, want a reason with %q", w.object, reason, w.reason)
				}
			}
			if len(tc.want) == 0 && len(got) > 0 {
				t.Errorf("unexpected problems:\n  %s", strings.Join(got, "\n  "))
			}
			for _, p := range got {
				if strings.Contains(p, "control/healthy") && !strings.Contains(p, "claimed by service control/healthy") {
					t.Errorf("the control Service is blamed: %s", p)
				}
			}
			others, _ := r.virtualServers()
			if tc.countVS > 0 {
				if len(others) != tc.countVS {
					t.Errorf("%d virtual servers besides the control's, want %d", len(others), tc.countVS)
				}
				return
			}
			if diff := cmp.Diff(tc.wantVS, others); diff != "" {
				t.Errorf("virtual servers of the hostile objects (-want +got):\n%s", diff)
			}
		})
	}
}

// checkControl asserts that the control Service keeps exactly its virtual
// server, real servers and VIP.
func (r *hostileRig) checkControl(want []string, when string) {
	r.t.Helper()
	if _, got := r.virtualServers(); !cmp.Equal(got, want) {
		r.t.Errorf("after the %s, the control Service's virtual servers are %v, want %v", when, got, want)
	}
	bound, err := r.addrs.List(r.ctx, proxier.DefaultDummyLink)
	if err != nil {
		r.t.Fatal(err)
	}
	if !slices.ContainsFunc(bound, func(a netip.Addr) bool { return a.String() == controlVIP }) {
		r.t.Errorf("after the %s, the control VIP %s is not on the dummy link: %v", when, controlVIP, bound)
	}
}
