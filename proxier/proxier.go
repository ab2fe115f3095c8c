package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// Source is where the proxier reads Services and endpoints (endpoints.State).
type Source interface {
	// Apply applies pending changes and returns the result; see endpoints.Snapshot.
	Apply() endpoints.Snapshot
	// Synced reports whether the informers have delivered their initial lists.
	Synced() bool
}

// ErrNotSynced is returned by a sync that ran before Source was synced; the
// runner retries it.
var ErrNotSynced = errors.New("waiting for Services and EndpointSlices to be synced")

// SyncResult describes one sync, for metrics and status.
type SyncResult struct {
	// Time is when the sync started, Duration how long it took.
	Time     time.Time
	Duration time.Duration
	// Full is true for a full sync (kernel dump, every Service rebuilt).
	Full bool
	// Ops counts the kernel writes by kind (index OpKind) and result.
	Ops [numOpKinds]OpCount
	// Services is the number of Services rebuilt; VirtualServers the number wanted in total.
	Services       int
	VirtualServers int
	// ServiceErrors holds the Service-scoped errors of the model (nil when none).
	ServiceErrors map[types.NamespacedName]error
	// ServiceChanges and EndpointChanges are the snapshot's change counts.
	ServiceChanges, EndpointChanges int
	// TriggerTimes are the snapshot's EndpointSlice last-change-trigger-times.
	TriggerTimes []time.Time
	// Err is the sync's error; the runner retries when it is not nil.
	Err error
}

// Proxier keeps the kernel's IPVS table and dummy-link addresses in line with
// the Services and endpoints of a Source.
//
// The first sync and one every Config.SyncPeriod are full: they dump the IPVS
// table, list the dummy link's addresses and the node's addresses, rebuild every
// Service, repair drift and delete owned virtual servers that no Service wants.
// The syncs in between are incremental: they rebuild only the Services the
// snapshot names as changed and diff them against the cached kernel state, with
// no dump, so their cost does not grow with the number of Services.
type Proxier struct {
	cfg    Config
	src    Source
	ipvs   ipvs.Interface
	addrs  Addresses
	clock  clock.Clock
	runner *Runner

	// Sync state: only the sync goroutine touches it.
	node      NodeInfo
	raw       map[types.NamespacedName]*ServiceModel // as built, before conflicts
	effective map[types.NamespacedName]*ServiceModel // as applied
	claims    claims
	desired   *Desired
	observed  *KernelState
	drains    DrainClock
	// drainSet keeps the drain starts in the kernel (drainset.go); nil without ipsets.
	drainSet *drainSet
	svcErrs  map[types.NamespacedName]error
	// pendingVS and pendingAddrs failed in the previous sync and are reconciled again.
	pendingVS    map[ipvs.VirtualServerKey]struct{}
	pendingAddrs map[netip.Addr]struct{}
	needFull     bool
	lastFull     time.Time
	// primaryLogged is set once the NodePort addresses of nodePortAddresses
	// ["primary"] were logged; they are logged again when they change.
	primaryLogged bool
	// sem is conntrack clearing, health checks, drain polling (semantics.go).
	sem semantics
	// nf manages ipsets, iptables rules and kernel settings (netfilter.go); nil when not used.
	nf *netfilter

	// status and observers publish what syncs do (status.go).
	status    statusState
	observers []SyncObserver

	mu   sync.Mutex
	last SyncResult
}

// New returns a Proxier; it only builds structs. Call Setup, then Run.
func New(cfg Config, src Source, ipv ipvs.Interface, addrs Addresses, clk clock.Clock, opts ...Option) *Proxier {
	if cfg.DummyLink == "" {
		cfg.DummyLink = DefaultDummyLink
	}
	p := &Proxier{
		cfg: cfg, src: src, ipvs: ipv, addrs: addrs, clock: clk,
		raw:          map[types.NamespacedName]*ServiceModel{},
		effective:    map[types.NamespacedName]*ServiceModel{},
		claims:       claims{},
		desired:      NewDesired(Model{}),
		observed:     NewKernelState(),
		drains:       DrainClock{},
		svcErrs:      map[types.NamespacedName]error{},
		pendingVS:    map[ipvs.VirtualServerKey]struct{}{},
		pendingAddrs: map[netip.Addr]struct{}{},
		needFull:     true,
	}
	p.runner = NewRunner(p.Sync, cfg.MinSyncPeriod, cfg.SyncPeriod, clk)
	for _, o := range opts {
		o(p)
	}
	return p
}

