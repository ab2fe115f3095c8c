//go:build linux

package netpod

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const echoPort = 8080

// requireRoot skips tests that create namespaces and links.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netpod tests create network namespaces, veth pairs and a bridge: run them as root")
	}
}

// newTestNet builds a dual-stack Net on random benchmarking ranges with pods
// that all serve TCP and UDP echo on echoPort.
func newTestNet(t *testing.T, pods ...string) (*Net, map[string]*Pod) {
	t.Helper()
	n := NewNet(t, NetOptions{DualStack: true})
	out := map[string]*Pod{}
	for _, name := range pods {
		p := n.AddPod(t, name)
		p.ServeEcho(t, echoPort)
		out[name] = p
	}
	return n, out
}

func gatewayOf(n *Net, ipv6 bool) netip.Addr {
	if ipv6 {
		return n.Gateway6
	}
	return n.Gateway
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

func TestEchoBetweenPods(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n, pods := newTestNet(t, "a", "b")
	tests := []struct {
		from, to string // from "" is the root netns
	}{
		{from: "", to: "a"},
		{from: "", to: "b"},
		{from: "b", to: "a"},
		{from: "a", to: "b"},
	}
	for _, ipv6 := range []bool{false, true} {
		for _, proto := range []string{TCP, UDP} {
			for _, tc := range tests {
				name := fmt.Sprintf("%s/%s/from=%q/to=%s", familyName(ipv6), proto, tc.from, tc.to)
				t.Run(name, func(t *testing.T) {
					from, wantClient := (*Pod)(nil), gatewayOf(n, ipv6)
					if tc.from != "" {
						from, wantClient = pods[tc.from], pods[tc.from].Addr(ipv6)
					}
					target := netip.AddrPortFrom(pods[tc.to].Addr(ipv6), echoPort)
					c, err := Dial(t.Context(), from, proto, target)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					reply, err := c.Send("hello")
					if err != nil {
						t.Fatal(err)
					}
					got, err := ParseReply(reply)
					if err != nil {
						t.Fatal(err)
					}
					want := Reply{Pod: tc.to, Client: netip.AddrPortFrom(wantClient, c.LocalAddr().Port())}
					if got != want {
						t.Errorf("reply %+v, want %+v (local address %s)", got, want, c.LocalAddr())
					}
				})
			}
		}
	}
}

func TestLongLivedConn(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	_, pods := newTestNet(t, "a", "b")
	for _, proto := range []string{TCP, UDP} {
		t.Run(proto, func(t *testing.T) {
			c, err := Dial(t.Context(), pods["b"], proto, netip.AddrPortFrom(pods["a"].IP, echoPort))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			want := fmt.Sprintf("a %s", netip.AddrPortFrom(pods["b"].IP, c.LocalAddr().Port()))
			for i := range 5 {
				got, err := c.Send(fmt.Sprintf("request %d", i))
				if err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				if got != want {
					t.Fatalf("send %d: reply %q, want %q", i, got, want)
				}
			}
		})
	}
}

func TestAskUsesNewSourcePorts(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	_, pods := newTestNet(t, "a")
	target := netip.AddrPortFrom(pods["a"].IP, echoPort)
	for _, proto := range []string{TCP, UDP} {
		t.Run(proto, func(t *testing.T) {
			seen := map[netip.AddrPort]bool{}
			for range 3 {
				reply, err := Ask(t.Context(), nil, proto, target)
				if err != nil {
					t.Fatal(err)
				}
				r, err := ParseReply(reply)
				if err != nil {
					t.Fatal(err)
				}
				if seen[r.Client] {
					t.Errorf("client address %s used twice", r.Client)
				}
				seen[r.Client] = true
			}
			counts, err := AskMany(t.Context(), pods["a"], proto, target, 4)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{"a": 4}; !maps.Equal(counts, want) {
				t.Errorf("AskMany = %v, want %v", counts, want)
			}
		})
	}
}

func TestDoRunsInsidePod(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n, pods := newTestNet(t, "a")
	p := pods["a"]
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	var links []string
	var addrs []netip.Prefix
	var gws []netip.Addr
	errSentinel := errors.New("sentinel")
	err = p.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // opened in the current (pod) netns
		if err != nil {
			return err
		}
		defer h.Close()
		ll, err := h.LinkList()
		if err != nil {
			return err
		}
		for _, l := range ll {
			links = append(links, l.Attrs().Name)
		}
		al, err := h.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range al {
			ip, _ := netip.AddrFromSlice(a.IP)
			ip = ip.Unmap()
			if !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				ones, _ := a.Mask.Size()
				addrs = append(addrs, netip.PrefixFrom(ip, ones))
			}
		}
		rl, err := h.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range rl {
			if gw, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
				gws = append(gws, gw.Unmap())
			}
		}
		return errSentinel
	})
	if !errors.Is(err, errSentinel) {
		t.Fatalf("Do returned %v, want the error of fn", err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Errorf("thread stayed in netns %s after Do, want %s", after.UniqueId(), before.UniqueId())
	}
	slices.Sort(links)
	if want := []string{PodInterface, "lo"}; !slices.Equal(links, want) {
		t.Errorf("links in pod = %v, want %v", links, want)
	}
	wantAddrs := []netip.Prefix{
		netip.PrefixFrom(p.IP, n.PodCIDR.Bits()),
		netip.PrefixFrom(p.IPv6, n.PodCIDRv6.Bits()),
	}
	if !sameElements(addrs, wantAddrs) {
		t.Errorf("addresses in pod = %v, want %v", addrs, wantAddrs)
	}
	if want := []netip.Addr{n.Gateway, n.Gateway6}; !sameElements(gws, want) {
		t.Errorf("route gateways in pod = %v, want %v", gws, want)
	}
}

