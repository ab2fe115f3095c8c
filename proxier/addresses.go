package proxier

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Addresses is kipvs's boundary to the addresses on the dummy link that holds
// Service VIPs, and to the node's own addresses.
type Addresses interface {
	// EnsureLink creates the dummy link name if it does not exist.
	EnsureLink(ctx context.Context, name string) error
	// List returns the addresses on link.
	List(ctx context.Context, link string) ([]netip.Addr, error)
	// Add binds a to link; adding an address that is already there succeeds.
	Add(ctx context.Context, link string, a netip.Addr) error
	// Delete unbinds a from link; deleting an absent address succeeds.
	Delete(ctx context.Context, link string, a netip.Addr) error
	// NodeIPs returns every local address except those on link exclude.
	NodeIPs(ctx context.Context, exclude string) ([]netip.Addr, error)
}

// NetlinkAddresses implements Addresses over rtnetlink.
//
// It follows kube-proxy (pkg/proxy/ipvs/netlink_linux.go) so that kipvs can take
// over kube-proxy's kube-ipvs0 without rewriting it: the link is a plain dummy
// link left administratively DOWN (kube-proxy never sets it up; IPv4 local routes
// for its addresses exist regardless, and the link being down keeps the kernel
// from answering ARP for VIPs on its own), and every VIP is a host address (/32
// or /128, netlink.NewIPNet) with the kernel's default scope.
//
// The zero value (NewNetlinkAddresses) opens a netlink socket per request;
// OpenNetlinkAddresses keeps one open, which a proxier adding thousands of
// VIPs wants (see NetlinkIpset).
type NetlinkAddresses struct {
	mu sync.Mutex // guards closing against use
	h  *netlink.Handle
}

// NewNetlinkAddresses returns the rtnetlink implementation of Addresses with
// a socket per request: for short-lived uses (tests, cleanup).
func NewNetlinkAddresses() *NetlinkAddresses { return &NetlinkAddresses{} }

// OpenNetlinkAddresses opens a long-lived NETLINK_ROUTE socket in the
// network namespace of the calling thread. Close releases it.
func OpenNetlinkAddresses() (*NetlinkAddresses, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening a route netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(timevalDuration(netlinkSocketTimeout)); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting the route netlink socket timeout: %w", err)
	}
	return &NetlinkAddresses{h: h}, nil
}

// Close closes the socket OpenNetlinkAddresses opened; later requests open a
// socket each, as the zero value does.
func (n *NetlinkAddresses) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
	return nil
}

// handle returns the long-lived handle, or a zero Handle (a socket per request).
func (n *NetlinkAddresses) handle() *netlink.Handle {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h == nil {
		return perRequestHandle
	}
	return n.h
}

var _ Addresses = (*NetlinkAddresses)(nil)

// EnsureLink implements Addresses.
func (n *NetlinkAddresses) EnsureLink(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := n.handle().LinkByName(name)
	if err == nil {
		if l.Type() != "dummy" {
			return fmt.Errorf("link %s exists with type %s, want dummy", name, l.Type())
		}
		return nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return fmt.Errorf("looking up link %s: %w", name, err)
	}
	if err := n.handle().LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating dummy link %s: %w", name, err)
	}
	return nil
}

// List implements Addresses.
func (n *NetlinkAddresses) List(ctx context.Context, link string) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := n.handle().LinkByName(link)
	if err != nil {
		return nil, fmt.Errorf("looking up link %s: %w", link, err)
	}
	addrs, err := n.addrList(l)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", link, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// addrList lists addresses (of every link when l is nil), retrying a dump that
// the kernel interrupted because addresses changed meanwhile.
func (n *NetlinkAddresses) addrList(l netlink.Link) ([]netlink.Addr, error) {
	var err error
	for range 3 {
		var addrs []netlink.Addr
		addrs, err = n.handle().AddrList(l, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return addrs, err
		}
	}
	return nil, err
}

// Add implements Addresses.
func (n *NetlinkAddresses) Add(ctx context.Context, link string, a netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := n.handle().LinkByName(link)
	if err != nil {
		return fmt.Errorf("looking up link %s: %w", link, err)
	}
	if err := n.handle().AddrAdd(l, &netlink.Addr{IPNet: netlink.NewIPNet(net.IP(a.AsSlice()))}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %w", a, link, err)
	}
	return nil
}

