// Package record is the line protocol between the in-guest benchmark agent
// (test/bench/agent) and the host runner (test/bench/cmd/bench): the agent
// prints one Record per console line after Prefix, the runner parses them and
// folds them into a results.File. It also holds the small statistics both
// sides need (percentiles) and the aggregation into results.Measurements.
package record

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/kipvs/kipvs/test/bench/results"
)

// Prefix starts every console line that carries a Record. The agent prints
// nothing else after it on that line.
const Prefix = "KIPVS-BENCH "

// Record is one measured value (or one fact about the guest, when Info is
// set) from one run of one proxy at one scale.
type Record struct {
	Scenario string  `json:"scenario,omitempty"`
	Proxy    string  `json:"proxy,omitempty"`
	Services int     `json:"services,omitempty"`
	Metric   string  `json:"metric,omitempty"`
	Value    float64 `json:"value"`
	// Capped is set when the measurement hit its cap: Value is then the cap
	// and is not added to the values.
	Capped bool `json:"capped,omitempty"`
	// NotMeasured is set when the metric cannot be measured honestly for
	// this proxy: the measurement exists, with Note saying why, but gets no
	// value.
	NotMeasured bool   `json:"notMeasured,omitempty"`
	Note        string `json:"note,omitempty"`
	// Info carries facts about the guest (e.g. "kernel": uname -r) instead
	// of a measurement.
	Info map[string]string `json:"info,omitempty"`
}

// Format renders r as one console line, Prefix included, without newline.
func Format(r Record) string {
	b, err := json.Marshal(r)
	if err != nil {
		// Only NaN/Inf values fail; they are a bug in the agent.
		panic(fmt.Sprintf("record: %v: %+v", err, r))
	}
	return Prefix + string(b)
}

// Parse extracts a Record from a console line. ok is false for lines that do
// not carry one; err is set when a line has the prefix but a broken body.
func Parse(line string) (r Record, ok bool, err error) {
	i := strings.Index(line, Prefix)
	if i < 0 {
		return Record{}, false, nil
	}
	body := strings.TrimSpace(line[i+len(Prefix):])
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return Record{}, false, fmt.Errorf("record: bad line %q: %w", line, err)
	}
	return r, true, nil
}

// Percentile returns the p-th percentile (0..100) of values by the
// nearest-rank method: the smallest value with at least p% of the values at
// or below it. It returns NaN for no values.
func Percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), values...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// key identifies the Measurement a Record belongs to.
type key struct {
	scenario, proxy, metric string
	services                int
}

// Aggregator folds Records from many runs into results.Scenarios.
type Aggregator struct {
	// EndpointsPerService is copied into every Measurement.
	EndpointsPerService int
	order               []key
	byKey               map[key]*results.Measurement
	info                map[string]string
}

// NewAggregator returns an empty Aggregator.
func NewAggregator(endpointsPerService int) *Aggregator {
	return &Aggregator{EndpointsPerService: endpointsPerService, byKey: map[key]*results.Measurement{}, info: map[string]string{}}
}

// Add folds r in: its value joins the values of its measurement unless it is
// capped (then the measurement is marked Capped); distinct notes are joined.
func (a *Aggregator) Add(r Record) {
	for k, v := range r.Info {
		a.info[k] = v
	}
	if r.Metric == "" {
		return
	}
	k := key{scenario: r.Scenario, proxy: r.Proxy, metric: r.Metric, services: r.Services}
	m := a.byKey[k]
	if m == nil {
		m = &results.Measurement{Proxy: r.Proxy, Services: r.Services, EndpointsPerService: a.EndpointsPerService,
			Metric: r.Metric, Values: []float64{}}
		a.byKey[k] = m
		a.order = append(a.order, k)
	}
	switch {
	case r.NotMeasured:
	case r.Capped:
		m.Capped = true
	default:
		m.Values = append(m.Values, r.Value)
	}
	if r.Note != "" && !strings.Contains(m.Note, r.Note) {
		if m.Note != "" {
			m.Note += "; "
		}
		m.Note += r.Note
	}
}

// Info returns the guest facts seen so far (last value wins).
func (a *Aggregator) Info() map[string]string { return a.info }

// Scenarios returns the measurements grouped by scenario, scenarios in the
// order of ids (unknown ones after them), measurements in arrival order.
// describe gives a scenario's title and description.
func (a *Aggregator) Scenarios(ids []string, describe func(id string) (title, description string)) []results.Scenario {
	pos := map[string]int{}
	var out []results.Scenario
	get := func(id string) *results.Scenario {
		if i, ok := pos[id]; ok {
			return &out[i]
		}
		title, desc := describe(id)
		out = append(out, results.Scenario{ID: id, Title: title, Description: desc})
		pos[id] = len(out) - 1
		return &out[len(out)-1]
	}
	for _, id := range ids {
		get(id)
	}
	for _, k := range a.order {
		s := get(k.scenario)
		s.Measurements = append(s.Measurements, *a.byKey[k])
	}
	kept := out[:0]
	for _, s := range out {
		if len(s.Measurements) > 0 {
			kept = append(kept, s)
		}
	}
	return kept
}
