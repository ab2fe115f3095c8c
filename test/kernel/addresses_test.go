//go:build kerneltest

package kernel

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kipvs/kipvs/proxier"
)

// testLink is the dummy link of the address tests (not kube-ipvs0, so a
// leftover cannot be mistaken for the proxier's).
const testLink = "kipvs-t0"

func TestNetlinkAddresses(t *testing.T) {
	ctx := t.Context()
	a := proxier.NewNetlinkAddresses()
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(testLink); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete %s: %v", testLink, err)
			}
		}
	})
	if _, err := a.List(ctx, testLink); err == nil {
		t.Fatalf("List of a missing link succeeded")
	}
	for i := range 2 { // the second call finds the link and does nothing
		if err := a.EnsureLink(ctx, testLink); err != nil {
			t.Fatalf("EnsureLink #%d: %v", i+1, err)
		}
	}
	l, err := netlink.LinkByName(testLink)
	if err != nil {
		t.Fatalf("EnsureLink did not create %s: %v", testLink, err)
	}
	if l.Type() != "dummy" {
		t.Errorf("%s has type %q, want dummy", testLink, l.Type())
	}
	// Like kube-proxy's kube-ipvs0 the link stays down: the kernel then does
	// not answer ARP for the VIPs on its own.
	if l.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("%s is up, want it left down", testLink)
	}

	vips := []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.96.0.2"), netip.MustParseAddr("fd00:96::1")}
	for _, v := range vips {
		for i := range 2 { // adding twice succeeds
			if err := a.Add(ctx, testLink, v); err != nil {
				t.Fatalf("Add(%s) #%d: %v", v, i+1, err)
			}
		}
	}
	assertAddrs(t, a, testLink, vips)
	assertLocalRoute(t, vips[0])

	nodeIPs, err := a.NodeIPs(ctx, testLink)
	if err != nil {
		t.Fatalf("NodeIPs: %v", err)
	}
	for _, v := range vips {
		if slices.Contains(nodeIPs, v) {
			t.Errorf("NodeIPs(%s) = %v includes %s from the excluded link", testLink, nodeIPs, v)
		}
	}
	for _, want := range []string{"127.0.0.1", "::1"} {
		if !slices.Contains(nodeIPs, netip.MustParseAddr(want)) {
			t.Errorf("NodeIPs = %v, want it to include lo's %s", nodeIPs, want)
		}
	}
	all, err := a.NodeIPs(ctx, "")
	if err != nil {
		t.Fatalf(`NodeIPs(""): %v`, err)
	}
	for _, v := range vips {
		if !slices.Contains(all, v) {
			t.Errorf(`NodeIPs("") = %v lacks %s`, all, v)
		}
	}
	if _, err := a.NodeIPs(ctx, "no-such-link"); err != nil {
		t.Errorf("NodeIPs excluding a missing link: %v", err)
	}

	for _, v := range vips[:2] {
		for i := range 2 { // deleting an absent address succeeds
			if err := a.Delete(ctx, testLink, v); err != nil {
				t.Fatalf("Delete(%s) #%d: %v", v, i+1, err)
			}
		}
	}
	assertAddrs(t, a, testLink, vips[2:])
	if err := a.Delete(ctx, testLink, vips[2]); err != nil {
		t.Fatalf("Delete(%s): %v", vips[2], err)
	}
	if err := a.Delete(ctx, testLink, vips[2]); err != nil {
		t.Errorf("Delete of an absent IPv6 address: %v", err)
	}
	assertAddrs(t, a, testLink, nil)
}

// TestEnsureLinkRefusesOtherTypes checks that an existing link of another
// type is an error, not silently used.
func TestEnsureLinkRefusesOtherTypes(t *testing.T) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: testLink}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("add bridge %s: %v", testLink, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("delete %s: %v", testLink, err)
		}
	})
	err := proxier.NewNetlinkAddresses().EnsureLink(t.Context(), testLink)
	if err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("EnsureLink over a bridge = %v, want an error naming its type", err)
	}
}

func assertAddrs(t *testing.T, a proxier.Addresses, link string, want []netip.Addr) {
	t.Helper()
	got, err := a.List(t.Context(), link)
	if err != nil {
		t.Fatalf("List(%s): %v", link, err)
	}
	// The link is down, so the kernel gives it no IPv6 link-local address.
	slices.SortFunc(got, netip.Addr.Compare)
	want = slices.SortedFunc(slices.Values(want), netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("List(%s) = %v, want %v", link, got, want)
	}
}

// assertLocalRoute checks that the kernel routes an IPv4 VIP on the down
// dummy link to this host: what makes IPVS see packets for it.
func assertLocalRoute(t *testing.T, vip netip.Addr) {
	t.Helper()
	routes, err := netlink.RouteGet(vip.AsSlice())
	if err != nil {
		t.Fatalf("route get %s: %v", vip, err)
	}
	if len(routes) != 1 || routes[0].Type != unix.RTN_LOCAL {
		t.Errorf("route to %s = %+v, want one local route", vip, routes)
	}
}
