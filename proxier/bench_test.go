package proxier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// benchSizes are the Service counts of the benchmarks (each with 10 endpoints).
var benchSizes = []struct {
	name string
	n    int
}{{"1k", 1000}, {"10k", 10000}, {"50k", 50000}}

// fillSource adds n ClusterIP Services with 10 endpoints each; every tenth one
// (including the one the benchmarks change) also has a NodePort.
func fillSource(src *fakeSource, n int) {
	for i := range n {
		name := fmt.Sprintf("ns%d/svc%d", i/100, i)
		opts := []option{port("http", "TCP", 80)}
		if i%10 == 0 {
			opts = append(opts, nodePort(uint16(30000+i/10)))
		}
		src.setService(makeService(name, clusterIP(i), opts...))
		src.setEndpoints(spn(name, "http", "TCP"), endpointsFor(i, 10)...)
	}
}

// BenchmarkIncrementalSync measures what one sync costs in kipvs itself when one
// Service out of N changes: rebuilding its model, updating the desired state and
// planning against the cached kernel state (the plan's result is recorded in the
// cache as the applier would; no kernel). Each iteration adds or removes an
// endpoint of one Service (a NodePort one: three virtual servers), alternately.
func BenchmarkIncrementalSync(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.DrainTimeout = 0 // removals delete at once: no drain re-reads
			fa, err := NewFakeAddressesFromText(defaultNodeAddrs + "kube-ipvs0:\n")
			if err != nil {
				b.Fatal(err)
			}
			src := newFakeSource()
			fillSource(src, size.n)
			p := New(cfg, src, ipvs.NewFake(), fa, nil)
			ctx := context.Background()
			now := time.Unix(0, 0)
			snap := src.Apply()
			plan, _, _, err := p.plan(ctx, &snap, true, now)
			if err != nil {
				b.Fatal(err)
			}
			p.observed.Record(plan)
			i := size.n / 2
			name := fmt.Sprintf("ns%d/svc%d", i/100, i)
			pn := spn(name, "http", "TCP")
			eps := [2][]*endpoints.Endpoint{endpointsFor(i, 11), endpointsFor(i, 10)}
			ops := 0
			b.ReportAllocs()
			b.ResetTimer()
			for it := range b.N {
				src.setEndpoints(pn, eps[it%2]...)
				snap := src.Apply()
				plan, scope, _, err := p.plan(ctx, &snap, false, now)
				if err != nil {
					b.Fatal(err)
				}
				p.observed.Record(plan)
				p.drains.Update(scope, plan.Draining, now)
				ops += len(plan.Ops)
			}
			b.ReportMetric(float64(ops)/float64(b.N), "ops/sync")
		})
	}
}

// BenchmarkBuildModel measures building the whole model (every Service), as a
// full sync does before it diffs.
func BenchmarkBuildModel(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			src := newFakeSource()
			fillSource(src, size.n)
			node := NodeInfo{Node: src.node, IPs: addrs("192.168.1.10", "172.16.0.10")}
			cfg := testConfig()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				m := BuildModel(src.services, src.eps, node, cfg)
				if len(m.Services) != size.n {
					b.Fatalf("model has %d Services", len(m.Services))
				}
			}
		})
	}
}
