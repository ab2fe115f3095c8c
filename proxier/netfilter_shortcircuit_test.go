package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

func TestShortCircuitMark(t *testing.T) {
	seen := map[uint32]string{}
	for i := range 2000 {
		for _, v6 := range []bool{false, true} {
			name := fmt.Sprintf("ns/s%d:http/TCP v6=%v", i, v6)
			m := ShortCircuitMark(spn(fmt.Sprintf("ns/s%d", i), "http", "TCP"), v6)
			if m&0x4000 != 0 || m&0x8000 != 0 || m&ShortCircuitMarkBit == 0 || !isShortCircuitMark(m) {
				t.Fatalf("%s: mark %#x must have bit 13 set and bits 14, 15 clear", name, m)
			}
			if m == ipvs.ProbeFWMark {
				t.Fatalf("%s: mark is the IPVS probe's", name)
			}
			if other, ok := seen[m]; ok {
				t.Errorf("%s and %s share mark %#x", name, other, m)
			}
			seen[m] = name
		}
	}
	if ShortCircuitMark(spn("ns/a", "http", "TCP"), false) != ShortCircuitMark(spn("ns/a", "http", "TCP"), false) {
		t.Errorf("mark not stable")
	}
}

func TestBuildFwmarkServers(t *testing.T) {
	node := NodeInfo{Node: endpoints.Node{Name: "node1"}, IPs: addrs("192.168.1.10"), LocalAddrs: addrs("192.168.1.10")}
	web := spn("ns/web", "http", "TCP")
	eps := endpoints.EndpointsMap{web: makeEndpoints("10.244.0.5:8080@node1", "10.244.1.5:8080@node2")}
	for _, tc := range []struct {
		name string
		svc  *endpoints.Service
		want []string
	}{{
		name: "LoadBalancer Local: cluster endpoints behind the port's mark",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), lbIPs("198.51.100.1"), nodePort(30080), externalLocal()),
		want: []string{fmt.Sprintf("fwmark %#x TCP rr flags 0x0 timeout 0 -> 10.244.0.5:8080,10.244.1.5:8080", ShortCircuitMark(web, false))},
	}, {
		name: "session affinity is kept",
		svc: makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), lbIPs("198.51.100.1"), externalLocal(),
			eachPort(func(p *endpoints.ServicePort) { p.StickyMaxAgeSeconds = 600 })),
		want: []string{fmt.Sprintf("fwmark %#x TCP rr flags 0x1 timeout 600 -> 10.244.0.5:8080,10.244.1.5:8080", ShortCircuitMark(web, false))},
	}, {
		name: "LoadBalancer Cluster: nothing",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), lbIPs("198.51.100.1")),
	}, {
		name: "ClusterIP only: nothing",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), externalLocal()),
	}} {
		t.Run(tc.name, func(t *testing.T) {
			sm := BuildService(tc.svc, eps, node, testConfig())
			if sm.Err != nil {
				t.Fatal(sm.Err)
			}
			var got []string
			for _, f := range BuildFwmarkServers(&sm, tc.svc) {
				got = append(got, f.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// newShortCircuitHarness is newNFHarness with fwmark virtual servers.
func newShortCircuitHarness(t *testing.T) (*nfHarness, *FakeFwmarkIPVS) {
	t.Helper()
	cfg := testConfig()
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	fa, err := NewFakeAddressesFromText(defaultNodeAddrs)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewFakeSysctlFromText(defaultSysctls)
	if err != nil {
		t.Fatal(err)
	}
	fw := NewFakeFwmarkIPVS()
	h := &nfHarness{
		harness: &harness{t: t, ctx: context.Background(), ipvs: ipvs.NewFake(), addrs: fa, src: newFakeSource(),
			clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), cfg: cfg},
		ipset: NewFakeIpset(), ipt: NewFakeIptables(), sysctl: sc,
	}
	h.p = New(cfg, h.src, h.ipvs, h.addrs, h.clk, WithNetfilter(NetfilterKernel{
		Sysctl: sc, Ipset: h.ipset, IPv4: h.ipt, Fwmark: fw,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return h, fw
}

// TestNetfilterShortCircuit: an externalTrafficPolicy=Local LB IP gets a
// marked entry and a fwmark virtual server with the cluster's endpoints,
// while its address-keyed virtual server keeps the local ones; resyncs write
// nothing; an endpoint change is one real-server write; a mark drifted in the
// kernel is replaced in one write; policy Cluster removes both.
func TestNetfilterShortCircuit(t *testing.T) {
	h, fw := newShortCircuitHarness(t)
	web := spn("ns/web", "http", "TCP")
	mark := ShortCircuitMark(web, false)
	lb := func(opts ...option) *endpoints.Service {
		return makeService("ns/web", "10.96.0.10", append([]option{port("http", "TCP", 80), lbIPs("198.51.100.1")}, opts...)...)
	}
	h.src.setService(lb(externalLocal()))
	h.src.setEndpoints(web, makeEndpoints("10.244.0.5:8080@node1", "10.244.1.5:8080@node2")...)
	h.sync()
	entry := fmt.Sprintf("198.51.100.1,tcp:80 skbmark %#x", mark)
	if got := h.ipset.Entries("KIPVS-SHORT-CIRCUIT"); strings.Join(got, " ") != entry {
		t.Errorf("KIPVS-SHORT-CIRCUIT = %v, want [%s]", got, entry)
	}
	wantFw := fmt.Sprintf("fwmark %#x TCP rr flags 0x0 timeout 0 -> 10.244.0.5:8080,10.244.1.5:8080\n", mark)
	if got := fw.DumpText(); got != wantFw {
		t.Errorf("fwmark servers:\n%s\nwant:\n%s", got, wantFw)
	}
	dump := h.ipvs.DumpText()
	_, lbBlock, _ := strings.Cut(dump, "198.51.100.1:80")
	lbBlock, _, _ = strings.Cut(lbBlock, "TCP ") // up to the next virtual server
	if !strings.Contains(lbBlock, "10.244.0.5:8080") || strings.Contains(lbBlock, "10.244.1.5:8080") {
		t.Errorf("the LB IP's own virtual server must keep only the local endpoint:\n%s", dump)
	}

	writes := func() int { return h.ipset.Writes() + h.ipt.Writes() + fw.Writes() }
	w := writes()
	h.syncFull()
	if n := writes() - w; n != 0 {
		t.Errorf("unchanged full resync: %d writes", n)
	}

	h.src.setEndpoints(web, makeEndpoints("10.244.0.5:8080@node1", "10.244.1.5:8080@node2", "10.244.2.5:8080@node3")...)
	w = fw.Writes()
	h.sync()
	if n := fw.Writes() - w; n != 1 || !strings.Contains(fw.DumpText(), "10.244.2.5:8080") {
		t.Errorf("a remote endpoint added: %d fwmark writes, want 1\n%s", n, fw.DumpText())
	}

	stale := IPSetEntry{IP: netip.MustParseAddr("198.51.100.1"), Protocol: ipvs.TCP, Port: 80, Mark: mark ^ 0x10000}
	if err := h.ipset.Add(h.ctx, "KIPVS-SHORT-CIRCUIT", stale); err != nil {
		t.Fatal(err)
	}
	w = h.ipset.Writes()
	h.syncFull()
	if got := h.ipset.Entries("KIPVS-SHORT-CIRCUIT"); strings.Join(got, " ") != entry || h.ipset.Writes()-w != 1 {
		t.Errorf("after repairing a drifted mark: %v in %d writes, want [%s] in 1", got, h.ipset.Writes()-w, entry)
	}

	h.src.setService(lb())
	h.sync()
	if got := h.ipset.Entries("KIPVS-SHORT-CIRCUIT"); len(got) != 0 || fw.DumpText() != "" {
		t.Errorf("policy Cluster: set %v, fwmark servers %q; want both empty", got, fw.DumpText())
	}
}

// TestFwmarkServerEqualIgnoresProtocol: a fwmark server as the kernel lists it
// (no protocol) equals the wanted one, or every full resync rewrites it.
func TestFwmarkServerEqualIgnoresProtocol(t *testing.T) {
	rs := []ipvs.RealServerKey{rsKey("10.244.0.5:8080")}
	want := FwmarkServer{Mark: ShortCircuitMark(spn("ns/web", "http", "TCP"), false), Protocol: ipvs.TCP, Scheduler: "rr", RealServers: rs}
	listed := want
	listed.Protocol = ""
	if !want.equal(listed) {
		t.Errorf("%s as listed by the kernel (%s) is not equal to it", want, listed)
	}
	listed.Scheduler = "wrr"
	if want.equal(listed) {
		t.Errorf("%s equals %s", want, listed)
	}
}
