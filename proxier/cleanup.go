package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"

	"github.com/kipvs/kipvs/ipvs"
)

// RemovalKind is the kind of kernel object a cleanup removes.
type RemovalKind uint8

// The objects a cleanup removes, in the order they are removed: virtual
// servers first (traffic stops being balanced), then the jump rules into the
// chains, the chains (flushed first, then deleted, since they jump to each
// other), the ipsets the rules referred to, the addresses and last the link.
const (
	RemoveVirtualServer RemovalKind = iota
	RemoveRule
	RemoveChain
	RemoveSet
	RemoveAddress
	RemoveLink
)

// Removal is one kernel object to remove. Which fields matter depends on Kind:
// VirtualServer; IPv6, Table, Chain and Rule (iptables-save's arguments) for a
// rule; IPv6, Table and Chain for a chain; Set; Link and Address for an
// address; Link for the link.
type Removal struct {
	Kind          RemovalKind
	VirtualServer ipvs.VirtualServerKey
	IPv6          bool
	Table, Chain  string
	Rule          []string
	Set           string
	Link          string
	Address       netip.Addr
}

// String renders the removal on one line, for cleanup's report.
func (r Removal) String() string {
	fam := "ipv4"
	if r.IPv6 {
		fam = "ipv6"
	}
	switch r.Kind {
	case RemoveVirtualServer:
		return "virtual-server " + r.VirtualServer.String()
	case RemoveRule:
		return fmt.Sprintf("rule %s %s %s %s", fam, r.Table, r.Chain, quoteArgs(r.Rule))
	case RemoveChain:
		return fmt.Sprintf("chain %s %s %s", fam, r.Table, r.Chain)
	case RemoveSet:
		return "ipset " + r.Set
	case RemoveAddress:
		return fmt.Sprintf("address %s on %s", r.Address, r.Link)
	case RemoveLink:
		return "link " + r.Link
	}
	return fmt.Sprintf("RemovalKind(%d)", uint8(r.Kind))
}

// quoteArgs joins arguments as iptables-save prints them, quoting those with blanks.
func quoteArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") || a == "" {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// CleanupState is what a cleanup plans from: the kernel objects that might be
// kipvs's, read once (ReadCleanupState).
type CleanupState struct {
	// DummyLink is the name of kipvs's dummy link; LinkExists whether it is
	// there and LinkAddresses the addresses on it.
	DummyLink     string
	LinkExists    bool
	LinkAddresses []netip.Addr
	// NodeIPs are the node's addresses outside the dummy link.
	NodeIPs []netip.Addr
	// VirtualServers are every virtual server in the IPVS table.
	VirtualServers []ipvs.VirtualServerKey
	// Rules holds, per family (true: IPv6), per table (nat, filter), every
	// chain with its rules as iptables-save's arguments. A family that is not
	// handled is absent.
	Rules map[bool]map[string]map[string][][]string
	// Sets are the names of every ipset.
	Sets []string
	// NodePorts are the ports in kipvs's NodePort sets (KIPVS-NODE-PORT-TCP,
	// -UDP, -SCTP and the KIPVS6- ones), by protocol.
	NodePorts map[ipvs.Protocol]map[uint16]struct{}
}

// kipvsChainPrefix starts the name of every chain kipvs creates (in both
// families); kipvs's ipsets start with KIPVS- (IPv4) or KIPVS6- (IPv6).
const kipvsChainPrefix = "KIPVS-"

// isKipvsSet reports whether an ipset name is one of kipvs's.
func isKipvsSet(name string) bool {
	return strings.HasPrefix(name, "KIPVS-") || strings.HasPrefix(name, "KIPVS6-")
}

