package proxier

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/ipvs"
)

// sctpConntrack has entries of both endpoints of ns/sig (SCTP 10.0.0.20:9000,
// NodePort 30900), another VIP's and a TCP entry on the same VIP and port.
const sctpConntrack = `
SCTP 10.2.0.1:40000 -> 10.0.0.20:9000 reply 10.1.0.7:9000
SCTP 10.2.0.1:40001 -> 10.0.0.20:9000 reply 10.1.0.8:9000
SCTP 10.2.0.2:40000 -> 192.168.1.10:30900 reply 10.1.0.8:9000
SCTP 10.2.0.3:40000 -> 10.0.0.99:9000 reply 10.1.0.8:9000
TCP 10.2.0.1:40000 -> 10.0.0.20:9000 reply 10.1.0.8:9000
`

// sctpHarness syncs ns/sig with endpoints 10.1.0.7 and 10.1.0.8 and a Proxier
// that drains for drainTimeout and clears conntrack entries in ct.
func sctpHarness(t *testing.T, drainTimeout time.Duration, ct *FakeConntrack) *harness {
	t.Helper()
	cfg := testConfig()
	cfg.DrainTimeout = drainTimeout
	h := newHarness(t, cfg, "", defaultNodeAddrs)
	withOptions(h, WithConntrack(ct))
	h.src.setService(makeService("ns/sig", "10.0.0.20", port("sig", "SCTP", 9000), nodePort(30900)))
	h.src.setEndpoints(spn("ns/sig", "sig", "SCTP"), makeEndpoints("10.1.0.7:9000", "10.1.0.8:9000")...)
	h.sync()
	return h
}

// TestSCTPRealServerDeletedAtOnce: a removed SCTP endpoint is not drained like
// a TCP one (weight 0 while connections last) even with associations on it and
// a drain timeout: its real server goes in the same sync, on the ClusterIP and
// the NodePort.
func TestSCTPRealServerDeletedAtOnce(t *testing.T) {
	ct, err := NewFakeConntrack("")
	if err != nil {
		t.Fatal(err)
	}
	h := sctpHarness(t, time.Hour, ct)
	sig := vsKey("10.0.0.20", 9000, ipvs.SCTP)
	if err := h.ipvs.SetConnections(sig, rsKey("10.1.0.8:9000"), 3, 1); err != nil {
		t.Fatal(err)
	}
	h.src.setEndpoints(spn("ns/sig", "sig", "SCTP"), makeEndpoints("10.1.0.7:9000")...)
	h.sync()
	for _, vip := range []struct {
		addr string
		port uint16
	}{{"10.0.0.20", 9000}, {"192.168.1.10", 30900}} {
		if diff := cmp.Diff([]string{"10.1.0.7:9000 w1"}, h.resolve(vip.addr, vip.port, ipvs.SCTP)); diff != "" {
			t.Errorf("SCTP %s:%d after the endpoint left (-want +got):\n%s", vip.addr, vip.port, diff)
		}
	}
	if len(h.p.drains) != 0 {
		t.Errorf("an SCTP real server is draining: %v", h.p.drains)
	}
	// Nothing is left to finish later.
	h.clk.Step(time.Minute)
	if n := h.sync(); n != 0 {
		t.Errorf("the sync after the removal wrote %d times, want 0", n)
	}
}

// TestSCTPConntrackClearedWhenEndpointGoes: the conntrack entries of a removed
// SCTP endpoint, on the ClusterIP and the NodePort, are deleted in the sync
// that deletes its real server; the kept endpoint's, another VIP's and the
// TCP entries stay.
func TestSCTPConntrackClearedWhenEndpointGoes(t *testing.T) {
	ct, err := NewFakeConntrack(sctpConntrack)
	if err != nil {
		t.Fatal(err)
	}
	h := sctpHarness(t, time.Hour, ct)
	if got, err := NewFakeConntrack(sctpConntrack); err != nil || got.DumpText() != ct.DumpText() {
		t.Fatalf("a sync without removed endpoints changed conntrack:\n%s", ct.DumpText())
	}
	h.src.setEndpoints(spn("ns/sig", "sig", "SCTP"), makeEndpoints("10.1.0.7:9000")...)
	h.sync()
	want := "SCTP 10.2.0.1:40000 -> 10.0.0.20:9000 reply 10.1.0.7:9000\n" +
		"SCTP 10.2.0.3:40000 -> 10.0.0.99:9000 reply 10.1.0.8:9000\n" +
		"TCP 10.2.0.1:40000 -> 10.0.0.20:9000 reply 10.1.0.8:9000\n"
	if diff := cmp.Diff(want, ct.DumpText()); diff != "" {
		t.Errorf("conntrack after the SCTP endpoint left (-want +got):\n%s", diff)
	}
}