// Setup prepares the kernel: it creates the dummy link and sets the IPVS
// connection timeouts when any is configured.
func (p *Proxier) Setup(ctx context.Context) error {
	if err := p.addrs.EnsureLink(ctx, p.cfg.DummyLink); err != nil {
		return fmt.Errorf("ensuring dummy link %s: %w", p.cfg.DummyLink, err)
	}
	if t := p.cfg.Timeouts; t.TCP != 0 || t.TCPFin != 0 || t.UDP != 0 {
		if err := p.ipvs.SetTimeouts(ctx, t); err != nil {
			return fmt.Errorf("setting IPVS timeouts (tcp %s, tcpfin %s, udp %s): %w", t.TCP, t.TCPFin, t.UDP, err)
		}
	}
	return p.nf.setup(ctx, &p.cfg)
}

// Run syncs until ctx is cancelled.
func (p *Proxier) Run(ctx context.Context) {
	p.runner.Loop(ctx)
}

// QueueSync asks for a sync; informer event handlers call it. Requests merge.
func (p *Proxier) QueueSync() {
	p.notifyQueued()
	p.runner.Run()
}

// LastSync returns the result of the latest sync.
func (p *Proxier) LastSync() SyncResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Sync runs one sync now: full when due (see Proxier), incremental otherwise. The
// runner calls it; tests may call it directly. It must not run concurrently.
func (p *Proxier) Sync(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if !p.src.Synced() {
		logger.V(2).Info("Not syncing: waiting for Services and EndpointSlices")
		return ErrNotSynced
	}
	start := p.clock.Now()
	full := p.needFull || p.cfg.SyncPeriod > 0 && start.Sub(p.lastFull) >= p.cfg.SyncPeriod
	snap := p.src.Apply()
	res := SyncResult{Time: start, Full: full, ServiceChanges: snap.ServiceChanges, EndpointChanges: snap.EndpointChanges,
		TriggerTimes: snap.TriggerTimes}

	plan, scope, nsvc, err := p.plan(ctx, &snap, full, start)
	res.Services = nsvc
	if err != nil {
		p.needFull = true
		return p.finish(logger, res, err)
	}
	ctTargets := p.beforeApply(plan)
	ar := Apply(ctx, plan, p.ipvs, p.addrs, p.cfg.DummyLink, p.observed)
	p.drains.Update(scope, plan.Draining, start)
	p.writeDrainSet(ctx)
	p.afterApply(ctx, ctTargets, start)
	clear(p.pendingVS)
	clear(p.pendingAddrs)
	for _, k := range ar.FailedVirtualServers {
		p.pendingVS[k] = struct{}{}
	}
	for _, a := range ar.FailedAddresses {
		p.pendingAddrs[a] = struct{}{}
	}
	p.needFull = ar.Drift
	if full && ar.Err == nil {
		p.lastFull = start
	} else if full {
		// The full sync's writes were partly refused: keep it due so the retry
		// dumps again rather than trusting the cache.
		p.needFull = true
	}
	res.Ops = ar.Counts
	p.publishStatus(&snap, full, start)
	nfErr := p.syncNetfilter(ctx, full, &snap)
	return p.finish(logger, res, errors.Join(ar.Err, nfErr))
}

