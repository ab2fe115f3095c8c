package proxier

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// withOptions replaces the harness's Proxier with one built with opts.
func withOptions(h *harness, opts ...Option) {
	h.t.Helper()
	h.p = New(h.cfg, h.src, h.ipvs, h.addrs, h.clk, opts...)
	if err := h.p.Setup(h.ctx); err != nil {
		h.t.Fatalf("Setup: %v", err)
	}
}

func internalLocal() option {
	return eachPort(func(p *endpoints.ServicePort) { p.InternalPolicyLocal = true })
}

func healthCheckPort(n uint16) option {
	return eachPort(func(p *endpoints.ServicePort) { p.HealthCheckNodePort = n })
}

// hints sets zone and node hints on endpoints (nil leaves them unset).
func hints(eps []*endpoints.Endpoint, zones, nodes [][]string) []*endpoints.Endpoint {
	for i, e := range eps {
		if zones != nil {
			e.ZoneHints = zones[i]
		}
		if nodes != nil {
			e.NodeHints = nodes[i]
		}
	}
	return eps
}

// vsView renders a model's virtual servers as "KEY: rs rs [no-local]", sorted.
func vsView(sm ServiceModel) []string {
	var out []string
	for k, dvs := range sm.VirtualServers {
		s := k.String() + ":"
		for _, rk := range sortedKeys(dvs.RealServers) {
			s += " " + rk.String()
		}
		if dvs.NoLocalEndpoints {
			s += " [no-local]"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// TestTrafficPolicySemantics covers internal/externalTrafficPolicy Local,
// topology hints and the terminating fallback as the model applies them.
func TestTrafficPolicySemantics(t *testing.T) {
	web := spn("ns/web", "http", "TCP")
	zoneNode := NodeInfo{Node: endpoints.Node{Name: "node1", Zone: "zone-a"}, IPs: addrs("192.168.1.10")}
	tests := []struct {
		name    string
		svc     *endpoints.Service
		eps     []*endpoints.Endpoint
		node    NodeInfo
		want    []string
		noLocal NoLocalEndpointCounts
		health  *HealthCheck
	}{{
		name: "internalTrafficPolicy Local with a local endpoint: only it",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), internalLocal()),
		eps:  makeEndpoints("10.1.0.1:8080@node1", "10.1.0.2:8080@node2"),
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080"},
	}, {
		name:    "internalTrafficPolicy Local without local endpoints: empty and counted (drop, not fallback)",
		svc:     makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), internalLocal()),
		eps:     makeEndpoints("10.1.0.2:8080@node2"),
		want:    []string{"TCP/10.0.0.1:80: [no-local]"},
		noLocal: NoLocalEndpointCounts{Internal: FamilyCounts{IPv4: 1}},
	}, {
		name: "no endpoints anywhere: empty (rejected) but not counted",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), internalLocal()),
		eps:  makeEndpoints("!10.1.0.2:8080@node2"),
		want: []string{"TCP/10.0.0.1:80:"},
	}, {
		name: "externalTrafficPolicy Local on a LoadBalancer IP without local endpoints (#71596): LB and NodePort empty, ClusterIP keeps the cluster",
		svc: makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080), lbIPs("203.0.113.7"),
			externalLocal(), healthCheckPort(32000)),
		eps: makeEndpoints("10.1.0.2:8080@node2", "10.1.0.3:8080@node3"),
		want: []string{
			"TCP/10.0.0.1:80: 10.1.0.2:8080 10.1.0.3:8080",
			"TCP/192.168.1.10:30080: [no-local]",
			"TCP/203.0.113.7:80: [no-local]",
		},
		noLocal: NoLocalEndpointCounts{External: FamilyCounts{IPv4: 1}},
		health:  &HealthCheck{NodePort: 32000, LocalEndpoints: 0},
	}, {
		name: "externalTrafficPolicy Local on a LoadBalancer IP with a local endpoint: only it, health check counts it",
		svc: makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080), lbIPs("203.0.113.7"),
			externalLocal(), healthCheckPort(32000)),
		eps: makeEndpoints("10.1.0.1:8080@node1", "10.1.0.2:8080@node2", "~10.1.0.4:8080@node1"),
		want: []string{
			"TCP/10.0.0.1:80: 10.1.0.1:8080 10.1.0.2:8080",
			"TCP/192.168.1.10:30080: 10.1.0.1:8080",
			"TCP/203.0.113.7:80: 10.1.0.1:8080",
		},
		health: &HealthCheck{NodePort: 32000, LocalEndpoints: 1},
	}, {
		name: "externalTrafficPolicy Local with only a terminating local endpoint: it serves, health check says 0",
		svc: makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080), lbIPs("203.0.113.7"),
			externalLocal(), healthCheckPort(32000)),
		eps: makeEndpoints("~10.1.0.1:8080@node1", "10.1.0.2:8080@node2"),
		want: []string{
			"TCP/10.0.0.1:80: 10.1.0.2:8080",
			"TCP/192.168.1.10:30080: 10.1.0.1:8080",
			"TCP/203.0.113.7:80: 10.1.0.1:8080",
		},
		health: &HealthCheck{NodePort: 32000, LocalEndpoints: 0},
	}, {
		name: "no ready endpoint: serving-terminating ones are used, not-serving ones never",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps:  makeEndpoints("~10.1.0.1:8080@node2", "!10.1.0.2:8080@node2", "~10.1.0.3:8080@node1"),
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080 10.1.0.3:8080"},
	}, {
		name: "zone hints for this node's zone (PreferSameZone/PreferClose)",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps: hints(makeEndpoints("10.1.0.1:8080@node2", "10.1.0.2:8080@node3", "10.1.0.3:8080@node4"),
			[][]string{{"zone-a"}, {"zone-b"}, {"zone-a"}}, nil),
		node: zoneNode,
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080 10.1.0.3:8080"},
	}, {
		name: "zone hints not for this zone: every endpoint",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps: hints(makeEndpoints("10.1.0.1:8080@node2", "10.1.0.2:8080@node3"),
			[][]string{{"zone-b"}, {"zone-c"}}, nil),
		node: zoneNode,
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080 10.1.0.2:8080"},
	}, {
		name: "one ready endpoint without a zone hint: hints ignored",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps: hints(makeEndpoints("10.1.0.1:8080@node2", "10.1.0.2:8080@node3"),
			[][]string{{"zone-a"}, nil}, nil),
		node: zoneNode,
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080 10.1.0.2:8080"},
	}, {
		name: "node hints for this node win over zone hints (PreferSameNode)",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps: hints(makeEndpoints("10.1.0.1:8080@node1", "10.1.0.2:8080@node2", "10.1.0.3:8080@node3"),
			[][]string{{"zone-a"}, {"zone-a"}, {"zone-b"}}, [][]string{{"node1"}, {"node2"}, {"node3"}}),
		node: zoneNode,
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080"},
	}, {
		name: "node hints, none for this node: fall back to zone hints",
		svc:  makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)),
		eps: hints(makeEndpoints("10.1.0.2:8080@node2", "10.1.0.3:8080@node3"),
			[][]string{{"zone-a"}, {"zone-b"}}, [][]string{{"node2"}, {"node3"}}),
		node: zoneNode,
		want: []string{"TCP/10.0.0.1:80: 10.1.0.2:8080"},
	}, {
		name: "dual-stack: each family its own virtual servers and counts",
		svc:  makeService("ns/web", "10.0.0.1,fd00::1", port("http", "TCP", 80), internalLocal()),
		eps:  makeEndpoints("10.1.0.1:8080@node2", "[fd01::1]:8080@node1"),
		want: []string{
			"TCP/10.0.0.1:80: [no-local]",
			"TCP/[fd00::1]:80: [fd01::1]:8080",
		},
		noLocal: NoLocalEndpointCounts{Internal: FamilyCounts{IPv4: 1}},
	}, {
		name: "dual-stack: the terminating fallback is decided per family",
		svc:  makeService("ns/web", "10.0.0.1,fd00::1", port("http", "TCP", 80)),
		eps:  makeEndpoints("~10.1.0.1:8080@node2", "[fd01::1]:8080@node1", "~[fd01::2]:8080@node1"),
		want: []string{
			"TCP/10.0.0.1:80: 10.1.0.1:8080",
			"TCP/[fd00::1]:80: [fd01::1]:8080",
		},
	}, {
		name: "dual-stack on a node without IPv6: the IPv6 family is skipped",
		svc:  makeService("ns/web", "10.0.0.1,fd00::1", port("http", "TCP", 80)),
		eps:  makeEndpoints("10.1.0.1:8080@node2", "[fd01::1]:8080@node1"),
		node: NodeInfo{Node: endpoints.Node{Name: "node1"}, NoIPv6: true},
		want: []string{"TCP/10.0.0.1:80: 10.1.0.1:8080"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			node := tc.node
			if node.Name == "" {
				node = NodeInfo{Node: endpoints.Node{Name: "node1"}, IPs: addrs("192.168.1.10")}
			}
			eps := endpoints.EndpointsMap{web: tc.eps}
			sm := BuildService(tc.svc, eps, node, testConfig())
			if sm.Err != nil {
				t.Fatal(sm.Err)
			}
			if diff := cmp.Diff(tc.want, vsView(sm)); diff != "" {
				t.Errorf("virtual servers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.noLocal, sm.NoLocalEndpoints); diff != "" {
				t.Errorf("no-local counts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.health, sm.HealthCheck); diff != "" {
				t.Errorf("health check (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFamiliesFrom(t *testing.T) {
	var n NodeInfo
	n.FamiliesFrom(addrs("127.0.0.1", "192.168.1.10"))
	if n.NoIPv4 || !n.NoIPv6 {
		t.Errorf("IPv4-only node: NoIPv4=%v NoIPv6=%v", n.NoIPv4, n.NoIPv6)
	}
	n.FamiliesFrom(addrs("127.0.0.1", "::1"))
	if n.NoIPv4 || n.NoIPv6 {
		t.Errorf("dual-stack node: NoIPv4=%v NoIPv6=%v", n.NoIPv4, n.NoIPv6)
	}
}

// TestProxierSkipsMissingFamily checks that a node without IPv6 programs the
// IPv4 half of a dual-stack Service and nothing of the IPv6 half, and that
// IPv6-only Services are skipped with one log line for the family, not a
// Service error (and so a log line and an Event) per Service; /status shows
// them as skipped.
func TestProxierSkipsMissingFamily(t *testing.T) {
	h := newHarness(t, testConfig(), "", "eth0: 192.168.1.10\nlo: 127.0.0.1\n")
	logs := &logLines{}
	h.ctx = klog.NewContext(h.ctx, funcr.New(logs.add, funcr.Options{}))
	withOptions(h)
	events := &eventLog{}
	h.p.AddObserver(NewEventReporter(events, nil, h.clk, funcr.New(logs.add, funcr.Options{})))
	h.src.setService(makeService("ns/web", "10.0.0.1,fd00::1", port("http", "TCP", 80)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "[fd01::1]:8080")...)
	for _, name := range []string{"ns/v6a", "ns/v6b"} {
		h.src.setService(makeService(name, map[string]string{"ns/v6a": "fd00::10", "ns/v6b": "fd00::11"}[name], port("http", "TCP", 80)))
		h.src.setEndpoints(spn(name, "http", "TCP"), makeEndpoints("[fd01::10]:8080")...)
	}
	h.sync()
	if err := h.p.LastSync().Err; err != nil {
		t.Fatal(err)
	}
	h.clk.Step(DefaultEventInterval + time.Second)
	h.syncFull()

	if errs := h.p.LastSync().ServiceErrors; len(errs) > 0 {
		t.Errorf("Service errors: %v", errs)
	}
	if got := events.take(); len(got) > 0 {
		t.Errorf("Events: %v", got)
	}
	var family []string
	for _, l := range logs.lines {
		if strings.Contains(l, "fd00::1") || strings.Contains(l, "v6a") || strings.Contains(l, "v6b") || strings.Contains(l, "Cannot program") {
			t.Errorf("log line naming a Service: %s", l)
		}
		if strings.Contains(l, "Node has no address of this family") {
			family = append(family, l)
		}
	}
	if len(family) != 1 || !strings.Contains(family[0], `"family"="IPv6"`) {
		t.Errorf("want one log line for the missing IPv6 family, got %q", family)
	}
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("IPv4 half of the dual-stack Service (-want +got):\n%s", diff)
	}
	for _, vip := range []string{"fd00::1", "fd00::10", "fd00::11"} {
		if got := h.resolve(vip, 80, ipvs.TCP); got != nil {
			t.Errorf("virtual server on %s: %v", vip, got)
		}
	}
	if diff := cmp.Diff([]string{"10.0.0.1"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
	st := h.p.BuildStatus(h.ctx, StatusQuery{}, StatusOptions{})
	skipped := map[string]string{}
	for _, sp := range st.Services {
		if sp.Error != "" {
			t.Errorf("/status error on %s: %s", sp.Name, sp.Error)
		}
		skipped[sp.Name] = sp.Skipped
	}
	for _, name := range []string{"ns/v6a:http", "ns/v6b:http"} {
		if !strings.Contains(skipped[name], "this node has no IPv6 address") {
			t.Errorf("/status of %s: skipped %q, want the missing family", name, skipped[name])
		}
	}
	if skipped["ns/web:http"] != "" {
		t.Errorf("/status marks the dual-stack Service skipped: %q", skipped["ns/web:http"])
	}
	if len(st.Rejected) > 0 {
		t.Errorf("/status rejected: %v", st.Rejected)
	}
}

// logLines collects funcr's formatted log lines.
type logLines struct{ lines []string }

func (l *logLines) add(prefix, args string) { l.lines = append(l.lines, prefix+" "+args) }

// conntrackHarness syncs ns/dns (UDP 10.0.0.10:53, NodePort 30053) with two
// endpoints and a Proxier that clears conntrack entries in ct.
func conntrackHarness(t *testing.T, ct *FakeConntrack) *harness {
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	withOptions(h, WithConntrack(ct))
	h.src.setService(makeService("ns/dns", "10.0.0.10", port("dns", "UDP", 53), nodePort(30053)))
	h.src.setEndpoints(spn("ns/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53", "10.1.0.6:53")...)
	h.sync()
	return h
}

const conntrackEntries = `
UDP 10.2.0.1:40000 -> 10.0.0.10:53 reply 10.1.0.5:53
UDP 10.2.0.1:40001 -> 10.0.0.10:53 reply 10.1.0.6:53
UDP 10.2.0.2:40000 -> 192.168.1.10:30053 reply 10.1.0.6:53
UDP 10.2.0.3:40000 -> 10.0.0.99:53 reply 10.1.0.6:53
TCP 10.2.0.1:40000 -> 10.0.0.10:53 reply 10.1.0.6:53
`

func TestConntrackClearedWhenEndpointGoes(t *testing.T) {
	ct, err := NewFakeConntrack(conntrackEntries)
	if err != nil {
		t.Fatal(err)
	}
	h := conntrackHarness(t, ct)
	if got, err := NewFakeConntrack(conntrackEntries); err != nil || got.DumpText() != ct.DumpText() {
		t.Fatalf("a sync without removed endpoints changed conntrack:\n%s", ct.DumpText())
	}
	h.src.setEndpoints(spn("ns/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53")...)
	h.sync()
	// Entries of the removed endpoint on the ClusterIP and the NodePort go; the
	// kept endpoint's, another VIP's and TCP entries stay.
	want := "TCP 10.2.0.1:40000 -> 10.0.0.10:53 reply 10.1.0.6:53\n" +
		"UDP 10.2.0.1:40000 -> 10.0.0.10:53 reply 10.1.0.5:53\n" +
		"UDP 10.2.0.3:40000 -> 10.0.0.99:53 reply 10.1.0.6:53\n"
	if diff := cmp.Diff(want, ct.DumpText()); diff != "" {
		t.Errorf("conntrack after the endpoint left (-want +got):\n%s", diff)
	}
}

func TestConntrackClearedOnFirstEndpointAndRetried(t *testing.T) {
	ct, err := NewFakeConntrack("")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	withOptions(h, WithConntrack(ct))
	h.src.setService(makeService("ns/dns", "10.0.0.10", port("dns", "UDP", 53)))
	h.sync()
	// A datagram sent while the Service had no endpoint left an unNATed entry.
	stale := ConntrackEntry{Protocol: ipvs.UDP, OrigSrc: netip.MustParseAddrPort("10.2.0.1:40000"),
		OrigDst: netip.MustParseAddrPort("10.0.0.10:53"), ReplySrc: netip.MustParseAddrPort("10.0.0.10:53")}
	ct.Add(stale)
	ct.SetError(errors.New("netlink: interrupted"))
	h.src.setEndpoints(spn("ns/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53")...)
	h.sync()
	if ct.DumpText() != stale.String()+"\n" {
		t.Fatalf("failing conntrack deleted entries:\n%s", ct.DumpText())
	}
	ct.SetError(nil)
	h.sync() // nothing changed: only the retry
	if got := ct.DumpText(); got != "" {
		t.Errorf("stale entry not cleared by the retry after the first endpoint appeared:\n%s", got)
	}
}

func TestConntrackFilterMatches(t *testing.T) {
	f := ConntrackFilter{
		VirtualServer: ipvs.VirtualServerKey{Address: netip.MustParseAddr("fd00::10"), Protocol: ipvs.UDP, Port: 53},
		Keep:          []ipvs.RealServerKey{{Address: netip.MustParseAddr("fd01::5"), Port: 53}},
	}
	tests := []struct {
		proto            ipvs.Protocol
		origDst, replySr string
		want             bool
	}{
		{ipvs.UDP, "[fd00::10]:53", "[fd01::6]:53", true},
		{ipvs.UDP, "[fd00::10]:53", "[fd01::5]:53", false},
		{ipvs.UDP, "[fd00::10]:53", "[fd01::5]:54", true},
		{ipvs.UDP, "[fd00::10]:54", "[fd01::6]:53", false},
		{ipvs.TCP, "[fd00::10]:53", "[fd01::6]:53", false},
	}
	for _, tc := range tests {
		if got := f.Matches(tc.proto, netip.MustParseAddrPort(tc.origDst), netip.MustParseAddrPort(tc.replySr)); got != tc.want {
			t.Errorf("%s %s reply %s: match %v, want %v", tc.proto, tc.origDst, tc.replySr, got, tc.want)
		}
	}
}

// TestDrainSchedulesSyncs checks that while a real server drains the proxier
// asks its runner for a sync within the poll interval, or at the drain's
// deadline when sooner, and asks nothing once no drain is left.
func TestDrainSchedulesSyncs(t *testing.T) {
	for _, tc := range []struct {
		name         string
		drainTimeout time.Duration
		want         time.Duration
	}{
		{"poll interval", 5 * time.Minute, minDrainPoll},
		{"deadline sooner than the poll", 300 * time.Millisecond, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := drainHarness(t, tc.drainTimeout)
			start := h.p.LastSync().Time
			if got := h.p.runner.takeWake(true); !got.Equal(start.Add(tc.want)) {
				t.Errorf("next sync asked at %v, want %v after the sync (%v)", got, tc.want, start.Add(tc.want))
			}
			if err := h.ipvs.SetConnections(vsKey("10.0.0.1", 80, ipvs.TCP), rsKey("10.1.0.2:8080"), 0, 0); err != nil {
				t.Fatal(err)
			}
			h.clk.Step(minDrainPoll)
			h.sync()
			if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 1 {
				t.Fatalf("idle drained real server not deleted: %v", got)
			}
			if got := h.p.runner.takeWake(true); !got.IsZero() {
				t.Errorf("next sync asked at %v with no drain left", got)
			}
		})
	}
}

// TestRunnerRunAt checks that RunAt brings the next run forward but never
// sooner than MinInterval after the previous one.
func TestRunnerRunAt(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewRunner(nil, time.Second, time.Minute, nil)
	r.RunAt(base.Add(3 * time.Second))
	r.RunAt(base.Add(10 * time.Second)) // later: the earlier one stays
	if due, ok := r.nextRun(base, base, true, false, time.Time{}); !ok || !due.Equal(base.Add(3*time.Second)) {
		t.Errorf("next run %v (%v), want 3s after the last", due, ok)
	}
	r.takeWake(true)
	r.RunAt(base.Add(100 * time.Millisecond))
	if due, ok := r.nextRun(base, base, true, false, time.Time{}); !ok || !due.Equal(base.Add(time.Second)) {
		t.Errorf("next run %v (%v), want MinInterval after the last", due, ok)
	}
}

var _ = v1.ProtocolTCP
