package proxier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	goiptables "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/kipvs/kipvs/ipvs"
)

// errGone is wrapped by cleanup boundary errors about an object that is not
// there (a rule, a chain): removing it again is no error.
var errGone = errors.New("does not exist")

// IptablesCleaner is what a cleanup needs from one family's iptables: rules
// read with their arguments intact (a quoted comment stays one argument), and
// deletes. GoIptables and FakeIptables implement it.
type IptablesCleaner interface {
	// SaveRules returns every chain of table with its rules as argument lists.
	SaveRules(ctx context.Context, table string) (map[string][][]string, error)
	// DeleteRule deletes the first rule of chain equal to rule.
	DeleteRule(ctx context.Context, table, chain string, rule []string) error
	// FlushChain removes every rule of chain.
	FlushChain(ctx context.Context, table, chain string) error
	// DeleteChain deletes an empty chain that no rule jumps to.
	DeleteChain(ctx context.Context, table, chain string) error
}

// IpsetCleaner is what a cleanup needs from the ipsets. NetlinkIpset and FakeIpset implement it.
type IpsetCleaner interface {
	// Names lists every set.
	Names(ctx context.Context) ([]string, error)
	// List is Ipset.List.
	List(ctx context.Context, name string) (string, []IPSetEntry, error)
	// Destroy deletes a set that no rule refers to.
	Destroy(ctx context.Context, name string) error
}

// LinkCleaner is what a cleanup needs from the links and their addresses.
// NetlinkAddresses and FakeAddresses implement it.
type LinkCleaner interface {
	// LinkExists reports whether a link named name exists.
	LinkExists(ctx context.Context, name string) (bool, error)
	List(ctx context.Context, link string) ([]netip.Addr, error)
	Delete(ctx context.Context, link string, a netip.Addr) error
	NodeIPs(ctx context.Context, exclude string) ([]netip.Addr, error)
	// DeleteLink deletes the link; deleting an absent link succeeds.
	DeleteLink(ctx context.Context, name string) error
}

// CleanupKernel holds the kernel boundaries of a cleanup. A nil field skips
// that part when reading, and fails the removals that need it.
type CleanupKernel struct {
	IPVS       ipvs.Interface
	Links      LinkCleaner
	IPv4, IPv6 IptablesCleaner
	Ipset      IpsetCleaner
}

func (k CleanupKernel) iptables(v6 bool) IptablesCleaner {
	if v6 {
		return k.IPv6
	}
	return k.IPv4
}

// NetfilterCleaner returns the cleanup boundaries of a NetfilterKernel
// (iptables of both families and ipsets) when its implementations provide
// them, as the real and fake ones do.
func NetfilterCleaner(nk NetfilterKernel) CleanupKernel {
	var k CleanupKernel
	if c, ok := nk.IPv4.(IptablesCleaner); ok {
		k.IPv4 = c
	}
	if c, ok := nk.IPv6.(IptablesCleaner); ok {
		k.IPv6 = c
	}
	if c, ok := nk.Ipset.(IpsetCleaner); ok {
		k.Ipset = c
	}
	return k
}

// cleanupTables are the tables kipvs (and kube-proxy's IPVS mode) write.
var cleanupTables = []string{"nat", "filter", "mangle"}

// ReadCleanupState reads what PlanCleanup needs: the IPVS table, the dummy
// link and its addresses, the node's addresses, the nat and filter tables of
// each family k handles, every ipset's name and the ports of kipvs's NodePort sets.
func ReadCleanupState(ctx context.Context, k CleanupKernel, dummyLink string) (CleanupState, error) {
	st := CleanupState{DummyLink: dummyLink, NodePorts: map[ipvs.Protocol]map[uint16]struct{}{}}
	if k.IPVS != nil {
		dump, err := k.IPVS.Dump(ctx)
		if err != nil {
			return st, fmt.Errorf("dumping IPVS: %w", err)
		}
		for _, vs := range dump {
			st.VirtualServers = append(st.VirtualServers, vs.VirtualServerKey)
		}
	}
	if k.Links != nil {
		ok, err := k.Links.LinkExists(ctx, dummyLink)
		if err != nil {
			return st, err
		}
		st.LinkExists = ok
		if ok {
			if st.LinkAddresses, err = k.Links.List(ctx, dummyLink); err != nil {
				return st, err
			}
		}
		if st.NodeIPs, err = k.Links.NodeIPs(ctx, dummyLink); err != nil {
			return st, err
		}
	}
	var err error
	if st.Rules, err = readRules(ctx, k); err != nil {
		return st, err
	}
	if k.Ipset != nil {
		if st.Sets, err = k.Ipset.Names(ctx); err != nil {
			return st, fmt.Errorf("listing ipsets: %w", err)
		}
		for proto, id := range nodePortSet {
			for _, v6 := range []bool{false, true} {
				name := SetName(id, v6)
				if !slices.Contains(st.Sets, name) {
					continue
				}
				_, entries, err := k.Ipset.List(ctx, name)
				if err != nil {
					return st, err
				}
				for _, e := range entries {
					if st.NodePorts[proto] == nil {
						st.NodePorts[proto] = map[uint16]struct{}{}
					}
					st.NodePorts[proto][e.Port] = struct{}{}
				}
			}
		}
	}
	return st, nil
}

// readRules reads the nat and filter tables of each family k handles.
func readRules(ctx context.Context, k CleanupKernel) (map[bool]map[string]map[string][][]string, error) {
	out := map[bool]map[string]map[string][][]string{}
	for _, v6 := range []bool{false, true} {
		ipt := k.iptables(v6)
		if ipt == nil {
			continue
		}
		out[v6] = map[string]map[string][][]string{}
		for _, t := range cleanupTables {
			chains, err := ipt.SaveRules(ctx, t)
			if err != nil {
				return nil, fmt.Errorf("reading iptables table %s (ipv6 %v): %w", t, v6, err)
			}
			out[v6][t] = chains
		}
	}
	return out, nil
}

// SaveRules implements IptablesCleaner.
func (g *GoIptables) SaveRules(ctx context.Context, table string) (map[string][][]string, error) {
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, g.savePath, "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", g.savePath, table, err, strings.TrimSpace(stderr.String()))
	}
	return ParseIptablesSaveArgs(out.String(), table)
}

// DeleteRule implements IptablesCleaner.
func (g *GoIptables) DeleteRule(ctx context.Context, table, chain string, rule []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.Delete(table, chain, rule...); err != nil {
		return fmt.Errorf("deleting from %s/%s %q: %w", table, chain, strings.Join(rule, " "), goneIfNotExist(err))
	}
	return nil
}

// DeleteChain implements IptablesCleaner.
func (g *GoIptables) DeleteChain(ctx context.Context, table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.DeleteChain(table, chain); err != nil {
		return fmt.Errorf("deleting chain %s in table %s: %w", chain, table, goneIfNotExist(err))
	}
	return nil
}

// goneIfNotExist marks go-iptables' "no such rule/chain" errors with errGone.
func goneIfNotExist(err error) error {
	var e *goiptables.Error
	if errors.As(err, &e) && e.IsNotExist() {
		return fmt.Errorf("%w: %w", errGone, err)
	}
	return err
}

// ParseIptablesSaveArgs reads the chains of table from iptables-save output
// like ParseIptablesSave, keeping each rule's arguments apart: a double-quoted
// argument ("kubernetes service portals") is one argument without its quotes.
func ParseIptablesSaveArgs(text, table string) (map[string][][]string, error) {
	return parseIptablesSave(text, table, splitRuleArgs)
}

// SaveRules implements IptablesCleaner. The fake keeps rules normalized, so
// an argument with blanks comes back split; DeleteRule compares normalized
// rules, so it still finds the rule.
func (f *FakeIptables) SaveRules(ctx context.Context, table string) (map[string][][]string, error) {
	chains, err := f.Save(ctx, table)
	if err != nil {
		return nil, err
	}
	out := make(map[string][][]string, len(chains))
	for c, rules := range chains {
		out[c] = make([][]string, 0, len(rules))
		for _, r := range rules {
			out[c] = append(out[c], strings.Fields(r))
		}
	}
	return out, nil
}

