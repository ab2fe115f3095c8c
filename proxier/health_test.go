package proxier

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
)

// healthGet asks h's handler for path and returns the code and decoded body.
func healthGet(t *testing.T, h *Health, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, body
}

func TestHealth(t *testing.T) {
	const timeout = time.Minute
	deleting := &StatusSnapshot{Node: NodeInfo{Node: endpoints.Node{Name: "node1", Deleting: true}}}
	alive := &StatusSnapshot{Node: NodeInfo{Node: endpoints.Node{Name: "node1"}}}
	tests := []struct {
		name string
		// steps run against a fresh Health on a fake clock.
		steps       func(h *Health, clk *testclock.FakeClock)
		healthz     int
		livez       int
		nodeEligble bool
	}{
		{name: "fresh", steps: func(*Health, *testclock.FakeClock) {}, healthz: 200, livez: 200, nodeEligble: true},
		{name: "queued, not late yet", steps: func(h *Health, clk *testclock.FakeClock) {
			h.SyncQueued(clk.Now())
			clk.Step(timeout - time.Second)
		}, healthz: 200, livez: 200, nodeEligble: true},
		{name: "queued and not synced within the timeout", steps: func(h *Health, clk *testclock.FakeClock) {
			h.SyncQueued(clk.Now())
			clk.Step(timeout)
		}, healthz: 503, livez: 503, nodeEligble: true},
		{name: "later queues do not reset the oldest", steps: func(h *Health, clk *testclock.FakeClock) {
			h.SyncQueued(clk.Now())
			clk.Step(timeout / 2)
			h.SyncQueued(clk.Now())
			clk.Step(timeout / 2)
		}, healthz: 503, livez: 503, nodeEligble: true},
		{name: "a successful sync clears the queue", steps: func(h *Health, clk *testclock.FakeClock) {
			h.SyncQueued(clk.Now())
			clk.Step(timeout)
			h.Synced(SyncResult{Time: clk.Now()}, alive)
		}, healthz: 200, livez: 200, nodeEligble: true},
		{name: "a failed sync does not", steps: func(h *Health, clk *testclock.FakeClock) {
			h.SyncQueued(clk.Now())
			clk.Step(timeout)
			h.Synced(SyncResult{Time: clk.Now(), Err: errors.New("kernel said no")}, alive)
		}, healthz: 503, livez: 503, nodeEligble: true},
		{name: "node being deleted: healthz fails, livez does not", steps: func(h *Health, clk *testclock.FakeClock) {
			h.Synced(SyncResult{Time: clk.Now()}, deleting)
		}, healthz: 503, livez: 200, nodeEligble: false},
		{name: "node no longer being deleted", steps: func(h *Health, clk *testclock.FakeClock) {
			h.Synced(SyncResult{Time: clk.Now()}, deleting)
			h.Synced(SyncResult{Time: clk.Now()}, alive)
		}, healthz: 200, livez: 200, nodeEligble: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			h := NewHealth(clk, timeout)
			counts := map[string]int{}
			h.SetObserver(func(path string, code int) { counts[path+" "+http.StatusText(code)]++ })
			tt.steps(h, clk)
			code, body := healthGet(t, h, "/healthz")
			if code != tt.healthz {
				t.Errorf("/healthz = %d, want %d (body %v)", code, tt.healthz, body)
			}
			if body["nodeEligible"] != tt.nodeEligble {
				t.Errorf("/healthz nodeEligible = %v, want %v", body["nodeEligible"], tt.nodeEligble)
			}
			if body["healthy"] != (tt.healthz == 200) {
				t.Errorf("/healthz healthy = %v with code %d", body["healthy"], code)
			}
			code, body = healthGet(t, h, "/livez")
			if code != tt.livez {
				t.Errorf("/livez = %d, want %d (body %v)", code, tt.livez, body)
			}
			if _, ok := body["nodeEligible"]; ok {
				t.Errorf("/livez has nodeEligible: %v", body)
			}
			want := map[string]int{"/healthz " + http.StatusText(tt.healthz): 1, "/livez " + http.StatusText(tt.livez): 1}
			if diff := cmp.Diff(want, counts); diff != "" {
				t.Errorf("observed answers (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHealthReportTimes checks kube-proxy's lastUpdated convention: the current
// time when healthy, the last successful sync when not.
func TestHealthReportTimes(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := testclock.NewFakeClock(start)
	h := NewHealth(clk, time.Minute)
	clk.Step(10 * time.Second)
	h.Synced(SyncResult{Time: clk.Now()}, nil)
	synced := clk.Now()
	h.SyncQueued(clk.Now())
	clk.Step(2 * time.Minute)
	r := h.Report(true)
	if r.Healthy || !r.LastUpdated.Equal(synced) || !r.CurrentTime.Equal(clk.Now()) {
		t.Errorf("late: %+v, want unhealthy, lastUpdated %v, currentTime %v", r, synced, clk.Now())
	}
	h.Synced(SyncResult{Time: clk.Now()}, nil)
	clk.Step(time.Second)
	if r := h.Report(false); !r.Healthy || !r.LastUpdated.Equal(clk.Now()) || r.NodeEligible != nil {
		t.Errorf("healthy livez report: %+v, want lastUpdated = now %v and no nodeEligible", r, clk.Now())
	}
}

// TestProxierNotifiesHealth runs a Proxier with a Health observer: an update
// queued while syncs fail turns it unhealthy after the timeout.
func TestProxierNotifiesHealth(t *testing.T) {
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	health := NewHealth(h.clk, 2*h.cfg.SyncPeriod)
	h.p.AddObserver(health)
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)))
	h.p.QueueSync()
	h.sync()
	if r := health.Report(true); !r.Healthy {
		t.Fatalf("after a successful sync: %+v", r)
	}
	h.ipvs.Fault = func(string) error { return errors.New("injected") }
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080")...)
	h.p.QueueSync()
	if err := h.p.Sync(h.ctx); err == nil {
		t.Fatal("sync with a failing kernel succeeded")
	}
	h.clk.Step(2*h.cfg.SyncPeriod - time.Second)
	if r := health.Report(true); !r.Healthy {
		t.Fatalf("before the timeout: %+v", r)
	}
	h.clk.Step(time.Second)
	if r := health.Report(true); r.Healthy {
		t.Fatalf("queued update not synced within 2 x syncPeriod, still healthy: %+v", r)
	}
}

// TestHealthAPIServer: failing list and watch requests mark the API server
// unreachable since the first failure, in /healthz and /livez, without
// making kipvs unhealthy; it is reachable again once every failing resource
// succeeds.
func TestHealthAPIServer(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	refused := errors.New("connect: connection refused")
	type step struct {
		advance  time.Duration
		resource string
		err      error
	}
	tests := []struct {
		name  string
		steps []step
		want  APIServerStatus
	}{
		{name: "never observed", want: APIServerStatus{Reachable: true}},
		{name: "all succeed", steps: []step{{0, "services", nil}, {0, "nodes", nil}}, want: APIServerStatus{Reachable: true}},
		{name: "one failure", steps: []step{{time.Second, "services", refused}},
			want: APIServerStatus{Since: ptrTo(start.Add(time.Second)), Error: "services: connect: connection refused"}},
		{name: "repeated failures keep the first time, the latest error", steps: []step{
			{time.Second, "services", refused}, {5 * time.Second, "nodes", errors.New("EOF")}, {5 * time.Second, "services", refused},
		}, want: APIServerStatus{Since: ptrTo(start.Add(time.Second)), Error: "services: connect: connection refused"}},
		{name: "one resource recovers, another still fails", steps: []step{
			{time.Second, "services", refused}, {2 * time.Second, "nodes", refused}, {time.Second, "services", nil},
		}, want: APIServerStatus{Since: ptrTo(start.Add(3 * time.Second)), Error: "nodes: connect: connection refused"}},
		{name: "every resource recovers", steps: []step{
			{time.Second, "services", refused}, {time.Second, "nodes", refused}, {time.Second, "nodes", nil}, {0, "services", nil},
		}, want: APIServerStatus{Reachable: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := testclock.NewFakeClock(start)
			h := NewHealth(clk, time.Minute)
			for _, s := range tc.steps {
				clk.Step(s.advance)
				h.ObserveAPIServer(s.resource, s.err)
			}
			if diff := cmp.Diff(tc.want, h.APIServer()); diff != "" {
				t.Errorf("APIServer() (-want +got):\n%s", diff)
			}
			for _, path := range []string{"/healthz", "/livez"} {
				code, body := healthGet(t, h, path)
				if code != http.StatusOK {
					t.Errorf("%s = %d during an API server outage, want 200", path, code)
				}
				api, _ := body["apiServer"].(map[string]any)
				if api["reachable"] != tc.want.Reachable {
					t.Errorf("%s apiServer = %v, want reachable %v", path, body["apiServer"], tc.want.Reachable)
				}
				if _, ok := api["since"]; ok == tc.want.Reachable {
					t.Errorf("%s apiServer = %v: since present %v, want %v", path, api, ok, !tc.want.Reachable)
				}
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }
