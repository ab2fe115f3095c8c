package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// statusRenderer turns a snapshot and a kernel view into a Status; it is pure.
type statusRenderer struct {
	snap         *StatusSnapshot
	kv           *kernelView
	now          time.Time
	drainTimeout time.Duration
	out          *Status
}

// drift records one difference between the kernel and the model.
func (r *statusRenderer) drift(kind, object, format string, args ...any) {
	r.out.Drift = append(r.out.Drift, DriftStatus{Kind: kind, Object: object, Problem: fmt.Sprintf(format, args...)})
}

// service renders the ports of one Service (only those with a virtual server
// on the queried VIP when q has one).
func (r *statusRenderer) service(e *ServiceEntry, q StatusQuery) {
	svc, m := e.Service, e.Model
	byPort := map[endpoints.ServicePortName][]*DesiredVirtualServer{}
	sched := ""
	for k, dvs := range m.VirtualServers {
		sched = dvs.VirtualServer.Scheduler
		if q.VIP.IsValid() && (k.Address != q.VIP.Addr() || k.Port != q.VIP.Port()) {
			continue
		}
		byPort[dvs.Port] = append(byPort[dvs.Port], dvs)
	}
	errText := ""
	if m.Err != nil {
		errText = m.Err.Error()
	}
	if len(svc.Ports) == 0 {
		r.out.Services = append(r.out.Services, ServicePortStatus{Name: m.Name.String(), Namespace: m.Name.Namespace,
			Service: m.Name.Name, Type: string(svc.Type), Affinity: string(v1.ServiceAffinityNone), Error: errText,
			Skipped: m.Skipped, VirtualServers: []VIPStatus{}})
		return
	}
	for _, sp := range svc.Ports {
		vss := byPort[sp.Name]
		if q.VIP.IsValid() && len(vss) == 0 {
			continue
		}
		ps := ServicePortStatus{
			Name: sp.Name.String(), Namespace: m.Name.Namespace, Service: m.Name.Name, Port: sp.Name.Port,
			Protocol: string(sp.Protocol), Type: string(svc.Type), Scheduler: sched,
			Affinity: string(v1.ServiceAffinityNone), InternalTrafficPolicy: policyName(sp.InternalPolicyLocal),
			TrafficDistribution: sp.TrafficDistribution, Error: errText, Skipped: m.Skipped, VirtualServers: []VIPStatus{},
		}
		if sp.StickyMaxAgeSeconds > 0 {
			ps.Affinity, ps.AffinityTimeoutSeconds = string(v1.ServiceAffinityClientIP), sp.StickyMaxAgeSeconds
		}
		if sp.ExternallyAccessible() {
			ps.ExternalTrafficPolicy = policyName(sp.ExternalPolicyLocal)
		}
		eps := e.Endpoints[sp.Name]
		index := make(map[ipvs.RealServerKey]*endpoints.Endpoint, len(eps))
		for _, ep := range eps {
			ps.Endpoints.Total++
			if ep.Ready {
				ps.Endpoints.Ready++
			}
			index[ipvs.RealServerKey{Address: ep.Address.Unmap(), Port: ep.Port}] = ep
		}
		slices.SortFunc(vss, func(a, b *DesiredVirtualServer) int {
			return cmp.Or(cmp.Compare(a.Kind, b.Kind), a.VirtualServer.VirtualServerKey.Compare(b.VirtualServer.VirtualServerKey))
		})
		for _, dvs := range vss {
			ps.VirtualServers = append(ps.VirtualServers, r.vip(dvs, index, e.Former))
		}
		r.out.Services = append(r.out.Services, ps)
	}
}

// vip renders one wanted virtual server with its real servers, wanted or in
// the kernel, and records its drift.
func (r *statusRenderer) vip(dvs *DesiredVirtualServer, index, former map[ipvs.RealServerKey]*endpoints.Endpoint) VIPStatus {
	k := dvs.VirtualServer.VirtualServerKey
	have := r.kv.vss[k]
	known := r.kv.knows(k)
	out := VIPStatus{VIP: netip.AddrPortFrom(k.Address, k.Port).String(), Kind: dvs.Kind.String(), InKernel: have != nil, Backends: []BackendStatus{}}
	switch {
	case known && have == nil:
		r.drift("virtualServer", k.String(), "wanted by %s, missing from the kernel", dvs.Port)
	case have != nil && r.kv.dumped && !sameVirtualServer(have.VirtualServer, dvs.VirtualServer):
		r.drift("virtualServer", k.String(), "scheduler %s flags %#x timeout %d, want %s flags %#x timeout %d",
			have.Scheduler, uint32(have.Flags), have.Timeout, dvs.VirtualServer.Scheduler, uint32(dvs.VirtualServer.Flags), dvs.VirtualServer.Timeout)
	}
	inKernel := map[ipvs.RealServerKey]ipvs.RealServerStatus{}
	if have != nil {
		for _, rs := range have.RealServers {
			inKernel[rs.RealServerKey] = rs
		}
	}
	keys := make([]ipvs.RealServerKey, 0, len(dvs.RealServers)+len(inKernel))
	for rk := range dvs.RealServers {
		keys = append(keys, rk)
	}
	for rk := range inKernel {
		if _, ok := dvs.RealServers[rk]; !ok {
			keys = append(keys, rk)
		}
	}
	slices.SortFunc(keys, ipvs.RealServerKey.Compare)
	for _, rk := range keys {
		out.Backends = append(out.Backends, r.backend(k, rk, dvs, have != nil, inKernel, index, former))
	}
	return out
}

