package record

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/test/bench/results"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    Record
		ok      bool
		wantErr bool
	}{
		{name: "plain console line", line: "kipvs| I1123 synced", ok: false},
		{name: "record", line: Prefix + `{"scenario":"cold-start","proxy":"kipvs","services":100,"metric":"seconds","value":1.5}`,
			want: Record{Scenario: "cold-start", Proxy: "kipvs", Services: 100, Metric: "seconds", Value: 1.5}, ok: true},
		{name: "after partial output", line: "garbage" + Prefix + `{"metric":"seconds","value":2,"capped":true}`,
			want: Record{Metric: "seconds", Value: 2, Capped: true}, ok: true},
		{name: "broken body", line: Prefix + `{"metric":`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := Parse(tt.line)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFormatParseRoundTrip(t *testing.T) {
	r := Record{Scenario: "floor", Proxy: "netlink-floor", Services: 10000, Metric: "seconds_per_op", Value: 1.25e-5,
		Note: "add_virtual_server 20µs", Info: map[string]string{"kernel": "6.1.0-56-cloud-amd64"}}
	got, ok, err := Parse(Format(r))
	if err != nil || !ok {
		t.Fatalf("Parse(Format(r)) = %v, %v", ok, err)
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		values []float64
		p      float64
		want   float64
	}{
		{values: []float64{3, 1, 2}, p: 50, want: 2},
		{values: []float64{1, 2, 3, 4}, p: 50, want: 2},
		{values: []float64{5}, p: 99, want: 5},
		{values: []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}, p: 99, want: 10},
		{values: []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}, p: 90, want: 9},
		{values: []float64{4, 2}, p: 0, want: 2},
	}
	for _, tt := range tests {
		if got := Percentile(tt.values, tt.p); got != tt.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tt.values, tt.p, got, tt.want)
		}
	}
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("Percentile(nil) = %v, want NaN", got)
	}
}

func TestAggregator(t *testing.T) {
	a := NewAggregator(10)
	recs := []Record{
		{Info: map[string]string{"kernel": "6.1"}},
		{Scenario: results.ColdStart, Proxy: results.Kipvs, Services: 100, Metric: results.Seconds, Value: 2},
		{Scenario: results.OneChange, Proxy: results.Kipvs, Services: 100, Metric: results.P50Seconds, Value: 0.5},
		{Scenario: results.ColdStart, Proxy: results.Kipvs, Services: 100, Metric: results.Seconds, Value: 3, Note: "first sync 1s"},
		{Scenario: results.ColdStart, Proxy: results.KubeProxyIPVS, Services: 100, Metric: results.Seconds, Value: 900, Capped: true},
		{Scenario: results.ColdStart, Proxy: results.Kipvs, Services: 100, Metric: results.Seconds, Value: 4, Note: "first sync 1s"},
		{Scenario: results.ColdStart, Proxy: results.KubeProxyIPVS, Services: 100, Metric: results.KernelOps, NotMeasured: true, Note: "not measured"},
	}
	for _, r := range recs {
		a.Add(r)
	}
	got := a.Scenarios([]string{results.ColdStart, results.Restart, results.OneChange}, func(id string) (string, string) {
		return "T " + id, "D " + id
	})
	want := []results.Scenario{
		{ID: results.ColdStart, Title: "T cold-start", Description: "D cold-start", Measurements: []results.Measurement{
			{Proxy: results.Kipvs, Services: 100, EndpointsPerService: 10, Metric: results.Seconds, Values: []float64{2, 3, 4}, Note: "first sync 1s"},
			{Proxy: results.KubeProxyIPVS, Services: 100, EndpointsPerService: 10, Metric: results.Seconds, Values: []float64{}, Capped: true},
			{Proxy: results.KubeProxyIPVS, Services: 100, EndpointsPerService: 10, Metric: results.KernelOps, Values: []float64{}, Note: "not measured"},
		}},
		{ID: results.OneChange, Title: "T one-change", Description: "D one-change", Measurements: []results.Measurement{
			{Proxy: results.Kipvs, Services: 100, EndpointsPerService: 10, Metric: results.P50Seconds, Values: []float64{0.5}},
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Scenarios (-want +got):\n%s", diff)
	}
	if a.Info()["kernel"] != "6.1" {
		t.Errorf("Info = %v", a.Info())
	}
}
