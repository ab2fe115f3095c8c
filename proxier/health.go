package proxier

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Health is kipvs's health server state, with kube-proxy's semantics
// (k8s.io/kubernetes pkg/proxy/healthcheck, ProxyHealthServer): kipvs is healthy unless an update
// was queued and no sync succeeded within the timeout after it (kube-proxy
// uses 2 x syncPeriod). /healthz also fails while this Node is being deleted or
// carries the ToBeDeletedByClusterAutoscaler taint, so that load balancers stop
// sending it new connections; /livez ignores the Node.
//
// Health implements SyncObserver: give it to Proxier.AddObserver. It learns
// about the Node from the syncs, which apply Node updates within MinSyncPeriod.
type Health struct {
	clock   clock.Clock
	timeout time.Duration
	observe func(path string, code int)

	mu           sync.Mutex
	lastUpdated  time.Time
	oldestQueued time.Time // zero when nothing is queued
	nodeEligible bool
	apiFailing   map[string]time.Time // resource -> first failure of its current outage
	apiError     string               // the latest failed request's error
}

// APIServerStatus says whether kipvs's lists and watches reach the API server.
// An outage does not make kipvs unhealthy: the kernel keeps what the last sync
// programmed and traffic flows, and failing every node's health check at once
// would restart every node's proxy (kube-proxy's /healthz ignores the API
// server too). It is reported in /healthz, /livez and /status instead.
type APIServerStatus struct {
	// Reachable is false while the latest list or watch request of any
	// resource failed (unreachable, refused, timed out or rejected).
	Reachable bool `json:"reachable"`
	// Since is when the requests started failing; set only when unreachable.
	Since *time.Time `json:"since,omitempty"`
	// Error is the latest failure; set only when unreachable.
	Error string `json:"error,omitempty"`
}

// HealthReport is the JSON body of /healthz and /livez, kube-proxy's shape.
type HealthReport struct {
	// LastUpdated is the current time when healthy (kube-proxy keeps that for
	// compatibility), else when the last sync succeeded.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set only by /healthz: false while the Node is being deleted.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is false when a queued update is late.
	Healthy bool `json:"healthy"`
	// APIServer says whether kipvs reaches the API server; it does not
	// change Healthy.
	APIServer APIServerStatus `json:"apiServer"`
}

// NewHealth returns a healthy Health; timeout bounds the time from a queued
// update to the sync that applies it. Like kube-proxy, it counts as updated
// when created, and the Node counts as eligible until a sync says otherwise.
func NewHealth(clk clock.Clock, timeout time.Duration) *Health {
	return &Health{clock: clk, timeout: timeout, lastUpdated: clk.Now(), nodeEligible: true, apiFailing: map[string]time.Time{}}
}

// ObserveAPIServer records the result of one list or watch request of
// resource (endpoints.APIServerObserver): a failure starts or continues that
// resource's outage, a success ends it.
func (h *Health) ObserveAPIServer(resource string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		delete(h.apiFailing, resource)
		if len(h.apiFailing) == 0 {
			h.apiError = ""
		}
		return
	}
	if _, ok := h.apiFailing[resource]; !ok {
		h.apiFailing[resource] = h.clock.Now()
	}
	h.apiError = resource + ": " + err.Error()
}

// APIServer returns whether the API server is reachable, and since when not.
func (h *Health) APIServer() APIServerStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.apiServerLocked()
}

func (h *Health) apiServerLocked() APIServerStatus {
	if len(h.apiFailing) == 0 {
		return APIServerStatus{Reachable: true}
	}
	var since time.Time
	for _, t := range h.apiFailing {
		if since.IsZero() || t.Before(since) {
			since = t
		}
	}
	return APIServerStatus{Since: &since, Error: h.apiError}
}

// SetObserver sets a function told about every answer (path "/healthz" or
// "/livez", HTTP code), e.g. metrics.Metrics.ObserveHealthCheck. Call it before serving.
func (h *Health) SetObserver(f func(path string, code int)) {
	h.observe = f
}

// SyncQueued records a queued update unless an older one is still pending
// (SyncObserver).
func (h *Health) SyncQueued(at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestQueued.IsZero() {
		h.oldestQueued = at
	}
}

// Synced clears the queued update when the sync succeeded, and takes the
// Node's eligibility from the snapshot (SyncObserver). A failed sync leaves the
// queued update pending: kipvs turns unhealthy if the retries keep failing.
func (h *Health) Synced(res SyncResult, st *StatusSnapshot) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if res.Err == nil {
		h.oldestQueued = time.Time{}
		h.lastUpdated = h.clock.Now()
	}
	if st != nil {
		h.nodeEligible = !st.Node.Deleting
	}
}

// Report returns the current health; withNode adds the Node's eligibility
// (/healthz) and makes it part of Healthy.
func (h *Health) Report(withNode bool) HealthReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clock.Now()
	r := HealthReport{
		LastUpdated: h.lastUpdated, CurrentTime: now,
		Healthy:   h.oldestQueued.IsZero() || now.Sub(h.oldestQueued) < h.timeout,
		APIServer: h.apiServerLocked(),
	}
	if withNode {
		eligible := h.nodeEligible
		r.NodeEligible = &eligible
		r.Healthy = r.Healthy && eligible
	}
	if r.Healthy {
		r.LastUpdated = now
	}
	return r
}

// Handler serves /healthz and /livez.
func (h *Health) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { h.serve(w, "/healthz", true) })
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { h.serve(w, "/livez", false) })
	return mux
}

// serve writes one report with 200 when healthy, 503 otherwise.
func (h *Health) serve(w http.ResponseWriter, path string, withNode bool) {
	r := h.Report(withNode)
	code := http.StatusOK
	if !r.Healthy {
		code = http.StatusServiceUnavailable
	}
	if h.observe != nil {
		h.observe(path, code)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(r)
}
