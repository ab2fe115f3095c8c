package proxier

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

var updateNetfilter = flag.Bool("update-netfilter", false, "rewrite the netfilter golden files in testdata/")

func TestBuildRulesGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		rc     RuleConfig
	}{
		{"rules-cluster-cidr.golden", RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), RandomFully: true}},
		{"rules-masquerade-all.golden", RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), MasqueradeAll: true, RandomFully: true}},
		{"rules-no-cluster-cidr.golden", RuleConfig{RandomFully: true}},
		{"rules-ipv6-no-random-fully.golden", RuleConfig{IPv6: true, ClusterCIDR: netip.MustParsePrefix("fd00:10::/56")}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			got := BuildRules(tc.rc).Text()
			path := filepath.Join("testdata", tc.golden)
			if *updateNetfilter {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update-netfilter to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("rules differ from %s (-want +got):\n%s", path, diff)
			}
		})
	}
}

// members renders BuildNetfilterService's result as "SET entry" strings.
func members(sm *ServiceModel, svc *endpoints.Service, eps endpoints.EndpointsMap) []string {
	out := []string{}
	for _, m := range BuildNetfilterService(sm, svc, eps, "node1") {
		out = append(out, m.String())
	}
	return out
}

func TestBuildNetfilterService(t *testing.T) {
	node := NodeInfo{Node: endpoints.Node{Name: "node1"}, IPs: addrs("192.168.1.10"), LocalAddrs: addrs("192.168.1.10")}
	web := spn("ns/web", "http", "TCP")
	webMark := fmt.Sprintf("%#x", ShortCircuitMark(web, false))
	for _, tc := range []struct {
		name string
		svc  *endpoints.Service
		eps  []*endpoints.Endpoint
		want []string
	}{{
		name: "ClusterIP with a local and a remote endpoint",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80)),
		eps:  makeEndpoints("10.244.0.5:8080@node1", "10.244.1.5:8080@node2"),
		want: []string{
			"KIPVS-CLUSTER-IP 10.96.0.10,tcp:80",
			"KIPVS-LOOP-BACK 10.244.0.5,tcp:8080,10.244.0.5",
			"KIPVS-VIPS 10.96.0.10",
		},
	}, {
		name: "NodePort with externalTrafficPolicy Cluster is masqueraded",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), nodePort(30080)),
		eps:  makeEndpoints("10.244.1.5:8080@node2"),
		want: []string{"KIPVS-CLUSTER-IP 10.96.0.10,tcp:80", "KIPVS-VIPS 10.96.0.10", "KIPVS-NODE-PORT-TCP 30080"},
	}, {
		name: "NodePort with externalTrafficPolicy Local keeps the client address",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), nodePort(30080), externalLocal()),
		eps:  makeEndpoints("10.244.0.5:8080@node1"),
		want: []string{
			"KIPVS-CLUSTER-IP 10.96.0.10,tcp:80",
			"KIPVS-LOOP-BACK 10.244.0.5,tcp:8080,10.244.0.5",
			"KIPVS-VIPS 10.96.0.10",
			"KIPVS-SHORT-CIRCUIT 192.168.1.10,tcp:30080 skbmark " + webMark,
		},
	}, {
		name: "external IPs, Cluster and Local",
		svc:  makeService("ns/web", "10.96.0.10", port("http", "UDP", 53), externalIPs("203.0.113.7")),
		eps:  makeEndpoints("10.244.1.5:53@node2"),
		want: []string{"KIPVS-CLUSTER-IP 10.96.0.10,udp:53", "KIPVS-EXTERNAL 203.0.113.7,udp:53",
			"KIPVS-VIPS 10.96.0.10", "KIPVS-VIPS 203.0.113.7"},
	}, {
		name: "LoadBalancer Local with source ranges, 0.0.0.0/0 split in halves",
		svc: makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), lbIPs("198.51.100.1"), externalLocal(),
			eachPort(func(p *endpoints.ServicePort) {
				p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"),
					netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("2001:db8::/32")}
			})),
		eps: makeEndpoints("10.244.1.5:8080@node2"),
		want: []string{
			"KIPVS-CLUSTER-IP 10.96.0.10,tcp:80",
			"KIPVS-EXTERNAL-LOCAL 198.51.100.1,tcp:80",
			"KIPVS-LB-FIREWALL 198.51.100.1,tcp:80",
			"KIPVS-LB-SOURCE-CIDR 198.51.100.1,tcp:80,0.0.0.0/1",
			"KIPVS-LB-SOURCE-CIDR 198.51.100.1,tcp:80,128.0.0.0/1",
			"KIPVS-LB-SOURCE-CIDR 198.51.100.1,tcp:80,192.0.2.0/24",
			"KIPVS-VIPS 10.96.0.10", "KIPVS-VIPS 198.51.100.1",
			// The only endpoint is on node2: the LB IP drops instead of rejecting.
			"KIPVS-NO-LOCAL 198.51.100.1,tcp:80",
			"KIPVS-SHORT-CIRCUIT 198.51.100.1,tcp:80 skbmark " + webMark,
		},
	}, {
		name: "LoadBalancer Local with a health check: LB IP on the healthCheckNodePort",
		svc: makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), lbIPs("198.51.100.1"), externalLocal(),
			eachPort(func(p *endpoints.ServicePort) { p.HealthCheckNodePort = 32100 })),
		eps: makeEndpoints("10.244.0.5:8080@node1"),
		want: []string{
			"KIPVS-CLUSTER-IP 10.96.0.10,tcp:80",
			"KIPVS-EXTERNAL-LOCAL 198.51.100.1,tcp:80",
			"KIPVS-LOOP-BACK 10.244.0.5,tcp:8080,10.244.0.5",
			"KIPVS-VIPS 10.96.0.10", "KIPVS-VIPS 198.51.100.1",
			"KIPVS-HEALTH-CHECK 198.51.100.1,tcp:32100",
			"KIPVS-SHORT-CIRCUIT 198.51.100.1,tcp:80 skbmark " + webMark,
		},
	}, {
		name: "IPv6 SCTP",
		svc:  makeService("ns/web", "fd00::10", port("http", "SCTP", 80), nodePort(30081)),
		eps:  makeEndpoints("[fd00:244::5]:80@node1"),
		want: []string{
			"KIPVS6-CLUSTER-IP fd00::10,sctp:80",
			"KIPVS6-LOOP-BACK fd00:244::5,sctp:80,fd00:244::5",
			"KIPVS6-VIPS fd00::10",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			pn := web
			pn.Protocol = tc.svc.Ports[0].Protocol
			eps := endpoints.EndpointsMap{pn: tc.eps}
			sm := BuildService(tc.svc, eps, node, testConfig())
			if sm.Err != nil {
				t.Fatal(sm.Err)
			}
			got := members(&sm, tc.svc, eps)
			want := append([]string{}, tc.want...)
			sortMembersText(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("members (-want +got):\n%s", diff)
			}
		})
	}
}

