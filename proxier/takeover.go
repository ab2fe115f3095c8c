package proxier

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// KubeProxyIPVSChains are the chains kube-proxy's IPVS mode creates, by table
// (k8s.io/kubernetes v1.37 pkg/proxy/ipvs/proxier.go, iptablesChains; the
// same names in ip6tables). The kubelet's chains (KUBE-FIREWALL in filter,
// KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) are not among them and are never
// touched. Kubelets before v1.28 also created KUBE-MARK-MASQ and
// KUBE-POSTROUTING in nat; such a kubelet recreates them.
var KubeProxyIPVSChains = map[string][]string{
	"nat":    {"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"},
	"filter": {"KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"},
}

// KubeProxyIPVSSets are the ipsets kube-proxy's IPVS mode creates for IPv4
// (v1.37 pkg/proxy/ipvs/ipset.go); its IPv6 sets replace the KUBE- prefix
// with KUBE-6-.
var KubeProxyIPVSSets = []string{
	"KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL",
	"KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW",
	"KUBE-LOAD-BALANCER-SOURCE-IP", "KUBE-LOAD-BALANCER-SOURCE-CIDR",
	"KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-LOCAL-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-UDP",
	"KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
	"KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
}

// isKubeProxyIPVSSet reports whether a set name is one of kube-proxy's IPVS-mode sets.
func isKubeProxyIPVSSet(name string) bool {
	if rest, ok := strings.CutPrefix(name, "KUBE-6-"); ok {
		name = "KUBE-" + rest
	}
	return slices.Contains(KubeProxyIPVSSets, name)
}

// PlanKubeProxyLeftovers returns the removals of kube-proxy's IPVS-mode
// iptables rules and ipsets found in rules and sets (as CleanupState holds
// them): the rules of other chains that jump to KubeProxyIPVSChains (the
// jumps from the builtin chains), those chains, then KubeProxyIPVSSets.
// Virtual servers are not in it: kipvs adopts kube-proxy's in place on its
// first full sync. kube-proxy's iptables- and nftables-mode leftovers
// (KUBE-SVC-*, KUBE-SEP-*, the kube-proxy nft table) are not handled.
func PlanKubeProxyLeftovers(rules map[bool]map[string]map[string][][]string, sets []string) []Removal {
	out := planChainRemovals(rules, func(table, chain string) bool {
		return slices.Contains(KubeProxyIPVSChains[table], chain)
	})
	for _, s := range slices.Sorted(slices.Values(sets)) {
		if isKubeProxyIPVSSet(s) {
			out = append(out, Removal{Kind: RemoveSet, Set: s})
		}
	}
	return out
}

// RemoveKubeProxyLeftovers reads the nat and filter tables and the ipsets
// through k, removes kube-proxy's IPVS-mode leftovers (PlanKubeProxyLeftovers)
// and returns what it planned.
func RemoveKubeProxyLeftovers(ctx context.Context, k CleanupKernel, report RemovalReport) ([]Removal, error) {
	rules, err := readRules(ctx, k)
	if err != nil {
		return nil, err
	}
	var sets []string
	if k.Ipset != nil {
		if sets, err = k.Ipset.Names(ctx); err != nil {
			return nil, err
		}
	}
	plan := PlanKubeProxyLeftovers(rules, sets)
	return plan, ApplyRemovals(ctx, k, plan, report)
}

// Takeover removes kube-proxy's IPVS-mode leftovers once kipvs's own rules are
// in place: after the first full sync that succeeded (a full sync writes the
// IPVS table, kipvs's ipsets and its iptables rules, and fails if any of that
// failed), so that a node never lacks service rules during a takeover. Both
// use mark bit 0x4000 for masquerading, so their rules agree meanwhile. The
// order also keeps conntrack enabled: the kernel registers its hooks in a
// netns only while some rule needs them (nf_ct_netns_get: MASQUERADE,
// --ctstate; IPVS itself asks only for FTP services), and removing the last
// such rule would leave new connections untracked and unmasqueraded. The
// connections kube-proxy's rules masqueraded keep their conntrack entries and
// so their source ports: iptables rules only see a connection's first packet.
// Give it to Proxier.AddObserver; it runs in the sync goroutine. A failed
// removal is retried after the next successful full sync.
type Takeover struct {
	ctx context.Context
	k   CleanupKernel

	mu      sync.Mutex
	done    bool
	removed []Removal
}

// NewTakeover returns a Takeover that removes through k; ctx bounds its work
// and carries its logger.
func NewTakeover(ctx context.Context, k CleanupKernel) *Takeover {
	return &Takeover{ctx: ctx, k: k}
}

// SyncQueued does nothing (SyncObserver).
func (t *Takeover) SyncQueued(time.Time) {}

// Synced removes the leftovers after the first successful full sync (SyncObserver).
func (t *Takeover) Synced(res SyncResult, _ *StatusSnapshot) {
	t.mu.Lock()
	done := t.done
	t.mu.Unlock()
	if done || !res.Full || res.Err != nil {
		return
	}
	logger := klog.FromContext(t.ctx)
	var removed []Removal
	plan, err := RemoveKubeProxyLeftovers(t.ctx, t.k, func(r Removal, err error) {
		if err != nil {
			logger.Info("Cannot remove kube-proxy leftover", "object", r.String(), "err", err)
			return
		}
		removed = append(removed, r)
		logger.V(2).Info("Removed kube-proxy leftover", "object", r.String())
	})
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removed = append(t.removed, removed...)
	if err != nil {
		logger.Error(err, "Removing kube-proxy's IPVS-mode leftovers failed; retrying after the next full sync")
		return
	}
	t.done = true
	if len(plan) > 0 {
		logger.Info("Removed kube-proxy's IPVS-mode iptables rules and ipsets", "objects", len(plan))
	}
}

// Removed returns the leftovers removed so far.
func (t *Takeover) Removed() []Removal {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.removed)
}

// Done reports whether the leftovers are gone.
func (t *Takeover) Done() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done
}
