package proxier

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// kubeProxyIPVSRules is what kube-proxy v1.37 in IPVS mode leaves in nat and
// filter (abridged), next to the kubelet's chains.
const kubeProxyIPVSRules = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RESTORED,DNAT -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-PROXY-FIREWALL -m set --match-set KUBE-LOAD-BALANCER-FW dst,dst -j KUBE-SOURCE-RANGES-FIREWALL
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
COMMIT
`

// takeoverFakes is a node where kube-proxy's IPVS mode ran and kipvs's full
// sync then wrote its own rules and sets.
func takeoverFakes(t *testing.T) (*FakeIptables, *FakeIpset) {
	t.Helper()
	ctx := context.Background()
	ipt, err := NewFakeIptablesFromText(kubeProxyIPVSRules)
	if err != nil {
		t.Fatal(err)
	}
	sets, err := NewFakeIpsetFromText(`KUBE-CLUSTER-IP hash:ip,port
  10.96.0.10,tcp:80
KUBE-6-CLUSTER-IP hash:ip,port inet6
KUBE-IPVS-IPS hash:ip
KUBE-NODE-PORT-TCP bitmap:port
KUBE-LOAD-BALANCER-FW hash:ip,port
KUBE-HEALTH-CHECK-NODE-PORT bitmap:port
KUBE-LOOP-BACK hash:ip,port,ip
KUBE-SOMEONE-ELSES hash:ip
`)
	if err != nil {
		t.Fatal(err)
	}
	var res NetfilterResult
	if err := ensureRules(ctx, ipt, BuildRules(RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), RandomFully: true}), &res); err != nil {
		t.Fatal(err)
	}
	for id := range numSets {
		if err := sets.Create(ctx, SetSpec(id, false)); err != nil {
			t.Fatal(err)
		}
	}
	return ipt, sets
}

func TestTakeover(t *testing.T) {
	ctx := context.Background()
	ipt, sets := takeoverFakes(t)
	kipvsBefore := ipt.RuleCount("KIPVS")
	tk := NewTakeover(ctx, CleanupKernel{IPv4: ipt, Ipset: sets})

	// Nothing happens before a successful full sync.
	for _, res := range []SyncResult{{Full: false}, {Full: true, Err: errors.New("netfilter: failed")}} {
		tk.Synced(res, nil)
		if tk.Done() || ipt.RuleCount("KUBE-SERVICES") == 0 {
			t.Fatalf("takeover ran after sync %+v", res)
		}
	}
	tk.Synced(SyncResult{Full: true}, nil)
	if !tk.Done() {
		t.Fatal("takeover not done after a successful full sync")
	}
	got := removalStrings(tk.Removed())
	want := []string{
		"rule ipv4 nat OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"rule ipv4 nat POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
		"rule ipv4 nat PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"rule ipv4 filter FORWARD -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL",
		"rule ipv4 filter FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
		"rule ipv4 filter INPUT -m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT",
		"rule ipv4 filter INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL",
		"rule ipv4 filter INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER",
		"rule ipv4 filter OUTPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-OUT-FILTER",
		"chain ipv4 nat KUBE-LOAD-BALANCER",
		"chain ipv4 nat KUBE-MARK-MASQ",
		"chain ipv4 nat KUBE-NODE-PORT",
		"chain ipv4 nat KUBE-POSTROUTING",
		"chain ipv4 nat KUBE-SERVICES",
		"chain ipv4 filter KUBE-FORWARD",
		"chain ipv4 filter KUBE-IPVS-FILTER",
		"chain ipv4 filter KUBE-IPVS-OUT-FILTER",
		"chain ipv4 filter KUBE-NODE-PORT",
		"chain ipv4 filter KUBE-PROXY-FIREWALL",
		"chain ipv4 filter KUBE-SOURCE-RANGES-FIREWALL",
		"ipset KUBE-6-CLUSTER-IP",
		"ipset KUBE-CLUSTER-IP",
		"ipset KUBE-HEALTH-CHECK-NODE-PORT",
		"ipset KUBE-IPVS-IPS",
		"ipset KUBE-LOAD-BALANCER-FW",
		"ipset KUBE-LOOP-BACK",
		"ipset KUBE-NODE-PORT-TCP",
	}
	// The fake keeps rules normalized: a quoted comment comes back as words.
	for i := range want {
		want[i] = strings.ReplaceAll(want[i], `"`, "")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	// The kubelet's chains, kipvs's rules and sets, and a set kube-proxy does not make stay.
	dump := ipt.DumpText()
	for _, keep := range []string{":KUBE-KUBELET-CANARY", ":KUBE-FIREWALL", "-A INPUT -j KUBE-FIREWALL", "block incoming localnet connections"} {
		if !strings.Contains(dump, keep) {
			t.Errorf("takeover removed %q:\n%s", keep, dump)
		}
	}
	if n := ipt.RuleCount("KIPVS"); n != kipvsBefore {
		t.Errorf("kipvs's rules: %d lines before, %d after", kipvsBefore, n)
	}
	names, _ := sets.Names(ctx)
	for _, n := range names {
		if strings.HasPrefix(n, "KUBE-") && n != "KUBE-SOMEONE-ELSES" {
			t.Errorf("kube-proxy set %s left", n)
		}
	}
	if !strings.Contains(strings.Join(names, " "), "KUBE-SOMEONE-ELSES") || len(names) != int(numSets)+1 {
		t.Errorf("sets after takeover: %v", names)
	}

	// Later syncs do nothing, and a second run would find nothing.
	writes := ipt.Writes()
	tk.Synced(SyncResult{Full: true}, nil)
	if ipt.Writes() != writes || len(tk.Removed()) != len(want) {
		t.Errorf("takeover wrote again after it was done")
	}
	if plan, err := RemoveKubeProxyLeftovers(ctx, CleanupKernel{IPv4: ipt, Ipset: sets}, nil); err != nil || len(plan) != 0 {
		t.Errorf("second removal planned %q, err %v", removalStrings(plan), err)
	}
}

func TestIsKubeProxyIPVSSet(t *testing.T) {
	for name, want := range map[string]bool{
		"KUBE-CLUSTER-IP": true, "KUBE-6-CLUSTER-IP": true, "KUBE-6-NODE-PORT-LOCAL-SCTP-HASH": true,
		"KUBE-IPVS-IPS": true, "KUBE-6-IPVS-IPS": true, "KIPVS-CLUSTER-IP": false, "KUBE-KUBELET-CANARY": false,
		"KUBE-SOMETHING": false, "KUBE-6-": false,
	} {
		if got := isKubeProxyIPVSSet(name); got != want {
			t.Errorf("isKubeProxyIPVSSet(%q) = %v, want %v", name, got, want)
		}
	}
}