// backend renders one real server of virtual server k.
func (r *statusRenderer) backend(k ipvs.VirtualServerKey, rk ipvs.RealServerKey, dvs *DesiredVirtualServer, vsInKernel bool,
	inKernel map[ipvs.RealServerKey]ipvs.RealServerStatus, index, former map[ipvs.RealServerKey]*endpoints.Endpoint) BackendStatus {
	want, wanted := dvs.RealServers[rk]
	h, present := inKernel[rk]
	b := BackendStatus{Address: rk.String(), Weight: want.Weight}
	ep := index[rk]
	if ep == nil {
		ep = former[rk]
	}
	if ep != nil {
		b.Pod, b.Node, b.Zone = ep.PodName, ep.NodeName, ep.Zone
	}
	if present {
		b.Weight, b.ActiveConns, b.InactiveConns = h.Weight, h.ActiveConns, h.InactiveConns
		b.Connections, b.PacketsIn, b.PacketsOut, b.BytesIn, b.BytesOut = h.Connections, h.PacketsIn, h.PacketsOut, h.BytesIn, h.BytesOut
	}
	object := fmt.Sprintf("%s -> %s", k, rk)
	switch {
	case wanted && !present && vsInKernel:
		b.State = StateMissing
		r.drift("realServer", object, "wanted, missing from the kernel")
	case wanted && !present && r.kv.knows(k):
		b.State = StateMissing
	case wanted:
		b.State = StateReady
		if ep != nil && !ep.Ready && ep.Terminating {
			b.State = StateTerminating
		}
		if present && h.Weight != want.Weight {
			r.drift("realServer", object, "weight %d, want %d", h.Weight, want.Weight)
		}
	case h.Weight == 0:
		b.State = StateDraining
		if since, ok := r.snap.Drains[k][rk]; ok && r.drainTimeout > 0 {
			left := max(0, r.drainTimeout-r.now.Sub(since)).Seconds()
			b.DrainSecondsLeft = &left
		}
	default:
		b.State = StateUnwanted
		r.drift("realServer", object, "weight %d, wanted by no endpoint", h.Weight)
	}
	return b
}

// strayDrift records kernel objects that kipvs owns and no Service wants:
// virtual servers on dummy-link addresses and dummy-link addresses, within
// the scope of q; and wanted VIPs missing from the dummy link.
func (r *statusRenderer) strayDrift(q StatusQuery, link string, exclude []netip.Prefix, entries []*ServiceEntry) {
	wantedVS := map[ipvs.VirtualServerKey]bool{}
	for _, e := range entries {
		for k := range e.Model.VirtualServers {
			wantedVS[k] = true
		}
	}
	var stray []ipvs.VirtualServerKey
	for k := range r.kv.vss {
		if !wantedVS[k] && r.kv.bound[k.Address] && !excluded(k.Address, exclude) {
			stray = append(stray, k)
		}
	}
	slices.SortFunc(stray, ipvs.VirtualServerKey.Compare)
	for _, k := range stray {
		r.drift("virtualServer", k.String(), "on %s, wanted by no Service", link)
	}
	if r.kv.bound == nil {
		return
	}
	wantedAddr := map[netip.Addr]bool{}
	for _, e := range r.snap.Services {
		for _, a := range e.Model.Addresses {
			wantedAddr[a] = true
		}
	}
	var scope []netip.Addr
	switch {
	case q.Service.Name != "":
		for _, e := range entries {
			scope = append(scope, e.Model.Addresses...)
		}
	case q.VIP.IsValid():
		scope = []netip.Addr{q.VIP.Addr()}
	default:
		for a := range wantedAddr {
			scope = append(scope, a)
		}
		for a := range r.kv.bound {
			if !wantedAddr[a] {
				scope = append(scope, a)
			}
		}
	}
	slices.SortFunc(scope, netip.Addr.Compare)
	for _, a := range slices.Compact(scope) {
		switch {
		case wantedAddr[a] && !r.kv.bound[a]:
			r.drift("address", a.String(), "wanted, not bound to %s", link)
		case !wantedAddr[a] && r.kv.bound[a] && !excluded(a, exclude):
			r.drift("address", a.String(), "bound to %s, wanted by no Service", link)
		}
	}
}
