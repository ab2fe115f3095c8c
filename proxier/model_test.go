package proxier

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// path is one expected virtual server: its backends, nil when it must not exist.
type path struct {
	vip      string
	port     uint16
	proto    ipvs.Protocol
	backends []string
}

func TestServiceTypes(t *testing.T) {
	web := spn("ns/web", "http", "TCP")
	tests := []struct {
		name     string
		cfg      func(*Config)
		services []*endpoints.Service
		eps      map[endpoints.ServicePortName][]*endpoints.Endpoint
		paths    []path
		bound    []string
		errs     map[string]string // Service -> substring of its error
	}{{
		name:     "cluster IP",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1", port("http", "TCP", 80))},
		eps:      map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080")},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w1"}},
			{"10.0.0.1", 80, ipvs.UDP, nil},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name:     "no endpoints still gets a virtual server",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1", port("http", "TCP", 80))},
		paths:    []path{{"10.0.0.1", 80, ipvs.TCP, []string{}}},
		bound:    []string{"10.0.0.1"},
	}, {
		name: "multi-port",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), port("https", "TCP", 443))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			web:                           makeEndpoints("10.1.0.1:8080"),
			spn("ns/web", "https", "TCP"): makeEndpoints("10.1.0.1:8443", "10.1.0.2:8443"),
		},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"10.0.0.1", 443, ipvs.TCP, []string{"10.1.0.1:8443 w1", "10.1.0.2:8443 w1"}},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name: "TCP and UDP on the same port",
		services: []*endpoints.Service{makeService("kube-system/dns", "10.0.0.10",
			port("dns-tcp", "TCP", 53), port("dns", "UDP", 53))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			spn("kube-system/dns", "dns-tcp", "TCP"): makeEndpoints("10.1.0.5:53"),
			spn("kube-system/dns", "dns", "UDP"):     makeEndpoints("10.1.0.5:53", "10.1.0.6:53"),
		},
		paths: []path{
			{"10.0.0.10", 53, ipvs.TCP, []string{"10.1.0.5:53 w1"}},
			{"10.0.0.10", 53, ipvs.UDP, []string{"10.1.0.5:53 w1", "10.1.0.6:53 w1"}},
		},
		bound: []string{"10.0.0.10"},
	}, {
		name:     "NodePort on every node IP of the Service's families, not loopback or link-local",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080))},
		eps:      map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"192.168.1.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"172.16.0.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"2001:db8::10", 30080, ipvs.TCP, nil},
			{"127.0.0.1", 30080, ipvs.TCP, nil},
			{"fe80::10", 30080, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name:     "dual-stack NodePort",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1,fd00:10::1", port("http", "TCP", 80), nodePort(30080))},
		eps:      map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080", "[fd00::1]:8080")},
		paths: []path{
			{"192.168.1.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"2001:db8::10", 30080, ipvs.TCP, []string{"[fd00::1]:8080 w1"}},
			{"fe80::10", 30080, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1", "fd00:10::1"},
	}, {
		name: "IPv4-only Service ignores IPv6 external IPs",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), externalIPs("198.51.100.7", "2001:db8:1::7"))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"198.51.100.7", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"2001:db8:1::7", 80, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1", "198.51.100.7"},
	}, {
		name:     "nodePortAddresses limits NodePort addresses",
		cfg:      func(c *Config) { c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")} },
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080))},
		eps:      map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"172.16.0.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"192.168.1.10", 30080, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name: "load balancer IPs",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), nodePort(30080), lbIPs("203.0.113.1", "203.0.113.2"))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"203.0.113.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"203.0.113.2", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"192.168.1.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "203.0.113.1", "203.0.113.2"},
	}, {
		name: "external IPs, a local one is not bound",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), externalIPs("198.51.100.7", "192.168.1.10"))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"198.51.100.7", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"192.168.1.10", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "198.51.100.7"},
	}, {
		name:     "IPv6 and dual-stack: real servers match the VIP's family",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1,fd00:10::1", port("http", "TCP", 80))},
		eps:      map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080", "[fd00:1::1]:8080")},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"fd00:10::1", 80, ipvs.TCP, []string{"[fd00:1::1]:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "fd00:10::1"},
	}, {
		name:     "ready endpoints only, terminating ones as fallback",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)), makeService("ns/old", "10.0.0.2", port("http", "TCP", 80))},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			web:                          makeEndpoints("10.1.0.1:8080", "!10.1.0.2:8080", "~10.1.0.3:8080"),
			spn("ns/old", "http", "TCP"): makeEndpoints("!10.1.0.4:8080", "~10.1.0.5:8080"),
		},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"10.0.0.2", 80, ipvs.TCP, []string{"10.1.0.5:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "10.0.0.2"},
	}, {
		name: "externalTrafficPolicy Local: local endpoints on external VIPs, cluster on ClusterIP",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), nodePort(30080), externalLocal())},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080@node1", "10.1.0.2:8080@node2")},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w1"}},
			{"192.168.1.10", 30080, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name: "externalTrafficPolicy Local without local endpoints: no real server (no fallback to cluster, unlike IPVS mode)",
		services: []*endpoints.Service{makeService("ns/web", "10.0.0.1",
			port("http", "TCP", 80), nodePort(30080), externalLocal())},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.2:8080@node2")},
		paths: []path{
			{"192.168.1.10", 30080, ipvs.TCP, []string{}}, // present, empty: IPVS rejects
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.2:8080 w1"}},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name: "excluded CIDRs get no virtual server",
		cfg:  func(c *Config) { c.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")} },
		services: []*endpoints.Service{
			makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), externalIPs("10.0.9.9")),
			makeService("ns/hidden", "10.0.9.1", port("http", "TCP", 80)),
		},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{web: makeEndpoints("10.1.0.1:8080")},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"10.0.9.9", 80, ipvs.TCP, nil},
			{"10.0.9.1", 80, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1"},
	}, {
		name: "an unknown scheduler annotation breaks only that Service",
		services: []*endpoints.Service{
			makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
			makeService("ns/bad", "10.0.0.2", port("http", "TCP", 80), annotation(SchedulerAnnotation, "fastest")),
		},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			web: makeEndpoints("10.1.0.1:8080"), spn("ns/bad", "http", "TCP"): makeEndpoints("10.1.0.9:8080"),
		},
		paths: []path{
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"10.0.0.2", 80, ipvs.TCP, nil},
		},
		bound: []string{"10.0.0.1"},
		errs:  map[string]string{"ns/bad": `service ns/bad: unknown IPVS scheduler "fastest" in annotation kipvs.io/scheduler`},
	}, {
		name: "two Services claiming one virtual server: the first by name wins",
		services: []*endpoints.Service{
			makeService("ns/b", "10.0.0.2", port("http", "TCP", 80), externalIPs("198.51.100.7")),
			makeService("ns/a", "10.0.0.1", port("http", "TCP", 80), externalIPs("198.51.100.7")),
		},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			spn("ns/a", "http", "TCP"): makeEndpoints("10.1.0.1:8080"),
			spn("ns/b", "http", "TCP"): makeEndpoints("10.1.0.2:8080"),
		},
		paths: []path{
			{"198.51.100.7", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
			{"10.0.0.2", 80, ipvs.TCP, []string{"10.1.0.2:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "10.0.0.2", "198.51.100.7"},
		errs:  map[string]string{"ns/b": "service ns/b: virtual server TCP/198.51.100.7:80 is already claimed by service ns/a"},
	}, {
		// The API server accepts any externalIP, another Service's cluster IP too
		// (CVE-2020-8554): the allocated cluster IP wins even against a name that
		// sorts first.
		name: "an externalIP on another Service's cluster IP does not take it",
		services: []*endpoints.Service{
			makeService("ns/a-thief", "10.0.0.1", port("http", "TCP", 80), externalIPs("10.0.0.2")),
			makeService("ns/b-owner", "10.0.0.2", port("http", "TCP", 80)),
		},
		eps: map[endpoints.ServicePortName][]*endpoints.Endpoint{
			spn("ns/a-thief", "http", "TCP"): makeEndpoints("10.1.0.1:8080"),
			spn("ns/b-owner", "http", "TCP"): makeEndpoints("10.1.0.2:8080"),
		},
		paths: []path{
			{"10.0.0.2", 80, ipvs.TCP, []string{"10.1.0.2:8080 w1"}},
			{"10.0.0.1", 80, ipvs.TCP, []string{"10.1.0.1:8080 w1"}},
		},
		bound: []string{"10.0.0.1", "10.0.0.2"},
		errs:  map[string]string{"ns/a-thief": "service ns/a-thief: virtual server TCP/10.0.0.2:80 is already claimed by service ns/b-owner"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			h := newHarness(t, cfg, "", defaultNodeAddrs)
			for _, s := range tc.services {
				h.src.setService(s)
			}
			for p, eps := range tc.eps {
				h.src.setEndpoints(p, eps...)
			}
			h.sync()
			for _, p := range tc.paths {
				if diff := cmp.Diff(p.backends, h.resolve(p.vip, p.port, p.proto)); diff != "" {
					t.Errorf("%s %s:%d (-want +got):\n%s\nkernel:\n%s", p.proto, p.vip, p.port, diff, h.ipvs.DumpText())
				}
			}
			if diff := cmp.Diff(tc.bound, h.bound()); diff != "" {
				t.Errorf("dummy link (-want +got):\n%s", diff)
			}
			gotErrs := map[string]string{}
			for n, err := range h.p.LastSync().ServiceErrors {
				gotErrs[n.String()] = err.Error()
			}
			if len(gotErrs) != len(tc.errs) {
				t.Errorf("service errors = %v, want %v", gotErrs, tc.errs)
			}
			for n, want := range tc.errs {
				if !strings.Contains(gotErrs[n], want) {
					t.Errorf("error of %s = %q, want it to contain %q", n, gotErrs[n], want)
				}
			}
		})
	}
}

func TestVirtualServerAttributes(t *testing.T) {
	tests := []struct {
		name    string
		svc     *endpoints.Service
		want    ipvs.VirtualServer
		wantErr string
	}{{
		name: "default scheduler",
		svc:  makeService("ns/web", "10.0.0.1", port("", "TCP", 80)),
		want: ipvs.VirtualServer{Scheduler: "rr"},
	}, {
		name: "ClientIP affinity is persistence with the sticky timeout",
		svc:  makeService("ns/web", "10.0.0.1", port("", "TCP", 80), affinity(10800)),
		want: ipvs.VirtualServer{Scheduler: "rr", Flags: ipvs.FlagPersistent, Timeout: 10800},
	}, {
		name: "scheduler annotation",
		svc:  makeService("ns/web", "10.0.0.1", port("", "TCP", 80), annotation(SchedulerAnnotation, "lc")),
		want: ipvs.VirtualServer{Scheduler: "lc"},
	}, {
		name: "mh hashes the source port like kube-proxy",
		svc:  makeService("ns/web", "10.0.0.1", port("", "TCP", 80), annotation(SchedulerAnnotation, "mh"), affinity(60)),
		want: ipvs.VirtualServer{Scheduler: "mh", Flags: ipvs.FlagPersistent | ipvs.FlagSHPort, Timeout: 60},
	}, {
		name:    "unknown scheduler",
		svc:     makeService("ns/web", "10.0.0.1", port("", "TCP", 80), annotation(SchedulerAnnotation, "RR")),
		wantErr: `service ns/web: unknown IPVS scheduler "RR"`,
	}, {
		name:    "unsupported protocol",
		svc:     makeService("ns/web", "10.0.0.1", port("", "ICMP", 80)),
		wantErr: `service ns/web: port ns/web: unsupported protocol "ICMP"`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sm := BuildService(tc.svc, nil, NodeInfo{}, Config{})
			if tc.wantErr != "" {
				if sm.Err == nil || !strings.Contains(sm.Err.Error(), tc.wantErr) {
					t.Fatalf("Err = %v, want %q", sm.Err, tc.wantErr)
				}
				if len(sm.VirtualServers) != 0 || len(sm.Addresses) != 0 {
					t.Fatalf("a broken Service got virtual servers %v", sm.VirtualServers)
				}
				return
			}
			if sm.Err != nil {
				t.Fatal(sm.Err)
			}
			k := vsKey("10.0.0.1", 80, ipvs.TCP)
			tc.want.VirtualServerKey = k
			dvs := sm.VirtualServers[k]
			if dvs == nil {
				t.Fatalf("no virtual server %s in %v", k, sm.VirtualServers)
			}
			if dvs.VirtualServer != tc.want {
				t.Errorf("virtual server = %+v, want %+v", dvs.VirtualServer, tc.want)
			}
		})
	}
}

