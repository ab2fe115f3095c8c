package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/kipvs/kipvs/test/bench/results"
)

// metricInfo says how a metric is labelled and printed.
type metricInfo struct {
	Label string
	// Time is true for durations: a capped run makes the value "> cap".
	Time   bool
	Format func(float64) string
}

// metricInfos describes the metrics of results; unknown ones print as numbers.
var metricInfos = map[string]metricInfo{
	results.Seconds:       {"Time", true, FormatSeconds},
	results.P50Seconds:    {"Median latency", true, FormatSeconds},
	results.P99Seconds:    {"p99 latency", true, FormatSeconds},
	results.CPUSeconds:    {"CPU time (user+system)", false, FormatSeconds},
	results.KernelOps:     {"Kernel operations", false, FormatCount},
	results.KernelWrites:  {"Kernel writes", false, FormatCount},
	results.PeakRSSBytes:  {"Peak RSS", false, FormatBytes},
	results.BitsPerSecond: {"Throughput", false, FormatBits},
	results.SecondsPerOp:  {"Time per IPVS operation", false, FormatSeconds},
}

// info returns the metricInfo of metric.
func info(metric string) metricInfo {
	if mi, ok := metricInfos[metric]; ok {
		return mi
	}
	return metricInfo{Label: metric, Format: FormatCount}
}

// sig3 prints v with 3 significant digits, without an exponent for the
// magnitudes the report shows.
func sig3(v float64) string {
	if v == 0 {
		return "0"
	}
	v = round3(v)
	digits := 2 - int(math.Floor(math.Log10(math.Abs(v))))
	if digits < 0 {
		digits = 0
	}
	return strconv.FormatFloat(v, 'f', digits, 64)
}

// round3 rounds v to 3 significant digits, so that 0.99996 prints as 1.00
// and picks the unit of 1.
func round3(v float64) float64 {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64)
	return r
}

// FormatSeconds prints a duration in seconds with a readable unit: "850 µs",
// "12.3 ms", "4.56 s", "12.5 min".
func FormatSeconds(v float64) string {
	a := math.Abs(round3(v))
	switch {
	case a == 0:
		return "0 s"
	case a < 1e-3:
		return sig3(v*1e6) + " µs"
	case a < 1:
		return sig3(v*1e3) + " ms"
	case a < 120:
		return sig3(v) + " s"
	default:
		return sig3(v/60) + " min"
	}
}

// FormatBytes prints bytes in MiB ("93.4 MiB"), or KiB below one MiB.
func FormatBytes(v float64) string {
	if math.Abs(round3(v/(1<<20))) < 1 {
		return sig3(v/(1<<10)) + " KiB"
	}
	return sig3(v/(1<<20)) + " MiB"
}

// FormatBits prints a rate in bit/s with a decimal prefix ("9.41 Gbit/s").
func FormatBits(v float64) string {
	a := math.Abs(round3(v))
	switch {
	case a >= 1e9:
		return sig3(v/1e9) + " Gbit/s"
	case a >= 1e6:
		return sig3(v/1e6) + " Mbit/s"
	case a >= 1e3:
		return sig3(v/1e3) + " kbit/s"
	default:
		return sig3(v) + " bit/s"
	}
}

// FormatCount prints a count: an integer with thousands separators
// ("163,047"), or 3 significant digits when it is not whole (a median of two).
func FormatCount(v float64) string {
	if v != math.Trunc(v) || math.Abs(v) >= 1e15 {
		return sig3(v)
	}
	s := strconv.FormatInt(int64(math.Abs(v)), 10)
	var b strings.Builder
	if v < 0 {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// FormatRatio prints a ratio of two figures ("0.0943×", "12.5×").
func FormatRatio(r float64) string {
	return sig3(r) + "×"
}

// formatCell prints one table cell: the median with the spread (min-max) when
// there is more than one run, "> cap" for a capped duration, and "≥ median
// (capped)" for another figure of a capped run (counted until the cap).
func formatCell(m *results.Measurement, capSeconds float64) string {
	if m == nil {
		return "–"
	}
	mi := info(m.Metric)
	s := Summarize(*m)
	switch {
	case s.Capped && (mi.Time || s.N == 0):
		return "> cap (" + FormatSeconds(capSeconds) + ")"
	case s.Capped:
		return "≥ " + mi.Format(s.Median) + " (capped)"
	case s.N == 0:
		return "not measured"
	case s.N == 1 || s.Min == s.Max:
		return mi.Format(s.Median)
	default:
		return fmt.Sprintf("%s (%s–%s)", mi.Format(s.Median), mi.Format(s.Min), mi.Format(s.Max))
	}
}

// ratio prints median(a)/median(b). With a capped duration on one side it
// prints a bound ("< 0.05×": b did not finish within the cap), and "–" when it
// cannot say.
func ratio(a, b *results.Measurement, capSeconds float64) string {
	if a == nil || b == nil {
		return "–"
	}
	isTime := info(a.Metric).Time
	sa, sb := Summarize(*a), Summarize(*b)
	switch {
	case sa.Capped && sb.Capped, (sa.Capped || sb.Capped) && (!isTime || capSeconds <= 0):
		return "–"
	case sa.Capped:
		if sb.N == 0 || sb.Median == 0 {
			return "–"
		}
		return "> " + FormatRatio(capSeconds/sb.Median)
	case sb.Capped:
		if sa.N == 0 {
			return "–"
		}
		return "< " + FormatRatio(sa.Median/capSeconds)
	case sa.N == 0 || sb.N == 0 || sb.Median == 0:
		return "–"
	default:
		return FormatRatio(sa.Median / sb.Median)
	}
}