// plan updates the model from snap (every Service when full, the changed ones
// otherwise) and reconciles it against the cached kernel state. It returns the
// plan, its scope and the number of Services rebuilt.
func (p *Proxier) plan(ctx context.Context, snap *endpoints.Snapshot, full bool, now time.Time) (Plan, Scope, int, error) {
	var scope Scope
	var n int
	var err error
	if full {
		scope, n, err = p.prepareFull(ctx, snap)
	} else {
		scope, n, err = p.prepareIncremental(ctx, snap)
	}
	if err != nil {
		return Plan{}, Scope{}, n, err
	}
	if full {
		p.loadDrainSet(ctx, now)
	}
	plan := Reconcile(ReconcileInput{
		Desired: p.desired, Observed: p.observed, Scope: scope, DrainSince: p.drains, Now: now,
		ExcludeCIDRs: p.cfg.ExcludeCIDRs, DrainTimeout: p.cfg.DrainTimeout,
	})
	return plan, scope, n, nil
}

// finish records and logs a sync's result.
func (p *Proxier) finish(logger klog.Logger, res SyncResult, err error) error {
	res.Duration = p.clock.Since(res.Time)
	res.Err = err
	res.VirtualServers = len(p.desired.VirtualServers)
	if len(p.svcErrs) > 0 {
		res.ServiceErrors = maps.Clone(p.svcErrs)
	}
	p.mu.Lock()
	p.last = res
	p.mu.Unlock()
	defer p.notifySynced(res)
	writes := 0
	for _, c := range res.Ops {
		writes += c.Succeeded + c.Failed
	}
	logger.V(2).Info("Synced IPVS", "full", res.Full, "services", res.Services, "virtualServers", res.VirtualServers,
		"writes", writes, "serviceErrors", len(res.ServiceErrors), "duration", res.Duration, "err", err)
	return err
}

// prepareFull reads the kernel and rebuilds every Service.
func (p *Proxier) prepareFull(ctx context.Context, snap *endpoints.Snapshot) (Scope, int, error) {
	dump, err := p.ipvs.Dump(ctx)
	if err != nil {
		return Scope{}, 0, fmt.Errorf("dumping IPVS: %w", err)
	}
	bound, err := p.addrs.List(ctx, p.cfg.DummyLink)
	if err != nil {
		return Scope{}, 0, fmt.Errorf("listing addresses of %s: %w", p.cfg.DummyLink, err)
	}
	if err := p.refreshNode(ctx, snap.Node); err != nil {
		return Scope{}, 0, err
	}
	p.observed.SetDump(dump, bound)
	p.raw = make(map[types.NamespacedName]*ServiceModel, len(snap.Services))
	p.claims = make(claims, len(snap.Services))
	for name, svc := range snap.Services {
		sm := BuildService(svc, snap.Endpoints, p.node, p.cfg)
		p.raw[name] = &sm
		p.claims.add(&sm)
	}
	m := Model{Services: make(map[types.NamespacedName]*ServiceModel, len(p.raw))}
	clear(p.svcErrs)
	for name, sm := range p.raw {
		eff := p.claims.resolve(sm)
		m.Services[name] = eff
		if eff.Err != nil {
			p.svcErrs[name] = eff.Err
		}
	}
	p.effective = m.Services
	p.sem.healthAll = true
	p.desired = NewDesired(m)
	for k := range p.desired.VirtualServers {
		p.observed.Owned[k] = struct{}{}
	}
	p.adoptNodePorts(ctx)
	return Scope{Full: true}, len(p.raw), nil
}

// refreshNode reads the node's addresses and recomputes NodeInfo.
func (p *Proxier) refreshNode(ctx context.Context, node endpoints.Node) error {
	local, err := p.addrs.NodeIPs(ctx, p.cfg.DummyLink)
	if err != nil {
		return fmt.Errorf("listing node addresses: %w", err)
	}
	ips := NodePortIPs(local, p.cfg.NodePortAddresses)
	if p.cfg.NodePortPrimaryOnly {
		ips = PrimaryNodePortIPs(local, node.PrimaryIPs)
	}
	if p.cfg.NodePortPrimaryOnly && (!p.primaryLogged || !slices.Equal(ips, p.node.IPs)) {
		p.primaryLogged = true
		klog.FromContext(ctx).Info("NodePort addresses: the Node's primary IPs that are local",
			"primaryIPs", node.PrimaryIPs, "nodePortIPs", ips)
	}
	p.node = NodeInfo{Node: node, IPs: ips, LocalAddrs: local}
	p.noteFamilies(ctx, local)
	return nil
}

