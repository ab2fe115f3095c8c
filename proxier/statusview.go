package proxier

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// Status is the JSON document served at /status: the last sync, every Service
// port kipvs programs with its VIPs and backends (with the kernel's live
// counters), what in the kernel differs from the model (drift) and the objects
// kipvs could not program.
type Status struct {
	Node      string           `json:"node"`
	Time      time.Time        `json:"time"`
	LastSync  *LastSyncStatus  `json:"lastSync,omitempty"`
	Conntrack *ConntrackStatus `json:"conntrack,omitempty"`
	// APIServer says whether kipvs reaches the API server (set when
	// StatusOptions.APIServer is).
	APIServer *APIServerStatus    `json:"apiServer,omitempty"`
	Services  []ServicePortStatus `json:"services"`
	Drift     []DriftStatus       `json:"drift,omitempty"`
	Rejected  []RejectedStatus    `json:"rejected,omitempty"`
	// Errors are failures to read the kernel while answering; counters and
	// drift are then incomplete.
	Errors []string `json:"errors,omitempty"`
}

// LastSyncStatus describes the latest sync.
type LastSyncStatus struct {
	Time            time.Time `json:"time"`
	DurationSeconds float64   `json:"durationSeconds"`
	// Kind is "full" or "incremental".
	Kind          string `json:"kind"`
	Writes        int    `json:"writes"`
	FailedWrites  int    `json:"failedWrites"`
	ServiceErrors int    `json:"serviceErrors"`
	Error         string `json:"error,omitempty"`
}

// ConntrackStatus is the fill of the kernel's conntrack table.
type ConntrackStatus struct {
	Entries int64   `json:"entries"`
	Limit   int64   `json:"limit"`
	Percent float64 `json:"percent"`
}

// ServicePortStatus is one port of one Service.
type ServicePortStatus struct {
	// Name is "namespace/name:port" ("namespace/name" for an unnamed port).
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Port      string `json:"port,omitempty"`
	Protocol  string `json:"protocol,omitempty"`
	Type      string `json:"type,omitempty"`
	Scheduler string `json:"scheduler,omitempty"`
	// Affinity is "None" or "ClientIP".
	Affinity               string `json:"affinity"`
	AffinityTimeoutSeconds uint32 `json:"affinityTimeoutSeconds,omitempty"`
	InternalTrafficPolicy  string `json:"internalTrafficPolicy,omitempty"`
	// ExternalTrafficPolicy is set only for ports reachable from outside.
	ExternalTrafficPolicy string         `json:"externalTrafficPolicy,omitempty"`
	TrafficDistribution   string         `json:"trafficDistribution,omitempty"`
	Endpoints             EndpointCounts `json:"endpoints"`
	Error                 string         `json:"error,omitempty"`
	// Skipped says why a valid Service is not programmed on this node (an
	// address family the node lacks).
	Skipped        string      `json:"skipped,omitempty"`
	VirtualServers []VIPStatus `json:"virtualServers"`
}

// EndpointCounts counts a Service port's endpoints in its EndpointSlices.
type EndpointCounts struct {
	Ready int `json:"ready"`
	Total int `json:"total"`
}

// VIPStatus is one virtual server of a Service port.
type VIPStatus struct {
	// VIP is "address:port"; Kind is clusterIP, nodePort, externalIP or loadBalancer.
	VIP  string `json:"vip"`
	Kind string `json:"kind"`
	// InKernel is false when the kernel lacks the virtual server (see drift).
	InKernel bool            `json:"inKernel"`
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus is one real server of a virtual server.
type BackendStatus struct {
	Address string `json:"address"`
	Pod     string `json:"pod,omitempty"`
	Node    string `json:"node,omitempty"`
	Zone    string `json:"zone,omitempty"`
	// State is ready, terminating (serving while terminating), draining
	// (weight 0, waiting for connections to end), missing (wanted, not in the
	// kernel) or unwanted (in the kernel, neither wanted nor draining).
	State string `json:"state"`
	// DrainSecondsLeft is the time left before a draining real server is
	// deleted even with connections left.
	DrainSecondsLeft *float64 `json:"drainSecondsLeft,omitempty"`
	Weight           int      `json:"weight"`
	ActiveConns      int      `json:"activeConns"`
	InactiveConns    int      `json:"inactiveConns"`
	Connections      uint64   `json:"connections"`
	PacketsIn        uint64   `json:"packetsIn"`
	PacketsOut       uint64   `json:"packetsOut"`
	BytesIn          uint64   `json:"bytesIn"`
	BytesOut         uint64   `json:"bytesOut"`
}

// DriftStatus is a difference between the kernel and what kipvs wants, in
// objects kipvs owns; the next full sync repairs it.
type DriftStatus struct {
	// Kind is virtualServer, realServer or address.
	Kind    string `json:"kind"`
	Object  string `json:"object"`
	Problem string `json:"problem"`
}

// RejectedStatus is an object, or part of one, that kipvs cannot program.
type RejectedStatus struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
}