// sortMembersText orders "SET entry" strings like BuildNetfilterService: by
// set (declaration order), family, then entry.
func sortMembersText(ss []string) {
	order := map[string]int{}
	for id := range numSets {
		order[SetName(id, false)] = 2 * int(id)
		order[SetName(id, true)] = 2*int(id) + 1
	}
	key := func(s string) (int, IPSetEntry) {
		name, e, _ := strings.Cut(s, " ")
		entry, _ := ParseIPSetEntry(e)
		return order[name], entry
	}
	for i := 1; i < len(ss); i++ {
		for j := i; j > 0; j-- {
			a, ea := key(ss[j-1])
			b, eb := key(ss[j])
			if a < b || a == b && compareEntries(ea, eb) <= 0 {
				break
			}
			ss[j-1], ss[j] = ss[j], ss[j-1]
		}
	}
}

// nfHarness is a harness whose Proxier manages netfilter through fakes.
type nfHarness struct {
	*harness
	ipset  *FakeIpset
	ipt    *FakeIptables
	sysctl *FakeSysctl
}

const defaultSysctls = `
net/ipv4/ip_forward = 0
net/ipv4/vs/conntrack = 0
net/ipv4/vs/expire_nodest_conn = 0
net/ipv4/vs/expire_quiescent_template = 0
net/ipv4/vs/conn_reuse_mode = 1
net/ipv4/conf/all/arp_ignore = 0
net/ipv4/conf/all/arp_announce = 0
net/netfilter/nf_conntrack_max = 65536
net/netfilter/nf_conntrack_tcp_timeout_established = 432000
net/netfilter/nf_conntrack_tcp_timeout_close_wait = 60
net/bridge/bridge-nf-call-iptables = 1
/sys/module/nf_conntrack/parameters/hashsize = 16384
`

