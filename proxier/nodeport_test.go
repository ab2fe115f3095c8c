package proxier

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// restartNF replaces the nfHarness's Proxier with a new one over the same
// kernel fakes (IPVS, addresses, ipsets, iptables), as a kipvs restart does.
func (h *nfHarness) restartNF() {
	h.t.Helper()
	h.p = New(h.cfg, h.src, h.ipvs, h.addrs, h.clk, WithNetfilter(NetfilterKernel{
		Sysctl: h.sysctl, Ipset: h.ipset, IPv4: h.ipt,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := h.p.Setup(h.ctx); err != nil {
		h.t.Fatalf("Setup: %v", err)
	}
}

// addForeign adds a virtual server kipvs did not create.
func (h *nfHarness) addForeign(k ipvs.VirtualServerKey) {
	h.t.Helper()
	if err := h.ipvs.AddVirtualServer(h.ctx, ipvs.VirtualServer{VirtualServerKey: k, Scheduler: "wrr"}); err != nil {
		h.t.Fatal(err)
	}
}

// TestNodePortDeletedWhileDown: a NodePort Service deleted while kipvs was not
// running loses its node-IP virtual servers at the restarted kipvs's first
// full sync (kipvs's NodePort ipsets still name its port), while foreign
// virtual servers on node IPs stay: one on a port kipvs never had, one on the
// NodePort's number with another protocol. A Local-policy NodePort with no
// local endpoint is recognised from KIPVS-NO-LOCAL.
func TestNodePortDeletedWhileDown(t *testing.T) {
	h := newNFHarness(t, testConfig())
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080")...)
	h.src.setService(makeService("ns/local", "10.0.0.2", port("http", "TCP", 80), nodePort(30081), externalLocal()))
	h.src.setEndpoints(spn("ns/local", "http", "TCP"), makeEndpoints("10.1.0.2:8080@node2")...)
	h.src.setService(makeService("ns/keep", "10.0.0.3", port("http", "TCP", 80), nodePort(30082)))
	h.src.setEndpoints(spn("ns/keep", "http", "TCP"), makeEndpoints("10.1.0.3:8080")...)
	h.sync()
	foreign := []ipvs.VirtualServerKey{
		vsKey("192.168.1.10", 31999, ipvs.TCP), // a port kipvs never had
		vsKey("192.168.1.10", 30080, ipvs.UDP), // kipvs's NodePort number, another protocol
		vsKey("10.9.9.9", 30080, ipvs.TCP),     // not a node address
	}
	for _, k := range foreign {
		h.addForeign(k)
	}
	for _, vip := range []string{"192.168.1.10", "172.16.0.10"} {
		for _, p := range []uint16{30080, 30081, 30082} {
			if h.resolve(vip, p, ipvs.TCP) == nil {
				t.Fatalf("before the restart: no virtual server %s:%d\n%s", vip, p, h.ipvs.DumpText())
			}
		}
	}

	// kipvs stops; both NodePort Services are deleted meanwhile; kipvs starts.
	h.src.deleteService("ns/web")
	h.src.deleteService("ns/local")
	h.restartNF()
	h.sync()
	if !h.p.LastSync().Full {
		t.Fatal("first sync after restart was not full")
	}
	for _, vip := range []string{"192.168.1.10", "172.16.0.10"} {
		for _, p := range []uint16{30080, 30081} {
			if got := h.resolve(vip, p, ipvs.TCP); got != nil {
				t.Errorf("NodePort %s:%d of a Service deleted while kipvs was down survived: %v", vip, p, got)
			}
		}
		if h.resolve(vip, 30082, ipvs.TCP) == nil {
			t.Errorf("NodePort %s:30082 of a live Service was removed", vip)
		}
	}
	for _, k := range foreign {
		if h.virtualServer(k) == nil {
			t.Errorf("foreign virtual server %s was removed", k)
		}
	}
	if got, want := h.ipset.Entries("KIPVS-NODE-PORT-TCP"), []string{"30082"}; !cmp.Equal(got, want) {
		t.Errorf("KIPVS-NODE-PORT-TCP = %v, want %v", got, want)
	}
	// A second restart finds nothing more to remove.
	h.restartNF()
	if n := h.sync(); n != 0 {
		t.Errorf("second restart: %d writes, want 0\n%s", n, h.ipvs.DumpText())
	}
}

func TestAdoptNodePorts(t *testing.T) {
	local := addrs("192.168.1.10", "2001:db8::10", "127.0.0.1")
	dump := []string{
		"TCP 192.168.1.10:30080", "UDP 192.168.1.10:30080", "TCP [2001:db8::10]:30080",
		"TCP 192.168.1.10:31999", "TCP 10.0.0.1:30080", "TCP 192.168.1.10:30081",
	}
	tcp, udp := ipvs.TCP, ipvs.UDP
	for _, tc := range []struct {
		name  string
		ports []NodePortMark
		keys  []string
		want  []string
	}{
		{name: "no marks", want: nil},
		{name: "IPv4 TCP port", ports: []NodePortMark{{Protocol: tcp, Port: 30080}}, want: []string{"TCP 192.168.1.10:30080"}},
		{name: "IPv6 TCP port", ports: []NodePortMark{{IPv6: true, Protocol: tcp, Port: 30080}}, want: []string{"TCP [2001:db8::10]:30080"}},
		{name: "UDP port", ports: []NodePortMark{{Protocol: udp, Port: 30080}}, want: []string{"UDP 192.168.1.10:30080"}},
		{name: "exact key", keys: []string{"TCP 192.168.1.10:30081", "TCP 10.0.0.1:30080"}, want: []string{"TCP 192.168.1.10:30081"}},
		{name: "port not in the dump", ports: []NodePortMark{{Protocol: tcp, Port: 32000}}, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewKernelState()
			for _, d := range dump {
				k := parseKey(t, d)
				s.VirtualServers[k] = &ObservedVirtualServer{VirtualServer: ipvs.VirtualServer{VirtualServerKey: k}}
			}
			marks := NodePortMarks{Ports: map[NodePortMark]struct{}{}, Keys: map[ipvs.VirtualServerKey]struct{}{}}
			for _, m := range tc.ports {
				marks.Ports[m] = struct{}{}
			}
			for _, k := range tc.keys {
				marks.Keys[parseKey(t, k)] = struct{}{}
			}
			var got, want []string
			for _, k := range s.AdoptNodePorts(local, marks) {
				got = append(got, k.String())
			}
			for _, w := range tc.want {
				want = append(want, parseKey(t, w).String())
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("adopted (-want +got):\n%s", diff)
			}
			if len(s.Owned) != len(tc.want) {
				t.Errorf("Owned has %d keys, want %d", len(s.Owned), len(tc.want))
			}
		})
	}
}

// parseKey parses "TCP 1.2.3.4:80" or "TCP [::1]:80".
func parseKey(t *testing.T, s string) ipvs.VirtualServerKey {
	t.Helper()
	vss, err := ipvs.ParseDump(s + " rr\n")
	if err != nil || len(vss) != 1 {
		t.Fatalf("parse %q: %v", s, err)
	}
	return vss[0].VirtualServerKey
}

// TestNodePortPrimary: nodePortAddresses ["primary"] puts NodePort virtual
// servers only on the Node's primary IPs that are local, follows a change of
// them, and gives none when the Node has no primary IP.
func TestNodePortPrimary(t *testing.T) {
	cfg := testConfig()
	cfg.NodePortPrimaryOnly = true
	h := newHarness(t, cfg, "", defaultNodeAddrs)
	setPrimary := func(ips ...string) {
		h.src.node = endpoints.Node{Name: "node1", PrimaryIPs: addrs(ips...)}
		h.src.nodeChanged = true
	}
	nodePorts := func() []string {
		vss, err := ipvs.ParseDump(h.ipvs.DumpText())
		if err != nil {
			t.Fatal(err)
		}
		out := []string{}
		for _, vs := range vss {
			if vs.Port >= 30000 {
				out = append(out, fmt.Sprintf("%s %s", vs.Protocol, netip.AddrPortFrom(vs.Address, vs.Port)))
			}
		}
		return out
	}
	setPrimary("192.168.1.10", "2001:db8::10")
	h.src.setService(makeService("ns/web", "10.0.0.1,fd00::1", port("http", "TCP", 80), nodePort(30080)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "[fd01::1]:8080")...)
	for _, step := range []struct {
		name    string
		primary []string
		full    bool
		want    []string
	}{
		{"dual-stack primary IPs", []string{"192.168.1.10", "2001:db8::10"}, true, []string{"TCP 192.168.1.10:30080", "TCP [2001:db8::10]:30080"}},
		{"primary IP changed", []string{"172.16.0.10"}, false, []string{"TCP 172.16.0.10:30080"}},
		{"primary IP not local", []string{"203.0.113.7"}, false, []string{}},
		{"no primary IP", nil, true, []string{}},
		{"primary IP back", []string{"192.168.1.10"}, false, []string{"TCP 192.168.1.10:30080"}},
	} {
		setPrimary(step.primary...)
		if step.full {
			h.syncFull()
		} else {
			h.sync()
		}
		if diff := cmp.Diff(step.want, nodePorts()); diff != "" {
			t.Errorf("%s: NodePort virtual servers (-want +got):\n%s", step.name, diff)
		}
	}
	if h.resolve("10.0.0.1", 80, ipvs.TCP) == nil {
		t.Errorf("the ClusterIP virtual server went away")
	}
}

func TestPrimaryNodePortIPs(t *testing.T) {
	local := addrs("127.0.0.1", "192.168.1.10", "172.16.0.10", "2001:db8::10")
	for _, tc := range []struct {
		name    string
		primary []netip.Addr
		want    []netip.Addr
	}{
		{"none", nil, []netip.Addr{}},
		{"one local", addrs("172.16.0.10"), addrs("172.16.0.10")},
		{"both families", addrs("2001:db8::10", "192.168.1.10"), addrs("192.168.1.10", "2001:db8::10")},
		{"not local", addrs("10.0.0.1"), []netip.Addr{}},
		{"loopback never", addrs("127.0.0.1"), []netip.Addr{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PrimaryNodePortIPs(local, tc.primary)
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