func sameElements[T interface{ String() string }](a, b []T) bool {
	str := func(s []T) []string {
		out := make([]string, len(s))
		for i, v := range s {
			out[i] = v.String()
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(str(a), str(b))
}

func TestDeletePod(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	n, pods := newTestNet(t, "a", "b")
	a := pods["a"]
	ino := nsInode(t, a.NS)
	oldIP := a.IP
	if _, err := Ask(t.Context(), nil, TCP, netip.AddrPortFrom(a.IP, echoPort)); err != nil {
		t.Fatalf("pod a does not answer before Delete: %v", err)
	}

	podNames := func() []string {
		var names []string
		for _, p := range n.Pods() {
			names = append(names, p.Name)
		}
		return names
	}
	if got := podNames(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Pods() before Delete = %v", got)
	}

	a.Delete(t)
	a.Delete(t) // a second Delete is a no-op

	if got := podNames(); !slices.Equal(got, []string{"b"}) {
		t.Errorf("Pods() after Delete = %v, want [b]", got)
	}

	if _, err := n.h.LinkByName(a.HostVeth); !isNotFound(err) {
		t.Errorf("veth %s after Delete: err=%v, want not found", a.HostVeth, err)
	}
	if a.NS.IsOpen() {
		t.Error("pod netns handle still open after Delete")
	}
	if refs := processNetnsRefs(t)[ino]; len(refs) > 0 {
		t.Errorf("process still refers to the deleted pod's netns through %v", refs)
	}
	if err := a.Do(func() error { return nil }); err == nil {
		t.Error("Do on a deleted pod succeeded")
	}
	for _, proto := range []string{TCP, UDP} {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		start := time.Now()
		reply, err := Ask(ctx, nil, proto, netip.AddrPortFrom(oldIP, echoPort))
		cancel()
		if err == nil {
			t.Errorf("%s to deleted pod answered %q", proto, reply)
		}
		if d := time.Since(start); d > DefaultTimeout {
			t.Errorf("%s to deleted pod took %v, want it bounded by the 300ms context", proto, d)
		}
	}
	if got, err := Ask(t.Context(), pods["b"], UDP, netip.AddrPortFrom(pods["b"].IP, echoPort)); err != nil || !strings.HasPrefix(got, "b ") {
		t.Errorf("pod b after deleting a: reply %q, err %v", got, err)
	}

	// A replacement pod with the same name gets a new address.
	a2 := n.AddPod(t, "a")
	a2.ServeEcho(t, echoPort, UDP)
	if a2.IP == oldIP {
		t.Errorf("replacement pod reused IP %s", oldIP)
	}
	if got, err := Ask(t.Context(), nil, UDP, netip.AddrPortFrom(a2.IP, echoPort)); err != nil || !strings.HasPrefix(got, "a ") {
		t.Errorf("replacement pod: reply %q, err %v", got, err)
	}
}

func TestCleanupLeavesNothing(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	linkNames := func() []string {
		ll, err := retryDump(h.LinkList)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, l := range ll {
			out = append(out, l.Attrs().Name)
		}
		return out
	}
	before := linkNames()

	var n *Net
	var inodes []uint64
	var open *Conn
	t.Run("build", func(t *testing.T) {
		var pods map[string]*Pod
		n, pods = newTestNet(t, "a", "b")
		for _, p := range pods {
			inodes = append(inodes, nsInode(t, p.NS))
		}
		c, err := Dial(t.Context(), pods["a"], TCP, netip.AddrPortFrom(pods["b"].IP, echoPort))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Send("x"); err != nil {
			t.Fatal(err)
		}
		c.Close()
		// A client connection from the root netns that outlives the pod must
		// not keep the pod's namespace alive: cleanup closes the server side.
		if open, err = Dial(context.Background(), nil, TCP, netip.AddrPortFrom(pods["b"].IP, echoPort)); err != nil {
			t.Fatal(err)
		}
		if _, err := open.Send("x"); err != nil {
			t.Fatal(err)
		}
		br, err := h.LinkByName(n.Bridge)
		if err != nil {
			t.Fatalf("bridge missing while the net is alive: %v", err)
		}
		for _, p := range pods {
			l, err := h.LinkByName(p.HostVeth)
			if err != nil {
				t.Fatalf("veth of pod %s missing: %v", p.Name, err)
			}
			if l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().OperState != netlink.OperUp {
				t.Errorf("veth %s: master %d, state %s; want master %d and up", p.HostVeth, l.Attrs().MasterIndex, l.Attrs().OperState, br.Attrs().Index)
			}
		}
	})

	if open != nil {
		defer open.Close()
	}
	after := linkNames()
	for _, name := range after {
		if !slices.Contains(before, name) && (name == n.Bridge || strings.Contains(name, n.id)) {
			t.Errorf("link %s left behind", name)
		}
	}
	refs := processNetnsRefs(t)
	for _, ino := range inodes {
		if len(refs[ino]) > 0 {
			t.Errorf("pod netns %d still referenced by %v", ino, refs[ino])
		}
	}
	if len(inodes) != 2 {
		t.Errorf("recorded %d pod namespaces, want 2", len(inodes))
	}
}

// nsInode returns the inode number that identifies ns.
func nsInode(t *testing.T, ns netns.NsHandle) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// processNetnsRefs maps network namespace inodes to the file descriptors,
// sockets and threads of this process that refer to them (and so keep them
// alive).
func processNetnsRefs(t *testing.T) map[uint64][]string {
	t.Helper()
	refs := map[uint64][]string{}
	for _, pattern := range []string{"/proc/self/fd/*", "/proc/self/task/*/ns/net"} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			target, err := os.Readlink(p)
			if err != nil {
				continue // the fd or thread went away meanwhile
			}
			var ino uint64
			if _, err := fmt.Sscanf(target, "net:[%d]", &ino); err == nil {
				refs[ino] = append(refs[ino], p)
			} else if strings.HasPrefix(target, "socket:") {
				if ino, ok := socketNetns(p); ok {
					refs[ino] = append(refs[ino], p+" ("+target+")")
				}
			}
		}
	}
	return refs
}