func newNFHarness(t testing.TB, cfg Config) *nfHarness {
	t.Helper()
	fa, err := NewFakeAddressesFromText(defaultNodeAddrs)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewFakeSysctlFromText(defaultSysctls)
	if err != nil {
		t.Fatal(err)
	}
	h := &nfHarness{
		harness: &harness{t: t, ctx: context.Background(), ipvs: ipvs.NewFake(), addrs: fa, src: newFakeSource(),
			clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), cfg: cfg},
		ipset: NewFakeIpset(), ipt: NewFakeIptables(), sysctl: sc,
	}
	h.p = New(cfg, h.src, h.ipvs, h.addrs, h.clk, WithNetfilter(NetfilterKernel{
		Sysctl: sc, Ipset: h.ipset, IPv4: h.ipt,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return h
}

// nfWrites returns the netfilter writes (ipset and iptables) of one sync.
func (h *nfHarness) nfSync(full bool) int {
	h.t.Helper()
	w := h.ipset.Writes() + h.ipt.Writes()
	if full {
		h.syncFull()
	} else {
		h.sync()
		if h.p.LastSync().Full {
			h.t.Fatalf("sync was full, want incremental")
		}
	}
	return h.ipset.Writes() + h.ipt.Writes() - w
}

func TestNetfilterSync(t *testing.T) {
	cfg := testConfig()
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	h := newNFHarness(t, cfg)
	web := makeService("ns/web", "10.96.0.10", port("http", "TCP", 80), nodePort(30080))
	h.src.setService(web)
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.244.0.5:8080@node1", "10.244.1.5:8080@node2")...)
	if n := h.sync(); n == 0 || !h.p.LastSync().Full {
		t.Fatalf("first sync: %d IPVS writes, full %v; want a full sync that writes", n, h.p.LastSync().Full)
	}
	want := BuildRules(RuleConfig{ClusterCIDR: cfg.ClusterCIDRs[0], RandomFully: true})
	for _, c := range want.Chains {
		if got := h.ipt.tables[c.Table][c.Name]; len(got) != len(c.Rules) {
			t.Errorf("chain %s/%s has %d rules, want %d", c.Table, c.Name, len(got), len(c.Rules))
		}
	}
	if got, want := h.ipset.Entries("KIPVS-CLUSTER-IP"), []string{"10.96.0.10,tcp:80"}; !cmp.Equal(got, want) {
		t.Errorf("KIPVS-CLUSTER-IP = %v, want %v", got, want)
	}
	if got, want := h.ipset.Entries("KIPVS-NODE-PORT-TCP"), []string{"30080"}; !cmp.Equal(got, want) {
		t.Errorf("KIPVS-NODE-PORT-TCP = %v, want %v", got, want)
	}

	t.Run("unchanged resyncs write nothing", func(t *testing.T) {
		if n := h.nfSync(false); n != 0 {
			t.Errorf("incremental resync with no change: %d netfilter writes", n)
		}
		if n := h.nfSync(true); n != 0 {
			t.Errorf("full resync with no change: %d netfilter writes\n%s", n, h.ipset.DumpText())
		}
	})
	t.Run("one endpoint change touches O(1) entries", func(t *testing.T) {
		for i := range 50 {
			name := fmt.Sprintf("ns/s%d", i)
			h.src.setService(makeService(name, fmt.Sprintf("10.96.1.%d", i), port("p", "TCP", 80)))
			h.src.setEndpoints(spn(name, "p", "TCP"), makeEndpoints(fmt.Sprintf("10.244.0.%d:80@node1", 10+i))...)
		}
		h.nfSync(false)
		h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.244.0.6:8080@node1", "10.244.1.5:8080@node2")...)
		reads := h.ipset.Reads() + h.ipt.Reads()
		n := h.nfSync(false)
		// The replaced endpoint drains: the drain set is created with one
		// entry per virtual server of the endpoint (ClusterIP, two NodePorts).
		if drains := h.ipset.Entries(DrainSetName(false)); len(drains) != 3 {
			t.Errorf("drain set after one endpoint was replaced: %v, want 3 entries", drains)
		}
		if n != 2+1+3 {
			t.Errorf("local endpoint replaced: %d netfilter writes, want 2 (one loop-back entry out, one in) and 4 for the drain set", n)
		}
		if r := h.ipset.Reads() + h.ipt.Reads() - reads; r != 0 {
			t.Errorf("incremental sync read the kernel %d times", r)
		}
		if got, want := h.ipset.Entries("KIPVS-LOOP-BACK")[:1], []string{"10.244.0.6,tcp:8080,10.244.0.6"}; !cmp.Equal(got, want) {
			t.Errorf("KIPVS-LOOP-BACK starts with %v, want %v", got, want)
		}
	})
	t.Run("Service deletion removes its entries", func(t *testing.T) {
		h.src.deleteService("ns/web")
		h.nfSync(false)
		for _, set := range []string{"KIPVS-NODE-PORT-TCP", "KIPVS-CLUSTER-IP", "KIPVS-VIPS"} {
			for _, e := range h.ipset.Entries(set) {
				if strings.Contains(e, "10.96.0.10") || e == "30080" {
					t.Errorf("%s still holds %s", set, e)
				}
			}
		}
	})
	t.Run("full resync repairs drift entry by entry", func(t *testing.T) {
		ctx := context.Background()
		stray := IPSetEntry{IP: netip.MustParseAddr("10.96.9.9"), Protocol: "TCP", Port: 1}
		lost := IPSetEntry{IP: netip.MustParseAddr("10.96.1.3"), Protocol: "TCP", Port: 80}
		if err := h.ipset.Add(ctx, "KIPVS-CLUSTER-IP", stray); err != nil {
			t.Fatal(err)
		}
		if err := h.ipset.Del(ctx, "KIPVS-CLUSTER-IP", lost); err != nil {
			t.Fatal(err)
		}
		if err := h.ipt.FlushChain(ctx, "nat", ChainPostrouting); err != nil {
			t.Fatal(err)
		}
		before := h.ipset.DumpText()
		if n := h.nfSync(false); n != 0 {
			t.Errorf("incremental sync with no change wrote %d times (it must not read or repair)", n)
		}
		w := h.ipset.Writes()
		h.nfSync(true)
		if n := h.ipset.Writes() - w; n != 2 {
			t.Errorf("full resync wrote %d ipset entries, want 2 (no flush and refill)", n)
		}
		got := h.ipset.Entries("KIPVS-CLUSTER-IP")
		if strings.Contains(strings.Join(got, " "), "10.96.9.9") || !strings.Contains(strings.Join(got, " "), "10.96.1.3,tcp:80") {
			t.Errorf("after repair KIPVS-CLUSTER-IP = %v\nbefore:\n%s", got, before)
		}
		want := BuildRules(RuleConfig{ClusterCIDR: cfg.ClusterCIDRs[0], RandomFully: true})
		for _, c := range want.Chains {
			if c.Name == ChainPostrouting && len(h.ipt.tables["nat"][ChainPostrouting]) != len(c.Rules) {
				t.Errorf("KIPVS-POSTROUTING has %d rules after the repair, want %d", len(h.ipt.tables["nat"][ChainPostrouting]), len(c.Rules))
			}
		}
	})
}

// TestNetfilterRuleCountIndependentOfServices checks that iptables holds the
// same rules for 10 and 5,000 Services: membership lives in the ipsets.
func TestNetfilterRuleCountIndependentOfServices(t *testing.T) {
	counts := map[int]int{}
	dumps := map[int]string{}
	for _, n := range []int{10, 5000} {
		h := newNFHarness(t, testConfig())
		for i := range n {
			name := fmt.Sprintf("ns/s%d", i)
			h.src.setService(makeService(name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), port("p", "TCP", 80), nodePort(uint16(30000+i%2000))))
			h.src.setEndpoints(spn(name, "p", "TCP"), makeEndpoints(fmt.Sprintf("10.244.%d.%d:80@node1", i/250, i%250+1))...)
		}
		h.sync() // the first sync is full
		counts[n] = h.ipt.RuleCount("KIPVS")
		dumps[n] = h.ipt.DumpText()
		if got := len(h.ipset.Entries("KIPVS-CLUSTER-IP")); got != n {
			t.Errorf("%d Services: KIPVS-CLUSTER-IP has %d entries", n, got)
		}
	}
	if counts[10] != counts[5000] || counts[10] == 0 {
		t.Errorf("KIPVS rule lines: %d with 10 Services, %d with 5000", counts[10], counts[5000])
	}
	if diff := cmp.Diff(dumps[10], dumps[5000]); diff != "" {
		t.Errorf("iptables differ between 10 and 5000 Services:\n%s", diff)
	}
}

func TestNetfilterSetup(t *testing.T) {
	cfg := testConfig()
	cfg.StrictARP = true
	cfg.Conntrack = ConntrackConfig{MaxPerCore: 32768, Min: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}
	h := newNFHarness(t, cfg)
	want := `/sys/module/nf_conntrack/parameters/hashsize = 32768
net/bridge/bridge-nf-call-iptables = 1
net/ipv4/conf/all/arp_announce = 2
net/ipv4/conf/all/arp_ignore = 1
net/ipv4/ip_forward = 1
net/ipv4/vs/conn_reuse_mode = 1
net/ipv4/vs/conntrack = 1
net/ipv4/vs/expire_nodest_conn = 1
net/ipv4/vs/expire_quiescent_template = 1
net/netfilter/nf_conntrack_max = 131072
net/netfilter/nf_conntrack_tcp_timeout_close_wait = 3600
net/netfilter/nf_conntrack_tcp_timeout_established = 86400
`
	if diff := cmp.Diff(want, h.sysctl.DumpText()); diff != "" {
		t.Errorf("sysctls after Setup (-want +got):\n%s", diff)
	}
	w := h.sysctl.Writes()
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.sysctl.Writes() - w; n != 0 {
		t.Errorf("second Setup wrote %d sysctls, want 0", n)
	}
}