// PrimaryNodePortIPs is nodePortAddresses ["primary"]: the node's primary IPs
// (endpoints.Node.PrimaryIPs, from the Node's status addresses) that are local
// addresses. kube-proxy turns "primary" into a /32 and a /128 of those IPs at
// startup; kipvs follows Node updates. Unlike kube-proxy, a Node with no primary
// IP (no status addresses yet) gets no NodePort virtual server rather than one
// on every address: "primary" never widens to all addresses.
func PrimaryNodePortIPs(local, primary []netip.Addr) []netip.Addr {
	out := []netip.Addr{}
	for _, a := range local {
		a = a.Unmap()
		if slices.Contains(primary, a) && !a.IsLoopback() {
			out = append(out, a)
		}
	}
	return out
}

// NodePortIPs picks the node addresses that get NodePort virtual servers: those
// inside nodePortAddresses, or when it is empty every address except loopback
// and link-local ones (kube-proxy's IPVS mode).
func NodePortIPs(local []netip.Addr, nodePortAddresses []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, 0, len(local))
	for _, a := range local {
		a = a.Unmap()
		switch {
		case len(nodePortAddresses) > 0:
			if excluded(a, nodePortAddresses) {
				out = append(out, a)
			}
		case !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast():
			out = append(out, a)
		}
	}
	return out
}

// prepareIncremental rebuilds the Services that changed and returns the scope
// of keys and addresses to reconcile.
func (p *Proxier) prepareIncremental(ctx context.Context, snap *endpoints.Snapshot) (Scope, int, error) {
	affected := snap.Changed
	if snap.NodeChanged {
		if err := p.refreshNode(ctx, snap.Node); err != nil {
			return Scope{}, 0, err
		}
		affected = sets.KeySet(p.raw)
		for n := range snap.Services {
			affected.Insert(n)
		}
	}
	p.node.Node = snap.Node
	scope := Scope{
		VirtualServers: maps.Clone(p.pendingVS),
		Addresses:      maps.Clone(p.pendingAddrs),
	}
	if err := p.refreshDraining(ctx, scope.VirtualServers); err != nil {
		return Scope{}, 0, err
	}
	// Rebuild the changed Services and note the keys whose claimants changed.
	touched := map[ipvs.VirtualServerKey]struct{}{}
	for name := range affected {
		if old := p.raw[name]; old != nil {
			p.claims.remove(old)
			for k := range old.VirtualServers {
				touched[k] = struct{}{}
			}
			delete(p.raw, name)
		}
		svc := snap.Services[name]
		if svc == nil {
			continue
		}
		sm := BuildService(svc, snap.Endpoints, p.node, p.cfg)
		p.raw[name] = &sm
		p.claims.add(&sm)
		for k := range sm.VirtualServers {
			touched[k] = struct{}{}
		}
	}
	// Re-resolve the changed Services and every other claimant of a touched key.
	resolveSet := make(map[types.NamespacedName]struct{}, len(affected))
	for n := range affected {
		resolveSet[n] = struct{}{}
	}
	for k := range touched {
		for _, cl := range p.claims[k] {
			resolveSet[cl.name] = struct{}{}
		}
	}
	for name := range resolveSet {
		p.resolveInto(name, &scope)
	}
	return scope, len(affected), nil
}