// PlanCleanup returns what `kipvs cleanup` removes, in removal order. It is
// pure: the same state gives the same list, and the state left after the
// removals gives an empty one. It removes only what kipvs creates:
//
//   - virtual servers on an address of the dummy link, and NodePort virtual
//     servers: on a node address (outside the dummy link) with a port that
//     one of kipvs's NodePort ipsets holds for that protocol. kipvs puts
//     NodePorts with externalTrafficPolicy Cluster in those sets, so a
//     NodePort virtual server of a Local-policy Service is left in place (as
//     is every virtual server on any other address, e.g. ipvsadm's own);
//   - rules, in chains that are not kipvs's, that jump to a KIPVS- chain, and
//     the KIPVS- chains themselves, in the nat and filter tables of both
//     families;
//   - ipsets named KIPVS-* or KIPVS6-*;
//   - the addresses on the dummy link, and the link once it has none left.
//
// Nothing whose address lies in exclude is touched; a link that keeps an
// excluded address stays. Note that the dummy link is kube-ipvs0 by default,
// the link kube-proxy uses: cleanup removes whatever is on it.
func PlanCleanup(st CleanupState, exclude []netip.Prefix) []Removal {
	var out []Removal
	onLink := make(map[netip.Addr]struct{}, len(st.LinkAddresses))
	for _, a := range st.LinkAddresses {
		onLink[a.Unmap()] = struct{}{}
	}
	node := make(map[netip.Addr]struct{}, len(st.NodeIPs))
	for _, a := range st.NodeIPs {
		node[a.Unmap()] = struct{}{}
	}
	vss := slices.Clone(st.VirtualServers)
	slices.SortFunc(vss, ipvs.VirtualServerKey.Compare)
	for _, k := range vss {
		a := k.Address.Unmap()
		if excluded(a, exclude) {
			continue
		}
		_, dummy := onLink[a]
		_, local := node[a]
		_, nodePort := st.NodePorts[k.Protocol][k.Port]
		if dummy || local && nodePort {
			out = append(out, Removal{Kind: RemoveVirtualServer, VirtualServer: k})
		}
	}
	out = append(out, planChainRemovals(st.Rules, func(_, chain string) bool {
		return strings.HasPrefix(chain, kipvsChainPrefix)
	})...)
	for _, s := range slices.Sorted(slices.Values(st.Sets)) {
		if isKipvsSet(s) {
			out = append(out, Removal{Kind: RemoveSet, Set: s})
		}
	}
	if !st.LinkExists {
		return out
	}
	kept := 0
	addrs := slices.Clone(st.LinkAddresses)
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		if excluded(a.Unmap(), exclude) {
			kept++
			continue
		}
		out = append(out, Removal{Kind: RemoveAddress, Link: st.DummyLink, Address: a.Unmap()})
	}
	if kept == 0 {
		out = append(out, Removal{Kind: RemoveLink, Link: st.DummyLink})
	}
	return out
}

// planChainRemovals returns, for every family, the rules of other chains that
// jump to a chain owned(table, chain) reports, then those chains. Families
// and tables come in a fixed order (IPv4 first; nat, then filter, then others
// by name), rules in chain order.
func planChainRemovals(rules map[bool]map[string]map[string][][]string, owned func(table, chain string) bool) []Removal {
	var jumps, chains []Removal
	for _, v6 := range []bool{false, true} {
		tables := rules[v6]
		for _, table := range tableOrder(tables) {
			cs := tables[table]
			for _, chain := range slices.Sorted(maps.Keys(cs)) {
				if owned(table, chain) {
					chains = append(chains, Removal{Kind: RemoveChain, IPv6: v6, Table: table, Chain: chain})
					continue
				}
				for _, r := range cs[chain] {
					if t := ruleTarget(r); t != "" && owned(table, t) {
						jumps = append(jumps, Removal{Kind: RemoveRule, IPv6: v6, Table: table, Chain: chain, Rule: slices.Clone(r)})
					}
				}
			}
		}
	}
	return append(jumps, chains...)
}

// tableOrder returns the tables nat and filter first, then the others by name.
func tableOrder(tables map[string]map[string][][]string) []string {
	names := slices.Sorted(maps.Keys(tables))
	slices.SortStableFunc(names, func(a, b string) int { return tableRank(a) - tableRank(b) })
	return names
}

func tableRank(t string) int {
	switch t {
	case "nat":
		return 0
	case "filter":
		return 1
	}
	return 2
}