// Backend states.
const (
	StateReady       = "ready"
	StateTerminating = "terminating"
	StateDraining    = "draining"
	StateMissing     = "missing"
	StateUnwanted    = "unwanted"
)

// StatusQuery narrows a status request to one Service or one VIP.
type StatusQuery struct {
	Service types.NamespacedName
	VIP     netip.AddrPort
}

// ParseStatusQuery reads ?service=ns/name and ?vip=IP:PORT.
func ParseStatusQuery(q url.Values) (StatusQuery, error) {
	var out StatusQuery
	if s := q.Get("service"); s != "" {
		ns, name, ok := strings.Cut(s, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return out, fmt.Errorf("service %q: want namespace/name", s)
		}
		out.Service = types.NamespacedName{Namespace: ns, Name: name}
	}
	if s := q.Get("vip"); s != "" {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return out, fmt.Errorf("vip %q: want IP:PORT ([IPv6]:PORT): %w", s, err)
		}
		out.VIP = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return out, nil
}

// filtered reports whether the query narrows the status.
func (q StatusQuery) filtered() bool { return q.Service.Name != "" || q.VIP.IsValid() }

// StatusOptions are the status handler's inputs besides the proxier.
type StatusOptions struct {
	// Rejected returns the objects the API side rejected (endpoints.State.Rejected).
	Rejected func() []endpoints.Rejection
	// Conntrack returns the conntrack table's fill; ok is false when unknown.
	Conntrack func() (entries, limit int64, ok bool)
	// APIServer returns whether the API server is reachable (Health.APIServer).
	APIServer func() APIServerStatus
}

// StatusHandler serves the status document (see Status) for GET requests,
// narrowed by ?service=ns/name or ?vip=IP:PORT. The model comes from the
// snapshot the latest sync published; counters are read from the kernel per
// request: one dump without a filter, one read per virtual server in scope with one.
func (p *Proxier) StatusHandler(opts StatusOptions) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, err := ParseStatusQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		st := p.BuildStatus(r.Context(), q, opts)
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(st)
	})
}

// kernelView is what a status request read from the kernel.
type kernelView struct {
	vss map[ipvs.VirtualServerKey]*ipvs.VirtualServerStatus
	// read holds the keys whose presence is known (all keys when dumped).
	read   map[ipvs.VirtualServerKey]bool
	dumped bool
	// bound are the dummy link's addresses, nil when not read.
	bound map[netip.Addr]bool
}

// knows reports whether the view knows whether k is in the kernel.
func (kv *kernelView) knows(k ipvs.VirtualServerKey) bool { return kv.dumped || kv.read[k] }

// BuildStatus builds the status document for q at the current time.
func (p *Proxier) BuildStatus(ctx context.Context, q StatusQuery, opts StatusOptions) *Status {
	snap := p.Status()
	last := p.LastSync()
	out := &Status{Node: p.cfg.NodeName, Time: p.clock.Now(), Services: []ServicePortStatus{}}
	if !last.Time.IsZero() {
		out.LastSync = lastSyncStatus(last)
	}
	if opts.Conntrack != nil {
		if e, l, ok := opts.Conntrack(); ok {
			cs := &ConntrackStatus{Entries: e, Limit: l}
			if l > 0 {
				cs.Percent = float64(e) * 100 / float64(l)
			}
			out.Conntrack = cs
		}
	}
	if opts.APIServer != nil {
		api := opts.APIServer()
		out.APIServer = &api
	}
	if snap == nil {
		snap = &StatusSnapshot{}
	}
	entries := selectEntries(snap, q)
	kv := p.readKernel(ctx, snap, entries, q, out)
	r := statusRenderer{snap: snap, kv: kv, now: out.Time, drainTimeout: p.cfg.DrainTimeout, out: out}
	for _, e := range entries {
		r.service(e, q)
	}
	r.strayDrift(q, p.cfg.DummyLink, p.cfg.ExcludeCIDRs, entries)
	var rejected []endpoints.Rejection
	if opts.Rejected != nil {
		rejected = opts.Rejected()
	}
	out.Rejected = rejectedStatus(rejected, entries, q)
	return out
}

// lastSyncStatus converts a SyncResult.
func lastSyncStatus(res SyncResult) *LastSyncStatus {
	ls := &LastSyncStatus{Time: res.Time, DurationSeconds: res.Duration.Seconds(), Kind: "incremental",
		ServiceErrors: len(res.ServiceErrors)}
	if res.Full {
		ls.Kind = "full"
	}
	for _, c := range res.Ops {
		ls.Writes += c.Succeeded + c.Failed
		ls.FailedWrites += c.Failed
	}
	if res.Err != nil {
		ls.Error = res.Err.Error()
	}
	return ls
}

