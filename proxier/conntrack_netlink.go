package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kipvs/kipvs/ipvs"
)

// NetlinkConntrack is Conntrack over the kernel's ctnetlink (nf_conntrack_netlink).
type NetlinkConntrack struct{}

var _ Conntrack = NetlinkConntrack{}

// NewNetlinkConntrack returns the real Conntrack.
func NewNetlinkConntrack() NetlinkConntrack { return NetlinkConntrack{} }

// ClearStale implements Conntrack: one table dump per address family that has
// filters (netlink.ConntrackDeleteFilters), deleting the matching entries. A dump
// interrupted by concurrent changes still deletes what it saw and reports the
// error, so the caller retries.
func (NetlinkConntrack) ClearStale(ctx context.Context, filters []ConntrackFilter) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var v4, v6 []netlink.CustomConntrackFilter
	for _, f := range filters {
		if f.VirtualServer.Address.Is6() {
			v6 = append(v6, netlinkFilter{f})
		} else {
			v4 = append(v4, netlinkFilter{f})
		}
	}
	total := 0
	var errs []error
	for _, fam := range []struct {
		family  netlink.InetFamily
		filters []netlink.CustomConntrackFilter
	}{{unix.AF_INET, v4}, {unix.AF_INET6, v6}} {
		if len(fam.filters) == 0 {
			continue
		}
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam.family, fam.filters...)
		total += int(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("deleting conntrack entries (family %d): %w", fam.family, err))
		}
	}
	return total, errors.Join(errs...)
}

// netlinkFilter adapts a ConntrackFilter to netlink's CustomConntrackFilter.
type netlinkFilter struct{ f ConntrackFilter }

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (n netlinkFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	var proto ipvs.Protocol
	switch flow.Forward.Protocol {
	case unix.IPPROTO_UDP:
		proto = ipvs.UDP
	case unix.IPPROTO_SCTP:
		proto = ipvs.SCTP
	default:
		return false
	}
	dst, ok1 := netip.AddrFromSlice(flow.Forward.DstIP)
	src, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	return n.f.Matches(proto, netip.AddrPortFrom(dst, flow.Forward.DstPort), netip.AddrPortFrom(src, flow.Reverse.SrcPort))
}
