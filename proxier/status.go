package proxier

import (
	"maps"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// SyncObserver is told what the proxier does; metrics, the health server and
// the event reporter implement it. Add observers with AddObserver before Run.
type SyncObserver interface {
	// SyncQueued is called when a sync is requested once the Source has synced
	// (before that, informer events only fill the initial lists). It may be
	// called from any goroutine.
	SyncQueued(at time.Time)
	// Synced is called from the sync goroutine after every sync that ran (not
	// those refused with ErrNotSynced), with its result and the status snapshot
	// published by the latest sync that reached the kernel. st is nil until then.
	Synced(res SyncResult, st *StatusSnapshot)
}

// SyncCounts are model-wide numbers after a sync, for gauges.
type SyncCounts struct {
	// VirtualServers and RealServers are wanted (real servers summed over
	// virtual servers); FailedVirtualServers had writes fail and are retried.
	VirtualServers, RealServers, FailedVirtualServers int
	// DrainingRealServers are at weight 0, no longer wanted, waiting for their connections to end.
	DrainingRealServers int
	// NoLocalEndpoints counts Service ports whose Local traffic policy finds no
	// usable endpoint on this node (see ServiceModel.NoLocalEndpoints).
	NoLocalEndpoints NoLocalEndpointCounts
}

// ServiceEntry is one Service as the latest sync programmed it. Everything
// reachable from it is read-only: it is shared with the sync goroutine.
type ServiceEntry struct {
	// Service is the Service as parsed; Model its effective model (after
	// conflicts between Services were resolved).
	Service *endpoints.Service
	Model   *ServiceModel
	// Endpoints are the Service's endpoints by port, as the model was built from.
	Endpoints map[endpoints.ServicePortName][]*endpoints.Endpoint
	// Former keeps endpoints that left the Service while their real servers
	// still drain, so that status can still name their pods.
	Former map[ipvs.RealServerKey]*endpoints.Endpoint

	counts entryCounts
}

// entryCounts is one entry's share of SyncCounts.
type entryCounts struct {
	realServers int
	noLocal     NoLocalEndpointCounts
}

// StatusSnapshot is an immutable view of the proxier's effective model,
// published after every sync that reached the kernel. Readers must not modify it.
type StatusSnapshot struct {
	// Time is when the sync that published it started.
	Time time.Time
	// Node is this node as the model saw it (name, zone, deletion, NodePort IPs).
	Node NodeInfo
	// Services are the Services kipvs proxies, by namespace/name.
	Services map[types.NamespacedName]*ServiceEntry
	// Drains holds when each draining real server was first seen draining.
	Drains DrainClock
	// Counts are the model-wide numbers for gauges.
	Counts SyncCounts
}

// statusState is the sync goroutine's side of status publishing: the entries it
// maintains and the Services touched since the last publication.
type statusState struct {
	entries   map[types.NamespacedName]*ServiceEntry
	dirty     map[types.NamespacedName]struct{}
	counts    entryCounts
	published *StatusSnapshot // guarded by Proxier.mu
}

// touch marks a Service whose effective model may have changed.
func (s *statusState) touch(name types.NamespacedName) {
	if s.dirty == nil {
		s.dirty = map[types.NamespacedName]struct{}{}
	}
	s.dirty[name] = struct{}{}
}

// AddObserver adds o to the observers of syncs. Call it before Run.
func (p *Proxier) AddObserver(o SyncObserver) {
	p.observers = append(p.observers, o)
}

// Status returns the latest published snapshot, nil before the first sync that
// reached the kernel. It is safe to call from any goroutine.
func (p *Proxier) Status() *StatusSnapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status.published
}

// notifyQueued tells the observers that a sync was requested.
func (p *Proxier) notifyQueued() {
	if len(p.observers) == 0 || !p.src.Synced() {
		return
	}
	now := p.clock.Now()
	for _, o := range p.observers {
		o.SyncQueued(now)
	}
}

// notifySynced tells the observers about a sync's result.
func (p *Proxier) notifySynced(res SyncResult) {
	st := p.Status()
	for _, o := range p.observers {
		o.Synced(res, st)
	}
}

