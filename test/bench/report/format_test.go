package report

import (
	"testing"

	"github.com/kipvs/kipvs/test/bench/results"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []float64
		want   Stats
	}{
		{"none", nil, Stats{}},
		{"one", []float64{3}, Stats{N: 1, Median: 3, Min: 3, Max: 3}},
		{"odd, unsorted", []float64{5, 1, 3}, Stats{N: 3, Median: 3, Min: 1, Max: 5}},
		{"even: mean of the middle two", []float64{4, 1, 2, 10}, Stats{N: 4, Median: 3, Min: 1, Max: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := meas(results.Kipvs, results.Seconds, 10, tc.values...)
			if got := Summarize(m); got != tc.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tc.values, got, tc.want)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(float64) string
		v    float64
		want string
	}{
		{"µs", FormatSeconds, 0.000850, "850 µs"},
		{"ms", FormatSeconds, 0.0123, "12.3 ms"},
		{"s", FormatSeconds, 4.567, "4.57 s"},
		{"min", FormatSeconds, 900, "15.0 min"},
		{"zero s", FormatSeconds, 0, "0 s"},
		{"MiB", FormatBytes, 93.4 * MiB, "93.4 MiB"},
		{"KiB", FormatBytes, 2048, "2.00 KiB"},
		{"Gbit", FormatBits, 9.41e9, "9.41 Gbit/s"},
		{"Mbit", FormatBits, 512e6, "512 Mbit/s"},
		{"count", FormatCount, 163047, "163,047"},
		{"small count", FormatCount, 3, "3"},
		{"negative count", FormatCount, -1234, "-1,234"},
		{"half count", FormatCount, 2.5, "2.50"},
		{"ratio", FormatRatio, 0.0943, "0.0943×"},
		{"big ratio", FormatRatio, 12.54, "12.5×"},
		{"ratio just under 1", FormatRatio, 0.99996, "1.00×"},
		{"rounds up a decade", FormatSeconds, 0.9996, "1.00 s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f(tc.v); got != tc.want {
				t.Errorf("format(%v) = %q, want %q", tc.v, got, tc.want)
			}
		})
	}
}

func TestFormatCell(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    *results.Measurement
		want string
	}{
		{"missing", nil, "–"},
		{"one run", ptr(meas(results.Kipvs, results.Seconds, 10, 4)), "4.00 s"},
		{"spread", ptr(meas(results.Kipvs, results.Seconds, 10, 4, 3.5, 5)), "4.00 s (3.50 s–5.00 s)"},
		{"equal runs: no spread", ptr(meas(results.Kipvs, results.KernelOps, 10, 7, 7)), "7"},
		{"capped time", ptr(capped(meas(results.Kipvs, results.Seconds, 10, 900))), "> cap (15.0 min)"},
		{"capped time without values", ptr(capped(meas(results.Kipvs, results.P99Seconds, 10))), "> cap (15.0 min)"},
		{"capped count", ptr(capped(meas(results.Kipvs, results.KernelOps, 10, 5000))), "≥ 5,000 (capped)"},
		{"no values: not measured (the note says why)", ptr(meas(results.Kipvs, results.KernelOps, 10)), "not measured"},
		{"bytes", ptr(meas(results.Kipvs, results.PeakRSSBytes, 10, 60*MiB)), "60.0 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := formatCell(tc.m, 900); got != tc.want {
				t.Errorf("formatCell = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRatio(t *testing.T) {
	kipvs := meas(results.Kipvs, results.Seconds, 10, 4)
	for _, tc := range []struct {
		name string
		a, b *results.Measurement
		want string
	}{
		{"plain", &kipvs, ptr(meas(results.KubeProxyIPVS, results.Seconds, 10, 80)), "0.0500×"},
		{"missing peer", &kipvs, nil, "–"},
		{"peer capped: upper bound", &kipvs, ptr(capped(meas(results.KubeProxyIPVS, results.Seconds, 10))), "< 0.00444×"},
		{"kipvs capped: lower bound", ptr(capped(meas(results.Kipvs, results.Seconds, 10))), ptr(meas(results.KubeProxyIPVS, results.Seconds, 10, 90)), "> 10.0×"},
		{"both capped", ptr(capped(meas(results.Kipvs, results.Seconds, 10))), ptr(capped(meas(results.KubeProxyIPVS, results.Seconds, 10))), "–"},
		{"capped count: no bound", ptr(capped(meas(results.Kipvs, results.KernelOps, 10, 3))), ptr(meas(results.KubeProxyIPVS, results.KernelOps, 10, 9)), "–"},
		{"peer zero", &kipvs, ptr(meas(results.KubeProxyIPVS, results.Seconds, 10, 0)), "–"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ratio(tc.a, tc.b, 900); got != tc.want {
				t.Errorf("ratio = %q, want %q", got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
