package report

import (
	"strings"
	"testing"

	"github.com/kipvs/kipvs/test/bench/results"
)

// Indexes of Targets' result.
const (
	tColdStart = iota
	tOneChange
	tRestart
	tRSS
	tPacketCost
)

func TestTargets(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    *results.File
		// want is the verdict of each target, in Targets' order.
		want [5]Status
		// figure is a text the target at index has in its figures.
		index  int
		figure string
	}{
		{
			name: "all met", f: fullFile(), want: [5]Status{Met, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/kube-proxy-ipvs = 0.0571× (kipvs 4.00 s (3.50 s–5.00 s), kube-proxy-ipvs 70.0 s (60.0 s–80.0 s); goal ≤ 0.100×)",
		},
		{
			name: "empty file: nothing measured", f: file(), want: [5]Status{NotMeasured, NotMeasured, NotMeasured, NotMeasured, NotMeasured},
			index: tColdStart, figure: "no figure for kipvs or kube-proxy-ipvs",
		},
		{
			name: "cold start only 5x faster than kube-proxy",
			f: withScenario(fullFile(), scen(results.ColdStart,
				meas(results.Kipvs, results.Seconds, 10000, 4), meas(results.KubeProxyIPVS, results.Seconds, 10000, 20),
				meas(results.NetlinkFloor, results.Seconds, 10000, 3), meas(results.Kipvs, results.PeakRSSBytes, 10000, MiB))),
			want:  [5]Status{Missed, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/kube-proxy-ipvs = 0.200×",
		},
		{
			name: "kube-proxy capped: the bound proves 10x",
			f: withScenario(fullFile(), scen(results.ColdStart,
				meas(results.Kipvs, results.Seconds, 10000, 4), capped(meas(results.KubeProxyIPVS, results.Seconds, 10000)),
				meas(results.NetlinkFloor, results.Seconds, 10000, 3), meas(results.Kipvs, results.PeakRSSBytes, 10000, MiB))),
			want:  [5]Status{Met, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/kube-proxy-ipvs < 0.00444× (kipvs 4.00 s, kube-proxy-ipvs > cap (15.0 min)",
		},
		{
			name: "kube-proxy capped but kipvs slow: inconclusive",
			f: withScenario(fullFile(), scen(results.ColdStart,
				meas(results.Kipvs, results.Seconds, 10000, 200), capped(meas(results.KubeProxyIPVS, results.Seconds, 10000)),
				meas(results.NetlinkFloor, results.Seconds, 10000, 150), meas(results.Kipvs, results.PeakRSSBytes, 10000, MiB))),
			want:  [5]Status{Inconclusive, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/kube-proxy-ipvs < 0.222×",
		},
		{
			name: "kipvs capped: missed against the floor",
			f: withScenario(fullFile(), scen(results.ColdStart,
				capped(meas(results.Kipvs, results.Seconds, 10000)), meas(results.KubeProxyIPVS, results.Seconds, 10000, 100),
				meas(results.NetlinkFloor, results.Seconds, 10000, 3), meas(results.Kipvs, results.PeakRSSBytes, 10000, MiB))),
			want:  [5]Status{Missed, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/floor > 300×",
		},
		{
			name: "floor from seconds per op times kipvs's kernel ops, 2.5x over it",
			f: withScenario(withScenario(fullFile(), scen(results.ColdStart,
				meas(results.Kipvs, results.Seconds, 10000, 5), meas(results.KubeProxyIPVS, results.Seconds, 10000, 100),
				meas(results.Kipvs, results.KernelOps, 10000, 100000), meas(results.Kipvs, results.PeakRSSBytes, 10000, MiB))),
				scen(results.Floor, meas(results.NetlinkFloor, results.SecondsPerOp, 1, 20e-6))),
			want:  [5]Status{Missed, Met, Met, Met, Met},
			index: tColdStart, figure: "kipvs/floor = 2.50× (kipvs 5.00 s, floor (20.0 µs/op × 100,000 ops) 2.00 s; goal ≤ 2.00×)",
		},
		{
			name: "one change: 7 kernel ops in one run",
			f: withScenario(fullFile(), scen(results.OneChange,
				meas(results.Kipvs, results.P50Seconds, 10000, 0.05), meas(results.KubeProxyIPVS, results.P50Seconds, 10000, 2),
				meas(results.Kipvs, results.KernelOps, 10000, 1, 7, 1))),
			want:  [5]Status{Met, Missed, Met, Met, Met},
			index: tOneChange, figure: "at most 7 over the runs (median 1); goal ≤ 5",
		},
		{
			name: "one change: seconds when there is no p50; too slow",
			f: withScenario(fullFile(), scen(results.OneChange,
				meas(results.Kipvs, results.Seconds, 10000, 0.5), meas(results.KubeProxyIPVS, results.Seconds, 10000, 2),
				meas(results.Kipvs, results.KernelOps, 10000, 1))),
			want:  [5]Status{Met, Missed, Met, Met, Met},
			index: tOneChange, figure: "time kipvs/kube-proxy-ipvs (Time) = 0.250×",
		},
		{
			name: "restart writes at one scale",
			f: withScenario(fullFile(), scen(results.Restart,
				meas(results.Kipvs, results.KernelWrites, 100, 0), meas(results.Kipvs, results.KernelWrites, 10000, 0, 4, 0),
				meas(results.KubeProxyIPVS, results.KernelWrites, 10000, 50000))),
			want:  [5]Status{Met, Met, Missed, Met, Met},
			index: tRestart, figure: "kipvs kernel writes on restart: 0 at 100, 0 (0–4) at 10,000",
		},
		{
			name: "RSS over 100 MiB in the churn scenario",
			f:    withScenario(fullFile(), scen(results.Churn, meas(results.Kipvs, results.PeakRSSBytes, 10000, 90*MiB, 120*MiB))),
			want: [5]Status{Met, Met, Met, Missed, Met}, index: tRSS, figure: "highest kipvs peak RSS 120 MiB (churn, 2 run(s))",
		},
		{
			name: "packet cost grows 20%",
			f: withScenario(fullFile(), scen(results.PacketCost,
				meas(results.Kipvs, results.P50Seconds, 100, 0.001), meas(results.Kipvs, results.P50Seconds, 10000, 0.0012))),
			want:  [5]Status{Met, Met, Met, Met, Missed},
			index: tPacketCost, figure: "kipvs cost 10,000/100 (Median latency) = 1.20×",
		},
		{
			name: "packet cost: the peers' growth is shown, not judged",
			f:    fullFile(), want: [5]Status{Met, Met, Met, Met, Met},
			index: tPacketCost, figure: "for comparison, kube-proxy-iptables cost 10,000/100 (Median latency) = 2.00×",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := Targets(tc.f)
			if len(ts) != 5 {
				t.Fatalf("Targets returned %d targets, want 5", len(ts))
			}
			for i, tg := range ts {
				if tg.Status != tc.want[i] {
					t.Errorf("target %d (%s) = %s, want %s; figures: %q", i+1, tg.Goal, tg.Status, tc.want[i], tg.Figures)
				}
			}
			if got := strings.Join(ts[tc.index].Figures, "; "); !strings.Contains(got, tc.figure) {
				t.Errorf("target %d figures = %q, want them to contain %q", tc.index+1, got, tc.figure)
			}
		})
	}
}
