//go:build linux

package netpod

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Ranges that NewNet picks pod CIDRs from when none is given: the benchmarking
// ranges of RFC 2544 and RFC 5180, which are never routed on the internet.
var (
	benchRangeV4 = netip.MustParsePrefix("198.18.0.0/15")
	benchRangeV6 = netip.MustParsePrefix("2001:2::/48")
)

const (
	// randomBitsV4 is the prefix length NewNet picks inside benchRangeV4: a /26
	// (61 pods) gives 2048 candidates, so parallel test packages rarely race.
	randomBitsV4 = 26
	randomBitsV6 = 64
)

// NetOptions describes the node network NewNet builds.
type NetOptions struct {
	// Bridge is the name of the bridge link. Empty means "kbr-" plus the Net's
	// random id, which is what tests should use so parallel packages on one
	// host do not collide.
	Bridge string
	// PodCIDR is the IPv4 range the pods get their addresses from. The zero
	// value picks a free random /26 in 198.18.0.0/15.
	PodCIDR netip.Prefix
	// GatewayIP is the bridge's IPv4 address, the pods' default gateway. The
	// zero value means the first host of PodCIDR.
	GatewayIP netip.Addr
	// PodCIDRv6 is the optional IPv6 range of the pods. With DualStack set and
	// PodCIDRv6 zero, NewNet picks a free random /64 in 2001:2::/48.
	PodCIDRv6 netip.Prefix
	// GatewayIPv6 is the bridge's IPv6 address; zero means the first host of
	// PodCIDRv6.
	GatewayIPv6 netip.Addr
	// DualStack asks for IPv6 addresses even when PodCIDRv6 is zero.
	DualStack bool
}

// Net is a test node network: a bridge in the root network namespace (the
// namespace of the goroutine that called NewNet) that holds the gateway
// addresses, with pods attached by veth pairs. Its connected routes send
// traffic for the pod CIDRs to the bridge, so the root netns (where IPVS
// lives) reaches every pod and pods route everything else back through it.
type Net struct {
	// Bridge is the name of the bridge link.
	Bridge string
	// PodCIDR and PodCIDRv6 are the pod ranges; PodCIDRv6 is zero for an
	// IPv4-only Net.
	PodCIDR, PodCIDRv6 netip.Prefix
	// Gateway and Gateway6 are the bridge addresses. They are also the source
	// address pods see for connections from the root netns.
	Gateway, Gateway6 netip.Addr

	id     string
	root   netns.NsHandle
	h      *netlink.Handle
	bridge netlink.Link

	mu     sync.Mutex
	last4  netip.Addr
	last6  netip.Addr
	npods  int
	pods   map[string]*Pod
	closed bool
}

// NewNet creates the bridge with its gateway addresses and registers its
// removal (and that of every pod still present) with t.Cleanup. It fails the
// test when the pod CIDR overlaps a route or address that already exists, so
// a test network can never capture traffic meant for the host's networks.
func NewNet(t testing.TB, opts NetOptions) *Net {
	t.Helper()
	n, err := newNet(opts)
	if err != nil {
		t.Fatalf("netpod: %v", err)
	}
	t.Cleanup(func() {
		if err := n.close(); err != nil {
			t.Errorf("netpod: cleanup of net %s: %v", n.Bridge, err)
		}
	})
	return n
}

// newNet is NewNet without testing.TB; on error it leaves nothing behind.
func newNet(opts NetOptions) (_ *Net, err error) {
	root, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	h, err := netlink.NewHandleAt(root, unix.NETLINK_ROUTE)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	n := &Net{id: randomID(), root: root, h: h, pods: map[string]*Pod{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.close())
		}
	}()
	n.Bridge = opts.Bridge
	if n.Bridge == "" {
		n.Bridge = "kbr-" + n.id
	}
	if len(n.Bridge) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("bridge name %q is longer than %d bytes", n.Bridge, unix.IFNAMSIZ-1)
	}
	if n.PodCIDR, n.Gateway, err = n.pickRange(opts.PodCIDR, opts.GatewayIP, benchRangeV4, randomBitsV4, netlink.FAMILY_V4); err != nil {
		return nil, err
	}
	if opts.DualStack || opts.PodCIDRv6.IsValid() {
		if n.PodCIDRv6, n.Gateway6, err = n.pickRange(opts.PodCIDRv6, opts.GatewayIPv6, benchRangeV6, randomBitsV6, netlink.FAMILY_V6); err != nil {
			return nil, err
		}
	}
	n.last4, n.last6 = n.PodCIDR.Addr(), n.PodCIDRv6.Addr()
	if err := n.createBridge(); err != nil {
		return nil, err
	}
	return n, nil
}

// pickRange validates a configured range and gateway, or picks a free random
// range from pool when cidr is zero.
func (n *Net) pickRange(cidr netip.Prefix, gw netip.Addr, pool netip.Prefix, bits, family int) (netip.Prefix, netip.Addr, error) {
	used, err := n.usedPrefixes(family)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	if !cidr.IsValid() {
		for range 16 {
			c := randomSubnet(pool, bits)
			if overlapsAny(c, used) == nil {
				cidr = c
				break
			}
		}
		if !cidr.IsValid() {
			return netip.Prefix{}, netip.Addr{}, fmt.Errorf("no free /%d found in %s", bits, pool)
		}
	}
	cidr = cidr.Masked()
	wantV4 := family == netlink.FAMILY_V4
	if cidr.Addr().Is4() != wantV4 || cidr.Bits() > cidr.Addr().BitLen()-2 {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("pod CIDR %s: wrong family or too small", cidr)
	}
	if p := overlapsAny(cidr, used); p != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("pod CIDR %s overlaps %s, which exists in the root netns; pick another range", cidr, *p)
	}
	if !gw.IsValid() {
		gw = cidr.Addr().Next()
	}
	if !cidr.Contains(gw) || gw == cidr.Addr() {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("gateway %s is not a host of %s", gw, cidr)
	}
	return cidr, gw, nil
}

