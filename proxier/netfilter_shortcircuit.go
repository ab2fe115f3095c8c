package proxier

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// In-cluster traffic to externalTrafficPolicy=Local addresses (kube-proxy
// #115931). kube-proxy's iptables and nftables modes send traffic from pods
// and from the node itself to a Service's external addresses (LB IPs,
// external IPs, NodePorts) to every endpoint of the cluster; only traffic from
// outside is limited to this node's endpoints. IPVS keys a virtual server by
// address and port, so one virtual server cannot do both. kipvs keeps the
// address-keyed virtual server for outside traffic (local endpoints) and adds,
// per Service port and family, a firewall-mark virtual server with the
// cluster's endpoints. One fixed rule per path marks the packets:
// `-j SET --map-set KIPVS-SHORT-CIRCUIT dst,dst --map-mark` copies the mark
// stored with the destination's entry (ipset skbinfo) to the packet, in
// mangle PREROUTING for sources in --cluster-cidr and in mangle OUTPUT for the
// node. IPVS looks a packet's mark up before its address (ip_vs_service_find),
// so marked packets reach the fwmark virtual server. The rule count stays
// fixed: which addresses are short-circuited is the content of the set.

// ShortCircuitMarkBit is set in every firewall mark kipvs uses; bits 14 and
// 15 (kube-proxy's masquerade and drop bits) are always clear.
const ShortCircuitMarkBit = 0x2000

// shortCircuitMarkMask selects the bits that tell kipvs's marks apart.
const shortCircuitMarkMask = 0xe000

// ShortCircuitMark is the firewall mark of a Service port's fwmark virtual
// server in one family: a hash of the port's name with bit 13 set and bits
// 14 and 15 clear, stable across restarts. Two ports whose marks collide
// (29 bits of hash) are resolved by the netfilter sync: the first by name
// keeps the mark, the other is not short-circuited and is logged.
func ShortCircuitMark(port endpoints.ServicePortName, ipv6 bool) uint32 {
	h := fnv.New32a()
	h.Write([]byte(port.String()))
	if ipv6 {
		h.Write([]byte{6})
	}
	return h.Sum32()&^shortCircuitMarkMask | ShortCircuitMarkBit
}

// isShortCircuitMark reports whether m has the shape of kipvs's marks.
func isShortCircuitMark(m uint32) bool { return m&shortCircuitMarkMask == ShortCircuitMarkBit }

// FwmarkServer is one firewall-mark virtual server with its real servers.
type FwmarkServer struct {
	Mark      uint32
	IPv6      bool
	Protocol  ipvs.Protocol
	Scheduler string
	Flags     ipvs.Flags
	Timeout   uint32
	// RealServers are sorted; every real server has weight 1.
	RealServers []ipvs.RealServerKey
}

// fwmarkKey identifies a FwmarkServer.
type fwmarkKey struct {
	Mark uint32
	IPv6 bool
}

func (f FwmarkServer) key() fwmarkKey { return fwmarkKey{f.Mark, f.IPv6} }

// String renders "fwmark 0x1232000 TCP rr -> 10.244.1.5:8080,..." (inet6 for IPv6).
func (f FwmarkServer) String() string {
	rs := make([]string, len(f.RealServers))
	for i, r := range f.RealServers {
		rs[i] = r.String()
	}
	fam := ""
	if f.IPv6 {
		fam = " inet6"
	}
	return fmt.Sprintf("fwmark %#x%s %s %s flags %#x timeout %d -> %s", f.Mark, fam, f.Protocol, f.Scheduler,
		uint32(f.Flags), f.Timeout, strings.Join(rs, ","))
}

// equal reports whether a and b are the same server.
//
// Protocol is left out: the kernel does not report it for a fwmark virtual
// server (ip_vs_genl_fill_service puts IPVS_SVC_ATTR_PROTOCOL only for
// address-based ones), so a listed server never has it and comparing it made
// every full resync rewrite every fwmark server (TestNetfilterRuleCount).
func (f FwmarkServer) equal(o FwmarkServer) bool {
	return f.key() == o.key() && f.Scheduler == o.Scheduler && f.Flags == o.Flags &&
		f.Timeout == o.Timeout && slices.Equal(f.RealServers, o.RealServers)
}

