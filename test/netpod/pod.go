//go:build linux

package netpod

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PodInterface is the name of the pod's end of its veth pair.
const PodInterface = "eth0"

// Pod is a network namespace attached to a Net's bridge: it has one interface
// (eth0) with the next free address of each pod CIDR and a default route via
// the bridge's gateway, so replies to traffic that IPVS forwarded into the pod
// go back through the node, where IPVS un-NATs them.
type Pod struct {
	// Name is the pod's name; echo replies start with it.
	Name string
	// IP is the pod's IPv4 address.
	IP netip.Addr
	// IPv6 is the pod's IPv6 address, invalid when the Net is IPv4-only.
	IPv6 netip.Addr
	// NS is the pod's network namespace. It is closed by Delete; do not close
	// it yourself.
	NS netns.NsHandle
	// HostVeth is the name of the veth end on the bridge, in the root netns.
	HostVeth string

	net *Net

	mu      sync.Mutex
	servers []*echoServer
	deleted bool
}

// AddPod creates a pod on the Net and registers its deletion with t.Cleanup.
// Names must be unique among the Net's live pods.
func (n *Net) AddPod(t testing.TB, name string) *Pod {
	t.Helper()
	p, err := n.addPod(name)
	if err != nil {
		t.Fatalf("netpod: add pod %q: %v", name, err)
	}
	t.Cleanup(func() {
		if err := p.delete(); err != nil {
			t.Errorf("netpod: cleanup of pod %s: %v", name, err)
		}
	})
	return p
}

// addPod is AddPod without testing.TB; on error it leaves nothing behind.
func (n *Net) addPod(name string) (_ *Pod, err error) {
	p := &Pod{Name: name, NS: netns.None(), net: n}
	idx, err := n.allocate(p)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.delete())
		}
	}()
	p.HostVeth = "kv" + n.id + "p" + strconv.Itoa(idx)
	ns, err := newNetns()
	if err != nil {
		return nil, err
	}
	p.NS = ns
	if len(p.HostVeth) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("veth name %q is too long", p.HostVeth)
	}
	// The peer is created directly inside the pod's netns, so its name cannot
	// collide with anything in the root netns.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, MasterIndex: n.bridge.Attrs().Index},
		PeerName:      PodInterface,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := n.h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", p.HostVeth, err)
	}
	if err := p.configureInside(); err != nil {
		return nil, err
	}
	host, err := n.h.LinkByName(p.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", p.HostVeth, err)
	}
	if err := n.h.LinkSetAlias(host, "netpod "+name); err != nil {
		return nil, fmt.Errorf("set alias of %s: %w", p.HostVeth, err)
	}
	if err := n.h.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set %s up: %w", p.HostVeth, err)
	}
	return p, nil
}

// configureInside sets lo and eth0 up inside the pod, assigns the pod
// addresses and adds the default routes via the gateways.
func (p *Pod) configureInside() error {
	// Only NETLINK_ROUTE: by default the handle also opens an XFRM socket,
	// which fails on kernels without xfrm_user.
	h, err := netlink.NewHandleAt(p.NS, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle in pod: %w", err)
	}
	defer h.Close()
	for _, name := range []string{"lo", PodInterface} {
		link, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s in pod: %w", name, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in pod: %w", name, err)
		}
	}
	eth, err := h.LinkByName(PodInterface)
	if err != nil {
		return fmt.Errorf("find %s in pod: %w", PodInterface, err)
	}
	type family struct {
		ip, gw netip.Addr
		cidr   netip.Prefix
	}
	for _, f := range []family{{p.IP, p.net.Gateway, p.net.PodCIDR}, {p.IPv6, p.net.Gateway6, p.net.PodCIDRv6}} {
		if !f.ip.IsValid() {
			continue
		}
		if err := addAddr(h, eth, f.ip, f.cidr.Bits()); err != nil {
			return fmt.Errorf("in pod: %w", err)
		}
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: f.gw.AsSlice()}
		if f.ip.Is6() {
			r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s in pod: %w", f.gw, err)
		}
	}
	return nil
}

// Addr returns the pod's IPv6 address when ipv6 is set, else its IPv4 one;
// handy in tests that run once per family.
func (p *Pod) Addr(ipv6 bool) netip.Addr {
	if ipv6 {
		return p.IPv6
	}
	return p.IP
}

// Do runs fn on the calling goroutine with its OS thread locked inside the
// pod's network namespace, then switches the thread back and unlocks it.
// Sockets that fn creates stay in the pod's netns after Do returns, so
// listeners and clients are created inside Do and used outside. Goroutines
// that fn starts do not run in the pod's netns.
func (p *Pod) Do(fn func() error) error {
	p.mu.Lock()
	ns, deleted := p.NS, p.deleted
	p.mu.Unlock()
	if deleted {
		return fmt.Errorf("pod %s is deleted", p.Name)
	}
	return doInNetns(ns, fn)
}

// doInNetns runs fn on the current goroutine's thread inside ns. If the thread
// cannot be switched back, it stays locked, so the runtime discards it when
// the goroutine exits instead of reusing a thread in the wrong netns.
func doInNetns(ns netns.NsHandle, fn func() error) (err error) {
	if !ns.IsOpen() {
		return errors.New("netns is closed")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	// Deferred so that a panic or runtime.Goexit (t.FailNow) in fn also
	// switches back.
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// newNetns creates an unnamed network namespace and returns a handle to it
// without moving the calling goroutine into it.
func newNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("create netns: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		ns.Close()
		// Leave the thread locked: the runtime drops it when the goroutine ends.
		return netns.None(), fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ns, nil
}

// Delete removes the pod: it stops the pod's echo servers, deletes the veth
// pair and closes the namespace handle, so the kernel frees the namespace
// once no socket refers to it any more (close Conns dialled from the pod
// first). The Net never reuses the pod's addresses. Deleting twice is a no-op.
func (p *Pod) Delete(t testing.TB) {
	t.Helper()
	if err := p.delete(); err != nil {
		t.Fatalf("netpod: delete pod %s: %v", p.Name, err)
	}
}

func (p *Pod) delete() error {
	p.mu.Lock()
	if p.deleted {
		p.mu.Unlock()
		return nil
	}
	p.deleted = true
	servers := p.servers
	p.servers = nil
	p.mu.Unlock()

	var errs []error
	for _, s := range servers {
		s.stop()
	}
	n := p.net
	if link, err := n.h.LinkByName(p.HostVeth); err == nil {
		if err := n.h.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", p.HostVeth, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("find veth %s: %w", p.HostVeth, err))
	}
	p.mu.Lock()
	if p.NS.IsOpen() {
		errs = append(errs, p.NS.Close())
	}
	p.NS = netns.None()
	p.mu.Unlock()
	n.mu.Lock()
	if n.pods[p.Name] == p {
		delete(n.pods, p.Name)
	}
	n.mu.Unlock()
	return errors.Join(errs...)
}
