package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/test/bench/layout"
	"github.com/kipvs/kipvs/test/bench/record"
	"github.com/kipvs/kipvs/test/bench/results"
)

// floorSamples bounds the virtual servers the floor creates.
const floorSamples = 1000

// floor measures the time of the netlink operations kipvs's cold start needs
// (add virtual server, add real server, add an address to a dummy link) on
// this kernel, with ipvs.Real and netlink, one request at a time, and reports
// the time those operations take for the benchmark's N x eps table:
// N virtual servers + N*eps real servers + N addresses. NodePort virtual
// servers and ipset entries are left out, so the floor is a lower bound.
func (b *bench) floor(ctx context.Context) error {
	k := min(b.c.services, floorSamples)
	r, err := ipvs.New()
	if err != nil {
		return err
	}
	defer r.Close()
	vsAt := func(i int) ipvs.VirtualServer {
		a := netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		return ipvs.VirtualServer{VirtualServerKey: ipvs.VirtualServerKey{Address: a, Protocol: ipvs.TCP, Port: layout.Port}, Scheduler: "rr"}
	}
	t := time.Now()
	for i := range k {
		if err := r.AddVirtualServer(ctx, vsAt(i)); err != nil {
			return err
		}
	}
	perVS := time.Since(t).Seconds() / float64(k)
	t = time.Now()
	for i := range k {
		for j := range b.c.eps {
			rs := ipvs.RealServer{RealServerKey: ipvs.RealServerKey{Address: layout.EndpointIP(i, j), Port: layout.TargetPort}, Weight: 1}
			if err := r.AddRealServer(ctx, vsAt(i).VirtualServerKey, rs); err != nil {
				return err
			}
		}
	}
	perRS := time.Since(t).Seconds() / float64(k*b.c.eps)
	t = time.Now()
	for i := range k {
		if err := r.DeleteVirtualServer(ctx, vsAt(i).VirtualServerKey); err != nil {
			return err
		}
	}
	perDel := time.Since(t).Seconds() / float64(k)
	perAddr, err := addressFloor(k)
	if err != nil {
		return err
	}
	n := float64(b.c.services)
	ops := n + n*float64(b.c.eps) + n
	total := n*perVS + n*float64(b.c.eps)*perRS + n*perAddr
	note := fmt.Sprintf("per op from %d samples: add_virtual_server %.0fµs, add_real_server %.0fµs, add_address %.0fµs (delete_virtual_server %.0fµs); %.0f ops",
		k, perVS*1e6, perRS*1e6, perAddr*1e6, perDel*1e6, ops)
	for _, rec := range []record.Record{
		{Scenario: results.Floor, Proxy: results.NetlinkFloor, Services: b.c.services, Metric: results.Seconds, Value: total, Note: note},
		{Scenario: results.Floor, Proxy: results.NetlinkFloor, Services: b.c.services, Metric: results.SecondsPerOp, Value: total / ops, Note: note},
	} {
		emit(rec)
	}
	return nil
}

// addressFloor returns the time per address added to a dummy link.
func addressFloor(k int) (float64, error) {
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "bench-floor0"}}
	if err := netlink.LinkAdd(link); err != nil {
		return 0, fmt.Errorf("add dummy link: %w", err)
	}
	defer netlink.LinkDel(link)
	t := time.Now()
	for i := range k {
		a := netip.AddrFrom4([4]byte{10, 97, byte(i >> 8), byte(i)})
		addr := &netlink.Addr{IPNet: netlink.NewIPNet(a.AsSlice())}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return 0, fmt.Errorf("add address %s: %w", a, err)
		}
	}
	return time.Since(t).Seconds() / float64(k), nil
}