// Delete implements Addresses.
func (n *NetlinkAddresses) Delete(ctx context.Context, link string, a netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, err := n.handle().LinkByName(link)
	if err != nil {
		return fmt.Errorf("looking up link %s: %w", link, err)
	}
	err = n.handle().AddrDel(l, &netlink.Addr{IPNet: netlink.NewIPNet(net.IP(a.AsSlice()))})
	// IPv4 reports EADDRNOTAVAIL for an absent address, older kernels ENXIO (kube-proxy ignores it too).
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("deleting %s from %s: %w", a, link, err)
	}
	return nil
}

// NodeIPs implements Addresses with a single address dump, so that the many VIPs
// on the dummy link are read once and dropped, not once per link.
func (n *NetlinkAddresses) NodeIPs(ctx context.Context, exclude string) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	skip := -1
	if exclude != "" {
		l, err := n.handle().LinkByName(exclude)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			skip = l.Attrs().Index
		case !errors.As(err, &nf):
			return nil, fmt.Errorf("looking up link %s: %w", exclude, err)
		}
	}
	addrs, err := n.addrList(nil)
	if err != nil {
		return nil, fmt.Errorf("listing local addresses: %w", err)
	}
	out := make([]netip.Addr, 0, 8)
	for _, a := range addrs {
		if a.LinkIndex == skip {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// FakeAddresses is an in-memory Addresses for tests: links with their addresses.
// Its canonical text (DumpText) is one line per link, sorted: "name: addr addr".
type FakeAddresses struct {
	mu     sync.Mutex
	links  map[string]map[netip.Addr]struct{}
	fail   map[netip.Addr]error
	writes int
}

var _ Addresses = (*FakeAddresses)(nil)

// NewFakeAddresses returns a FakeAddresses with no links.
func NewFakeAddresses() *FakeAddresses {
	return &FakeAddresses{links: map[string]map[netip.Addr]struct{}{}, fail: map[netip.Addr]error{}}
}

// NewFakeAddressesFromText parses DumpText output.
func NewFakeAddressesFromText(text string) (*FakeAddresses, error) {
	f := NewFakeAddresses()
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("line %d: want \"link: addr...\", got %q", i+1, line)
		}
		set := map[netip.Addr]struct{}{}
		for _, s := range strings.Fields(rest) {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			set[a.Unmap()] = struct{}{}
		}
		f.links[strings.TrimSpace(name)] = set
	}
	return f, nil
}

// DumpText renders the links and their addresses canonically.
func (f *FakeAddresses) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.links))
	for n := range f.links {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteString(":")
		for _, a := range sortedAddrs(f.links[n]) {
			b.WriteString(" ")
			b.WriteString(a.String())
		}
		b.WriteString("\n")
	}
	return b.String()
}

// SetError makes every Add and Delete of a fail with err until SetError(a, nil).
func (f *FakeAddresses) SetError(a netip.Addr, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, a)
	} else {
		f.fail[a] = err
	}
}

// Writes counts the Add and Delete calls that changed something.
func (f *FakeAddresses) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// EnsureLink implements Addresses.
func (f *FakeAddresses) EnsureLink(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; !ok {
		f.links[name] = map[netip.Addr]struct{}{}
	}
	return nil
}

// List implements Addresses.
func (f *FakeAddresses) List(_ context.Context, link string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	set, ok := f.links[link]
	if !ok {
		return nil, fmt.Errorf("link %s not found", link)
	}
	return sortedAddrs(set), nil
}

// Add implements Addresses.
func (f *FakeAddresses) Add(_ context.Context, link string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	set, ok := f.links[link]
	if !ok {
		return fmt.Errorf("adding %s to %s: link not found", a, link)
	}
	if err := f.fail[a]; err != nil {
		return fmt.Errorf("adding %s to %s: %w", a, link, err)
	}
	if _, ok := set[a]; !ok {
		set[a] = struct{}{}
		f.writes++
	}
	return nil
}

// Delete implements Addresses.
func (f *FakeAddresses) Delete(_ context.Context, link string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	set, ok := f.links[link]
	if !ok {
		return fmt.Errorf("deleting %s from %s: link not found", a, link)
	}
	if err := f.fail[a]; err != nil {
		return fmt.Errorf("deleting %s from %s: %w", a, link, err)
	}
	if _, ok := set[a]; ok {
		delete(set, a)
		f.writes++
	}
	return nil
}

// NodeIPs implements Addresses.
func (f *FakeAddresses) NodeIPs(_ context.Context, exclude string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := map[netip.Addr]struct{}{}
	for n, set := range f.links {
		if n == exclude {
			continue
		}
		for a := range set {
			all[a] = struct{}{}
		}
	}
	return sortedAddrs(all), nil
}

// sortedAddrs returns a set's addresses in order.
func sortedAddrs(set map[netip.Addr]struct{}) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
