package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// nn parses "ns/name".
func nn(s string) types.NamespacedName {
	ns, name, _ := strings.Cut(s, "/")
	return types.NamespacedName{Namespace: ns, Name: name}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// option changes a Service under construction. Options that set addresses or
// policies apply to the ports added before them.
type option func(*endpoints.Service)

// makeService builds a Service "ns/name" with comma-separated cluster IPs.
func makeService(name, clusterIPs string, opts ...option) *endpoints.Service {
	s := &endpoints.Service{Name: nn(name), Type: v1.ServiceTypeClusterIP}
	for _, o := range opts {
		o(s)
	}
	var cips []netip.Addr
	if clusterIPs != "" {
		cips = addrs(strings.Split(clusterIPs, ",")...)
	}
	for _, p := range s.Ports {
		p.ClusterIPs = cips
	}
	return s
}

// port adds a port named name ("" allowed) with protocol proto ("TCP", "UDP", "SCTP").
func port(name, proto string, number uint16) option {
	return func(s *endpoints.Service) {
		pn := endpoints.ServicePortName{NamespacedName: s.Name, Port: name, Protocol: v1.Protocol(proto)}
		s.Ports = append(s.Ports, &endpoints.ServicePort{Name: pn, Protocol: v1.Protocol(proto), Port: number})
	}
}

// nodePort sets the NodePort of the last port added.
func nodePort(n uint16) option {
	return func(s *endpoints.Service) {
		s.Type = v1.ServiceTypeNodePort
		s.Ports[len(s.Ports)-1].NodePort = n
	}
}

func eachPort(f func(*endpoints.ServicePort)) option {
	return func(s *endpoints.Service) {
		for _, p := range s.Ports {
			f(p)
		}
	}
}

func externalIPs(ips ...string) option {
	return eachPort(func(p *endpoints.ServicePort) { p.ExternalIPs = addrs(ips...) })
}

func lbIPs(ips ...string) option {
	return func(s *endpoints.Service) {
		s.Type = v1.ServiceTypeLoadBalancer
		eachPort(func(p *endpoints.ServicePort) { p.LoadBalancerIPs = addrs(ips...) })(s)
	}
}

func affinity(seconds uint32) option {
	return eachPort(func(p *endpoints.ServicePort) { p.StickyMaxAgeSeconds = seconds })
}

func externalLocal() option {
	return eachPort(func(p *endpoints.ServicePort) { p.ExternalPolicyLocal = true })
}

func annotation(k, v string) option {
	return func(s *endpoints.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

// makeEndpoints builds endpoints from "addr:port" strings. A suffix "@node" sets
// NodeName; a prefix "~" makes the endpoint serving but terminating, "!" not ready.
func makeEndpoints(specs ...string) []*endpoints.Endpoint {
	out := make([]*endpoints.Endpoint, 0, len(specs))
	for _, s := range specs {
		ep := &endpoints.Endpoint{Ready: true, Serving: true}
		switch {
		case strings.HasPrefix(s, "~"):
			s, ep.Ready, ep.Terminating = s[1:], false, true
		case strings.HasPrefix(s, "!"):
			s, ep.Ready, ep.Serving = s[1:], false, false
		}
		s, ep.NodeName, _ = strings.Cut(s, "@")
		ap := netip.MustParseAddrPort(s)
		ep.Address, ep.Port = ap.Addr(), ap.Port()
		out = append(out, ep)
	}
	return out
}

// spn names a Service port.
func spn(svc, portName, proto string) endpoints.ServicePortName {
	return endpoints.ServicePortName{NamespacedName: nn(svc), Port: portName, Protocol: v1.Protocol(proto)}
}

// fakeSource is a Source over maps the test edits; Apply reports what changed
// since the previous Apply.
type fakeSource struct {
	services    endpoints.ServiceMap
	eps         endpoints.EndpointsMap
	node        endpoints.Node
	changed     sets.Set[types.NamespacedName]
	nodeChanged bool
	synced      bool
}

func newFakeSource() *fakeSource {
	return &fakeSource{
		services: endpoints.ServiceMap{}, eps: endpoints.EndpointsMap{},
		node: endpoints.Node{Name: "node1"}, changed: sets.New[types.NamespacedName](), synced: true,
	}
}

func (s *fakeSource) Synced() bool { return s.synced }

func (s *fakeSource) Apply() endpoints.Snapshot {
	snap := endpoints.Snapshot{Services: s.services, Endpoints: s.eps, Node: s.node, Changed: s.changed, NodeChanged: s.nodeChanged}
	s.changed, s.nodeChanged = sets.New[types.NamespacedName](), false
	return snap
}

func (s *fakeSource) setService(svc *endpoints.Service) {
	s.services[svc.Name] = svc
	s.changed.Insert(svc.Name)
}

func (s *fakeSource) deleteService(name string) {
	delete(s.services, nn(name))
	s.changed.Insert(nn(name))
}

func (s *fakeSource) setEndpoints(p endpoints.ServicePortName, eps ...*endpoints.Endpoint) {
	s.eps[p] = eps
	s.changed.Insert(p.NamespacedName)
}

// harness is a Proxier over fakes.
type harness struct {
	t     testing.TB
	ctx   context.Context
	ipvs  *ipvs.Fake
	addrs *FakeAddresses
	src   *fakeSource
	clk   *testclock.FakeClock
	cfg   Config
	p     *Proxier
}

// defaultNodeAddrs are this node's links in FakeAddresses text.
const defaultNodeAddrs = "eth0: 192.168.1.10 2001:db8::10 fe80::10\neth1: 172.16.0.10\nlo: 127.0.0.1 ::1\n"

func testConfig() Config {
	return Config{
		NodeName: "node1", Scheduler: "rr", DummyLink: DefaultDummyLink,
		SyncPeriod: 30 * time.Second, MinSyncPeriod: time.Second, DrainTimeout: 5 * time.Minute,
	}
}

// newHarness starts a Proxier with kernel state from ipvsText and addrText (in
// the fakes' text formats) and runs Setup.
func newHarness(t testing.TB, cfg Config, ipvsText, addrText string) *harness {
	t.Helper()
	fi, err := ipvs.NewFakeFromText(ipvsText)
	if err != nil {
		t.Fatalf("ipvs text: %v", err)
	}
	fa, err := NewFakeAddressesFromText(addrText)
	if err != nil {
		t.Fatalf("address text: %v", err)
	}
	h := &harness{t: t, ctx: context.Background(), ipvs: fi, addrs: fa, src: newFakeSource(),
		clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), cfg: cfg}
	h.p = New(cfg, h.src, fi, fa, h.clk)
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return h
}

// restart replaces the Proxier with a new one over the same kernel and source.
func (h *harness) restart() {
	h.p = New(h.cfg, h.src, h.ipvs, h.addrs, h.clk)
	if err := h.p.Setup(h.ctx); err != nil {
		h.t.Fatalf("Setup: %v", err)
	}
}

// sync runs one sync, fails the test on error, and returns the kernel writes it made.
func (h *harness) sync() int {
	h.t.Helper()
	w := h.ipvs.Writes() + h.addrs.Writes()
	if err := h.p.Sync(h.ctx); err != nil {
		h.t.Fatalf("Sync: %v\nkernel:\n%s", err, h.ipvs.DumpText())
	}
	return h.ipvs.Writes() + h.addrs.Writes() - w
}

// syncFull advances the clock by SyncPeriod so that the next sync is full.
func (h *harness) syncFull() int {
	h.t.Helper()
	h.clk.Step(h.cfg.SyncPeriod)
	n := h.sync()
	if !h.p.LastSync().Full {
		h.t.Fatalf("sync after SyncPeriod was not full")
	}
	return n
}

// resolve returns the real servers of a virtual server as "addr:port wN" (with
// " drain" when weight is 0), sorted, or nil when the virtual server is missing.
func (h *harness) resolve(vip string, p uint16, proto ipvs.Protocol) []string {
	h.t.Helper()
	k := ipvs.VirtualServerKey{Address: netip.MustParseAddr(vip), Protocol: proto, Port: p}
	vs := h.virtualServer(k)
	if vs == nil {
		return nil
	}
	out := []string{}
	for _, rs := range vs.RealServers {
		out = append(out, fmt.Sprintf("%s w%d", rs.RealServerKey, rs.Weight))
	}
	slices.Sort(out)
	return out
}

// virtualServer reads one virtual server from the fake kernel, nil when missing.
func (h *harness) virtualServer(k ipvs.VirtualServerKey) *ipvs.VirtualServerStatus {
	h.t.Helper()
	vss, err := ipvs.ParseDump(h.ipvs.DumpText())
	if err != nil {
		h.t.Fatal(err)
	}
	for i := range vss {
		if vss[i].VirtualServerKey == k {
			return &vss[i]
		}
	}
	return nil
}

// bound returns the addresses on the dummy link.
func (h *harness) bound() []string {
	h.t.Helper()
	as, err := h.addrs.List(h.ctx, DefaultDummyLink)
	if err != nil {
		h.t.Fatal(err)
	}
	out := []string{}
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func vsKey(vip string, p uint16, proto ipvs.Protocol) ipvs.VirtualServerKey {
	return ipvs.VirtualServerKey{Address: netip.MustParseAddr(vip), Protocol: proto, Port: p}
}