// BuildFwmarkServers returns the fwmark virtual servers one Service wants:
// one per port and family with an ExternalIP, LoadBalancer or NodePort
// virtual server under externalTrafficPolicy Local, holding the real servers
// of the port's ClusterIP virtual server of that family (the cluster's
// endpoints; with internalTrafficPolicy Local too, those are the local ones)
// and the external virtual server's scheduler, flags and timeout. Pure.
func BuildFwmarkServers(sm *ServiceModel, svc *endpoints.Service) []FwmarkServer {
	if sm == nil || svc == nil {
		return nil
	}
	local := map[endpoints.ServicePortName]bool{}
	for _, sp := range svc.Ports {
		local[sp.Name] = sp.ExternalPolicyLocal
	}
	type portFam struct {
		port endpoints.ServicePortName
		v6   bool
	}
	cluster := map[portFam]*DesiredVirtualServer{}
	external := map[portFam]*DesiredVirtualServer{}
	for k, dvs := range sm.VirtualServers {
		pf := portFam{dvs.Port, k.Address.Is6()}
		switch {
		case dvs.Kind == KindClusterIP:
			cluster[pf] = dvs
		case local[dvs.Port]:
			// Any of them: they share the Service port's settings.
			if cur := external[pf]; cur == nil || k.Compare(cur.VirtualServer.VirtualServerKey) < 0 {
				external[pf] = dvs
			}
		}
	}
	var out []FwmarkServer
	for pf, ext := range external {
		c := cluster[pf]
		if c == nil {
			continue
		}
		f := FwmarkServer{
			Mark: ShortCircuitMark(pf.port, pf.v6), IPv6: pf.v6, Protocol: ext.VirtualServer.Protocol,
			Scheduler: ext.VirtualServer.Scheduler, Flags: ext.VirtualServer.Flags, Timeout: ext.VirtualServer.Timeout,
			RealServers: slices.SortedFunc(maps.Keys(c.RealServers), compareRealServerKeys),
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b FwmarkServer) int {
		return cmp.Or(cmp.Compare(a.Mark, b.Mark), boolCompare(a.IPv6, b.IPv6))
	})
	return out
}

func compareRealServerKeys(a, b ipvs.RealServerKey) int {
	return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Port, b.Port))
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// FwmarkIPVS is kipvs's boundary to IPVS's firewall-mark virtual servers. It
// sees only marks of kipvs's shape (isShortCircuitMark); the address-keyed
// virtual servers stay with ipvs.Interface, whose Dump skips fwmark ones.
type FwmarkIPVS interface {
	// List returns kipvs's fwmark virtual servers.
	List(ctx context.Context) ([]FwmarkServer, error)
	// Set makes the kernel's server want (have is what List returned for
	// its key, nil when absent) and returns the number of writes.
	Set(ctx context.Context, have *FwmarkServer, want FwmarkServer) (int, error)
	// Delete removes a server with its real servers.
	Delete(ctx context.Context, f FwmarkServer) error
}

// FakeFwmarkIPVS is an in-memory FwmarkIPVS; Writes counts server and real
// server writes.
type FakeFwmarkIPVS struct {
	mu      sync.Mutex
	servers map[fwmarkKey]FwmarkServer
	writes  int
}

var _ FwmarkIPVS = (*FakeFwmarkIPVS)(nil)

// NewFakeFwmarkIPVS returns an empty FakeFwmarkIPVS.
func NewFakeFwmarkIPVS() *FakeFwmarkIPVS {
	return &FakeFwmarkIPVS{servers: map[fwmarkKey]FwmarkServer{}}
}

// DumpText renders the servers, one line each, sorted.
func (f *FakeFwmarkIPVS) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for _, s := range f.servers {
		lines = append(lines, s.String()+"\n")
	}
	slices.Sort(lines)
	return strings.Join(lines, "")
}