// usedPrefixes lists the destinations of every non-default route (all tables)
// and every address of the root netns in one family.
func (n *Net) usedPrefixes(family int) ([]netip.Prefix, error) {
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return n.h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return n.h.AddrList(nil, family) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if p, ok := ipNetToPrefix(r.Dst); ok && p.Bits() > 0 {
			used = append(used, p)
		}
	}
	for _, a := range addrs {
		if p, ok := ipNetToPrefix(a.IPNet); ok {
			used = append(used, p)
		}
	}
	return used, nil
}

// createBridge adds the bridge with a fixed MAC address (a bridge without one
// takes the lowest MAC of its ports, so adding a pod would change the
// gateway's MAC under the other pods' ARP caches), assigns the gateways and
// sets it up.
func (n *Net) createBridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge, HardwareAddr: randomMAC()}}
	if err := n.h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", n.Bridge, err)
	}
	link, err := n.h.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", n.Bridge, err)
	}
	n.bridge = link
	if err := n.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", n.Bridge, err)
	}
	if err := addAddr(n.h, link, n.Gateway, n.PodCIDR.Bits()); err != nil {
		return err
	}
	if n.Gateway6.IsValid() {
		if err := addAddr(n.h, link, n.Gateway6, n.PodCIDRv6.Bits()); err != nil {
			return err
		}
	}
	return nil
}

// allocate gives p the next pod addresses, registers it under its name and
// returns its index. Addresses are never reused, so a replacement pod gets a
// new IP like in a real cluster.
func (n *Net) allocate(p *Pod) (idx int, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return 0, errors.New("net is closed")
	}
	if _, ok := n.pods[p.Name]; ok {
		return 0, fmt.Errorf("pod %q already exists", p.Name)
	}
	next := func(last, gw netip.Addr, cidr netip.Prefix) (netip.Addr, error) {
		a := last.Next()
		if a == gw {
			a = a.Next()
		}
		// The last address of an IPv4 range is its broadcast address.
		if !cidr.Contains(a) || (a.Is4() && !cidr.Contains(a.Next())) {
			return netip.Addr{}, fmt.Errorf("pod CIDR %s is exhausted", cidr)
		}
		return a, nil
	}
	ip4, err := next(n.last4, n.Gateway, n.PodCIDR)
	if err != nil {
		return 0, err
	}
	var ip6 netip.Addr
	if n.PodCIDRv6.IsValid() {
		if ip6, err = next(n.last6, n.Gateway6, n.PodCIDRv6); err != nil {
			return 0, err
		}
		n.last6 = ip6
	}
	n.last4 = ip4
	n.npods++
	p.IP, p.IPv6 = ip4, ip6
	n.pods[p.Name] = p
	return n.npods, nil
}

// Pods returns the pods that have not been deleted, sorted by name.
func (n *Net) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// close deletes every remaining pod and the bridge and releases the handles.
// It is safe to call more than once.
func (n *Net) close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	pods := make([]*Pod, 0, len(n.pods))
	for _, p := range n.pods {
		pods = append(pods, p)
	}
	n.mu.Unlock()

	var errs []error
	for _, p := range pods {
		errs = append(errs, p.delete())
	}
	if n.bridge != nil {
		if err := n.h.LinkDel(n.bridge); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", n.Bridge, err))
		}
	}
	n.h.Close()
	errs = append(errs, n.root.Close())
	return errors.Join(errs...)
}

// addAddr assigns ip/bits to link. IPv6 addresses skip duplicate address
// detection: a tentative address cannot be used for the first second or so.
func addAddr(h *netlink.Handle, link netlink.Link, ip netip.Addr, bits int) error {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, ip.BitLen())}}
	if ip.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s/%d to %s: %w", ip, bits, link.Attrs().Name, err)
	}
	return nil
}

// overlapsAny returns the first prefix of used that overlaps p.
func overlapsAny(p netip.Prefix, used []netip.Prefix) *netip.Prefix {
	for i := range used {
		if used[i].Overlaps(p) {
			return &used[i]
		}
	}
	return nil
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// retryDump retries a netlink dump that the kernel interrupted because the
// table changed under it (other tests add and remove links concurrently).
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// randomSubnet returns a random /bits subnet of pool.
func randomSubnet(pool netip.Prefix, bits int) netip.Prefix {
	a := pool.Addr().As16()
	off := 128 - pool.Addr().BitLen() // bit offset of the pool in the 16-byte form
	n, err := rand.Int(rand.Reader, big.NewInt(1<<(bits-pool.Bits())))
	if err != nil {
		panic(err)
	}
	v := n.Uint64()
	for i := bits - 1; i >= pool.Bits(); i-- { // fill bits [pool.Bits(), bits) from the low end of v
		bit := off + i
		if v&1 == 1 {
			a[bit/8] |= 0x80 >> (bit % 8)
		}
		v >>= 1
	}
	addr := netip.AddrFrom16(a)
	if pool.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, bits)
}

// randomID returns 6 hex characters that name this Net's links.
func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02
	return m
}