// resolveInto replaces a Service's effective model and adds what changed to scope.
func (p *Proxier) resolveInto(name types.NamespacedName, scope *Scope) {
	old := p.effective[name]
	var eff *ServiceModel
	if raw := p.raw[name]; raw != nil {
		eff = p.claims.resolve(raw)
	}
	p.desired.Remove(old)
	p.desired.Add(eff)
	for _, sm := range []*ServiceModel{old, eff} {
		if sm == nil {
			continue
		}
		for k := range sm.VirtualServers {
			scope.VirtualServers[k] = struct{}{}
		}
		for _, a := range sm.Addresses {
			scope.Addresses[a] = struct{}{}
		}
	}
	delete(p.svcErrs, name)
	p.sem.touch(name)
	p.nf.markDirty(name)
	p.status.touch(name)
	if eff == nil {
		delete(p.effective, name)
		return
	}
	p.effective[name] = eff
	for k := range eff.VirtualServers {
		p.observed.Owned[k] = struct{}{}
	}
	if eff.Err != nil {
		p.svcErrs[name] = eff.Err
	}
}

// refreshDraining re-reads the real servers of every virtual server with a
// draining real server, so that drains end on fresh connection counters, and
// adds those virtual servers to the scope.
func (p *Proxier) refreshDraining(ctx context.Context, scope map[ipvs.VirtualServerKey]struct{}) error {
	for k := range p.drains {
		scope[k] = struct{}{}
		rss, err := p.ipvs.RealServers(ctx, k)
		if ipvs.IsNotFound(err) {
			delete(p.observed.VirtualServers, k)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading real servers of %s: %w", k, err)
		}
		o := p.observed.VirtualServers[k]
		if o == nil {
			continue
		}
		o.RealServers = make(map[ipvs.RealServerKey]ipvs.RealServerStatus, len(rss))
		for _, rs := range rss {
			o.RealServers[rs.RealServerKey] = rs
		}
	}
	return nil
}

// adoptNodePorts marks as owned the dumped NodePort virtual servers that kipvs
// created, even in an earlier run: those on a node address (not on the dummy
// link) whose protocol and port one of kipvs's NodePort ipsets holds for that
// family, or whose exact key kipvs's no-local-endpoints set holds. It runs
// before this sync's netfilter step rewrites the sets, so after a restart the
// sets still describe the previous run: a NodePort Service deleted while kipvs
// was down loses its virtual servers at the first full sync. See
// KernelState.AdoptNodePorts for what stays behind. Without the netfilter layer
// there are no sets and nothing is adopted. A set that cannot be read is
// logged and skipped: ownership hints must not stop the sync.
func (p *Proxier) adoptNodePorts(ctx context.Context) {
	if p.nf == nil || p.nf.k.Ipset == nil {
		return
	}
	logger := klog.FromContext(ctx)
	marks := NodePortMarks{Ports: map[NodePortMark]struct{}{}, Keys: map[ipvs.VirtualServerKey]struct{}{}}
	read := func(name string, each func(IPSetEntry)) {
		_, entries, err := p.nf.k.Ipset.List(ctx, name)
		if err != nil {
			if !IsSetNotFound(err) {
				logger.Error(err, "Reading a kipvs ipset to recognise kipvs's NodePort virtual servers", "set", name)
			}
			return
		}
		for _, e := range entries {
			each(e)
		}
	}
	for _, v6 := range p.nf.families {
		for proto, id := range nodePortSet {
			read(SetName(id, v6), func(e IPSetEntry) { marks.Ports[NodePortMark{IPv6: v6, Protocol: proto, Port: e.Port}] = struct{}{} })
		}
		read(SetName(SetNoLocal, v6), func(e IPSetEntry) {
			marks.Keys[ipvs.VirtualServerKey{Address: e.IP.Unmap(), Protocol: e.Protocol, Port: e.Port}] = struct{}{}
		})
	}
	if adopted := p.observed.AdoptNodePorts(p.node.LocalAddrs, marks); len(adopted) > 0 {
		logger.V(2).Info("Unwanted NodePort virtual servers recognised as kipvs's from its ipsets", "virtualServers", adopted)
	}
}
