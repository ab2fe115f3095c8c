package proxier

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
)

// healthGet asks the fake listener's server on address over HTTP.
func hcGet(t *testing.T, fl *FakeListener, address string) (int, string, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return fl.Dial(ctx, address)
	}}}
	resp, err := c.Get("http://" + address + "/healthz")
	if err != nil {
		t.Fatalf("GET %s: %v", address, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body), resp.Header.Get("X-Load-Balancing-Endpoint-Weight")
}

func healthBody(ns, name string, n int, healthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		ns, name, n, healthy)
}

func TestHealthCheckServerAnswers(t *testing.T) {
	fl := NewFakeListener()
	healthy := true
	s := NewHealthCheckServer(fl, addrs("192.168.1.10"), func() bool { return healthy })
	t.Cleanup(s.Close)
	ctx := context.Background()
	if err := s.Set(ctx, nn("ns/web"), &HealthCheck{NodePort: 32000, LocalEndpoints: 2}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		hc      *HealthCheck
		healthy bool
		code    int
		body    string
		weight  string
	}{
		{"local endpoints", &HealthCheck{NodePort: 32000, LocalEndpoints: 2}, true, 200, healthBody("ns", "web", 2, true), "2"},
		{"no local endpoint", &HealthCheck{NodePort: 32000}, true, 503, healthBody("ns", "web", 0, true), "0"},
		{"proxy unhealthy", &HealthCheck{NodePort: 32000, LocalEndpoints: 1}, false, 503, healthBody("ns", "web", 1, false), "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Set(ctx, nn("ns/web"), tc.hc); err != nil {
				t.Fatal(err)
			}
			healthy = tc.healthy
			code, body, weight := hcGet(t, fl, "192.168.1.10:32000")
			if code != tc.code || weight != tc.weight {
				t.Errorf("status %d weight %q, want %d %q", code, weight, tc.code, tc.weight)
			}
			if diff := cmp.Diff(tc.body, body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHealthCheckServerStartsAndStops(t *testing.T) {
	fl := NewFakeListener()
	s := NewHealthCheckServer(fl, addrs("192.168.1.10", "2001:db8::10"), nil)
	t.Cleanup(s.Close)
	ctx := context.Background()
	open := func(want ...string) {
		t.Helper()
		if diff := cmp.Diff(want, fl.Open()); diff != "" {
			t.Errorf("listening (-want +got):\n%s", diff)
		}
	}
	if err := s.Set(ctx, nn("ns/a"), &HealthCheck{NodePort: 32000, LocalEndpoints: 1}); err != nil {
		t.Fatal(err)
	}
	open("192.168.1.10:32000", "[2001:db8::10]:32000")
	// A port change moves the listeners.
	if err := s.Set(ctx, nn("ns/a"), &HealthCheck{NodePort: 32001, LocalEndpoints: 1}); err != nil {
		t.Fatal(err)
	}
	open("192.168.1.10:32001", "[2001:db8::10]:32001")
	// A busy port fails, is reported, and is retried.
	fl.SetBusy("[2001:db8::10]:32002", true)
	if err := s.Set(ctx, nn("ns/b"), &HealthCheck{NodePort: 32002}); err == nil {
		t.Error("Set on a busy port did not fail")
	}
	open("192.168.1.10:32001", "[2001:db8::10]:32001")
	if diff := cmp.Diff(map[types.NamespacedName]uint16{nn("ns/a"): 32001}, s.Ports()); diff != "" {
		t.Errorf("listening Services (-want +got):\n%s", diff)
	}
	fl.SetBusy("[2001:db8::10]:32002", false)
	if err := s.Retry(ctx); err != nil {
		t.Fatal(err)
	}
	open("192.168.1.10:32001", "192.168.1.10:32002", "[2001:db8::10]:32001", "[2001:db8::10]:32002")
	// Sync stops what is not wanted.
	if err := s.Sync(ctx, map[types.NamespacedName]*HealthCheck{nn("ns/b"): {NodePort: 32002}}); err != nil {
		t.Fatal(err)
	}
	open("192.168.1.10:32002", "[2001:db8::10]:32002")
	if err := s.Set(ctx, nn("ns/b"), nil); err != nil {
		t.Fatal(err)
	}
	open()
}

// TestProxierHealthChecks checks that the proxier opens, updates and closes
// health check servers as ETP=Local LoadBalancer Services come and go.
func TestProxierHealthChecks(t *testing.T) {
	fl := NewFakeListener()
	hs := NewHealthCheckServer(fl, []netip.Addr{netip.MustParseAddr("192.168.1.10")}, nil)
	t.Cleanup(hs.Close)
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	withOptions(h, WithHealthCheckServer(hs))
	web := spn("ns/web", "http", "TCP")
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080), lbIPs("203.0.113.7"),
		externalLocal(), healthCheckPort(32000)))
	h.src.setEndpoints(web, makeEndpoints("10.1.0.2:8080@node2")...)
	h.sync()
	if code, _, _ := hcGet(t, fl, "192.168.1.10:32000"); code != 503 {
		t.Errorf("without local endpoints: status %d, want 503", code)
	}
	h.src.setEndpoints(web, makeEndpoints("10.1.0.1:8080@node1", "10.1.0.2:8080@node2")...)
	h.sync()
	if code, body, _ := hcGet(t, fl, "192.168.1.10:32000"); code != 200 || body != healthBody("ns", "web", 1, true) {
		t.Errorf("with a local endpoint: %d %s", code, body)
	}
	h.syncFull()
	if diff := cmp.Diff([]string{"192.168.1.10:32000"}, fl.Open()); diff != "" {
		t.Errorf("after a full sync (-want +got):\n%s", diff)
	}
	h.src.deleteService("ns/web")
	h.sync()
	if got := fl.Open(); len(got) != 0 {
		t.Errorf("health check still open after the Service was deleted: %v", got)
	}
}
