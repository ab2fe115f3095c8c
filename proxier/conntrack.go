package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/kipvs/kipvs/ipvs"
)

// ConntrackFilter selects stale connection-tracking entries of one UDP or SCTP
// virtual server: those whose original destination is the virtual server's
// address and port and whose reply source is not one of Keep (the real servers
// the virtual server still has). An entry whose reply comes from a deleted pod,
// or from the VIP itself (traffic that found no real server), matches.
//
// Deleting them is what makes the next datagram of a long-lived UDP flow (a DNS
// client that reuses its source port) reach a live pod: while a conntrack entry
// pointing at a deleted real server exists, IPVS with expire_nodest_conn=1 drops
// the packet as belonging to an old connection instead of rescheduling it
// (ip_vs_in_hook, ip_vs_conn_uses_old_conntrack; k/k #71514, #105192).
type ConntrackFilter struct {
	VirtualServer ipvs.VirtualServerKey
	Keep          []ipvs.RealServerKey
}

// String renders the filter for logs and tests: "UDP/10.96.0.10:53 keep 10.244.0.5:53,...".
func (f ConntrackFilter) String() string {
	keep := make([]string, 0, len(f.Keep))
	for _, k := range f.Keep {
		keep = append(keep, k.String())
	}
	return fmt.Sprintf("%s keep [%s]", f.VirtualServer, strings.Join(keep, ","))
}

// Matches reports whether the entry proto origDst -> replySrc is stale under f.
func (f ConntrackFilter) Matches(proto ipvs.Protocol, origDst, replySrc netip.AddrPort) bool {
	if proto != f.VirtualServer.Protocol || origDst.Addr().Unmap() != f.VirtualServer.Address || origDst.Port() != f.VirtualServer.Port {
		return false
	}
	rs := ipvs.RealServerKey{Address: replySrc.Addr().Unmap(), Port: replySrc.Port()}
	return !slices.Contains(f.Keep, rs)
}

// Conntrack is the kernel's connection-tracking table, as far as kipvs clears it.
type Conntrack interface {
	// ClearStale deletes every entry that one of filters matches and returns how
	// many it deleted. Filters of both address families may be mixed.
	ClearStale(ctx context.Context, filters []ConntrackFilter) (int, error)
}

// needsConntrackClearing reports whether real servers of proto leave stale
// conntrack entries behind: connectionless protocols, whose real servers are
// deleted at once rather than drained.
func needsConntrackClearing(p ipvs.Protocol) bool { return p == ipvs.UDP || p == ipvs.SCTP }

// conntrackTargets returns the UDP and SCTP virtual servers whose conntrack
// entries a plan makes stale: those that lose a real server or are deleted,
// and those that get their first real server (entries created while the
// Service had none). before is the observed state before the plan ran.
func conntrackTargets(plan Plan, before *KernelState) map[ipvs.VirtualServerKey]struct{} {
	var out map[ipvs.VirtualServerKey]struct{}
	for _, op := range plan.Ops {
		k := op.VirtualServer.VirtualServerKey
		if !needsConntrackClearing(k.Protocol) {
			continue
		}
		switch op.Kind {
		case OpDeleteRealServer, OpDeleteVirtualServer:
		case OpAddRealServer:
			if o := before.VirtualServers[k]; o != nil && len(o.RealServers) > 0 {
				continue
			}
		default:
			continue
		}
		if out == nil {
			out = map[ipvs.VirtualServerKey]struct{}{}
		}
		out[k] = struct{}{}
	}
	return out
}

// conntrackFilters turns targets into filters that keep the real servers the
// kernel has after the plan ran (observed).
func conntrackFilters(targets map[ipvs.VirtualServerKey]struct{}, observed *KernelState) []ConntrackFilter {
	out := make([]ConntrackFilter, 0, len(targets))
	for k := range targets {
		f := ConntrackFilter{VirtualServer: k}
		if o := observed.VirtualServers[k]; o != nil {
			for rk := range o.RealServers {
				f.Keep = append(f.Keep, rk)
			}
			slices.SortFunc(f.Keep, ipvs.RealServerKey.Compare)
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b ConntrackFilter) int { return a.VirtualServer.Compare(b.VirtualServer) })
	return out
}

// ConntrackEntry is one entry of FakeConntrack: a flow's protocol, original
// direction and the source of its replies (the real server after IPVS NAT).
type ConntrackEntry struct {
	Protocol ipvs.Protocol
	OrigSrc  netip.AddrPort
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
}

// String renders the entry as FakeConntrack's text does:
// "UDP 10.244.0.9:40000 -> 10.96.0.10:53 reply 10.244.0.5:53".
func (e ConntrackEntry) String() string {
	return fmt.Sprintf("%s %s -> %s reply %s", e.Protocol, e.OrigSrc, e.OrigDst, e.ReplySrc)
}

// ParseConntrackEntry parses ConntrackEntry.String's format.
func ParseConntrackEntry(s string) (ConntrackEntry, error) {
	f := strings.Fields(s)
	if len(f) != 6 || f[2] != "->" || f[4] != "reply" {
		return ConntrackEntry{}, fmt.Errorf("conntrack entry %q: want \"PROTO SRC -> DST reply RSRC\"", s)
	}
	proto, err := ipvs.ParseProtocol(f[0])
	if err != nil {
		return ConntrackEntry{}, fmt.Errorf("conntrack entry %q: %w", s, err)
	}
	var aps [3]netip.AddrPort
	for i, t := range []string{f[1], f[3], f[5]} {
		if aps[i], err = netip.ParseAddrPort(t); err != nil {
			return ConntrackEntry{}, fmt.Errorf("conntrack entry %q: %w", s, err)
		}
	}
	return ConntrackEntry{Protocol: proto, OrigSrc: aps[0], OrigDst: aps[1], ReplySrc: aps[2]}, nil
}

// FakeConntrack is an in-memory Conntrack: a set of entries that ClearStale
// deletes from. Its canonical text (DumpText) is one entry per line, sorted.
type FakeConntrack struct {
	mu      sync.Mutex
	entries map[ConntrackEntry]struct{}
	err     error
}

var _ Conntrack = (*FakeConntrack)(nil)

// NewFakeConntrack returns a FakeConntrack holding the entries of text (one
// per line, blank lines ignored).
func NewFakeConntrack(text string) (*FakeConntrack, error) {
	f := &FakeConntrack{entries: map[ConntrackEntry]struct{}{}}
	for line := range strings.Lines(text) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		e, err := ParseConntrackEntry(line)
		if err != nil {
			return nil, err
		}
		f.entries[e] = struct{}{}
	}
	return f, nil
}

// Add adds entries, as traffic would.
func (f *FakeConntrack) Add(es ...ConntrackEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range es {
		f.entries[e] = struct{}{}
	}
}

// SetError makes every later ClearStale fail with err (nil clears it) without
// deleting anything.
func (f *FakeConntrack) SetError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// DumpText returns the entries, one per line, sorted.
func (f *FakeConntrack) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := make([]string, 0, len(f.entries))
	for e := range f.entries {
		lines = append(lines, e.String()+"\n")
	}
	slices.Sort(lines)
	return strings.Join(lines, "")
}

// ClearStale implements Conntrack.
func (f *FakeConntrack) ClearStale(ctx context.Context, filters []ConntrackFilter) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	n := 0
	for e := range f.entries {
		for _, flt := range filters {
			if flt.Matches(e.Protocol, e.OrigDst, e.ReplySrc) {
				delete(f.entries, e)
				n++
				break
			}
		}
	}
	return n, nil
}
