package proxier

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testclock "k8s.io/utils/clock/testing"

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
	// draining with no write. Without ipsets there is no drain set, so its
	// clock starts now (not 4 minutes ago); TestDrainDeadlineSurvivesRestart
	// covers the drain set.
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

// nfDrainHarness is drainHarness's TCP half with the netfilter layer, whose
// fake ipsets count down on the harness's clock. It returns when 10.1.0.2:8080
// (2 active, 1 inactive connection) started draining, at the clock's time.
func nfDrainHarness(t *testing.T, drainTimeout time.Duration) *nfHarness {
	t.Helper()
	cfg := testConfig()
	cfg.DrainTimeout = drainTimeout
	h := newNFHarness(t, cfg)
	h.ipset.SetClock(h.clk)
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080")...)
	h.sync()
	if err := h.ipvs.SetConnections(vsKey("10.0.0.1", 80, ipvs.TCP), rsKey("10.1.0.2:8080"), 2, 1); err != nil {
		t.Fatal(err)
	}
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080")...)
	h.sync()
	return h
}

// TestDrainDeadlineSurvivesRestart (issue 8): kipvs restarts half-way through
// a drain; the new Proxier reads the drain's start from KIPVS-DRAINING and
// deletes the real server at the original deadline, not a whole DrainTimeout
// after the restart.
func TestDrainDeadlineSurvivesRestart(t *testing.T) {
	const drainTimeout = 5 * time.Minute
	h := nfDrainHarness(t, drainTimeout)
	deadline := h.clk.Now().Add(drainTimeout)
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w0"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Fatalf("TCP backend not draining (-want +got):\n%s", diff)
	}
	drainSet := DrainSetName(false)
	if diff := cmp.Diff([]string{"10.0.0.1,tcp:80,10.1.0.2 timeout 86400"}, h.ipset.Entries(drainSet)); diff != "" {
		t.Fatalf("drain set when the drain started (-want +got):\n%s", diff)
	}

	h.clk.Step(drainTimeout / 2)
	h.restartNF()
	if n := h.sync(); n != 0 || !h.p.LastSync().Full {
		t.Fatalf("first sync after the restart: %d IPVS writes, full %v; want a full sync with none", n, h.p.LastSync().Full)
	}
	if diff := cmp.Diff([]string{"10.0.0.1,tcp:80,10.1.0.2 timeout 86250"}, h.ipset.Entries(drainSet)); diff != "" {
		t.Errorf("drain set after the restart: the entry must be kept, counting down (-want +got):\n%s", diff)
	}
	// The kernel reports whole seconds, rounded down: kipvs reads the start
	// back up to a second late, never early.
	h.clk.SetTime(deadline.Add(-time.Second))
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 2 {
		t.Fatalf("draining backend deleted before its original deadline: %v", got)
	}
	h.clk.SetTime(deadline.Add(time.Second))
	h.sync()
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("busy backend not deleted at its original deadline, %s after the restart (-want +got):\n%s",
			drainTimeout/2, diff)
	}
	if got := h.ipset.Entries(drainSet); len(got) != 0 {
		t.Errorf("drain set entry kept after the drain ended: %v", got)
	}
}

// TestDrainSetStaleEntries: at the first full sync after a start, entries of
// KIPVS-DRAINING whose real server does not drain (wanted at weight 1, or gone)
// are removed, and a real server found draining without an entry gets one and
// starts its clock then.
func TestDrainSetStaleEntries(t *testing.T) {
	const drainTimeout = 5 * time.Minute
	h := nfDrainHarness(t, drainTimeout)
	drainSet := DrainSetName(false)
	for _, e := range []string{"10.0.0.1,tcp:80,10.1.0.1 timeout 100", "10.0.0.1,tcp:80,10.1.0.9 timeout 200", "10.0.0.1,tcp:80,10.1.0.2"} {
		entry, err := ParseIPSetEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		if e == "10.0.0.1,tcp:80,10.1.0.2" {
			// kipvs restarts with the draining server's entry lost.
			err = h.ipset.Del(h.ctx, drainSet, entry)
		} else {
			err = h.ipset.Add(h.ctx, drainSet, entry)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	h.clk.Step(time.Minute)
	restarted := h.clk.Now()
	h.restartNF()
	if n := h.sync(); n != 0 || !h.p.LastSync().Full {
		t.Fatalf("first sync after the restart: %d IPVS writes, full %v; want a full sync with none", n, h.p.LastSync().Full)
	}
	if diff := cmp.Diff([]string{"10.0.0.1,tcp:80,10.1.0.2 timeout 86400"}, h.ipset.Entries(drainSet)); diff != "" {
		t.Errorf("drain set after the first full sync (-want +got):\n%s", diff)
	}
	h.clk.SetTime(restarted.Add(drainTimeout - time.Second))
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 2 {
		t.Fatalf("draining backend without a drain set entry deleted before DrainTimeout after the restart: %v", got)
	}
	h.clk.SetTime(restarted.Add(drainTimeout))
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); len(got) != 1 {
		t.Errorf("draining backend not deleted DrainTimeout after the restart: %v", got)
	}
}

// TestFakeIpsetTimeouts: a set with timeouts round-trips through DumpText,
// and with a clock its entries count down and expire as the kernel's do.
func TestFakeIpsetTimeouts(t *testing.T) {
	const text = "KIPVS-DRAINING hash:ip,port,ip timeout 86400\n  10.0.0.1,tcp:80,10.1.0.2 timeout 30\n"
	f, err := NewFakeIpsetFromText(text)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(text, f.DumpText()); diff != "" {
		t.Errorf("round trip without a clock (-want +got):\n%s", diff)
	}
	clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	f = NewFakeIpset()
	f.SetClock(clk)
	ctx := context.Background()
	if err := f.Create(ctx, DrainSetSpec(false)); err != nil {
		t.Fatal(err)
	}
	e, err := ParseIPSetEntry("10.0.0.1,tcp:80,10.1.0.2 timeout 30")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Add(ctx, "KIPVS-DRAINING", e); err != nil {
		t.Fatal(err)
	}
	clk.Step(10*time.Second + 500*time.Millisecond)
	if diff := cmp.Diff([]string{"10.0.0.1,tcp:80,10.1.0.2 timeout 19"}, f.Entries("KIPVS-DRAINING")); diff != "" {
		t.Errorf("after 10.5 s (-want +got):\n%s", diff)
	}
	clk.Step(20 * time.Second)
	if got := f.Entries("KIPVS-DRAINING"); len(got) != 0 {
		t.Errorf("entry not expired after its timeout: %v", got)
	}
	if err := f.Add(ctx, "KIPVS-CLUSTER-IP", e); err == nil {
		t.Errorf("adding to a missing set succeeded")
	}
}
