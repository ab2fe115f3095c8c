package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// webHarness is a harness with two ClusterIP Services synced.
func webHarness(t *testing.T, cfg Config, ipvsText, addrText string) *harness {
	t.Helper()
	h := newHarness(t, cfg, ipvsText, addrText)
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080)))
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080")...)
	h.src.setService(makeService("kube-system/dns", "10.0.0.10", port("dns", "UDP", 53), port("dns-tcp", "TCP", 53)))
	h.src.setEndpoints(spn("kube-system/dns", "dns", "UDP"), makeEndpoints("10.1.0.5:53")...)
	h.src.setEndpoints(spn("kube-system/dns", "dns-tcp", "TCP"), makeEndpoints("10.1.0.5:53")...)
	h.sync()
	return h
}

func TestNothingBeforeSynced(t *testing.T) {
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	h.src.synced = false
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)))
	if err := h.p.Sync(h.ctx); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Sync = %v, want ErrNotSynced", err)
	}
	if h.ipvs.Writes()+h.ipvs.Reads()+h.addrs.Writes() != 0 {
		t.Fatalf("an unsynced Proxier touched the kernel:\n%s", h.ipvs.DumpText())
	}
	h.src.synced = true
	h.sync()
	if got := h.resolve("10.0.0.1", 80, ipvs.TCP); got == nil {
		t.Fatalf("no virtual server after sync")
	}
}

func TestUnchangedResyncWritesNothing(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	if !h.p.LastSync().Full {
		t.Fatalf("first sync was not full")
	}
	h.ipvs.ResetCounts()
	if n := h.sync(); n != 0 {
		t.Errorf("incremental sync with nothing changed: %d writes", n)
	}
	if r := h.ipvs.Reads(); r != 0 {
		t.Errorf("incremental sync read the kernel %d times, want 0", r)
	}
	if n := h.syncFull(); n != 0 {
		t.Errorf("full sync with nothing changed: %d writes", n)
	}
	if r := h.ipvs.Reads(); r != 1 {
		t.Errorf("full sync read the kernel %d times, want 1 dump", r)
	}
	// A Service event that changes nothing the kernel sees writes nothing either.
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80), nodePort(30080)))
	if n := h.sync(); n != 0 {
		t.Errorf("no-op Service update: %d writes", n)
	}
}

func TestRestartOverFullTableWritesNothing(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	before := h.ipvs.DumpText() + h.addrs.DumpText()
	h.restart()
	if n := h.sync(); n != 0 {
		t.Fatalf("first sync after restart: %d writes", n)
	}
	if after := h.ipvs.DumpText() + h.addrs.DumpText(); after != before {
		t.Fatalf("kernel changed across restart:\n%s", cmp.Diff(before, after))
	}
	// The restarted Proxier owns what it adopted: deleting the NodePort Service
	// removes its node-IP virtual servers too.
	h.src.deleteService("ns/web")
	h.sync()
	for _, vip := range []string{"10.0.0.1", "192.168.1.10", "172.16.0.10"} {
		for _, p := range []uint16{80, 30080} {
			if got := h.resolve(vip, p, ipvs.TCP); got != nil {
				t.Errorf("%s:%d survived deletion: %v", vip, p, got)
			}
		}
	}
}

