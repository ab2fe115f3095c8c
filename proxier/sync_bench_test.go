package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// The benchmarks in this file complete bench_test.go (BuildModel, the planning
// part of an incremental sync) with the rest of issue 7's micro-benchmarks: a
// full Reconcile against an empty and an identical kernel state, and whole
// syncs (plan, apply to the fakes, netfilter) for the first full sync and for
// one endpoint change. Their setup runs only under -bench, so `go test` stays fast.

// benchModel builds the whole model of n Services (see fillSource) and its Desired state.
func benchModel(b *testing.B, n int) *Desired {
	b.Helper()
	src := newFakeSource()
	fillSource(src, n)
	node := NodeInfo{Node: src.node, IPs: addrs("192.168.1.10", "172.16.0.10")}
	m := BuildModel(src.services, src.eps, node, testConfig())
	if len(m.Services) != n {
		b.Fatalf("model has %d Services, want %d", len(m.Services), n)
	}
	return NewDesired(m)
}

// BenchmarkReconcileFull measures a full-scope Reconcile of the whole model
// against an empty kernel (the first sync: every virtual server, real server
// and address is written) and against a kernel that already matches (a
// periodic resync with no drift: the plan must be empty). It reports the
// planned writes per op.
func BenchmarkReconcileFull(b *testing.B) {
	for _, kernel := range []string{"empty", "identical"} {
		for _, size := range benchSizes {
			b.Run(kernel+"/"+size.name, func(b *testing.B) {
				desired := benchModel(b, size.n)
				observed := NewKernelState()
				in := ReconcileInput{Desired: desired, Observed: observed, Scope: Scope{Full: true},
					DrainSince: DrainClock{}, Now: time.Unix(0, 0), DrainTimeout: 5 * time.Minute}
				first := Reconcile(in)
				// Every Service wants one ClusterIP virtual server with 10 real
				// servers; a tenth also want two NodePort ones.
				if min := size.n * 11; len(first.Ops) < min {
					b.Fatalf("plan against an empty kernel has %d ops, want at least %d", len(first.Ops), min)
				}
				wantOps := len(first.Ops)
				if kernel == "identical" {
					observed.Record(first)
					wantOps = 0
				}
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if plan := Reconcile(in); len(plan.Ops) != wantOps {
						b.Fatalf("plan has %d ops, want %d", len(plan.Ops), wantOps)
					}
				}
				b.ReportMetric(float64(wantOps), "ops/plan")
			})
		}
	}
}

// syncRig is a Proxier over empty fakes (IPVS, addresses, ipset, iptables,
// sysctl), as the proxier tests use, with a source holding n Services.
type syncRig struct {
	ctx   context.Context
	src   *fakeSource
	kipvs *ipvs.Fake
	addrs *FakeAddresses
	ipset *FakeIpset
	ipt   *FakeIptables
	p     *Proxier
}

// newSyncRig returns a set-up syncRig over src; the logger discards, so that
// klog output does not weigh on the figures.
func newSyncRig(b *testing.B, src *fakeSource) *syncRig {
	b.Helper()
	fa, err := NewFakeAddressesFromText(defaultNodeAddrs)
	if err != nil {
		b.Fatal(err)
	}
	sc, err := NewFakeSysctlFromText(defaultSysctls)
	if err != nil {
		b.Fatal(err)
	}
	r := &syncRig{ctx: klog.NewContext(context.Background(), logr.Discard()), src: src,
		kipvs: ipvs.NewFake(), addrs: fa, ipset: NewFakeIpset(), ipt: NewFakeIptables()}
	cfg := testConfig()
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.128.0.0/9")}
	clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r.p = New(cfg, src, r.kipvs, fa, clk, WithNetfilter(NetfilterKernel{
		Sysctl: sc, Ipset: r.ipset, IPv4: r.ipt,
		KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
		NumCPU:        func() int { return 4 },
	}))
	if err := r.p.Setup(r.ctx); err != nil {
		b.Fatalf("Setup: %v", err)
	}
	return r
}

// writes returns every kernel write the fakes have seen.
func (r *syncRig) writes() int {
	return r.kipvs.Writes() + r.addrs.Writes() + r.ipset.Writes() + r.ipt.Writes()
}

// sync runs one Proxier.Sync and returns its kernel writes.
func (r *syncRig) sync(b *testing.B) int {
	w := r.writes()
	if err := r.p.Sync(r.ctx); err != nil {
		b.Fatalf("Sync: %v", err)
	}
	return r.writes() - w
}

// BenchmarkFirstFullSync measures kipvs's first sync with every Service
// present and an empty kernel: the dump, BuildService for every Service,
// Reconcile, Apply to the in-memory fakes and the netfilter sync (ipsets,
// iptables). The fakes are cheap next to netlink, so this is kipvs's own CPU
// and allocation cost of a cold start, the part the bench suite's cold-start
// figure has on top of the kernel's. Each iteration starts from new fakes
// (outside the timer). Profile it with
//
//	go test -run XXX -bench 'FirstFullSync/10k' -benchtime 3x -cpuprofile cpu.out ./proxier
func BenchmarkFirstFullSync(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			src := newFakeSource()
			fillSource(src, size.n)
			writes := 0
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				r := newSyncRig(b, src)
				b.StartTimer()
				writes = r.sync(b)
				if !r.p.LastSync().Full {
					b.Fatal("first sync was not full")
				}
			}
			if min := size.n * 11; writes < min {
				b.Fatalf("first sync wrote %d times, want at least %d", writes, min)
			}
			b.ReportMetric(float64(writes), "writes/sync")
		})
	}
}

// BenchmarkOneChangeSync measures a whole incremental Proxier.Sync (plan,
// apply to the fakes, netfilter) after one endpoint is added to or removed from
// one Service (a NodePort one: three virtual servers), alternately, with N
// Services present. Its cost and writes must not grow with N.
func BenchmarkOneChangeSync(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			src := newFakeSource()
			fillSource(src, size.n)
			r := newSyncRig(b, src)
			r.sync(b)
			i := size.n / 2
			pn := spn(fmt.Sprintf("ns%d/svc%d", i/100, i), "http", "TCP")
			// DrainTimeout is set: a removed TCP endpoint drains (weight 0) and the
			// next iteration's add sets its weight back, so the state cycles.
			eps := [2][]*endpoints.Endpoint{endpointsFor(i, 11), endpointsFor(i, 10)}
			writes := 0
			b.ReportAllocs()
			b.ResetTimer()
			for it := range b.N {
				src.setEndpoints(pn, eps[it%2]...)
				writes += r.sync(b)
				if r.p.LastSync().Full {
					b.Fatal("sync after one change was full")
				}
			}
			b.ReportMetric(float64(writes)/float64(b.N), "writes/sync")
		})
	}
}
