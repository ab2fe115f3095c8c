package proxier

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/kipvs/kipvs/ipvs"
)

// ObservedVirtualServer is a virtual server as kipvs last saw it in the kernel
// (by a dump, or by the result of its own successful writes), with its real servers.
type ObservedVirtualServer struct {
	VirtualServer ipvs.VirtualServer
	RealServers   map[ipvs.RealServerKey]ipvs.RealServerStatus
}

// KernelState is the cached observed view of the kernel: refreshed by a full
// sync's dump, then kept up to date with every write that succeeded.
type KernelState struct {
	VirtualServers map[ipvs.VirtualServerKey]*ObservedVirtualServer
	// Addresses are the addresses on the dummy link.
	Addresses map[netip.Addr]struct{}
	// Owned are virtual servers kipvs programmed or adopted since it started,
	// besides those on dummy-link addresses. It lets kipvs remove NodePort virtual
	// servers (on node IPs, which are not on the dummy link) that it created. It
	// lives in memory; a full sync adds the NodePort virtual servers that kipvs's
	// ipsets name (AdoptNodePorts), so that those of a Service deleted while kipvs
	// was not running are removed too.
	Owned map[ipvs.VirtualServerKey]struct{}
}

// NewKernelState returns an empty KernelState.
func NewKernelState() *KernelState {
	return &KernelState{
		VirtualServers: map[ipvs.VirtualServerKey]*ObservedVirtualServer{},
		Addresses:      map[netip.Addr]struct{}{},
		Owned:          map[ipvs.VirtualServerKey]struct{}{},
	}
}

// SetDump replaces the cached virtual servers with a dump and keeps Owned only for
// keys that still exist.
func (s *KernelState) SetDump(dump []ipvs.VirtualServerStatus, addrs []netip.Addr) {
	s.VirtualServers = make(map[ipvs.VirtualServerKey]*ObservedVirtualServer, len(dump))
	for i := range dump {
		s.VirtualServers[dump[i].VirtualServerKey] = observedFrom(&dump[i])
	}
	s.Addresses = make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		s.Addresses[a.Unmap()] = struct{}{}
	}
	for k := range s.Owned {
		if _, ok := s.VirtualServers[k]; !ok {
			delete(s.Owned, k)
		}
	}
}

// NodePortMark is a NodePort that one of kipvs's NodePort ipsets holds: its
// family (true: IPv6), protocol and port.
type NodePortMark struct {
	IPv6     bool
	Protocol ipvs.Protocol
	Port     uint16
}

// NodePortMarks are what kipvs's ipsets say about NodePort virtual servers it
// created: Ports from the NodePort sets (KIPVS-NODE-PORT-TCP and the like,
// NodePorts with externalTrafficPolicy Cluster), Keys exact virtual servers
// (KIPVS-NO-LOCAL: Local-policy ones with no local endpoint). The zero value
// adopts nothing; use a composite literal with both maps to fill it.
type NodePortMarks struct {
	Ports map[NodePortMark]struct{}
	Keys  map[ipvs.VirtualServerKey]struct{}
}

// AdoptNodePorts adds to Owned every observed virtual server on one of local
// (the node's addresses outside the dummy link) that marks names: its family,
// protocol and port are in Ports, or its key is in Keys. It returns the keys
// newly owned, sorted.
//
// The ipsets live in the kernel like the IPVS table, so they outlive a kipvs
// restart and vanish with a reboot, as the virtual servers do. A virtual server
// on a node address with a protocol and port kipvs never had as a NodePort is
// never adopted. What the sets cannot tell: a NodePort with
// externalTrafficPolicy Local that still had a local endpoint is in no set, so
// after a restart its virtual servers are left alone if its Service is gone;
// and a foreign virtual server on a node address that happens to use a port
// kipvs had as a NodePort of the same protocol is adopted (kipvs would have
// taken over that key while the Service existed anyway).
func (s *KernelState) AdoptNodePorts(local []netip.Addr, marks NodePortMarks) []ipvs.VirtualServerKey {
	if len(marks.Ports)+len(marks.Keys) == 0 {
		return nil
	}
	node := make(map[netip.Addr]struct{}, len(local))
	for _, a := range local {
		node[a.Unmap()] = struct{}{}
	}
	var out []ipvs.VirtualServerKey
	for k := range s.VirtualServers {
		if _, ok := node[k.Address]; !ok {
			continue
		}
		if _, ok := s.Owned[k]; ok {
			continue
		}
		_, byPort := marks.Ports[NodePortMark{IPv6: k.Address.Is6(), Protocol: k.Protocol, Port: k.Port}]
		_, byKey := marks.Keys[k]
		if byPort || byKey {
			s.Owned[k] = struct{}{}
			out = append(out, k)
		}
	}
	slices.SortFunc(out, ipvs.VirtualServerKey.Compare)
	return out
}

