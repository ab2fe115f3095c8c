package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/test/bench/results"
)

func TestMergeInto(t *testing.T) {
	m := func(proxy string, n int, metric string, v ...float64) results.Measurement {
		return results.Measurement{Proxy: proxy, Services: n, EndpointsPerService: 10, Metric: metric, Values: v}
	}
	base := &results.File{
		Date: "2026-12-04T21:28:00Z", Command: "go run ./test/bench/cmd/bench -scales 100,1000",
		KipvsVersion: "aaa", Kernel: "6.1", Machine: "m", WallSeconds: 100,
		Scenarios: []results.Scenario{
			{ID: results.ColdStart, Measurements: []results.Measurement{
				m(results.Kipvs, 100, results.Seconds, 5),
				m(results.KubeProxyIPVS, 100, results.Seconds, 8),
				m(results.Kipvs, 1000, results.Seconds, 40),
			}},
			{ID: results.Throughput, Measurements: []results.Measurement{
				m(results.Direct, 100, results.BitsPerSecond, 1, 2),
			}},
		},
	}
	run := &results.File{
		Date: "2026-12-04T23:00:00Z", Command: "go run ./test/bench/cmd/bench -proxies kipvs -scales 100 -merge x",
		KipvsVersion: "bbb", Kernel: "6.1", Machine: "m", WallSeconds: 10,
		Scenarios: []results.Scenario{
			{ID: results.ColdStart, Measurements: []results.Measurement{
				m(results.Kipvs, 100, results.Seconds, 3),
				m(results.Kipvs, 100, results.CPUSeconds, 2),
			}},
			{ID: results.Throughput, Measurements: []results.Measurement{
				m(results.Direct, 100, results.BitsPerSecond, 3),
			}},
			{ID: results.Floor, Measurements: []results.Measurement{
				m(results.NetlinkFloor, 100, results.Seconds, 1),
			}},
		},
	}
	got := mergeInto(base, run)
	want := []results.Scenario{
		{ID: results.ColdStart, Measurements: []results.Measurement{
			m(results.Kipvs, 100, results.Seconds, 3),         // replaced
			m(results.KubeProxyIPVS, 100, results.Seconds, 8), // kept: not re-run
			m(results.Kipvs, 1000, results.Seconds, 40),       // kept: scale not re-run
			m(results.Kipvs, 100, results.CPUSeconds, 2),      // new
		}},
		{ID: results.Throughput, Measurements: []results.Measurement{
			m(results.Direct, 100, results.BitsPerSecond, 1, 2, 3), // baseline samples added
		}},
		{ID: results.Floor, Measurements: []results.Measurement{
			m(results.NetlinkFloor, 100, results.Seconds, 1),
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
