package proxier

import (
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// podEndpoints builds endpoints like makeEndpoints and names their pods
// "<ns>/<pod>", with zone "zone-<node>".
func podEndpoints(ns string, specs map[string]string) []*endpoints.Endpoint {
	var out []*endpoints.Endpoint
	for spec, pod := range specs {
		ep := makeEndpoints(spec)[0]
		ep.PodName = ns + "/" + pod
		if ep.NodeName != "" {
			ep.Zone = "zone-" + ep.NodeName
		}
		out = append(out, ep)
	}
	endpointsSort(out)
	return out
}

// endpointsSort sorts endpoints by address and port, as EndpointsMap keeps them.
func endpointsSort(eps []*endpoints.Endpoint) {
	for i := 1; i < len(eps); i++ {
		for j := i; j > 0 && eps[j].AddrPort().Compare(eps[j-1].AddrPort()) < 0; j-- {
			eps[j], eps[j-1] = eps[j-1], eps[j]
		}
	}
}

// statusHarness is a Proxier on fakes with a known model:
//   - ns/web: NodePort, two endpoints; web-2 was removed with connections open
//     and drains (30s into a 5m drain timeout);
//   - kube-system/dns: UDP and TCP 53 with ClientIP affinity; its TCP real server
//     was deleted behind kipvs's back (drift);
//   - ns/bad: an unknown scheduler annotation (a Service error);
//   - a virtual server nobody wants on a dummy-link address (drift).
func statusHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	web := spn("ns/web", "http", "TCP")
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080)))
	h.src.setEndpoints(web, podEndpoints("ns", map[string]string{"10.1.0.1:8080@node1": "web-1", "10.1.0.2:8080@node2": "web-2"})...)
	h.src.setService(makeService("kube-system/dns", "10.0.0.10", port("dns", "UDP", 53), port("dns-tcp", "TCP", 53), affinity(10800)))
	dnsEps := podEndpoints("kube-system", map[string]string{"10.1.0.5:53@node1": "coredns-1"})
	h.src.setEndpoints(spn("kube-system/dns", "dns", "UDP"), dnsEps...)
	h.src.setEndpoints(spn("kube-system/dns", "dns-tcp", "TCP"), dnsEps...)
	h.src.setService(makeService("ns/bad", "10.0.0.20", port("http", "TCP", 80), annotation(SchedulerAnnotation, "fastest")))
	h.sync()

	cip := vsKey("10.0.0.1", 80, ipvs.TCP)
	web2 := ipvs.RealServerKey{Address: addrs("10.1.0.2")[0], Port: 8080}
	if err := h.ipvs.SetConnections(cip, web2, 3, 1); err != nil {
		t.Fatal(err)
	}
	h.src.setEndpoints(web, podEndpoints("ns", map[string]string{"10.1.0.1:8080@node1": "web-1"})...)
	h.sync()
	h.clk.Step(30 * time.Second)
	if err := h.ipvs.DeleteRealServer(h.ctx, vsKey("10.0.0.10", 53, ipvs.TCP), ipvs.RealServerKey{Address: addrs("10.1.0.5")[0], Port: 53}); err != nil {
		t.Fatal(err)
	}
	if err := h.ipvs.AddVirtualServer(h.ctx, ipvs.VirtualServer{VirtualServerKey: vsKey("10.0.0.1", 9999, ipvs.TCP), Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	return h
}

// statusOptions returns fixed rejections, conntrack fill and an API server
// outage.
func statusOptions() StatusOptions {
	return StatusOptions{
		Rejected: func() []endpoints.Rejection {
			return []endpoints.Rejection{
				{Kind: "EndpointSlice", Namespace: "ns", Name: "orphan-abcde", Reason: "no kubernetes.io/service-name label"},
				{Kind: "Service", Namespace: "ns", Name: "web", Reason: `externalIPs: "nope" is not an IP address`},
			}
		},
		Conntrack: func() (int64, int64, bool) { return 850, 1000, true },
		APIServer: func() APIServerStatus {
			since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			return APIServerStatus{Since: &since, Error: "services: dial tcp 10.0.0.1:6443: connect: connection refused"}
		},
	}
}

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

func TestStatusGolden(t *testing.T) {
	tests := []struct {
		name, query, golden string
		// reads is how many kernel reads the request may make.
		reads int
	}{
		{name: "everything", query: "", golden: "status.json", reads: 1},
		{name: "one service", query: "?service=ns/web", golden: "status-service.json", reads: 3},
		{name: "one VIP", query: "?vip=10.0.0.10:53", golden: "status-vip.json", reads: 3},
		{name: "unknown service", query: "?service=ns/nope", golden: "status-none.json", reads: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := statusHarness(t)
			h.ipvs.ResetCounts()
			rec := httptest.NewRecorder()
			h.p.StatusHandler(statusOptions()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status"+tt.query, nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("code %d: %s", rec.Code, rec.Body.String())
			}
			if r := h.ipvs.Reads(); r != tt.reads {
				t.Errorf("request read the kernel %d times, want %d", r, tt.reads)
			}
			var st Status
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatalf("decoding: %v", err)
			}
			checkGolden(t, tt.golden, rec.Body.Bytes())
		})
	}
}

func TestStatusBadQuery(t *testing.T) {
	h := statusHarness(t)
	for _, q := range []string{"?service=web", "?service=a/b/c", "?vip=10.0.0.1", "?vip=nope:80"} {
		rec := httptest.NewRecorder()
		h.p.StatusHandler(StatusOptions{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status"+q, nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%s: code %d, want 400", q, rec.Code)
		}
	}
}

// TestStatusSnapshotFollowsSyncs checks the published snapshot's counts and
// that an unchanged incremental sync publishes the same Service map.
func TestStatusSnapshotFollowsSyncs(t *testing.T) {
	h := statusHarness(t)
	h.sync() // full: SyncPeriod has passed
	st := h.p.Status()
	// ns/web: its cluster IP and its NodePort on 192.168.1.10 and 172.16.0.10
	// (an IPv4-only Service), one real server each, plus web-2 still draining
	// where it has connections (the full sync deleted it where it had none);
	// kube-system/dns: UDP and TCP, one real server each; ns/bad: none.
	want := SyncCounts{VirtualServers: 5, RealServers: 5, DrainingRealServers: 1}
	if diff := cmp.Diff(want, st.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	h.sync()
	if again := h.p.Status(); reflect.ValueOf(again.Services).Pointer() != reflect.ValueOf(st.Services).Pointer() {
		t.Errorf("an unchanged sync rebuilt the Service map")
	}
	h.src.deleteService("ns/web")
	h.sync()
	if _, ok := h.p.Status().Services[nn("ns/web")]; ok {
		t.Errorf("deleted Service still in the snapshot")
	}
	if _, ok := st.Services[nn("ns/web")]; !ok {
		t.Errorf("an older snapshot changed after a later sync")
	}
}