// observedFrom converts a dumped virtual server.
func observedFrom(vs *ipvs.VirtualServerStatus) *ObservedVirtualServer {
	o := &ObservedVirtualServer{
		VirtualServer: vs.VirtualServer,
		RealServers:   make(map[ipvs.RealServerKey]ipvs.RealServerStatus, len(vs.RealServers)),
	}
	for _, rs := range vs.RealServers {
		o.RealServers[rs.RealServerKey] = rs
	}
	return o
}

// owns reports whether kipvs may change or delete the virtual server k.
func (s *KernelState) owns(k ipvs.VirtualServerKey, exclude []netip.Prefix) bool {
	if excluded(k.Address, exclude) {
		return false
	}
	if _, ok := s.Addresses[k.Address]; ok {
		return true
	}
	_, ok := s.Owned[k]
	return ok
}

// Desired is the union of every Service's effective model: the virtual servers
// kipvs wants, and how many Services want each dummy-link address bound.
type Desired struct {
	VirtualServers map[ipvs.VirtualServerKey]*DesiredVirtualServer
	Addresses      map[netip.Addr]int
}

// NewDesired returns the Desired state of a model.
func NewDesired(m Model) *Desired {
	d := &Desired{
		VirtualServers: make(map[ipvs.VirtualServerKey]*DesiredVirtualServer, len(m.Services)),
		Addresses:      make(map[netip.Addr]int, len(m.Services)),
	}
	for _, sm := range m.Services {
		d.Add(sm)
	}
	return d
}

// Add adds an effective ServiceModel (one that lost every contested key).
func (d *Desired) Add(sm *ServiceModel) {
	if sm == nil {
		return
	}
	for k, dvs := range sm.VirtualServers {
		d.VirtualServers[k] = dvs
	}
	for _, a := range sm.Addresses {
		d.Addresses[a]++
	}
}

// Remove removes what Add added for sm.
func (d *Desired) Remove(sm *ServiceModel) {
	if sm == nil {
		return
	}
	for k, dvs := range sm.VirtualServers {
		if d.VirtualServers[k] == dvs {
			delete(d.VirtualServers, k)
		}
	}
	for _, a := range sm.Addresses {
		if d.Addresses[a] <= 1 {
			delete(d.Addresses, a)
		} else {
			d.Addresses[a]--
		}
	}
}

// OpKind is the kind of one kernel write.
type OpKind uint8

// The kernel writes a Plan can hold.
const (
	OpAddVirtualServer OpKind = iota
	OpUpdateVirtualServer
	OpDeleteVirtualServer
	OpAddRealServer
	OpUpdateRealServer
	OpDeleteRealServer
	OpAddAddress
	OpDeleteAddress
	numOpKinds
)

var opKindNames = [numOpKinds]string{
	"add_virtual_server", "update_virtual_server", "delete_virtual_server",
	"add_real_server", "update_real_server", "delete_real_server",
	"add_address", "delete_address",
}

// String names the op kind in snake case, fit for a metric label.
func (k OpKind) String() string {
	if k < numOpKinds {
		return opKindNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// OpKinds lists every OpKind, in order.
func OpKinds() []OpKind {
	out := make([]OpKind, numOpKinds)
	for i := range out {
		out[i] = OpKind(i)
	}
	return out
}

// Op is one kernel write. VirtualServer is set for every virtual/real server op
// (only its key matters for deletes and real-server ops); RealServer for real-server
// ops; Address for address ops.
type Op struct {
	Kind          OpKind
	VirtualServer ipvs.VirtualServer
	RealServer    ipvs.RealServer
	Address       netip.Addr
}

// String renders the op for logs and test failures.
func (o Op) String() string {
	switch o.Kind {
	case OpAddAddress, OpDeleteAddress:
		return fmt.Sprintf("%s %s", o.Kind, o.Address)
	case OpAddVirtualServer, OpUpdateVirtualServer:
		return fmt.Sprintf("%s %s %s flags=%#x timeout=%d", o.Kind, o.VirtualServer.VirtualServerKey,
			o.VirtualServer.Scheduler, uint32(o.VirtualServer.Flags), o.VirtualServer.Timeout)
	case OpDeleteVirtualServer:
		return fmt.Sprintf("%s %s", o.Kind, o.VirtualServer.VirtualServerKey)
	case OpDeleteRealServer:
		return fmt.Sprintf("%s %s -> %s", o.Kind, o.VirtualServer.VirtualServerKey, o.RealServer.RealServerKey)
	}
	return fmt.Sprintf("%s %s -> %s weight=%d", o.Kind, o.VirtualServer.VirtualServerKey, o.RealServer.RealServerKey, o.RealServer.Weight)
}

// DrainKey names one real server of one virtual server.
type DrainKey struct {
	VirtualServer ipvs.VirtualServerKey
	RealServer    ipvs.RealServerKey
}

// DrainClock holds, per virtual server, when each of its draining real servers
// started draining. It lives in memory and is written to kipvs's drain set in
// the kernel (KIPVS-DRAINING, drainset.go) after every sync; after a restart the
// first full sync seeds it from that set (Seed), so deadlines keep their start.
// Without the set (no ipsets) the clock of a real server found draining starts
// when kipvs first sees it.
type DrainClock map[ipvs.VirtualServerKey]map[ipvs.RealServerKey]time.Time

// Update records the outcome of a plan over scope: drains that ended are
// forgotten, new ones start at now, running ones keep their start.
func (c DrainClock) Update(scope Scope, draining []DrainKey, now time.Time) {
	old := c
	if scope.Full {
		old = maps.Clone(c)
		clear(c)
	} else {
		old = make(DrainClock, len(scope.VirtualServers))
		for k := range scope.VirtualServers {
			if m, ok := c[k]; ok {
				old[k] = m
				delete(c, k)
			}
		}
	}
	for _, dk := range draining {
		since, ok := old[dk.VirtualServer][dk.RealServer]
		if !ok {
			since = now
		}
		m := c[dk.VirtualServer]
		if m == nil {
			m = map[ipvs.RealServerKey]time.Time{}
			c[dk.VirtualServer] = m
		}
		m[dk.RealServer] = since
	}
}

// Plan is an ordered list of kernel writes: dummy-link addresses are added first,
// then each virtual server is created or updated with its real servers, then
// unwanted virtual servers are deleted, and addresses no wanted virtual server
// uses are removed last.
type Plan struct {
	Ops []Op
	// Draining lists the real servers that stay draining (weight 0, not wanted)
	// after the plan runs; the caller starts their drain clock if it has none.
	Draining []DrainKey
}

// Scope limits a reconcile to some virtual server keys and addresses; a Full
// scope reconciles everything desired or observed.
type Scope struct {
	Full           bool
	VirtualServers map[ipvs.VirtualServerKey]struct{}
	Addresses      map[netip.Addr]struct{}
}

// ReconcileInput is everything Reconcile decides from.
type ReconcileInput struct {
	Desired  *Desired
	Observed *KernelState
	Scope    Scope
	// DrainSince holds when each draining real server was first seen draining.
	DrainSince DrainClock
	Now        time.Time
	// ExcludeCIDRs are never touched.
	ExcludeCIDRs []netip.Prefix
	// DrainTimeout bounds draining of TCP real servers; 0 deletes them at once.
	DrainTimeout time.Duration
}

// Reconcile diffs the desired state against the observed one, within Scope, and
// returns the writes that make the kernel match. It never touches a virtual server
// kipvs does not own (see KernelState.owns) unless it is wanted, nor anything in
// ExcludeCIDRs.
//
// A real server that is no longer wanted drains when its virtual server is TCP and
// DrainTimeout > 0: its weight is set to 0 and it is deleted once its active and
// inactive connections reach 0 or DrainTimeout has passed since it was first seen
// draining. Draining is recomputed from the kernel (weight 0 and not wanted), so a
// restart keeps draining; when it started comes from DrainSince, which a restarted
// Proxier seeds from its drain set in the kernel (DrainClock). UDP and SCTP real
// servers are deleted at once.
func Reconcile(in ReconcileInput) Plan {
	vsKeys, addrs := scopeKeys(in)
	var addrAdds, addrDeletes []Op
	for _, a := range addrs {
		_, have := in.Observed.Addresses[a]
		want := in.Desired.Addresses[a] > 0
		switch {
		case want && !have:
			addrAdds = append(addrAdds, Op{Kind: OpAddAddress, Address: a})
		case !want && have && !excluded(a, in.ExcludeCIDRs):
			addrDeletes = append(addrDeletes, Op{Kind: OpDeleteAddress, Address: a})
		}
	}
	// The virtual server ops go straight into the plan, which is sized for a
	// first sync (every wanted virtual server and real server added): a
	// cold start's plan is allocated once, not grown and copied.
	var vsDeletes []Op
	var draining []DrainKey
	ops := make([]Op, 0, len(addrAdds)+planSize(vsKeys, in)+len(addrDeletes))
	ops = append(ops, addrAdds...)
	for _, k := range vsKeys {
		want := in.Desired.VirtualServers[k]
		have := in.Observed.VirtualServers[k]
		switch {
		case want != nil && !excluded(k.Address, in.ExcludeCIDRs):
			ops, draining = planVirtualServer(ops, draining, want, have, &in)
		case have != nil && in.Observed.owns(k, in.ExcludeCIDRs):
			vsDeletes = append(vsDeletes, Op{Kind: OpDeleteVirtualServer, VirtualServer: have.VirtualServer})
		}
	}
	ops = append(append(ops, vsDeletes...), addrDeletes...)
	return Plan{Ops: ops, Draining: draining}
}

// planSize is the number of ops that would add the wanted virtual servers
// of keys that the kernel lacks, with their real servers.
func planSize(keys []ipvs.VirtualServerKey, in ReconcileInput) int {
	n := 0
	for _, k := range keys {
		if want := in.Desired.VirtualServers[k]; want != nil && in.Observed.VirtualServers[k] == nil {
			n += 1 + len(want.RealServers)
		}
	}
	return n
}

// scopeKeys returns the sorted virtual server keys and addresses to reconcile.
func scopeKeys(in ReconcileInput) ([]ipvs.VirtualServerKey, []netip.Addr) {
	var vsKeys []ipvs.VirtualServerKey
	var addrs []netip.Addr
	if in.Scope.Full {
		vsKeys = slices.AppendSeq(make([]ipvs.VirtualServerKey, 0, len(in.Desired.VirtualServers)+len(in.Observed.VirtualServers)),
			maps.Keys(in.Desired.VirtualServers))
		for k := range in.Observed.VirtualServers {
			if _, ok := in.Desired.VirtualServers[k]; !ok {
				vsKeys = append(vsKeys, k)
			}
		}
		addrs = slices.AppendSeq(make([]netip.Addr, 0, len(in.Desired.Addresses)+len(in.Observed.Addresses)),
			maps.Keys(in.Desired.Addresses))
		for a := range in.Observed.Addresses {
			if _, ok := in.Desired.Addresses[a]; !ok {
				addrs = append(addrs, a)
			}
		}
	} else {
		vsKeys = slices.AppendSeq(make([]ipvs.VirtualServerKey, 0, len(in.Scope.VirtualServers)), maps.Keys(in.Scope.VirtualServers))
		addrs = slices.AppendSeq(make([]netip.Addr, 0, len(in.Scope.Addresses)), maps.Keys(in.Scope.Addresses))
	}
	slices.SortFunc(vsKeys, ipvs.VirtualServerKey.Compare)
	slices.SortFunc(addrs, netip.Addr.Compare)
	return vsKeys, addrs
}

// planVirtualServer appends the writes that make one wanted virtual server match.
func planVirtualServer(ops []Op, draining []DrainKey, want *DesiredVirtualServer, have *ObservedVirtualServer, in *ReconcileInput) ([]Op, []DrainKey) {
	vs := want.VirtualServer
	if have == nil {
		ops = append(ops, Op{Kind: OpAddVirtualServer, VirtualServer: vs})
		for _, rk := range sortedKeys(want.RealServers) {
			ops = append(ops, Op{Kind: OpAddRealServer, VirtualServer: vs, RealServer: want.RealServers[rk]})
		}
		return ops, draining
	}
	if !sameVirtualServer(have.VirtualServer, vs) {
		ops = append(ops, Op{Kind: OpUpdateVirtualServer, VirtualServer: vs})
	}
	var add, del []ipvs.RealServerKey
	for rk, rs := range want.RealServers {
		if h, ok := have.RealServers[rk]; !ok || h.Weight != rs.Weight {
			add = append(add, rk)
		}
	}
	for rk := range have.RealServers {
		if _, ok := want.RealServers[rk]; !ok {
			del = append(del, rk)
		}
	}
	slices.SortFunc(add, ipvs.RealServerKey.Compare)
	slices.SortFunc(del, ipvs.RealServerKey.Compare)
	for _, rk := range add {
		kind := OpAddRealServer
		if _, ok := have.RealServers[rk]; ok {
			kind = OpUpdateRealServer
		}
		ops = append(ops, Op{Kind: kind, VirtualServer: vs, RealServer: want.RealServers[rk]})
	}
	for _, rk := range del {
		h := have.RealServers[rk]
		dk := DrainKey{VirtualServer: vs.VirtualServerKey, RealServer: rk}
		switch drainAction(vs.Protocol, h, dk, in) {
		case drainDelete:
			ops = append(ops, Op{Kind: OpDeleteRealServer, VirtualServer: vs, RealServer: h.RealServer})
		case drainStart:
			ops = append(ops, Op{Kind: OpUpdateRealServer, VirtualServer: vs, RealServer: ipvs.RealServer{RealServerKey: rk}})
			draining = append(draining, dk)
		case drainWait:
			draining = append(draining, dk)
		}
	}
	return ops, draining
}

// drainDecision is what to do with a real server that is no longer wanted.
type drainDecision uint8

const (
	drainDelete drainDecision = iota // delete it now
	drainStart                       // set its weight to 0
	drainWait                        // leave it draining
)

// drainAction decides the fate of a real server that is no longer wanted.
func drainAction(proto ipvs.Protocol, h ipvs.RealServerStatus, dk DrainKey, in *ReconcileInput) drainDecision {
	if proto != ipvs.TCP || in.DrainTimeout <= 0 {
		return drainDelete
	}
	if h.Weight != 0 {
		return drainStart
	}
	if h.ActiveConns+h.InactiveConns == 0 {
		return drainDelete
	}
	if since, ok := in.DrainSince[dk.VirtualServer][dk.RealServer]; ok && in.Now.Sub(since) >= in.DrainTimeout {
		return drainDelete
	}
	return drainWait
}

// sameVirtualServer reports whether the kernel's virtual server already has the
// wanted scheduler, flags and timeout. The timeout only matters when persistent.
func sameVirtualServer(have, want ipvs.VirtualServer) bool {
	if have.Scheduler != want.Scheduler || have.Flags&^ipvs.FlagHashed != want.Flags {
		return false
	}
	return want.Flags&ipvs.FlagPersistent == 0 || have.Timeout == want.Timeout
}

// sortedKeys returns a real-server map's keys in order.
func sortedKeys(m map[ipvs.RealServerKey]ipvs.RealServer) []ipvs.RealServerKey {
	keys := slices.AppendSeq(make([]ipvs.RealServerKey, 0, len(m)), maps.Keys(m))
	slices.SortFunc(keys, ipvs.RealServerKey.Compare)
	return keys
}