// socketNetns returns the netns inode of the socket behind /proc/self/fd/N,
// using SIOCGSKNS (Linux 4.9), which opens the socket's namespace.
func socketNetns(path string) (uint64, bool) {
	var fd int
	if _, err := fmt.Sscanf(filepath.Base(path), "%d", &fd); err != nil {
		return 0, false
	}
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, false
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

func TestNewNetRejects(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	existing := NewNet(t, NetOptions{DualStack: true})
	inside := netip.PrefixFrom(existing.Gateway, 28).Masked()
	tests := []struct {
		name string
		opts NetOptions
		want string
	}{
		{"same IPv4 CIDR", NetOptions{PodCIDR: existing.PodCIDR}, "overlaps"},
		{"IPv4 CIDR inside another", NetOptions{PodCIDR: inside}, "overlaps"},
		{"same IPv6 CIDR", NetOptions{PodCIDRv6: existing.PodCIDRv6}, "overlaps"},
		{"bridge name taken", NetOptions{Bridge: existing.Bridge}, "add bridge"},
		{"gateway outside CIDR", NetOptions{GatewayIP: netip.MustParseAddr("192.0.2.1")}, "not a host"},
		{"IPv6 CIDR as IPv4", NetOptions{PodCIDR: netip.MustParsePrefix("2001:2:ffff::/64")}, "wrong family"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := newNet(tc.opts)
			if err == nil {
				n.close()
				t.Fatalf("newNet(%+v) succeeded, want an error containing %q", tc.opts, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("newNet(%+v) = %v, want an error containing %q", tc.opts, err, tc.want)
			}
		})
	}
	// The failed attempts must not have touched the existing bridge.
	if _, err := existing.h.LinkByName(existing.Bridge); err != nil {
		t.Errorf("existing bridge: %v", err)
	}
}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name    string
		cidr    string
		gw      string
		pods    int
		want    []string
		wantErr bool
	}{
		{name: "skips network and gateway", cidr: "10.9.0.0/29", gw: "10.9.0.1", pods: 3, want: []string{"10.9.0.2", "10.9.0.3", "10.9.0.4"}},
		{name: "gateway in the middle", cidr: "10.9.0.0/29", gw: "10.9.0.3", pods: 4, want: []string{"10.9.0.1", "10.9.0.2", "10.9.0.4", "10.9.0.5"}},
		{name: "never hands out broadcast", cidr: "10.9.0.0/30", gw: "10.9.0.1", pods: 2, want: []string{"10.9.0.2"}, wantErr: true},
		{name: "ipv6 uses the last address", cidr: "2001:2::fffc/126", gw: "2001:2::fffd", pods: 2, want: []string{"2001:2::fffe", "2001:2::ffff"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cidr := netip.MustParsePrefix(tc.cidr)
			n := &Net{PodCIDR: cidr, Gateway: netip.MustParseAddr(tc.gw), last4: cidr.Addr(), pods: map[string]*Pod{}}
			var got []string
			var err error
			for i := range tc.pods {
				p := &Pod{Name: fmt.Sprint("p", i)}
				if _, err = n.allocate(p); err != nil {
					break
				}
				got = append(got, p.IP.String())
			}
			if (err != nil) != tc.wantErr {
				t.Errorf("error = %v, want error %v", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("allocated %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("duplicate name", func(t *testing.T) {
		cidr := netip.MustParsePrefix("10.9.0.0/24")
		n := &Net{PodCIDR: cidr, Gateway: cidr.Addr().Next(), last4: cidr.Addr(), pods: map[string]*Pod{}}
		if _, err := n.allocate(&Pod{Name: "x"}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.allocate(&Pod{Name: "x"}); err == nil {
			t.Error("second pod named x was allocated")
		}
	})
}

func TestRandomSubnet(t *testing.T) {
	tests := []struct {
		pool string
		bits int
	}{
		{"198.18.0.0/15", 26},
		{"2001:2::/48", 64},
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			pool := netip.MustParsePrefix(tc.pool)
			seen := map[netip.Prefix]bool{}
			for range 200 {
				p := randomSubnet(pool, tc.bits)
				if p.Bits() != tc.bits || p.Masked() != p || !pool.Contains(p.Addr()) || p.Addr().Is4() != pool.Addr().Is4() {
					t.Fatalf("randomSubnet(%s, %d) = %s", pool, tc.bits, p)
				}
				seen[p] = true
			}
			// 200 draws from >= 2048 subnets: far more than a few repeats
			// would mean the random bits are not used.
			if len(seen) < 150 {
				t.Errorf("only %d distinct subnets in 200 draws", len(seen))
			}
		})
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		in      string
		want    Reply
		wantErr bool
	}{
		{in: "web-1 10.0.0.1:4242\n", want: Reply{Pod: "web-1", Client: netip.MustParseAddrPort("10.0.0.1:4242")}},
		{in: "web-1 [2001:2::1]:80", want: Reply{Pod: "web-1", Client: netip.MustParseAddrPort("[2001:2::1]:80")}},
		{in: "web-1", wantErr: true},
		{in: " 10.0.0.1:1", wantErr: true},
		{in: "web-1 10.0.0.1", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseReply(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseReply(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
