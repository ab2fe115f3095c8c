package proxier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/endpoints"
)

// NetfilterKernel holds the kernel boundaries of kipvs's netfilter layer and
// kernel settings. A nil Sysctl skips the kernel settings; nil Ipset or both
// Iptables nil skip the netfilter layer; a nil IPv6 handles only IPv4.
type NetfilterKernel struct {
	Sysctl     Sysctl
	Ipset      Ipset
	IPv4, IPv6 Iptables
	// Fwmark manages the firewall-mark virtual servers that short-circuit
	// in-cluster traffic to externalTrafficPolicy=Local addresses (#115931);
	// nil leaves such traffic to the local endpoints only.
	Fwmark FwmarkIPVS
	// KernelRelease returns `uname -r` (default: uname(2)); NumCPU the CPU
	// count for conntrack sizing (default: runtime.NumCPU).
	KernelRelease func() (string, error)
	NumCPU        func() int
}

// NewNetfilterKernel opens the real kernel boundaries: /proc/sys, ipsets over
// netlink and the iptables backend the node uses (DetectIptablesMode). IPv6 is
// handled when ip6tables of that backend works. The returned string says which
// backend was chosen and why, for the log.
func NewNetfilterKernel(ctx context.Context) (NetfilterKernel, string, error) {
	mode, reason, err := DetectIptablesMode(ctx, ExecRunner)
	if err != nil {
		return NetfilterKernel{}, "", err
	}
	v4, err := NewGoIptables(mode, false)
	if err != nil {
		return NetfilterKernel{}, "", err
	}
	sets, err := OpenNetlinkIpset()
	if err != nil {
		return NetfilterKernel{}, "", err
	}
	k := NetfilterKernel{Sysctl: NewProcSysctl(), Ipset: sets, IPv4: v4}
	msg := fmt.Sprintf("iptables backend %s: %s", mode, reason)
	if fw, err := NewMobyFwmarkIPVS(); err == nil {
		k.Fwmark = fw
	} else {
		msg += fmt.Sprintf("; in-cluster traffic to externalTrafficPolicy=Local addresses is not short-circuited: %v", err)
	}
	if v6, err := NewGoIptables(mode, true); err == nil {
		k.IPv6 = v6
	} else {
		msg += fmt.Sprintf("; IPv6 not handled: %v", err)
	}
	return k, msg, nil
}