// Writes counts writes.
func (f *FakeFwmarkIPVS) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// List implements FwmarkIPVS.
func (f *FakeFwmarkIPVS) List(ctx context.Context) ([]FwmarkServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]FwmarkServer, 0, len(f.servers))
	for _, s := range f.servers {
		s.RealServers = slices.Clone(s.RealServers)
		s.Protocol = "" // as the kernel: no protocol for fwmark servers
		out = append(out, s)
	}
	return out, nil
}

// Set implements FwmarkIPVS, counting one write per server change and per
// real server added or removed, as the kernel needs.
func (f *FakeFwmarkIPVS) Set(ctx context.Context, _ *FwmarkServer, want FwmarkServer) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if !isShortCircuitMark(want.Mark) {
		return 0, fmt.Errorf("fwmark %#x is not kipvs's: %w", want.Mark, syscall.EINVAL)
	}
	cur, ok := f.servers[want.key()]
	n := 0
	if !ok || cur.Protocol != want.Protocol || cur.Scheduler != want.Scheduler || cur.Flags != want.Flags || cur.Timeout != want.Timeout {
		n++
	}
	for _, r := range want.RealServers {
		if !slices.Contains(cur.RealServers, r) {
			n++
		}
	}
	for _, r := range cur.RealServers {
		if !slices.Contains(want.RealServers, r) {
			n++
		}
	}
	want.RealServers = slices.Clone(want.RealServers)
	f.servers[want.key()] = want
	f.writes += n
	return n, nil
}

// Delete implements FwmarkIPVS.
func (f *FakeFwmarkIPVS) Delete(ctx context.Context, s FwmarkServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, ok := f.servers[s.key()]; !ok {
		return fmt.Errorf("fwmark %#x: %w", s.Mark, syscall.ESRCH)
	}
	delete(f.servers, s.key())
	f.writes++
	return nil
}

// MobyFwmarkIPVS implements FwmarkIPVS over github.com/moby/ipvs.
type MobyFwmarkIPVS struct {
	mu sync.Mutex
	h  *mipvs.Handle
}

var _ FwmarkIPVS = (*MobyFwmarkIPVS)(nil)

// NewMobyFwmarkIPVS opens a generic-netlink IPVS handle in the current netns.
func NewMobyFwmarkIPVS() (*MobyFwmarkIPVS, error) {
	h, err := mipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("opening IPVS for fwmark virtual servers: %w", err)
	}
	return &MobyFwmarkIPVS{h: h}, nil
}

func family(v6 bool) (uint16, uint32) {
	if v6 {
		return unix.AF_INET6, 128
	}
	return unix.AF_INET, 0xffffffff
}

func (m *MobyFwmarkIPVS) service(f FwmarkServer) *mipvs.Service {
	af, mask := family(f.IPv6)
	return &mipvs.Service{FWMark: f.Mark, AddressFamily: af, Netmask: mask, Protocol: uint16(protoNumbers[f.Protocol]),
		SchedName: f.Scheduler, Flags: uint32(f.Flags), Timeout: f.Timeout}
}

func destination(r ipvs.RealServerKey) *mipvs.Destination {
	af, _ := family(r.Address.Is6())
	return &mipvs.Destination{Address: net.IP(r.Address.AsSlice()), Port: r.Port, Weight: 1,
		ConnectionFlags: mipvs.ConnectionFlagMasq, AddressFamily: af}
}

// List implements FwmarkIPVS.
func (m *MobyFwmarkIPVS) List(ctx context.Context) ([]FwmarkServer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	svcs, err := m.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("listing IPVS virtual servers: %w", err)
	}
	var out []FwmarkServer
	for _, s := range svcs {
		if s.FWMark == 0 || !isShortCircuitMark(s.FWMark) {
			continue
		}
		f := FwmarkServer{Mark: s.FWMark, IPv6: s.AddressFamily == unix.AF_INET6, Scheduler: s.SchedName,
			Flags: ipvs.Flags(s.Flags) &^ ipvs.FlagHashed, Timeout: s.Timeout}
		for p, n := range protoNumbers {
			if uint16(n) == s.Protocol {
				f.Protocol = p
			}
		}
		dests, err := m.h.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("listing real servers of fwmark %#x: %w", s.FWMark, err)
		}
		for _, d := range dests {
			if a, ok := netip.AddrFromSlice(d.Address); ok {
				f.RealServers = append(f.RealServers, ipvs.RealServerKey{Address: a.Unmap(), Port: d.Port})
			}
		}
		slices.SortFunc(f.RealServers, compareRealServerKeys)
		out = append(out, f)
	}
	return out, nil
}