// DeleteRule implements IptablesCleaner.
func (f *FakeIptables) DeleteRule(ctx context.Context, table, chain string, rule []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.chain(ctx, table, chain)
	if err != nil {
		return fmt.Errorf("%w: %w", errGone, err)
	}
	i := slices.Index(rules, NormalizeRule(strings.Join(rule, " ")))
	if i < 0 {
		return fmt.Errorf("deleting from %s/%s %q: %w", table, chain, strings.Join(rule, " "), errGone)
	}
	f.tables[table][chain] = slices.Delete(rules, i, i+1)
	return nil
}

// DeleteChain implements IptablesCleaner. Like iptables, it refuses a builtin
// chain, a chain with rules and a chain some rule jumps to.
func (f *FakeIptables) DeleteChain(ctx context.Context, table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.chain(ctx, table, chain)
	if err != nil {
		return fmt.Errorf("%w: %w", errGone, err)
	}
	if slices.Contains(builtinChains[table], chain) {
		return fmt.Errorf("deleting builtin chain %s/%s: %w", table, chain, syscall.EPERM)
	}
	if len(rules) > 0 {
		return fmt.Errorf("deleting chain %s/%s: %w", table, chain, syscall.ENOTEMPTY)
	}
	for c, rs := range f.tables[table] {
		for _, r := range rs {
			if ruleTarget(strings.Fields(r)) == chain {
				return fmt.Errorf("deleting chain %s/%s: %s jumps to it: %w", table, chain, c, syscall.EBUSY)
			}
		}
	}
	delete(f.tables[table], chain)
	return nil
}

// Names implements IpsetCleaner.
func (s *NetlinkIpset) Names(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	all, err := s.handle().IpsetListAll()
	if err != nil {
		return nil, fmt.Errorf("listing ipsets: %w", err)
	}
	out := make([]string, 0, len(all))
	for _, s := range all {
		out = append(out, s.SetName)
	}
	slices.Sort(out)
	return out, nil
}

// Destroy implements IpsetCleaner.
func (s *NetlinkIpset) Destroy(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.handle().IpsetDestroy(name); err != nil {
		return fmt.Errorf("destroying ipset %s: %w", name, ipsetError(err))
	}
	return nil
}

// Names implements IpsetCleaner.
func (f *FakeIpset) Names(ctx context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.reads++
	return slices.Sorted(maps.Keys(f.sets)), nil
}

// Destroy implements IpsetCleaner.
func (f *FakeIpset) Destroy(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, ok := f.sets[name]; !ok {
		return fmt.Errorf("destroying ipset %s: %w", name, ErrSetNotFound)
	}
	f.writes++
	delete(f.sets, name)
	return nil
}

// LinkExists implements LinkCleaner.
func (n *NetlinkAddresses) LinkExists(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	_, err := n.handle().LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &nf):
		return false, nil
	}
	return false, fmt.Errorf("looking up link %s: %w", name, err)
}

// DeleteLink implements LinkCleaner.
func (n *NetlinkAddresses) DeleteLink(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := n.handle().LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up link %s: %w", name, err)
	}
	if l.Type() != "dummy" {
		return fmt.Errorf("link %s has type %s, not dummy: not deleting it", name, l.Type())
	}
	if err := n.handle().LinkDel(l); err != nil {
		return fmt.Errorf("deleting link %s: %w", name, err)
	}
	return nil
}

// LinkExists implements LinkCleaner.
func (f *FakeAddresses) LinkExists(_ context.Context, name string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.links[name]
	return ok, nil
}

// DeleteLink implements LinkCleaner.
func (f *FakeAddresses) DeleteLink(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; ok {
		delete(f.links, name)
		f.writes++
	}
	return nil
}

var (
	_ IptablesCleaner = (*GoIptables)(nil)
	_ IptablesCleaner = (*FakeIptables)(nil)
	_ IpsetCleaner    = (*NetlinkIpset)(nil)
	_ IpsetCleaner    = (*FakeIpset)(nil)
	_ LinkCleaner     = (*NetlinkAddresses)(nil)
	_ LinkCleaner     = (*FakeAddresses)(nil)
)
