// Package report turns one benchmark run (a results.File, issue 7) into
// BENCHMARKS.md and PNG plots. Everything here is a pure function of the
// File, except WritePlots, which writes the files it is asked for: no figure
// or verdict is ever written by hand.
package report

import (
	"cmp"
	"slices"
	"sort"

	"github.com/kipvs/kipvs/test/bench/results"
)

// Stats summarizes the values of one Measurement.
type Stats struct {
	// N is the number of values (runs that produced one).
	N int
	// Median, Min and Max of the values; zero when N is 0.
	Median, Min, Max float64
	// Capped is Measurement.Capped: at least one run hit the cap.
	Capped bool
}

// Summarize returns the Stats of m.
func Summarize(m results.Measurement) Stats {
	s := Stats{N: len(m.Values), Capped: m.Capped}
	if s.N == 0 {
		return s
	}
	v := slices.Clone(m.Values)
	slices.Sort(v)
	s.Min, s.Max = v[0], v[len(v)-1]
	if len(v)%2 == 1 {
		s.Median = v[len(v)/2]
	} else {
		s.Median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return s
}

// Scale is one point of the Services axis: Services with EndpointsPerService each.
type Scale struct {
	Services            int
	EndpointsPerService int
}

// compareScales orders scales by Services, then endpoints per Service.
func compareScales(a, b Scale) int {
	return cmp.Or(cmp.Compare(a.Services, b.Services), cmp.Compare(a.EndpointsPerService, b.EndpointsPerService))
}

// proxyOrder is the column order of the tables: kipvs first, then its peers,
// then the baselines.
var proxyOrder = []string{
	results.Kipvs, results.KubeProxyIPVS, results.KubeProxyNFTables, results.KubeProxyIPTables,
	results.NetlinkFloor, results.Direct,
}

// metricOrder is the order of a scenario's metric tables.
var metricOrder = []string{
	results.Seconds, results.P50Seconds, results.P99Seconds, results.KernelOps, results.KernelWrites,
	results.CPUSeconds, results.PeakRSSBytes, results.BitsPerSecond, results.SecondsPerOp,
}

// rank returns the index of s in order, or len(order) when it is absent.
func rank(order []string, s string) int {
	if i := slices.Index(order, s); i >= 0 {
		return i
	}
	return len(order)
}

// sortKnownFirst sorts ss by their rank in order, unknown ones last by name.
func sortKnownFirst(ss []string, order []string) {
	sort.SliceStable(ss, func(i, j int) bool {
		ri, rj := rank(order, ss[i]), rank(order, ss[j])
		if ri != rj {
			return ri < rj
		}
		return ss[i] < ss[j]
	})
}

// metrics returns the metrics of sc's measurements in metricOrder.
func metrics(sc *results.Scenario) []string {
	var out []string
	for _, m := range sc.Measurements {
		if !slices.Contains(out, m.Metric) {
			out = append(out, m.Metric)
		}
	}
	sortKnownFirst(out, metricOrder)
	return out
}

// table is the measurements of one metric of one scenario, indexed by proxy and scale.
type table struct {
	Metric  string
	Proxies []string
	Scales  []Scale
	Cells   map[string]map[Scale]*results.Measurement
}

// newTable collects sc's measurements of metric. When a proxy has several
// measurements at one scale, the last one wins.
func newTable(sc *results.Scenario, metric string) *table {
	t := &table{Metric: metric, Cells: map[string]map[Scale]*results.Measurement{}}
	for i := range sc.Measurements {
		m := &sc.Measurements[i]
		if m.Metric != metric {
			continue
		}
		sk := Scale{m.Services, m.EndpointsPerService}
		if t.Cells[m.Proxy] == nil {
			t.Cells[m.Proxy] = map[Scale]*results.Measurement{}
			t.Proxies = append(t.Proxies, m.Proxy)
		}
		if !slices.Contains(t.Scales, sk) {
			t.Scales = append(t.Scales, sk)
		}
		t.Cells[m.Proxy][sk] = m
	}
	sortKnownFirst(t.Proxies, proxyOrder)
	slices.SortFunc(t.Scales, compareScales)
	return t
}

// cell returns the measurement of proxy at scale, nil when there is none.
func (t *table) cell(proxy string, s Scale) *results.Measurement {
	return t.Cells[proxy][s]
}

// find returns the first measurement in f of proxy and metric at services
// Services (with 10 endpoints each, or an unset endpoint count), looking in the
// scenarios in the order given; nil when there is none.
func find(f *results.File, scenarios []string, proxy, metric string, services int) *results.Measurement {
	for _, id := range scenarios {
		for i := range f.Scenarios {
			sc := &f.Scenarios[i]
			if sc.ID != id {
				continue
			}
			for j := range sc.Measurements {
				m := &sc.Measurements[j]
				if m.Proxy == proxy && m.Metric == metric && m.Services == services &&
					(m.EndpointsPerService == 10 || m.EndpointsPerService == 0) {
					return m
				}
			}
		}
	}
	return nil
}

// scenario returns the scenario with id, nil when f has none.
func scenario(f *results.File, id string) *results.Scenario {
	for i := range f.Scenarios {
		if f.Scenarios[i].ID == id {
			return &f.Scenarios[i]
		}
	}
	return nil
}
