package proxier

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/ipvs"
)

func rsKey(s string) ipvs.RealServerKey {
	ap := netip.MustParseAddrPort(s)
	return ipvs.RealServerKey{Address: ap.Addr(), Port: ap.Port()}
}

// drainHarness syncs ns/web (TCP 10.0.0.1:80) and ns/dns (UDP 10.0.0.10:53),
// each with two backends, then removes the second backend of both.
func drainHarness(t *testing.T, drainTimeout time.Duration) *harness {
	t.Helper()
	cfg := testConfig()
	cfg.DrainTimeout = drainTimeout
	h := newHarness(t, cfg, "", defaultNodeAddrs)
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080")...)
	h.src.setService(makeService("ns/dns", "10.0.0.10", port("dns", "UDP", 53)))
	h.src.setEndpoints(spn("ns/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53", "10.1.0.6:53")...)
	h.sync()
	if err := h.ipvs.SetConnections(vsKey("10.0.0.1", 80, ipvs.TCP), rsKey("10.1.0.2:8080"), 2, 1); err != nil {
		t.Fatal(err)
	}
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080")...)
	h.src.setEndpoints(spn("ns/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53")...)
	h.sync()
	return h
}

func TestDrainingEndsWhenConnectionsReachZero(t *testing.T) {
	h := drainHarness(t, 5*time.Minute)
	web := vsKey("10.0.0.1", 80, ipvs.TCP)
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w0"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Fatalf("TCP backend not draining (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.1.0.5:53 w1"}, h.resolve("10.0.0.10", 53, ipvs.UDP)); diff != "" {
		t.Fatalf("UDP backend not deleted at once (-want +got):\n%s", diff)
	}
	// Still connections: it stays, and re-checking it writes nothing.
	h.clk.Step(time.Minute)
	if n := h.sync(); n != 0 {
		t.Errorf("re-checking a busy draining backend wrote %d times", n)
	}
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 2 {
		t.Fatalf("draining backend gone while busy: %v", got)
	}
	if err := h.ipvs.SetConnections(web, rsKey("10.1.0.2:8080"), 0, 0); err != nil {
		t.Fatal(err)
	}
	h.clk.Step(time.Second)
	if n := h.sync(); n != 1 {
		t.Errorf("ending the drain wrote %d times, want 1", n)
	}
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("drained backend not deleted (-want +got):\n%s", diff)
	}
	if len(h.p.drains) != 0 {
		t.Errorf("drain clock not cleared: %v", h.p.drains)
	}
}

func TestDrainingEndsAtDrainTimeout(t *testing.T) {
	h := drainHarness(t, 5*time.Minute)
	h.clk.Step(4 * time.Minute)
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 2 {
		t.Fatalf("draining backend deleted before DrainTimeout: %v", got)
	}
	h.clk.Step(time.Minute)
	h.sync()
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("busy backend not deleted at DrainTimeout (-want +got):\n%s", diff)
	}
}

func TestNoDrainTimeoutDeletesAtOnce(t *testing.T) {
	h := drainHarness(t, 0)
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("DrainTimeout 0 must delete at once (-want +got):\n%s", diff)
	}
}

func TestReturningBackendStopsDraining(t *testing.T) {
	h := drainHarness(t, 5*time.Minute)
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080")...)
	if n := h.sync(); n != 1 {
		t.Errorf("restoring the weight wrote %d times, want 1", n)
	}
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("backend not restored (-want +got):\n%s", diff)
	}
	if len(h.p.drains) != 0 {
		t.Errorf("drain clock kept a wanted backend: %v", h.p.drains)
	}
}

func TestDrainingSurvivesRestart(t *testing.T) {
	h := drainHarness(t, 5*time.Minute)
	h.clk.Step(4 * time.Minute)
	h.restart()
	// The new Proxier finds the backend at weight 0 and unwanted: it keeps it
	// draining with no write, and its clock starts now (not 4 minutes ago).
	if n := h.sync(); n != 0 {
		t.Fatalf("first sync after restart wrote %d times", n)
	}
	h.clk.Step(4 * time.Minute)
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 2 {
		t.Fatalf("draining backend lost or deleted early after restart: %v", got)
	}
	h.clk.Step(time.Minute)
	h.sync()
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("drain after restart never ended (-want +got):\n%s", diff)
	}
}
