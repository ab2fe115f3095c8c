package proxier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// halfBatcher is a FakeIpset whose batched adds add the first half of the
// batch and then fail, as the kernel does when an entry in the middle of an
// IPSET_ATTR_ADT is refused.
type halfBatcher struct {
	*FakeIpset
	batches int
}

func (h *halfBatcher) AddEntries(ctx context.Context, set string, entries []IPSetEntry) error {
	h.batches++
	if err := h.FakeIpset.AddEntries(ctx, set, entries[:len(entries)/2]); err != nil {
		return err
	}
	return fmt.Errorf("adding %d entries to ipset %s: %w", len(entries), set, syscall.EINVAL)
}

// batchedFullSync runs a first full sync of services Services with two
// endpoints each through ipset and returns the netfilter result.
func batchedFullSync(t *testing.T, ipset Ipset, services int) NetfilterResult {
	t.Helper()
	h := newNFHarness(t, testConfig())
	h.p = New(testConfig(), h.src, h.ipvs, h.addrs, h.clk, WithNetfilter(NetfilterKernel{
		Sysctl: h.sysctl, Ipset: ipset, IPv4: h.ipt,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	for i := range services {
		name := fmt.Sprintf("ns/s%d", i)
		h.src.setService(makeService(name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), port("p", "TCP", 80), nodePort(uint16(30000+i))))
		h.src.setEndpoints(spn(name, "p", "TCP"), makeEndpoints(fmt.Sprintf("10.244.0.%d:80@node1", i%250+1), fmt.Sprintf("10.244.1.%d:80@node2", i%250+1))...)
	}
	h.syncFull()
	return h.p.LastNetfilterSync()
}

// TestNetfilterBatchFallback: a batch the kernel refuses half-way is retried
// entry by entry, and the sets end as without batching.
func TestNetfilterBatchFallback(t *testing.T) {
	const services = 1500 // KIPVS-CLUSTER-IP gets more than one batch
	plain := NewFakeIpset()
	wantRes := batchedFullSync(t, plain, services)
	if wantRes.EntriesAdded < 2*ipsetBatchEntries || wantRes.Failed != 0 {
		t.Fatalf("full sync added %d entries, %d failed; want over %d and none", wantRes.EntriesAdded, wantRes.Failed, 2*ipsetBatchEntries)
	}
	half := &halfBatcher{FakeIpset: NewFakeIpset()}
	res := batchedFullSync(t, half, services)
	if half.batches == 0 {
		t.Fatal("no batched add")
	}
	if diff := cmp.Diff(plain.DumpText(), half.DumpText()); diff != "" {
		t.Errorf("sets after failed batches differ from unbatched (-want +got):\n%s", diff)
	}
	if res != wantRes {
		t.Errorf("result after failed batches %+v, want %+v", res, wantRes)
	}
}

// TestNetfilterBatchErrorNamesEntry: when every add to a set fails, each
// entry is reported on its own (the fallback), not as one batch.
func TestNetfilterBatchErrorNamesEntry(t *testing.T) {
	sets := NewFakeIpset()
	boom := errors.New("boom")
	sets.SetError("KIPVS-CLUSTER-IP", boom)
	h := newNFHarness(t, testConfig())
	h.p = New(testConfig(), h.src, h.ipvs, h.addrs, h.clk, WithNetfilter(NetfilterKernel{
		Sysctl: h.sysctl, Ipset: sets, IPv4: h.ipt,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := h.p.Setup(h.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	for i := range 3 {
		name := fmt.Sprintf("ns/s%d", i)
		h.src.setService(makeService(name, fmt.Sprintf("10.96.0.%d", i+1), port("p", "TCP", 80)))
		h.src.setEndpoints(spn(name, "p", "TCP"), makeEndpoints("10.244.0.5:80@node1")...)
	}
	h.clk.Step(h.cfg.SyncPeriod)
	err := h.p.Sync(h.ctx)
	if res := h.p.LastNetfilterSync(); res.Failed != 3 {
		t.Errorf("failed writes %d, want 3 (one per entry of KIPVS-CLUSTER-IP)", res.Failed)
	}
	for i := range 3 {
		if e := fmt.Sprintf("adding 10.96.0.%d,tcp:80 to ipset KIPVS-CLUSTER-IP: boom", i+1); err == nil || !strings.Contains(err.Error(), e) {
			t.Errorf("sync error %v does not name %s", err, e)
		}
	}
}
