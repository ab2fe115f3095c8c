package results

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMerge(t *testing.T) {
	m := func(proxy string, n int, metric string, v ...float64) Measurement {
		return Measurement{Proxy: proxy, Services: n, EndpointsPerService: 10, Metric: metric, Values: v}
	}
	base := &File{
		Date: "2026-12-04T21:28:00Z", Command: "go run ./test/bench/cmd/bench -scales 100,1000",
		KipvsVersion: "aaa", Kernel: "6.1", Machine: "m", WallSeconds: 100,
		Scenarios: []Scenario{
			{ID: ColdStart, Measurements: []Measurement{
				m(Kipvs, 100, Seconds, 5),
				m(KubeProxyIPVS, 100, Seconds, 8),
				m(Kipvs, 1000, Seconds, 40),
			}},
			{ID: Throughput, Measurements: []Measurement{
				m(Direct, 100, BitsPerSecond, 1, 2),
			}},
		},
	}
	run := &File{
		Date: "2026-12-04T23:00:00Z", Command: "go run ./test/bench/cmd/bench -proxies kipvs -scales 100 -merge x",
		KipvsVersion: "bbb", Kernel: "6.1", Machine: "m", WallSeconds: 10,
		Scenarios: []Scenario{
			{ID: ColdStart, Measurements: []Measurement{
				m(Kipvs, 100, Seconds, 3),
				m(Kipvs, 100, CPUSeconds, 2),
			}},
			{ID: Throughput, Measurements: []Measurement{
				m(Direct, 100, BitsPerSecond, 3),
			}},
			{ID: Floor, Measurements: []Measurement{
				m(NetlinkFloor, 100, Seconds, 1),
			}},
		},
	}
	got := Merge(base, run)
	want := []Scenario{
		{ID: ColdStart, Measurements: []Measurement{
			m(Kipvs, 100, Seconds, 3),         // replaced
			m(KubeProxyIPVS, 100, Seconds, 8), // kept: not re-run
			m(Kipvs, 1000, Seconds, 40),       // kept: scale not re-run
			m(Kipvs, 100, CPUSeconds, 2),      // new
		}},
		{ID: Throughput, Measurements: []Measurement{
			m(Direct, 100, BitsPerSecond, 1, 2, 3), // baseline samples added
		}},
		{ID: Floor, Measurements: []Measurement{
			m(NetlinkFloor, 100, Seconds, 1),
		}},
	}
	if diff := cmp.Diff(want, got.Scenarios); diff != "" {
		t.Errorf("merged scenarios (-want +got):\n%s", diff)
	}
	if got.Date != base.Date || got.WallSeconds != 110 {
		t.Errorf("date %q wall %v, want the base's date and the summed wall time", got.Date, got.WallSeconds)
	}
	if !strings.Contains(got.Command, base.Command) || !strings.Contains(got.Command, run.Command) {
		t.Errorf("command %q does not name both runs", got.Command)
	}
	if !strings.Contains(got.KipvsVersion, "aaa") || !strings.HasPrefix(got.KipvsVersion, "bbb") {
		t.Errorf("kipvs version %q does not name both versions", got.KipvsVersion)
	}
	if len(base.Scenarios[1].Measurements[0].Values) != 2 {
		t.Error("mergeInto changed the base file's values")
	}
}