// Set implements FwmarkIPVS.
func (m *MobyFwmarkIPVS) Set(ctx context.Context, have *FwmarkServer, want FwmarkServer) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	svc := m.service(want)
	n := 0
	switch {
	case have == nil:
		if err := m.h.NewService(svc); err != nil {
			return n, fmt.Errorf("creating fwmark virtual server %#x: %w", want.Mark, err)
		}
		n++
		have = &FwmarkServer{}
	case have.Scheduler != want.Scheduler || have.Flags != want.Flags || have.Timeout != want.Timeout: // no Protocol: see equal
		if err := m.h.UpdateService(svc); err != nil {
			return n, fmt.Errorf("updating fwmark virtual server %#x: %w", want.Mark, err)
		}
		n++
	}
	var errs []error
	for _, r := range want.RealServers {
		if !slices.Contains(have.RealServers, r) {
			if err := m.h.NewDestination(svc, destination(r)); err != nil {
				errs = append(errs, fmt.Errorf("adding %s to fwmark %#x: %w", r, want.Mark, err))
				continue
			}
			n++
		}
	}
	for _, r := range have.RealServers {
		if !slices.Contains(want.RealServers, r) {
			if err := m.h.DelDestination(svc, destination(r)); err != nil {
				errs = append(errs, fmt.Errorf("deleting %s from fwmark %#x: %w", r, want.Mark, err))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// Delete implements FwmarkIPVS.
func (m *MobyFwmarkIPVS) Delete(ctx context.Context, f FwmarkServer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := m.h.DelService(m.service(f)); err != nil {
		return fmt.Errorf("deleting fwmark virtual server %#x: %w", f.Mark, err)
	}
	return nil
}

// syncFwmark brings the fwmark virtual servers in line with the wanted ones;
// a full sync lists them first, an incremental one trusts the cache.
func (n *netfilter) syncFwmark(ctx context.Context, full bool, res *NetfilterResult) error {
	if n.k.Fwmark == nil {
		return nil
	}
	if full || n.fwObserved == nil {
		list, err := n.k.Fwmark.List(ctx)
		if err != nil {
			return err
		}
		n.fwObserved = make(map[fwmarkKey]FwmarkServer, len(list))
		for _, f := range list {
			n.fwObserved[f.key()] = f
		}
	}
	want := map[fwmarkKey]FwmarkServer{}
	for _, fs := range n.fwPerSvc {
		for _, f := range fs {
			want[f.key()] = f
		}
	}
	var errs []error
	for _, k := range slices.SortedFunc(maps.Keys(want), compareFwmarkKeys) {
		w := want[k]
		h, ok := n.fwObserved[k]
		if ok && h.equal(w) {
			continue
		}
		var have *FwmarkServer
		if ok {
			have = &h
		}
		writes, err := n.k.Fwmark.Set(ctx, have, w)
		res.FwmarkWrites += writes
		if err != nil {
			res.Failed++
			errs = append(errs, err)
			delete(n.fwObserved, k) // re-read at the next full sync
			n.needFull = true
			continue
		}
		n.fwObserved[k] = w
		klog.FromContext(ctx).V(4).Info("Fwmark virtual server", "server", w.String())
	}
	for _, k := range slices.SortedFunc(maps.Keys(n.fwObserved), compareFwmarkKeys) {
		if _, ok := want[k]; ok {
			continue
		}
		if err := n.k.Fwmark.Delete(ctx, n.fwObserved[k]); err != nil {
			res.Failed++
			errs = append(errs, err)
			continue
		}
		res.FwmarkWrites++
		delete(n.fwObserved, k)
	}
	return joinCapped(errs)
}

func compareFwmarkKeys(a, b fwmarkKey) int {
	return cmp.Or(cmp.Compare(a.Mark, b.Mark), boolCompare(a.IPv6, b.IPv6))
}