func TestBuildModelConflictsAreDeterministic(t *testing.T) {
	services := endpoints.ServiceMap{}
	for _, n := range []string{"z/last", "a/first", "m/middle"} {
		services[nn(n)] = makeService(n, "", port("http", "TCP", 80), externalIPs("198.51.100.7"))
	}
	for range 20 { // map order must not matter
		m := BuildModel(services, nil, NodeInfo{}, Config{})
		k := vsKey("198.51.100.7", 80, ipvs.TCP)
		var winners []string
		for n, sm := range m.Services {
			if sm.VirtualServers[k] != nil {
				winners = append(winners, n.String())
			}
		}
		if !slices.Equal(winners, []string{"a/first"}) {
			t.Fatalf("winners = %v, want [a/first]", winners)
		}
		for _, n := range []string{"z/last", "m/middle"} {
			err := m.Services[nn(n)].Err
			if err == nil || !strings.Contains(err.Error(), "service "+n) || !strings.Contains(err.Error(), "claimed by service a/first") {
				t.Fatalf("Err of %s = %v, want it to name both Services", n, err)
			}
			if len(m.Services[nn(n)].Addresses) != 0 {
				t.Fatalf("loser %s still binds %v", n, m.Services[nn(n)].Addresses)
			}
		}
	}
}
