//go:build e2etest

package e2e

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kipvs/kipvs/ipvs"
)

// Churn run parameters. The run lasts defaultChurn unless KIPVS_E2E_CHURN
// (a Go duration, e.g. 10m) says otherwise; the first quarter of it (at least
// churnMinWarmUp) is warm-up and left out of the figures.
const (
	defaultChurn     = 2 * time.Minute
	churnMinWarmUp   = 30 * time.Second
	churnServices    = 8
	churnInterval    = 250 * time.Millisecond // one EndpointSlice update each
	churnSampleEvery = 5 * time.Second
)

// Leak bounds of the churn run (see TestChurnMemory for their reasons).
const (
	// maxRSSSlope is the largest RSS trend after warm-up, in MiB per minute.
	maxRSSSlope = 3.0
	// maxHeapSlope is the largest trend of go_memstats_heap_inuse_bytes
	// after warm-up, in MiB per minute.
	maxHeapSlope = 1.5
	// maxRSSMiB bounds the RSS of every sample after warm-up.
	maxRSSMiB = 150.0
	// maxGoroutineSpread bounds max-min of go_goroutines after warm-up.
	maxGoroutineSpread = 15
)

// churnSubsets are the pod sets the Services' endpoints cycle through.
var churnSubsets = [][]string{{"a", "b"}, {"b", "c"}, {"c", "d"}, {"a", "b", "c", "d"}, {"a"}, {"a", "c", "d"}}

// churnSample is one measurement of the kipvs process.
type churnSample struct {
	at         time.Duration // since the churn started
	rssMiB     float64       // VmRSS of /proc/<pid>/status
	goroutines float64       // go_goroutines of /metrics
	heapMiB    float64       // go_memstats_heap_inuse_bytes of /metrics
}

// TestChurnMemory changes the endpoints of churnServices Services at a fixed
// rate (one EndpointSlice update every churnInterval) for a bounded time and
// samples the kipvs process every churnSampleEvery: its RSS from
// /proc/<pid>/status and go_goroutines from its /metrics. After warm-up it
// logs the least-squares slope of RSS (MiB/min) and fails on a leak:
//
//   - RSS slope above maxRSSSlope MiB/min: measured +0.3 MiB/min on a
//     healthy kipvs (RSS 40.5..40.9 MiB over the 2-minute run: RSS moves in
//     steps as the heap takes pages), so 3 MiB/min is 10 times that; at ~240
//     updates a minute it catches a leak of ~13 KiB or more per update, e.g.
//     one goroutine stack (8 KiB) plus its objects per sync;
//   - heap-in-use slope above maxHeapSlope MiB/min: finer than RSS (the Go
//     heap, not the pages the runtime keeps); measured +0.06 MiB/min with
//     samples swinging ~0.5 MiB with GC timing, a standard error of ~0.25
//     MiB/min over 18 samples, so 1.5 MiB/min is 6 of those; it catches a
//     leak of ~6 KiB or more per update (a few retained EndpointSlices'
//     worth). Smaller leaks need the longer run (KIPVS_E2E_CHURN=10m), where
//     the same bound means 10 times the total growth;
//   - any RSS sample above maxRSSMiB: a healthy kipvs with a few dozen
//     virtual servers stays far below (41 MiB measured);
//   - go_goroutines spread (max-min) above maxGoroutineSpread after warm-up:
//     watches, timers and HTTP connections come and go by a handful (51..56
//     measured); a goroutine leaked per sync or per update adds hundreds a
//     minute (~150 incremental syncs a minute measured).
//
// Then the churn stops and every Service must be programmed with its last
// endpoints, and answer.
func TestChurnMemory(t *testing.T) {
	requireKipvs(t)
	duration := defaultChurn
	if s := os.Getenv("KIPVS_E2E_CHURN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Minute {
			t.Fatalf("KIPVS_E2E_CHURN=%q: want a duration of at least 1m", s)
		}
		duration = d
	}
	warmUp := max(duration/4, churnMinWarmUp)
	e := newEnv(t, "a", "b", "c", "d")
	names := make([]string, churnServices)
	svcs := make([]*corev1.Service, churnServices)
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, echoPort)}
	for i := range names {
		names[i] = fmt.Sprintf("churn-%d", i)
		svcs[i] = e.createService(names[i])
		e.setSlice(names[i]+"-1", names[i], ports, churnSubsets[0]...)
	}
	pid := proxy.cmd.Process.Pid
	t.Logf("churn: %d Services, one EndpointSlice update every %s for %s (warm-up %s), kipvs pid %d",
		churnServices, churnInterval, duration, warmUp, pid)

	syncsBefore := scrapeMetrics(t)
	var samples []churnSample
	last := make([]int, churnServices) // index into churnSubsets of each Service's current endpoints
	start := time.Now()
	update, sample := time.NewTicker(churnInterval), time.NewTicker(churnSampleEvery)
	defer update.Stop()
	defer sample.Stop()
	updates := 0
	for time.Since(start) < duration {
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-update.C:
			i := updates % churnServices
			last[i] = (updates/churnServices + i + 1) % len(churnSubsets)
			e.setSlice(names[i]+"-1", names[i], ports, churnSubsets[last[i]]...)
			updates++
		case <-sample.C:
			requireKipvs(t)
			s := sampleKipvs(t, pid)
			s.at = time.Since(start)
			samples = append(samples, s)
			t.Logf("churn %5s: RSS %.1f MiB, heap in use %.1f MiB, %v goroutines, %d updates",
				s.at.Round(time.Second), s.rssMiB, s.heapMiB, s.goroutines, updates)
		}
	}
	after := scrapeMetrics(t)
	t.Logf("churn: %d EndpointSlice updates in %s; kipvs counted %v endpoint changes and %v incremental syncs (%v failed)",
		updates, time.Since(start).Round(time.Second),
		after.value(t, "kubeproxy_sync_proxy_rules_endpoint_changes_total")-syncsBefore.value(t, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
		syncsDelta(syncsBefore, after, "incremental", "success")+syncsDelta(syncsBefore, after, "incremental", "error"),
		syncsDelta(syncsBefore, after, "incremental", "error")+syncsDelta(syncsBefore, after, "full", "error"))

	checkChurnFigures(t, samples, warmUp)

	for i, svc := range svcs {
		want := churnSubsets[last[i]]
		waitVirtualServer(t, vsKey("TCP", vip(t, svc, 80)), true, func(vs ipvs.VirtualServerStatus) error {
			var got []netip.Addr
			for _, rs := range vs.RealServers {
				got = append(got, rs.Address)
			}
			slices.SortFunc(got, netip.Addr.Compare)
			var w []netip.Addr
			for _, p := range want {
				w = append(w, e.pods[p].IP)
			}
			slices.SortFunc(w, netip.Addr.Compare)
			if !slices.Equal(got, w) {
				return fmt.Errorf("%s has real servers %v, want %v (%v)", names[i], got, w, want)
			}
			return nil
		})
	}
	for _, i := range []int{0, churnServices - 1} {
		waitAnswering(t, "tcp", vip(t, svcs[i], 80), churnSubsets[last[i]]...)
	}
}

