package report

import (
	"github.com/kipvs/kipvs/test/bench/results"
)

// meas builds a measurement of proxy's metric at services x 10 with values.
func meas(proxy, metric string, services int, values ...float64) results.Measurement {
	return results.Measurement{Proxy: proxy, Services: services, EndpointsPerService: 10, Metric: metric, Values: values}
}

// capped marks a measurement capped.
func capped(m results.Measurement) results.Measurement {
	m.Capped = true
	return m
}

// noted sets a measurement's note.
func noted(m results.Measurement, note string) results.Measurement {
	m.Note = note
	return m
}

// scen builds a scenario.
func scen(id string, ms ...results.Measurement) results.Scenario {
	return results.Scenario{ID: id, Title: "Scenario " + id, Description: "What " + id + " measures.", Measurements: ms}
}

// file builds a File with fixed run facts, a 900 s cap and the scenarios.
func file(scs ...results.Scenario) *results.File {
	return &results.File{
		Date: "2026-11-23T19:00:00Z", Command: "go run ./test/bench/cmd/bench -out docs/bench/results.json",
		Kernel: "6.1.0-56-cloud-amd64", GoVersion: "go1.26.0", KipvsVersion: "v0.1.0-5-gabc", KubeProxyVersion: "v1.37.2",
		Machine: "AMD EPYC, 2 cores, qemu TCG", Runs: 3, CapSeconds: 900, WallSeconds: 7260, Scenarios: scs,
	}
}

// fullFile is a File in which every target is met.
func fullFile() *results.File {
	return file(
		scen(results.ColdStart,
			meas(results.Kipvs, results.Seconds, 100, 0.5, 0.6, 0.7),
			meas(results.Kipvs, results.Seconds, 10000, 4, 3.5, 5),
			meas(results.KubeProxyIPVS, results.Seconds, 100, 2, 2, 2),
			meas(results.KubeProxyIPVS, results.Seconds, 10000, 60, 70, 80),
			meas(results.NetlinkFloor, results.Seconds, 10000, 3),
			meas(results.Kipvs, results.KernelOps, 10000, 121000, 121000, 121000),
			meas(results.Kipvs, results.PeakRSSBytes, 10000, 60*MiB, 62*MiB, 61*MiB),
		),
		scen(results.OneChange,
			meas(results.Kipvs, results.P50Seconds, 10000, 0.05, 0.06, 0.04),
			meas(results.KubeProxyIPVS, results.P50Seconds, 10000, 2, 2.5, 3),
			meas(results.Kipvs, results.KernelOps, 10000, 1, 1, 1),
		),
		scen(results.Restart,
			meas(results.Kipvs, results.KernelWrites, 100, 0, 0, 0),
			meas(results.Kipvs, results.KernelWrites, 10000, 0, 0, 0),
		),
		scen(results.PacketCost,
			meas(results.Kipvs, results.P50Seconds, 100, 0.001, 0.001, 0.001),
			meas(results.Kipvs, results.P50Seconds, 10000, 0.00105, 0.00105, 0.00105),
			meas(results.KubeProxyIPTables, results.P50Seconds, 100, 0.001),
			meas(results.KubeProxyIPTables, results.P50Seconds, 10000, 0.002),
		),
	)
}

// withScenario returns f with the scenario id replaced by sc (or sc appended).
func withScenario(f *results.File, sc results.Scenario) *results.File {
	for i := range f.Scenarios {
		if f.Scenarios[i].ID == sc.ID {
			f.Scenarios[i] = sc
			return f
		}
	}
	f.Scenarios = append(f.Scenarios, sc)
	return f
}