// publishStatus updates the status entries of the Services that a sync rebuilt
// (every one when full) from snap and the effective model, and publishes a new
// snapshot. It copies the entry map only when an entry changed, so an
// incremental sync that changes nothing costs O(draining real servers).
func (p *Proxier) publishStatus(snap *endpoints.Snapshot, full bool, now time.Time) {
	s := &p.status
	prev := p.Status()
	services := map[types.NamespacedName]*ServiceEntry(nil)
	if prev != nil {
		services = prev.Services
	}
	switch {
	case full || s.entries == nil:
		s.entries = make(map[types.NamespacedName]*ServiceEntry, len(p.effective))
		s.counts = entryCounts{}
		for name := range p.effective {
			p.updateEntry(snap, name, services[name])
		}
		services = maps.Clone(s.entries)
	case len(s.dirty) > 0:
		for name := range s.dirty {
			p.updateEntry(snap, name, services[name])
		}
		services = maps.Clone(s.entries)
	}
	clear(s.dirty)
	drains := make(DrainClock, len(p.drains))
	draining := 0
	for k, m := range p.drains {
		drains[k] = maps.Clone(m)
		draining += len(m)
	}
	st := &StatusSnapshot{
		Time: now, Node: p.node, Services: services, Drains: drains,
		Counts: SyncCounts{
			VirtualServers: len(p.desired.VirtualServers), RealServers: s.counts.realServers,
			FailedVirtualServers: len(p.pendingVS), DrainingRealServers: draining,
			NoLocalEndpoints: s.counts.noLocal,
		},
	}
	p.mu.Lock()
	s.published = st
	p.mu.Unlock()
}

// updateEntry rebuilds the entry of one Service from snap and its effective
// model, replacing old (the published entry, nil when none) in the counts.
func (p *Proxier) updateEntry(snap *endpoints.Snapshot, name types.NamespacedName, old *ServiceEntry) {
	s := &p.status
	if cur := s.entries[name]; cur != nil {
		s.counts.sub(cur.counts)
		delete(s.entries, name)
	}
	svc, model := snap.Services[name], p.effective[name]
	if svc == nil || model == nil {
		return
	}
	e := &ServiceEntry{Service: svc, Model: model, Endpoints: make(map[endpoints.ServicePortName][]*endpoints.Endpoint, len(svc.Ports))}
	for _, sp := range svc.Ports {
		if eps := snap.Endpoints[sp.Name]; eps != nil {
			e.Endpoints[sp.Name] = eps
		}
	}
	e.counts.noLocal = model.NoLocalEndpoints
	for _, dvs := range model.VirtualServers {
		e.counts.realServers += len(dvs.RealServers)
	}
	e.Former = formerEndpoints(old, e, p.drains)
	s.entries[name] = e
	s.counts.add(e.counts)
}

// formerEndpoints returns the endpoints of old (current and former) that cur
// no longer has and whose real servers still drain in one of cur's virtual servers.
func formerEndpoints(old, cur *ServiceEntry, drains DrainClock) map[ipvs.RealServerKey]*endpoints.Endpoint {
	if old == nil {
		return nil
	}
	draining := map[ipvs.RealServerKey]bool{}
	for k := range cur.Model.VirtualServers {
		for rk := range drains[k] {
			draining[rk] = true
		}
	}
	if len(draining) == 0 {
		return nil
	}
	have := map[ipvs.RealServerKey]bool{}
	for _, eps := range cur.Endpoints {
		for _, ep := range eps {
			have[ipvs.RealServerKey{Address: ep.Address.Unmap(), Port: ep.Port}] = true
		}
	}
	var out map[ipvs.RealServerKey]*endpoints.Endpoint
	keep := func(ep *endpoints.Endpoint) {
		rk := ipvs.RealServerKey{Address: ep.Address.Unmap(), Port: ep.Port}
		if draining[rk] && !have[rk] {
			if out == nil {
				out = map[ipvs.RealServerKey]*endpoints.Endpoint{}
			}
			out[rk] = ep
		}
	}
	for _, eps := range old.Endpoints {
		for _, ep := range eps {
			keep(ep)
		}
	}
	for _, ep := range old.Former {
		keep(ep)
	}
	return out
}

func (c *entryCounts) add(o entryCounts) {
	c.realServers += o.realServers
	c.noLocal.Add(o.noLocal)
}

func (c *entryCounts) sub(o entryCounts) {
	c.realServers -= o.realServers
	c.noLocal.Sub(o.noLocal)
}
