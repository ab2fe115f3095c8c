package proxier

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/ipvs"
)

// cleanupFakes is a node's kernel in fakes: kipvs's objects next to foreign ones.
type cleanupFakes struct {
	ipvs   *ipvs.Fake
	addrs  *FakeAddresses
	v4     *FakeIptables
	ipset  *FakeIpset
	kernel CleanupKernel
}

// foreignRules are rules and chains kipvs did not write, in iptables-save format.
const foreignRules = `*nat
:PREROUTING
:OUTPUT
:POSTROUTING
:INPUT
:FOREIGN
:KUBE-KUBELET-CANARY
-A PREROUTING -j FOREIGN
-A FOREIGN -s 198.51.100.0/24 -j RETURN
COMMIT
*filter
:INPUT
:FORWARD
:OUTPUT
:KUBE-FIREWALL
:KUBE-KUBELET-CANARY
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RESTORED,DNAT -j DROP
COMMIT
`

// newCleanupFakes builds a kernel where kipvs ran (its rules as a full sync
// writes them, its sets, VIPs on kube-ipvs0, a ClusterIP and a NodePort
// virtual server) next to foreign objects: ipvsadm's 192.0.2.1:80, a
// NodePort-like virtual server whose port is not in kipvs's sets, the
// kubelet's chains, a FOREIGN chain and a FOREIGN ipset.
func newCleanupFakes(t *testing.T) *cleanupFakes {
	t.Helper()
	ctx := context.Background()
	f := &cleanupFakes{}
	var err error
	if f.ipvs, err = ipvs.NewFakeFromText(`TCP 10.0.2.15:30080 rr
  -> 10.244.0.5:8080 weight 1
TCP 10.0.2.15:30090 rr
TCP 10.96.0.10:80 rr
  -> 10.244.0.5:8080 weight 1
TCP 10.96.5.5:80 rr
UDP 10.96.0.10:53 rr
TCP 192.0.2.1:80 wlc
`); err != nil {
		t.Fatal(err)
	}
	if f.addrs, err = NewFakeAddressesFromText("kube-ipvs0: 10.96.0.10 10.96.5.5\neth0: 10.0.2.15\nlo: 127.0.0.1\n"); err != nil {
		t.Fatal(err)
	}
	if f.v4, err = NewFakeIptablesFromText(foreignRules); err != nil {
		t.Fatal(err)
	}
	var res NetfilterResult
	rs := BuildRules(RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), RandomFully: true})
	if err := ensureRules(ctx, f.v4, rs, &res); err != nil {
		t.Fatal(err)
	}
	if f.ipset, err = NewFakeIpsetFromText("FOREIGN hash:ip\n  203.0.113.7\n"); err != nil {
		t.Fatal(err)
	}
	for id := range numSets {
		if err := f.ipset.Create(ctx, SetSpec(id, false)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.ipset.Add(ctx, SetName(SetNodePortTCP, false), IPSetEntry{Port: 30080}); err != nil {
		t.Fatal(err)
	}
	// The drain set, created when a real server drains (drainset.go).
	if err := f.ipset.Create(ctx, DrainSetSpec(false)); err != nil {
		t.Fatal(err)
	}
	drain := DrainEntry(DrainKey{VirtualServer: vsKey("10.96.5.5", 80, "TCP"), RealServer: rsKey("10.244.1.5:8080")})
	if err := f.ipset.Add(ctx, DrainSetName(false), drain); err != nil {
		t.Fatal(err)
	}
	f.kernel = CleanupKernel{IPVS: f.ipvs, Links: f.addrs, IPv4: f.v4, Ipset: f.ipset}
	return f
}

func removalStrings(rs []Removal) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

// kipvsRuleRemovals are the rule and chain removals of kipvs's IPv4 rule set.
var kipvsRuleRemovals = []string{
	"rule ipv4 nat OUTPUT -m comment --comment kipvs-services -j KIPVS-SERVICES",
	"rule ipv4 nat POSTROUTING -m comment --comment kipvs-postrouting -j KIPVS-POSTROUTING",
	"rule ipv4 nat PREROUTING -m comment --comment kipvs-services -j KIPVS-SERVICES",
	"rule ipv4 filter FORWARD -m comment --comment kipvs-firewall -j KIPVS-FIREWALL",
	"rule ipv4 filter FORWARD -m comment --comment kipvs-forward -j KIPVS-FORWARD",
	"rule ipv4 filter INPUT -m comment --comment kipvs-firewall -j KIPVS-FIREWALL",
	"rule ipv4 filter INPUT -m conntrack --ctstate NEW -m comment --comment kipvs-ipvs-filter -j KIPVS-IPVS-FILTER",
	"rule ipv4 mangle OUTPUT -m conntrack --ctstate NEW -m comment --comment kipvs-output -j KIPVS-OUTPUT",
	"rule ipv4 mangle PREROUTING -m conntrack --ctstate NEW -m comment --comment kipvs-prerouting -j KIPVS-PREROUTING",
	"chain ipv4 nat KIPVS-MARK-MASQ",
	"chain ipv4 nat KIPVS-NODE-PORT",
	"chain ipv4 nat KIPVS-POSTROUTING",
	"chain ipv4 nat KIPVS-SERVICES",
	"chain ipv4 filter KIPVS-FIREWALL",
	"chain ipv4 filter KIPVS-FORWARD",
	"chain ipv4 filter KIPVS-IPVS-FILTER",
	"chain ipv4 filter KIPVS-SOURCE-RANGES",
	"chain ipv4 mangle KIPVS-OUTPUT",
	"chain ipv4 mangle KIPVS-PREROUTING",
}

var kipvsSetRemovals = []string{
	"ipset KIPVS-CLUSTER-IP", "ipset KIPVS-DRAINING", "ipset KIPVS-EXTERNAL", "ipset KIPVS-EXTERNAL-LOCAL", "ipset KIPVS-HEALTH-CHECK", "ipset KIPVS-LB-FIREWALL",
	"ipset KIPVS-LB-SOURCE-CIDR", "ipset KIPVS-LOOP-BACK", "ipset KIPVS-NO-LOCAL", "ipset KIPVS-NODE-PORT-SCTP", "ipset KIPVS-NODE-PORT-TCP",
	"ipset KIPVS-NODE-PORT-UDP", "ipset KIPVS-SHORT-CIRCUIT", "ipset KIPVS-VIPS",
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestCleanup(t *testing.T) {
	tests := []struct {
		name    string
		exclude []netip.Prefix
		want    []string
		// wantIPVS and wantAddrs are the fakes' dumps after the cleanup.
		wantIPVS, wantAddrs string
	}{
		{
			name: "removes kipvs's objects only",
			want: concat([]string{
				"virtual-server TCP/10.0.2.15:30080",
				"virtual-server UDP/10.96.0.10:53",
				"virtual-server TCP/10.96.0.10:80",
				"virtual-server TCP/10.96.5.5:80",
			}, kipvsRuleRemovals, kipvsSetRemovals, []string{
				"address 10.96.0.10 on kube-ipvs0",
				"address 10.96.5.5 on kube-ipvs0",
				"link kube-ipvs0",
			}),
			wantIPVS:  "TCP 10.0.2.15:30090 rr\nTCP 192.0.2.1:80 wlc\n",
			wantAddrs: "eth0: 10.0.2.15\nlo: 127.0.0.1\n",
		},
		{
			name:    "excluded CIDRs are untouched and keep the link",
			exclude: []netip.Prefix{netip.MustParsePrefix("10.96.5.0/24")},
			want: concat([]string{
				"virtual-server TCP/10.0.2.15:30080",
				"virtual-server UDP/10.96.0.10:53",
				"virtual-server TCP/10.96.0.10:80",
			}, kipvsRuleRemovals, kipvsSetRemovals, []string{
				"address 10.96.0.10 on kube-ipvs0",
			}),
			wantIPVS:  "TCP 10.0.2.15:30090 rr\nTCP 10.96.5.5:80 rr\nTCP 192.0.2.1:80 wlc\n",
			wantAddrs: "eth0: 10.0.2.15\nkube-ipvs0: 10.96.5.5\nlo: 127.0.0.1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newCleanupFakes(t)
			before := f.dumps()

			dry, err := Cleanup(ctx, f.kernel, DefaultDummyLink, tt.exclude, true, nil)
			if err != nil {
				t.Fatalf("dry run: %v", err)
			}
			if diff := cmp.Diff(tt.want, removalStrings(dry)); diff != "" {
				t.Errorf("dry-run plan (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, f.dumps()); diff != "" {
				t.Fatalf("dry run changed the kernel (-before +after):\n%s", diff)
			}

			var reported []string
			plan, err := Cleanup(ctx, f.kernel, DefaultDummyLink, tt.exclude, false, func(r Removal, err error) {
				if err != nil {
					t.Errorf("removing %s: %v", r, err)
				}
				reported = append(reported, r.String())
			})
			if err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			if diff := cmp.Diff(removalStrings(dry), removalStrings(plan)); diff != "" {
				t.Errorf("plan differs from the dry run's (-dry +real):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, reported); diff != "" {
				t.Errorf("reported removals (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantIPVS, ipvs.FormatDump(mustDump(t, f.ipvs))); diff != "" {
				t.Errorf("IPVS after cleanup (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAddrs, f.addrs.DumpText()); diff != "" {
				t.Errorf("links after cleanup (-want +got):\n%s", diff)
			}
			// Foreign rules, chains and sets are exactly as before; nothing of kipvs's is left.
			if diff := cmp.Diff(foreignRulesDump(t), f.v4.DumpText()); diff != "" {
				t.Errorf("iptables after cleanup (-want +got):\n%s", diff)
			}
			if got, want := f.ipset.DumpText(), "FOREIGN hash:ip\n  203.0.113.7\n"; got != want {
				t.Errorf("ipsets after cleanup:\n%s\nwant:\n%s", got, want)
			}

			again, err := Cleanup(ctx, f.kernel, DefaultDummyLink, tt.exclude, false, nil)
			if err != nil || len(again) != 0 {
				t.Errorf("second cleanup removed %q, err %v; want nothing", removalStrings(again), err)
			}
		})
	}
}

// foreignRulesDump is foreignRules as the fake dumps it.
func foreignRulesDump(t *testing.T) string {
	t.Helper()
	f, err := NewFakeIptablesFromText(foreignRules)
	if err != nil {
		t.Fatal(err)
	}
	return f.DumpText()
}

func mustDump(t *testing.T, f *ipvs.Fake) []ipvs.VirtualServerStatus {
	t.Helper()
	d, err := f.Dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dumps renders every fake, for before/after comparisons.
func (f *cleanupFakes) dumps() string {
	d, _ := f.ipvs.Dump(context.Background())
	return strings.Join([]string{ipvs.FormatDump(d), f.addrs.DumpText(), f.v4.DumpText(), f.ipset.DumpText()}, "----\n")
}

func TestApplyRemovalsGoesOnAfterFailures(t *testing.T) {
	ctx := context.Background()
	f := newCleanupFakes(t)
	// A foreign rule refers to kipvs's chain in a way cleanup does not plan
	// for: deleting that chain fails, the rest is still removed.
	if err := f.v4.Append(ctx, "nat", "FOREIGN", []string{"-j", "KIPVS-MARK-MASQ"}); err != nil {
		t.Fatal(err)
	}
	st, err := ReadCleanupState(ctx, f.kernel, DefaultDummyLink)
	if err != nil {
		t.Fatal(err)
	}
	plan := PlanCleanup(st, nil)
	// The rule in FOREIGN jumps to a KIPVS- chain: it is planned for removal,
	// since only kipvs jumps to its chains. Remove it from the plan to force a failure.
	var kept []Removal
	for _, r := range plan {
		if r.Kind == RemoveRule && r.Chain == "FOREIGN" {
			continue
		}
		kept = append(kept, r)
	}
	if len(kept) != len(plan)-1 {
		t.Fatalf("plan %q lacks the FOREIGN jump to KIPVS-MARK-MASQ", removalStrings(plan))
	}
	failed := map[string]bool{}
	err = ApplyRemovals(ctx, f.kernel, kept, func(r Removal, err error) {
		if err != nil {
			failed[r.String()] = true
		}
	})
	if err == nil || len(failed) != 1 || !failed["chain ipv4 nat KIPVS-MARK-MASQ"] {
		t.Errorf("failed removals %v, err %v; want only chain KIPVS-MARK-MASQ", failed, err)
	}
	if n := f.v4.RuleCount("KIPVS-SERVICES"); n != 0 {
		t.Errorf("KIPVS-SERVICES still has %d lines after the failure", n)
	}
}

func TestParseIptablesSaveArgs(t *testing.T) {
	text := `*nat
:KUBE-SERVICES - [0:0]
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "say \"hi\"" -j RETURN
COMMIT
`
	got, err := ParseIptablesSaveArgs(text, "nat")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][][]string{
		"KUBE-SERVICES": {{"-m", "comment", "--comment", `say "hi"`, "-j", "RETURN"}},
		"OUTPUT":        {{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