// Close releases what NewNetfilterKernel opened (the ipset netlink sockets).
func (k NetfilterKernel) Close() error {
	if c, ok := k.Ipset.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// unameRelease returns the running kernel's release.
func unameRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// NetfilterResult counts the writes of one netfilter sync.
type NetfilterResult struct {
	Full bool
	// SetsCreated, EntriesAdded and EntriesDeleted count ipset writes that
	// succeeded; RuleWrites the iptables writes (chains created, flushed,
	// rules appended or inserted); Failed the writes that failed.
	SetsCreated, EntriesAdded, EntriesDeleted, RuleWrites, Failed int
	// FwmarkWrites counts writes to fwmark virtual servers and their real servers.
	FwmarkWrites int
}

// Writes is the number of writes tried.
func (r NetfilterResult) Writes() int {
	return r.SetsCreated + r.EntriesAdded + r.EntriesDeleted + r.RuleWrites + r.FwmarkWrites + r.Failed
}

// netfilter keeps kipvs's ipsets and iptables rules in line with the model.
// Only the sync goroutine uses it. A nil *netfilter does nothing.
type netfilter struct {
	k        NetfilterKernel
	families []bool // IPv6 flags of the families handled
	rules    map[bool]RuleSet
	specs    map[string]IPSetSpec
	nodeName string

	perSvc map[types.NamespacedName][]SetMember
	// fwPerSvc are the fwmark virtual servers each Service wants, markOwner
	// the Service that owns each short-circuit mark, fwObserved the kernel's
	// fwmark servers as last read or written.
	fwPerSvc   map[types.NamespacedName][]FwmarkServer
	markOwner  map[uint32]types.NamespacedName
	fwObserved map[fwmarkKey]FwmarkServer
	desired    map[string]map[IPSetEntry]int
	observed   map[string]map[IPSetEntry]struct{}
	dirty      map[types.NamespacedName]struct{}
	needFull   bool
	last       NetfilterResult
}

// UseNetfilter makes the Proxier manage kernel settings (in Setup), ipsets and
// iptables rules (in every sync) through k. Call it before Setup.
func (p *Proxier) UseNetfilter(k NetfilterKernel) {
	n := &netfilter{
		k: k, rules: map[bool]RuleSet{}, specs: map[string]IPSetSpec{}, nodeName: p.cfg.NodeName,
		perSvc: map[types.NamespacedName][]SetMember{}, desired: map[string]map[IPSetEntry]int{},
		fwPerSvc: map[types.NamespacedName][]FwmarkServer{}, markOwner: map[uint32]types.NamespacedName{},
		observed: map[string]map[IPSetEntry]struct{}{}, dirty: map[types.NamespacedName]struct{}{}, needFull: true,
	}
	if n.k.KernelRelease == nil {
		n.k.KernelRelease = unameRelease
	}
	if n.k.NumCPU == nil {
		n.k.NumCPU = runtime.NumCPU
	}
	if k.Ipset != nil {
		p.drainSet = newDrainSet(k.Ipset)
		for _, v6 := range []bool{false, true} {
			if n.iptables(v6) != nil {
				n.families = append(n.families, v6)
			}
		}
	}
	p.nf = n
}

// WithNetfilter is the Option form of UseNetfilter.
func WithNetfilter(k NetfilterKernel) Option {
	return func(p *Proxier) { p.UseNetfilter(k) }
}

// LastNetfilterSync returns the counts of the latest netfilter sync.
func (p *Proxier) LastNetfilterSync() NetfilterResult {
	if p.nf == nil {
		return NetfilterResult{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nf.last
}

func (n *netfilter) iptables(v6 bool) Iptables {
	if v6 {
		return n.k.IPv6
	}
	return n.k.IPv4
}

// setup applies the kernel settings and computes the fixed rules.
func (n *netfilter) setup(ctx context.Context, cfg *Config) error {
	if n == nil {
		return nil
	}
	logger := klog.FromContext(ctx)
	if n.k.Sysctl != nil {
		release, err := n.k.KernelRelease()
		if err != nil {
			logger.Info("Cannot read the kernel version; conn_reuse_mode is left as is", "err", err)
		}
		settings, notes := KernelSettings(*cfg, release, n.k.NumCPU())
		for _, note := range notes {
			logger.V(2).Info("Kernel setting", "note", note)
		}
		changed, warnings, err := ApplyKernelSettings(ctx, n.k.Sysctl, settings)
		for _, w := range warnings {
			logger.Info("Warning: kernel setting", "warning", w)
		}
		if err != nil {
			return fmt.Errorf("applying kernel settings: %w", err)
		}
		logger.Info("Kernel settings applied", "changed", changed, "kernel", release)
		if v, err := n.k.Sysctl.Get(ctx, SysctlBridgeNFCallIptables); err != nil || v != "1" {
			logger.Info("Warning: br_netfilter is not loaded or bridge-nf-call-iptables is not 1: "+
				"traffic between pods on one bridge may skip masquerading", "value", v, "err", err)
		}
	}
	for _, v6 := range n.families {
		ipt := n.iptables(v6)
		rc := RuleConfig{IPv6: v6, MasqueradeAll: cfg.MasqueradeAll, RandomFully: ipt.RandomFully()}
		for _, c := range cfg.ClusterCIDRs {
			if c.Addr().Is6() == v6 {
				rc.ClusterCIDR = c
			}
		}
		if !rc.RandomFully {
			logger.Info("Warning: iptables lacks MASQUERADE --random-fully; masquerading without it", "ipv6", v6)
		}
		n.rules[v6] = BuildRules(rc)
		for id := range numSets {
			spec := SetSpec(id, v6)
			n.specs[spec.Name] = spec
		}
		logger.Info("Netfilter layer", "ipv6", v6, "iptablesBackend", ipt.Mode(), "clusterCIDR", rc.ClusterCIDR,
			"masqueradeAll", rc.MasqueradeAll, "chains", len(n.rules[v6].Chains), "sets", int(numSets))
	}
	return nil
}

// markDirty notes a Service whose effective model was replaced.
func (n *netfilter) markDirty(name types.NamespacedName) {
	if n != nil {
		n.dirty[name] = struct{}{}
	}
}

// sync brings the ipsets (and on full syncs the iptables rules) in line with
// the effective models. An incremental sync touches only the entries of dirty
// Services; a full sync lists every set once, repairs drift entry by entry
// (sets are never flushed) and ensures the fixed chains and jumps.
func (n *netfilter) sync(ctx context.Context, full bool, effective map[types.NamespacedName]*ServiceModel, snap *endpoints.Snapshot) (NetfilterResult, error) {
	if n == nil || len(n.families) == 0 {
		return NetfilterResult{}, nil
	}
	full = full || n.needFull
	res := NetfilterResult{Full: full}
	var err error
	if full {
		err = n.syncFull(ctx, effective, snap, &res)
	} else {
		n.syncIncremental(ctx, effective, snap, &res, &err)
	}
	clear(n.dirty)
	n.needFull = err != nil
	klog.FromContext(ctx).V(2).Info("Synced netfilter", "full", full, "entriesAdded", res.EntriesAdded,
		"entriesDeleted", res.EntriesDeleted, "setsCreated", res.SetsCreated, "ruleWrites", res.RuleWrites, "fwmarkWrites", res.FwmarkWrites,
		"failed", res.Failed, "err", err)
	return res, err
}

// wanted reports whether a member's family is handled.
func (n *netfilter) wanted(m SetMember) bool { return slices.Contains(n.families, m.IPv6) }

// setService replaces one Service's members in desired and returns the
// members whose count crossed zero.
func (n *netfilter) setService(ctx context.Context, name types.NamespacedName, members []SetMember, fws []FwmarkServer, touched map[SetMember]struct{}) {
	members, fws = n.ownMarks(ctx, name, members, fws)
	for _, m := range n.perSvc[name] {
		set := n.desired[m.SetName()]
		if set[m.Entry]--; set[m.Entry] <= 0 {
			delete(set, m.Entry)
			if touched != nil {
				touched[m] = struct{}{}
			}
		}
	}
	kept := members[:0]
	for _, m := range members {
		if !n.wanted(m) {
			continue
		}
		kept = append(kept, m)
		set := n.desired[m.SetName()]
		if set == nil {
			set = map[IPSetEntry]int{}
			n.desired[m.SetName()] = set
		}
		if set[m.Entry]++; set[m.Entry] == 1 && touched != nil {
			touched[m] = struct{}{}
		}
	}
	if len(kept) == 0 {
		delete(n.perSvc, name)
		return
	}
	n.perSvc[name] = kept
}

// ownMarks releases the short-circuit marks name held and claims those it
// wants now; members and servers whose mark another Service owns (a hash
// collision) are dropped and logged: that port is not short-circuited.
func (n *netfilter) ownMarks(ctx context.Context, name types.NamespacedName, members []SetMember, fws []FwmarkServer) ([]SetMember, []FwmarkServer) {
	for _, f := range n.fwPerSvc[name] {
		if n.markOwner[f.Mark] == name {
			delete(n.markOwner, f.Mark)
		}
	}
	delete(n.fwPerSvc, name)
	taken := func(mark uint32) bool {
		owner, ok := n.markOwner[mark]
		return ok && owner != name
	}
	keptFws := fws[:0]
	for _, f := range fws {
		if taken(f.Mark) {
			klog.FromContext(ctx).Error(nil, "Short-circuit mark already used by another Service; this port's in-cluster traffic keeps to local endpoints",
				"service", name, "mark", fmt.Sprintf("%#x", f.Mark), "owner", n.markOwner[f.Mark])
			continue
		}
		n.markOwner[f.Mark] = name
		keptFws = append(keptFws, f)
	}
	if len(keptFws) > 0 {
		n.fwPerSvc[name] = keptFws
	}
	keptMembers := members[:0]
	for _, m := range members {
		if m.Set == SetShortCircuit && (n.k.Fwmark == nil || n.markOwner[m.Entry.Mark] != name) {
			continue
		}
		keptMembers = append(keptMembers, m)
	}
	return keptMembers, keptFws
}

// syncIncremental rebuilds the dirty Services' members and writes the entries
// whose wanted state differs from the cache.
func (n *netfilter) syncIncremental(ctx context.Context, effective map[types.NamespacedName]*ServiceModel, snap *endpoints.Snapshot, res *NetfilterResult, errp *error) {
	touched := map[SetMember]struct{}{}
	for name := range n.dirty {
		sm, svc := effective[name], snap.Services[name]
		n.setService(ctx, name, BuildNetfilterService(sm, svc, snap.Endpoints, n.nodeName), BuildFwmarkServers(sm, svc), touched)
	}
	ms := make([]SetMember, 0, len(touched))
	for m := range touched {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, compareMembers)
	var errs []error
	for _, m := range ms {
		name := m.SetName()
		_, want := n.desired[name][m.Entry]
		_, have := n.observed[name][m.Entry]
		if want != have {
			errs = n.writeEntry(ctx, name, m.Entry, want, res, errs)
		}
	}
	if err := n.syncFwmark(ctx, false, res); err != nil {
		errs = append(errs, err)
	}
	*errp = joinCapped(errs)
}

// writeEntry adds or deletes one entry and records the outcome in the cache.
func (n *netfilter) writeEntry(ctx context.Context, set string, e IPSetEntry, add bool, res *NetfilterResult, errs []error) []error {
	if !add && e.Mark != 0 && n.keyWanted(set, e) {
		// The kernel keys the entry without its mark: deleting the old
		// mark would delete the new one that replaced it.
		delete(n.observed[set], e)
		return errs
	}
	var err error
	if add {
		err = n.k.Ipset.Add(ctx, set, e)
	} else {
		err = n.k.Ipset.Del(ctx, set, e)
	}
	switch {
	case err != nil:
		res.Failed++
		return append(errs, err)
	case add:
		res.EntriesAdded++
		obs := n.observed[set]
		if obs == nil {
			obs = map[IPSetEntry]struct{}{}
			n.observed[set] = obs
		}
		obs[e] = struct{}{}
	default:
		res.EntriesDeleted++
		delete(n.observed[set], e)
	}
	if v := klog.FromContext(ctx).V(4); v.Enabled() {
		v.Info("Ipset entry", "set", set, "entry", e, "add", add)
	}
	return errs
}

// ipsetBatchEntries is how many entries addEntries hands to one
// IpsetBatcher call (which splits them further to fit its requests).
const ipsetBatchEntries = 1000

// addEntries adds entries to set and records them in the cache: in batches
// when the Ipset takes them (one request per batch instead of one per
// entry), one by one otherwise and for a batch that failed, so that the
// error names the entry the kernel refused and the others still go in.
func (n *netfilter) addEntries(ctx context.Context, set string, entries []IPSetEntry, res *NetfilterResult, errs []error) []error {
	b, ok := n.k.Ipset.(IpsetBatcher)
	if !ok || len(entries) < 2 {
		for _, e := range entries {
			errs = n.writeEntry(ctx, set, e, true, res, errs)
		}
		return errs
	}
	logger := klog.FromContext(ctx)
	for chunk := range slices.Chunk(entries, ipsetBatchEntries) {
		if err := b.AddEntries(ctx, set, chunk); err != nil {
			logger.V(2).Info("Batched ipset add failed; adding the entries one by one", "set", set, "entries", len(chunk), "err", err)
			for _, e := range chunk {
				errs = n.writeEntry(ctx, set, e, true, res, errs)
			}
			continue
		}
		res.EntriesAdded += len(chunk)
		obs := n.observed[set]
		if obs == nil {
			obs = make(map[IPSetEntry]struct{}, len(chunk))
			n.observed[set] = obs
		}
		for _, e := range chunk {
			obs[e] = struct{}{}
		}
		if v := logger.V(4); v.Enabled() {
			for _, e := range chunk {
				v.Info("Ipset entry", "set", set, "entry", e, "add", true)
			}
		}
	}
	return errs
}

// keyWanted reports whether set should hold an entry with e's key but
// another mark.
func (n *netfilter) keyWanted(set string, e IPSetEntry) bool {
	for w := range n.desired[set] {
		if w.Key() == e.Key() && w != e {
			return true
		}
	}
	return false
}

// syncFull rebuilds every Service's members, reads every set once, writes the
// difference and ensures the iptables rules.
func (n *netfilter) syncFull(ctx context.Context, effective map[types.NamespacedName]*ServiceModel, snap *endpoints.Snapshot, res *NetfilterResult) error {
	clear(n.perSvc)
	clear(n.desired)
	clear(n.fwPerSvc)
	clear(n.markOwner)
	// In name order, so that a mark collision is resolved the same way each time.
	for _, name := range slices.SortedFunc(maps.Keys(effective), compareNames) {
		sm, svc := effective[name], snap.Services[name]
		n.setService(ctx, name, BuildNetfilterService(sm, svc, snap.Endpoints, n.nodeName), BuildFwmarkServers(sm, svc), nil)
	}
	var errs []error
	for _, name := range sortedSetNames(n.specs) {
		spec := n.specs[name]
		typ, entries, err := n.k.Ipset.List(ctx, name)
		switch {
		case IsSetNotFound(err):
			if err := n.k.Ipset.Create(ctx, spec); err != nil {
				res.Failed++
				errs = append(errs, err)
				continue
			}
			res.SetsCreated++
			entries = nil
		case err != nil:
			errs = append(errs, err)
			continue
		case typ != spec.Type:
			errs = append(errs, fmt.Errorf("ipset %s has type %s, want %s: delete it (ipset destroy %s) after removing the rules that use it",
				name, typ, spec.Type, name))
			continue
		}
		want := n.desired[name]
		// Sized for what the set holds after the adds: a first sync fills it.
		obs := make(map[IPSetEntry]struct{}, max(len(entries), len(want)))
		for _, e := range entries {
			obs[e] = struct{}{}
		}
		n.observed[name] = obs
		var missing, extra []IPSetEntry
		for e := range want {
			if _, ok := obs[e]; !ok {
				missing = append(missing, e)
			}
		}
		for e := range obs {
			if _, ok := want[e]; !ok {
				extra = append(extra, e)
			}
		}
		slices.SortFunc(missing, compareEntries)
		slices.SortFunc(extra, compareEntries)
		errs = n.addEntries(ctx, name, missing, res, errs)
		for _, e := range extra {
			errs = n.writeEntry(ctx, name, e, false, res, errs)
		}
	}
	if len(errs) > 0 {
		// Rules refer to the sets: do not write them over missing sets.
		return joinCapped(errs)
	}
	for _, v6 := range n.families {
		if err := ensureRules(ctx, n.iptables(v6), n.rules[v6], res); err != nil {
			errs = append(errs, err)
		}
	}
	if err := n.syncFwmark(ctx, true, res); err != nil {
		errs = append(errs, err)
	}
	return joinCapped(errs)
}

// ensureRules makes kipvs's chains hold exactly their rules and the builtin
// chains hold the jumps. Each table is read once (iptables-save); a table
// already right is not written; otherwise one iptables-restore --noflush per
// table declares (creates or flushes) and refills only the chains that differ
// and inserts only the missing jumps, so foreign chains and the foreign rules
// of builtin chains are never touched. RuleWrites counts the lines written.
func ensureRules(ctx context.Context, ipt Iptables, rs RuleSet, res *NetfilterResult) error {
	for _, table := range rs.Tables() {
		saved, err := ipt.Save(ctx, table)
		if err != nil {
			return fmt.Errorf("reading iptables table %s: %w", table, err)
		}
		text, lines := restoreText(table, saved, rs)
		if lines == 0 {
			continue
		}
		klog.FromContext(ctx).V(2).Info("Restoring iptables table", "table", table, "lines", lines)
		klog.FromContext(ctx).V(5).Info("Restoring iptables table", "table", table, "text", text)
		if err := ipt.Restore(ctx, text); err != nil {
			res.Failed++
			return fmt.Errorf("writing iptables table %s: %w", table, err)
		}
		res.RuleWrites += lines
	}
	return nil
}

// restoreText returns the iptables-restore --noflush input that brings the
// saved table to rs, and the number of chain and rule lines in it (0: the
// table is right, nothing to write). Jumps are inserted at the top in reverse
// so that they keep their order.
func restoreText(table string, saved map[string][]string, rs RuleSet) (string, int) {
	var chains, rules []string
	for _, c := range rs.Chains {
		if c.Table != table {
			continue
		}
		want := make([]string, len(c.Rules))
		for i, r := range c.Rules {
			want[i] = NormalizeRule(strings.Join(r, " "))
		}
		if have, ok := saved[c.Name]; ok && slices.Equal(have, want) {
			continue
		}
		chains = append(chains, ":"+c.Name+" - [0:0]")
		for _, r := range c.Rules {
			rules = append(rules, "-A "+c.Name+" "+RestoreRule(r))
		}
	}
	for i := len(rs.Jumps) - 1; i >= 0; i-- {
		j := rs.Jumps[i]
		if j.Table == table && !slices.Contains(saved[j.Chain], NormalizeRule(strings.Join(j.Rule, " "))) {
			rules = append(rules, "-I "+j.Chain+" 1 "+RestoreRule(j.Rule))
		}
	}
	n := len(chains) + len(rules)
	if n == 0 {
		return "", 0
	}
	var b strings.Builder
	b.WriteString("*" + table + "\n")
	for _, l := range append(chains, rules...) {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String(), n
}

// sortedSetNames returns the names of specs, sorted.
func sortedSetNames(specs map[string]IPSetSpec) []string {
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// joinCapped joins the first maxReportedErrors errors.
func joinCapped(errs []error) error {
	if len(errs) > maxReportedErrors {
		errs = append(errs[:maxReportedErrors], fmt.Errorf("and %d more netfilter errors", len(errs)-maxReportedErrors))
	}
	return errors.Join(errs...)
}

// syncNetfilter runs the netfilter sync after the IPVS writes and records its counts.
func (p *Proxier) syncNetfilter(ctx context.Context, full bool, snap *endpoints.Snapshot) error {
	if p.nf == nil {
		return nil
	}
	res, err := p.nf.sync(ctx, full, p.effective, snap)
	p.mu.Lock()
	p.nf.last = res
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("netfilter: %w", err)
	}
	return nil
}