// ruleTarget returns the target of a rule (the argument after -j or -g), or "".
func ruleTarget(rule []string) string {
	for i := 0; i+1 < len(rule); i++ {
		if rule[i] == "-j" || rule[i] == "-g" || rule[i] == "--jump" || rule[i] == "--goto" {
			return rule[i+1]
		}
	}
	return ""
}

// RemovalReport is called once per removal that ApplyRemovals tried, with
// the error it met (nil when the object is gone).
type RemovalReport func(r Removal, err error)

// ApplyRemovals removes the objects in order through k and reports each; it
// goes on after a failure and returns every error joined. Chains are all
// flushed before any is deleted. Objects already gone count as removed, so
// running a plan twice is harmless. A removal whose kernel boundary is nil in
// k fails.
func ApplyRemovals(ctx context.Context, k CleanupKernel, rs []Removal, report RemovalReport) error {
	var errs []error
	done := func(r Removal, err error) {
		if report != nil {
			report(r, err)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	flushed := map[string]error{}
	for _, r := range rs {
		if r.Kind != RemoveChain {
			continue
		}
		ipt := k.iptables(r.IPv6)
		if ipt == nil {
			flushed[chainKey(r)] = errors.New("iptables of this family is not available")
			continue
		}
		flushed[chainKey(r)] = ignoreGone(ipt.FlushChain(ctx, r.Table, r.Chain))
	}
	for _, r := range rs {
		done(r, k.remove(ctx, r, flushed))
	}
	return joinCapped(errs)
}

// chainKey is the identity of a chain removal.
func chainKey(r Removal) string {
	return Removal{Kind: RemoveChain, IPv6: r.IPv6, Table: r.Table, Chain: r.Chain}.String()
}

// remove removes one object; chains were flushed already (flushed holds the outcome).
func (k CleanupKernel) remove(ctx context.Context, r Removal, flushed map[string]error) error {
	switch r.Kind {
	case RemoveVirtualServer:
		if k.IPVS == nil {
			return errors.New("no IPVS access")
		}
		err := k.IPVS.DeleteVirtualServer(ctx, r.VirtualServer)
		if ipvs.IsNotFound(err) {
			return nil
		}
		return err
	case RemoveRule, RemoveChain:
		ipt := k.iptables(r.IPv6)
		if ipt == nil {
			return fmt.Errorf("%s: iptables of this family is not available", r)
		}
		if r.Kind == RemoveRule {
			return ignoreGone(ipt.DeleteRule(ctx, r.Table, r.Chain, r.Rule))
		}
		if err := flushed[chainKey(r)]; err != nil {
			return err
		}
		return ignoreGone(ipt.DeleteChain(ctx, r.Table, r.Chain))
	case RemoveSet:
		if k.Ipset == nil {
			return errors.New("no ipset access")
		}
		return ignoreGone(k.Ipset.Destroy(ctx, r.Set))
	case RemoveAddress:
		if k.Links == nil {
			return errors.New("no address access")
		}
		return k.Links.Delete(ctx, r.Link, r.Address)
	case RemoveLink:
		if k.Links == nil {
			return errors.New("no link access")
		}
		return k.Links.DeleteLink(ctx, r.Link)
	}
	return fmt.Errorf("unknown removal %s", r)
}

// ignoreGone treats "does not exist" as success: the object is gone either way.
func ignoreGone(err error) error {
	if err == nil || IsSetNotFound(err) || errors.Is(err, errGone) || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// Cleanup reads the kernel through k, plans with PlanCleanup and, unless
// dryRun, removes the planned objects (ApplyRemovals, reporting each). It
// returns the plan: with dryRun, what a real run would remove.
func Cleanup(ctx context.Context, k CleanupKernel, dummyLink string, exclude []netip.Prefix, dryRun bool, report RemovalReport) ([]Removal, error) {
	st, err := ReadCleanupState(ctx, k, dummyLink)
	if err != nil {
		return nil, err
	}
	plan := PlanCleanup(st, exclude)
	if dryRun {
		return plan, nil
	}
	return plan, ApplyRemovals(ctx, k, plan, report)
}
