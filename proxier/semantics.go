package proxier

import (
	"context"
	"maps"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/ipvs"
)

// Drain polling: while real servers drain, the proxier asks its runner for a
// sync every drainPoll (MinSyncPeriod, at least minDrainPoll, at most
// maxDrainPoll), and at the earliest drain deadline, so that a drain ends within
// seconds of its last connection closing or of DrainTimeout, not at the next
// periodic full sync. Each such sync re-reads only the draining virtual servers.
const (
	minDrainPoll = time.Second
	maxDrainPoll = 5 * time.Second
)

// Option configures an optional part of a Proxier.
type Option func(*Proxier)

// WithConntrack makes the proxier delete stale UDP and SCTP conntrack entries
// after the real servers they point to are deleted (and when a virtual server
// gets its first real server). Without it, no entry is deleted.
func WithConntrack(c Conntrack) Option {
	return func(p *Proxier) { p.sem.conntrack = c }
}

// WithHealthCheckServer makes the proxier serve the healthCheckNodePort of
// LoadBalancer Services with externalTrafficPolicy Local through h.
func WithHealthCheckServer(h *HealthCheckServer) Option {
	return func(p *Proxier) { p.sem.health = h }
}

// semantics is the sync goroutine's state for conntrack clearing, health
// checks, drain polling and address families.
type semantics struct {
	conntrack Conntrack
	health    *HealthCheckServer
	// pendingCT are virtual servers whose conntrack clearing failed; retried.
	pendingCT map[ipvs.VirtualServerKey]struct{}
	// healthDirty are Services whose health check may have changed;
	// healthAll asks to sync every health check (after a full sync).
	healthDirty map[types.NamespacedName]struct{}
	healthAll   bool
	// families records the node families last logged: logged once per change.
	familiesKnown  bool
	noIPv4, noIPv6 bool
}

// touch notes a Service whose effective model was replaced.
func (s *semantics) touch(name types.NamespacedName) {
	if s.health == nil {
		return
	}
	if s.healthDirty == nil {
		s.healthDirty = map[types.NamespacedName]struct{}{}
	}
	s.healthDirty[name] = struct{}{}
}

// noteFamilies sets the node's families from its addresses and logs, once per
// change, a family the node lacks: its Services' VIPs of that family are skipped.
func (p *Proxier) noteFamilies(ctx context.Context, local []netip.Addr) {
	p.node.FamiliesFrom(local)
	s := &p.sem
	if s.familiesKnown && s.noIPv4 == p.node.NoIPv4 && s.noIPv6 == p.node.NoIPv6 {
		return
	}
	s.familiesKnown, s.noIPv4, s.noIPv6 = true, p.node.NoIPv4, p.node.NoIPv6
	logger := klog.FromContext(ctx)
	for _, f := range []struct {
		name    string
		missing bool
	}{{"IPv4", p.node.NoIPv4}, {"IPv6", p.node.NoIPv6}} {
		if f.missing {
			logger.Info("Node has no address of this family (disabled?): skipping its Service addresses", "family", f.name)
		}
	}
}

// beforeApply returns the UDP/SCTP virtual servers whose conntrack entries the
// plan makes stale, with those whose clearing failed before.
func (p *Proxier) beforeApply(plan Plan) map[ipvs.VirtualServerKey]struct{} {
	if p.sem.conntrack == nil {
		return nil
	}
	t := conntrackTargets(plan, p.observed)
	if len(p.sem.pendingCT) > 0 {
		if t == nil {
			t = map[ipvs.VirtualServerKey]struct{}{}
		}
		maps.Copy(t, p.sem.pendingCT)
		clear(p.sem.pendingCT)
	}
	return t
}

// afterApply runs what follows a plan's writes: it clears the stale conntrack
// entries of targets (after the IPVS change, so no new entry towards a deleted
// real server can appear), updates the health checks and schedules the next
// drain check.
func (p *Proxier) afterApply(ctx context.Context, targets map[ipvs.VirtualServerKey]struct{}, now time.Time) {
	logger := klog.FromContext(ctx)
	if len(targets) > 0 {
		filters := conntrackFilters(targets, p.observed)
		n, err := p.sem.conntrack.ClearStale(ctx, filters)
		if err != nil {
			logger.Error(err, "Clearing stale conntrack entries failed; retrying at the next sync", "virtualServers", len(filters))
			if p.sem.pendingCT == nil {
				p.sem.pendingCT = map[ipvs.VirtualServerKey]struct{}{}
			}
			maps.Copy(p.sem.pendingCT, targets)
		}
		logger.V(2).Info("Cleared stale conntrack entries", "virtualServers", len(filters), "deleted", n)
		if logger.V(4).Enabled() {
			for _, f := range filters {
				logger.V(4).Info("Conntrack filter", "filter", f.String())
			}
		}
	}
	p.syncHealthChecks(ctx)
	p.scheduleDrainCheck(now)
}

// syncHealthChecks updates the health check servers of the Services touched
// since the last sync (all of them after a full sync).
func (p *Proxier) syncHealthChecks(ctx context.Context) {
	s := &p.sem
	if s.health == nil {
		return
	}
	logger := klog.FromContext(ctx)
	if s.healthAll {
		want := make(map[types.NamespacedName]*HealthCheck, len(p.effective))
		for name, sm := range p.effective {
			if sm.HealthCheck != nil {
				want[name] = sm.HealthCheck
			}
		}
		if err := s.health.Sync(ctx, want); err != nil {
			logger.Error(err, "Starting health check servers")
		}
	} else {
		for name := range s.healthDirty {
			var hc *HealthCheck
			if sm := p.effective[name]; sm != nil {
				hc = sm.HealthCheck
			}
			if err := s.health.Set(ctx, name, hc); err != nil {
				logger.Error(err, "Starting health check server", "service", name)
			}
		}
		if err := s.health.Retry(ctx); err != nil {
			logger.V(2).Info("Health check servers still failing", "err", err)
		}
	}
	s.healthAll = false
	clear(s.healthDirty)
}

// scheduleDrainCheck asks the runner for a sync while real servers drain: after
// the poll interval, or at the earliest drain deadline when sooner.
func (p *Proxier) scheduleDrainCheck(now time.Time) {
	if len(p.drains) == 0 {
		return
	}
	next := now.Add(min(max(p.cfg.MinSyncPeriod, minDrainPoll), maxDrainPoll))
	if p.cfg.DrainTimeout > 0 {
		for _, m := range p.drains {
			for _, since := range m {
				if d := since.Add(p.cfg.DrainTimeout); d.Before(next) {
					next = d
				}
			}
		}
	}
	p.runner.RunAt(next)
}