// selectEntries returns the Services in scope of q, sorted by name.
func selectEntries(snap *StatusSnapshot, q StatusQuery) []*ServiceEntry {
	var out []*ServiceEntry
	for name, e := range snap.Services {
		if q.Service.Name != "" && name != q.Service {
			continue
		}
		if q.VIP.IsValid() && !hasVIP(e.Model, q.VIP) {
			continue
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *ServiceEntry) int { return compareNames(a.Model.Name, b.Model.Name) })
	return out
}

// hasVIP reports whether a model has a virtual server on vip (any protocol).
func hasVIP(m *ServiceModel, vip netip.AddrPort) bool {
	for k := range m.VirtualServers {
		if k.Address == vip.Addr() && k.Port == vip.Port() {
			return true
		}
	}
	return false
}

// readKernel reads the kernel for a request: one dump without a filter, else
// the real servers of each virtual server in scope (for a VIP, of each
// protocol on it). Errors are added to out.Errors.
func (p *Proxier) readKernel(ctx context.Context, snap *StatusSnapshot, entries []*ServiceEntry, q StatusQuery, out *Status) *kernelView {
	logger := klog.FromContext(ctx)
	kv := &kernelView{vss: map[ipvs.VirtualServerKey]*ipvs.VirtualServerStatus{}, read: map[ipvs.VirtualServerKey]bool{}}
	if bound, err := p.addrs.List(ctx, p.cfg.DummyLink); err != nil {
		out.Errors = append(out.Errors, fmt.Sprintf("listing addresses of %s: %v", p.cfg.DummyLink, err))
	} else {
		kv.bound = make(map[netip.Addr]bool, len(bound))
		for _, a := range bound {
			kv.bound[a.Unmap()] = true
		}
	}
	if !q.filtered() {
		dump, err := p.ipvs.Dump(ctx)
		if err != nil {
			out.Errors = append(out.Errors, fmt.Sprintf("dumping IPVS: %v", err))
			return kv
		}
		kv.dumped = true
		for i := range dump {
			kv.vss[dump[i].VirtualServerKey] = &dump[i]
		}
		return kv
	}
	var keys []ipvs.VirtualServerKey
	for _, e := range entries {
		for k := range e.Model.VirtualServers {
			if !q.VIP.IsValid() || (k.Address == q.VIP.Addr() && k.Port == q.VIP.Port()) {
				keys = append(keys, k)
			}
		}
	}
	if q.VIP.IsValid() {
		for _, proto := range []ipvs.Protocol{ipvs.TCP, ipvs.UDP, ipvs.SCTP} {
			keys = append(keys, ipvs.VirtualServerKey{Address: q.VIP.Addr(), Port: q.VIP.Port(), Protocol: proto})
		}
	}
	for _, k := range keys {
		if kv.read[k] {
			continue
		}
		rss, err := p.ipvs.RealServers(ctx, k)
		switch {
		case ipvs.IsNotFound(err):
			kv.read[k] = true
		case err != nil:
			logger.V(2).Info("Status: reading real servers failed", "virtualServer", k, "err", err)
			out.Errors = append(out.Errors, fmt.Sprintf("reading real servers of %s: %v", k, err))
		default:
			kv.read[k] = true
			// RealServers does not return the virtual server's settings: the
			// scheduler and flags are taken as wanted (no settings drift then).
			kv.vss[k] = &ipvs.VirtualServerStatus{VirtualServer: ipvs.VirtualServer{VirtualServerKey: k}, RealServers: rss}
		}
	}
	return kv
}

// rejectedStatus merges the API side's rejections with the model's Service
// errors, narrowed to the Services in scope when q filters.
func rejectedStatus(rejected []endpoints.Rejection, entries []*ServiceEntry, q StatusQuery) []RejectedStatus {
	var out []RejectedStatus
	inScope := map[types.NamespacedName]bool{}
	for _, e := range entries {
		inScope[e.Model.Name] = true
		if e.Model.Err != nil {
			out = append(out, RejectedStatus{Kind: "Service", Namespace: e.Model.Name.Namespace, Name: e.Model.Name.Name, Reason: e.Model.Err.Error()})
		}
	}
	for _, r := range rejected {
		if q.filtered() && (r.Kind != "Service" || !inScope[types.NamespacedName{Namespace: r.Namespace, Name: r.Name}]) {
			continue
		}
		out = append(out, RejectedStatus{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name, Reason: r.Reason})
	}
	slices.SortFunc(out, func(a, b RejectedStatus) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Reason, b.Reason))
	})
	return slices.CompactFunc(out, func(a, b RejectedStatus) bool { return a == b })
}

// policyName names a traffic policy.
func policyName(local bool) string {
	if local {
		return string(v1.ServiceInternalTrafficPolicyLocal)
	}
	return string(v1.ServiceInternalTrafficPolicyCluster)
}