// checkChurnFigures logs the figures of the samples after warmUp and checks
// them against the leak bounds.
func checkChurnFigures(t *testing.T, samples []churnSample, warmUp time.Duration) {
	t.Helper()
	var xs, rss, heap, gs []float64
	for _, s := range samples {
		if s.at < warmUp {
			continue
		}
		xs = append(xs, s.at.Minutes())
		rss, heap, gs = append(rss, s.rssMiB), append(heap, s.heapMiB), append(gs, s.goroutines)
	}
	if len(xs) < 6 {
		t.Fatalf("only %d samples after the %s warm-up: the run is too short", len(xs), warmUp)
	}
	rssSlope, heapSlope := slope(xs, rss), slope(xs, heap)
	if heapSlope > maxHeapSlope {
		t.Errorf("the Go heap in use grows by %.3f MiB/min after warm-up, more than %.1f: a leak", heapSlope, maxHeapSlope)
	}
	gMin, gMax := slices.Min(gs), slices.Max(gs)
	t.Logf("churn figures after warm-up (%d samples over %.1f min): RSS slope %+.3f MiB/min (RSS %.1f..%.1f MiB, last %.1f), "+
		"heap-in-use slope %+.3f MiB/min, goroutines %v..%v",
		len(xs), xs[len(xs)-1]-xs[0], rssSlope, slices.Min(rss), slices.Max(rss), rss[len(rss)-1], heapSlope, gMin, gMax)
	if rssSlope > maxRSSSlope {
		t.Errorf("RSS grows by %.3f MiB/min after warm-up, more than %.1f: a leak", rssSlope, maxRSSSlope)
	}
	if m := slices.Max(rss); m > maxRSSMiB {
		t.Errorf("RSS reached %.1f MiB, more than %.0f", m, maxRSSMiB)
	}
	if gMax-gMin > maxGoroutineSpread {
		t.Errorf("goroutines ranged %v..%v after warm-up, a spread above %d: a goroutine leak", gMin, gMax, maxGoroutineSpread)
	}
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx /= float64(len(xs))
	my /= float64(len(ys))
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	if den == 0 {
		return math.NaN()
	}
	return num / den
}

// sampleKipvs reads the RSS of process pid and kipvs's goroutine and heap
// gauges.
func sampleKipvs(t *testing.T, pid int) churnSample {
	t.Helper()
	rss, err := vmRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(t, metricsURL)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d", metricsURL, code)
	}
	m, err := parseSamples(string(body))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := m["go_goroutines"]
	if !ok {
		t.Fatal("/metrics has no go_goroutines")
	}
	return churnSample{rssMiB: rss, goroutines: g, heapMiB: m["go_memstats_heap_inuse_bytes"] / (1 << 20)}
}

// vmRSS returns VmRSS of /proc/<pid>/status in MiB.
func vmRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			return kb / 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
}

// syncsDelta is the growth of kipvs_syncs_total{kind, result} between two scrapes.
func syncsDelta(before, after metricSamples, kind, result string) float64 {
	series := canonicalSeries(fmt.Sprintf(`kipvs_syncs_total{kind="%s",result="%s"}`, kind, result))
	return after[series] - before[series]
}