func TestDeletedServiceRemovesExactlyItsVirtualServers(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	dnsBefore := dumpMatching(t, h.ipvs.DumpText(), "10.0.0.10")
	h.ipvs.ResetCounts()
	h.src.deleteService("ns/web")
	h.sync()
	// 10.0.0.1:80, 192.168.1.10:30080 and 172.16.0.10:30080.
	if w := h.ipvs.Writes(); w != 3 {
		t.Errorf("deleting a Service with 3 virtual servers: %d IPVS writes, want 3", w)
	}
	vss, _ := ipvs.ParseDump(h.ipvs.DumpText())
	for _, vs := range vss {
		if vs.Address != netip.MustParseAddr("10.0.0.10") {
			t.Errorf("virtual server %s survived its Service", vs.VirtualServerKey)
		}
	}
	if got := dumpMatching(t, h.ipvs.DumpText(), "10.0.0.10"); got != dnsBefore {
		t.Errorf("other Service changed:\n%s", cmp.Diff(dnsBefore, got))
	}
	if diff := cmp.Diff([]string{"10.0.0.10"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
}

// dumpMatching keeps the virtual servers of a dump whose line contains s.
func dumpMatching(t *testing.T, dump, s string) string {
	t.Helper()
	vss, err := ipvs.ParseDump(dump)
	if err != nil {
		t.Fatal(err)
	}
	vss = slices.DeleteFunc(vss, func(vs ipvs.VirtualServerStatus) bool {
		return !strings.Contains(vs.VirtualServerKey.String(), s)
	})
	return ipvs.FormatDump(vss)
}

const foreignKernel = `TCP 10.99.0.1:80 wlc
  -> 10.99.1.1:80 weight 3
TCP 192.168.1.10:9999 rr
  -> 10.99.1.2:80 weight 1
UDP 10.0.9.1:53 rr
  -> 10.99.1.3:53 weight 1
`

func TestForeignAndExcludedUntouched(t *testing.T) {
	cfg := testConfig()
	cfg.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24")}
	// 10.0.9.1 sits on the dummy link but is excluded; 10.99.0.1 is not on it.
	h := webHarness(t, cfg, foreignKernel, defaultNodeAddrs+"kube-ipvs0: 10.0.9.1 10.0.0.77\n")
	for range 3 {
		h.syncFull()
	}
	for _, vip := range []string{"10.99.0.1", "192.168.1.10:9999", "10.0.9.1"} {
		want := dumpMatching(t, foreignKernel, vip)
		if got := dumpMatching(t, h.ipvs.DumpText(), vip); got != want {
			t.Errorf("foreign virtual server %s changed:\n%s", vip, cmp.Diff(want, got))
		}
	}
	// 10.0.0.77 was on the dummy link with nothing wanting it: removed.
	if diff := cmp.Diff([]string{"10.0.0.1", "10.0.0.10", "10.0.9.1"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
}

func TestOwnedLeftoversSwept(t *testing.T) {
	// A virtual server on a dummy-link address that no Service wants is kipvs's
	// (or kube-proxy's) leftover: a full sync removes it and its address.
	h := webHarness(t, testConfig(), "TCP 10.0.0.99:80 rr\n  -> 10.1.9.9:80 weight 1\n", defaultNodeAddrs+"kube-ipvs0: 10.0.0.99\n")
	if got := h.resolve("10.0.0.99", 80, ipvs.TCP); got != nil {
		t.Errorf("leftover survived: %v", got)
	}
	if diff := cmp.Diff([]string{"10.0.0.1", "10.0.0.10"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
}

func TestDriftRepairedByFullSync(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	want := h.ipvs.DumpText()
	ctx := context.Background()
	// Someone edits the table behind kipvs's back.
	if err := h.ipvs.DeleteRealServer(ctx, vsKey("10.0.0.1", 80, ipvs.TCP), ipvs.RealServerKey{Address: netip.MustParseAddr("10.1.0.1"), Port: 8080}); err != nil {
		t.Fatal(err)
	}
	if err := h.ipvs.UpdateVirtualServer(ctx, ipvs.VirtualServer{VirtualServerKey: vsKey("10.0.0.10", 53, ipvs.UDP), Scheduler: "lc"}); err != nil {
		t.Fatal(err)
	}
	if n := h.sync(); n != 0 {
		t.Errorf("incremental sync without changes wrote %d times; it should not see drift", n)
	}
	if n := h.syncFull(); n != 2 {
		t.Errorf("full sync repaired drift with %d writes, want 2", n)
	}
	if got := h.ipvs.DumpText(); got != want {
		t.Errorf("drift not repaired:\n%s", cmp.Diff(want, got))
	}
}

func TestFailedOpsRetriedUntilConverged(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	h.src.setService(makeService("ns/api", "10.0.0.2", port("http", "TCP", 80)))
	h.src.setEndpoints(spn("ns/api", "http", "TCP"), makeEndpoints("10.1.0.7:8080", "10.1.0.8:8080")...)
	h.ipvs.FailNext("AddRealServer", syscall.EIO)
	h.addrs.SetError(netip.MustParseAddr("10.0.0.2"), syscall.EBUSY)
	err := h.p.Sync(h.ctx)
	if err == nil || !strings.Contains(err.Error(), "input/output error") || !strings.Contains(err.Error(), "device or resource busy") {
		t.Fatalf("Sync = %v, want both failures", err)
	}
	ls := h.p.LastSync()
	if c := ls.Ops[OpAddRealServer]; c.Succeeded != 1 || c.Failed != 1 {
		t.Errorf("add_real_server counts = %+v, want 1 succeeded 1 failed", c)
	}
	if c := ls.Ops[OpAddAddress]; c.Failed != 1 {
		t.Errorf("add_address counts = %+v, want 1 failed", c)
	}
	h.addrs.SetError(netip.MustParseAddr("10.0.0.2"), nil)
	h.clk.Step(time.Second)
	if n := h.sync(); n != 2 {
		t.Errorf("retry wrote %d times, want 2 (the failed real server and address)", n)
	}
	if ls := h.p.LastSync(); ls.Full {
		t.Errorf("retry of a plain failure was a full sync")
	}
	if diff := cmp.Diff([]string{"10.1.0.7:8080 w1", "10.1.0.8:8080 w1"}, h.resolve("10.0.0.2", 80, ipvs.TCP)); diff != "" {
		t.Errorf("not converged (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.0.0.1", "10.0.0.2", "10.0.0.10"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
	if n := h.sync(); n != 0 {
		t.Errorf("converged state still writes %d", n)
	}
}

func TestFailedVirtualServerSkipsItsRealServers(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	h.src.setService(makeService("ns/api", "10.0.0.2", port("http", "TCP", 80)))
	h.src.setEndpoints(spn("ns/api", "http", "TCP"), makeEndpoints("10.1.0.7:8080", "10.1.0.8:8080")...)
	h.ipvs.FailNext("AddVirtualServer", syscall.ENOMEM)
	if err := h.p.Sync(h.ctx); err == nil {
		t.Fatal("Sync succeeded despite a failed write")
	}
	if c := h.p.LastSync().Ops[OpAddRealServer]; c.Skipped != 2 || c.Failed != 0 {
		t.Errorf("add_real_server counts = %+v, want 2 skipped", c)
	}
	h.sync()
	if diff := cmp.Diff([]string{"10.1.0.7:8080 w1", "10.1.0.8:8080 w1"}, h.resolve("10.0.0.2", 80, ipvs.TCP)); diff != "" {
		t.Errorf("not converged (-want +got):\n%s", diff)
	}
}

func TestDriftFoundByWriteTriggersFullSync(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	// The virtual server vanishes behind kipvs's back; the next endpoint change
	// fails with "not found", and the retry dumps and repairs.
	if err := h.ipvs.DeleteVirtualServer(context.Background(), vsKey("10.0.0.1", 80, ipvs.TCP)); err != nil {
		t.Fatal(err)
	}
	h.src.setEndpoints(spn("ns/web", "http", "TCP"), makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080")...)
	if err := h.p.Sync(h.ctx); !ipvs.IsNotFound(err) {
		t.Fatalf("Sync = %v, want a not-found error", err)
	}
	h.sync()
	if !h.p.LastSync().Full {
		t.Errorf("retry after drift was not a full sync")
	}
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1", "10.1.0.2:8080 w1", "10.1.0.3:8080 w1"}, h.resolve("10.0.0.1", 80, ipvs.TCP)); diff != "" {
		t.Errorf("not repaired (-want +got):\n%s", diff)
	}
}

func TestEndpointChangeAt10kServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000 Services")
	}
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	for i := range 10000 {
		name := fmt.Sprintf("ns%d/svc%d", i/100, i)
		h.src.setService(makeService(name, clusterIP(i), port("http", "TCP", 80)))
		h.src.setEndpoints(spn(name, "http", "TCP"), endpointsFor(i, 10)...)
	}
	h.sync()
	h.ipvs.ResetCounts()
	before := h.addrs.Writes()
	name := "ns42/svc4242"
	h.src.setEndpoints(spn(name, "http", "TCP"), endpointsFor(4242, 11)...)
	h.sync()
	if w := h.ipvs.Writes() + h.addrs.Writes() - before; w > 3 || w == 0 {
		t.Errorf("one endpoint added: %d writes, want 1..3", w)
	}
	if r := h.ipvs.Reads(); r != 0 {
		t.Errorf("one endpoint added: %d reads, want 0", r)
	}
	if got := h.resolve(clusterIP(4242), 80, ipvs.TCP); len(got) != 11 {
		t.Errorf("backends = %v, want 11", got)
	}
}

// clusterIP returns a distinct cluster IP for Service i.
func clusterIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", 96+i>>16, i>>8&0xff, i&0xff)
}

// endpointsFor returns n ready endpoints of Service i.
func endpointsFor(i, n int) []*endpoints.Endpoint {
	specs := make([]string, n)
	for j := range specs {
		specs[j] = fmt.Sprintf("10.%d.%d.%d:8080", 128+j, i>>8&0xff, i&0xff)
	}
	return makeEndpoints(specs...)
}

func TestConflictLoserTakesOverWhenWinnerLeaves(t *testing.T) {
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	h.src.setService(makeService("ns/a", "10.0.0.1", port("http", "TCP", 80), externalIPs("198.51.100.7")))
	h.src.setEndpoints(spn("ns/a", "http", "TCP"), makeEndpoints("10.1.0.1:8080")...)
	h.sync()
	// ns/b arrives later (incremental sync) and loses to ns/a.
	h.src.setService(makeService("ns/b", "10.0.0.2", port("http", "TCP", 80), externalIPs("198.51.100.7")))
	h.src.setEndpoints(spn("ns/b", "http", "TCP"), makeEndpoints("10.1.0.2:8080")...)
	h.sync()
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w1"}, h.resolve("198.51.100.7", 80, ipvs.TCP)); diff != "" {
		t.Errorf("contested VIP (-want +got):\n%s", diff)
	}
	if err := h.p.LastSync().ServiceErrors[nn("ns/b")]; err == nil || !strings.Contains(err.Error(), "ns/a") {
		t.Errorf("ns/b error = %v, want one naming ns/a", err)
	}
	h.src.deleteService("ns/a")
	h.sync()
	// ns/a's backend drains (TCP): its connections continue, new ones go to ns/b.
	if diff := cmp.Diff([]string{"10.1.0.1:8080 w0", "10.1.0.2:8080 w1"}, h.resolve("198.51.100.7", 80, ipvs.TCP)); diff != "" {
		t.Errorf("after the winner left (-want +got):\n%s", diff)
	}
	if errs := h.p.LastSync().ServiceErrors; len(errs) != 0 {
		t.Errorf("errors left: %v", errs)
	}
	if diff := cmp.Diff([]string{"10.0.0.2", "198.51.100.7"}, h.bound()); diff != "" {
		t.Errorf("dummy link (-want +got):\n%s", diff)
	}
}

func TestNodeAddressChangeSeenOnNodeChangeAndFullSync(t *testing.T) {
	h := webHarness(t, testConfig(), "", defaultNodeAddrs)
	if err := h.addrs.EnsureLink(h.ctx, "eth2"); err != nil {
		t.Fatal(err)
	}
	if err := h.addrs.Add(h.ctx, "eth2", netip.MustParseAddr("192.0.2.5")); err != nil {
		t.Fatal(err)
	}
	h.sync()
	if got := h.resolve("192.0.2.5", 30080, ipvs.TCP); got != nil {
		t.Fatalf("an incremental sync without node change listed node addresses")
	}
	h.src.nodeChanged = true
	h.sync()
	if got := h.resolve("192.0.2.5", 30080, ipvs.TCP); len(got) != 2 {
		t.Fatalf("new node IP after node change: backends %v, want 2", got)
	}
	if err := h.addrs.Delete(h.ctx, "eth2", netip.MustParseAddr("192.0.2.5")); err != nil {
		t.Fatal(err)
	}
	h.syncFull()
	if got := h.resolve("192.0.2.5", 30080, ipvs.TCP); got != nil {
		t.Fatalf("NodePort on a removed node IP survived a full sync: %v", got)
	}
}

func TestSetupCreatesLinkAndSetsTimeouts(t *testing.T) {
	cfg := testConfig()
	cfg.DummyLink = "kipvs0"
	cfg.Timeouts = ipvs.Timeouts{TCP: time.Hour}
	h := newHarness(t, cfg, "", "")
	if got := h.addrs.DumpText(); got != "kipvs0:\n" {
		t.Errorf("links = %q, want kipvs0", got)
	}
	got, err := h.ipvs.Timeouts(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.TCP != time.Hour || got.UDP != ipvs.DefaultTimeouts.UDP {
		t.Errorf("timeouts = %+v, want TCP 1h and UDP left alone", got)
	}
}

func TestRunSyncsOnQueueSyncUntilCancelled(t *testing.T) {
	h := newHarness(t, testConfig(), "", defaultNodeAddrs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.p.Run(ctx)
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("the first sync", func() bool { return !h.p.LastSync().Time.IsZero() })
	waitFor("the runner to wait", h.clk.HasWaiters)
	h.src.setService(makeService("ns/web", "10.0.0.1", port("http", "TCP", 80)))
	h.p.QueueSync()
	h.clk.Step(time.Second) // MinSyncPeriod
	waitFor("the queued sync", func() bool { return h.virtualServer(vsKey("10.0.0.1", 80, ipvs.TCP)) != nil })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
