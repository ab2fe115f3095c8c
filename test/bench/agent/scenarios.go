package main

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kipvs/kipvs/test/bench/record"
	"github.com/kipvs/kipvs/test/bench/results"
	"github.com/kipvs/kipvs/test/netpod"
)

// rec returns a record of this run for scenario and metric.
func (b *bench) rec(scenario, metric string, v float64, note string) record.Record {
	return record.Record{Scenario: scenario, Proxy: b.c.proxy, Services: b.c.services, Metric: metric, Value: v, Note: note}
}

// notMeasured emits a measurement that has no honest value for this proxy.
func (b *bench) notMeasured(scenario, metric, why string) {
	emit(record.Record{Scenario: scenario, Proxy: b.c.proxy, Services: b.c.services, Metric: metric, NotMeasured: true, Note: why})
}

// isKipvs reports whether the proxy counts its kernel operations.
func (b *bench) isKipvs() bool { return b.c.proxy == results.Kipvs }

// coldStart starts the proxy with every object present and waits until the
// kernel holds the full table; it reports false when the proxy is not
// usable for the following scenarios (capped, crashed).
func (b *bench) coldStart(ctx context.Context) bool {
	p, err := b.start()
	if err != nil {
		logf("start: %v", err)
		return false
	}
	b.proxy = p
	if b.view, err = b.newView(p.started); err != nil {
		logf("kernel view: %v", err)
		p.stop(syscall.SIGKILL)
		return false
	}
	measure := b.c.scenarios[results.ColdStart] && b.c.proxy != results.KubeProxyIPTables
	deadline := p.started.Add(b.c.capDur)
	var detail string
	polls := 0
	for {
		if done, err := p.exited(); done {
			logf("%s exited during its cold start: %v", b.c.proxy, err)
			return false
		}
		t := time.Now()
		full, d, err := b.view.fullTable(ctx, b.c.services, b.c.eps)
		polls++
		if err != nil {
			logf("read the kernel: %v", err)
		}
		if d != detail {
			logf("cold start %.1fs: %s", time.Since(p.started).Seconds(), d)
			detail = d
		}
		if full {
			break
		}
		if time.Now().After(deadline) {
			logf("cold start capped after %s: %s", b.c.capDur, detail)
			if measure {
				r := b.rec(results.ColdStart, results.Seconds, b.c.capDur.Seconds(), "capped: "+detail)
				r.Capped = true
				emit(r)
			}
			p.stop(syscall.SIGKILL)
			return false
		}
		// Reading the kernel costs CPU the proxy needs: poll no more
		// often than the read itself takes, at least every 500 ms.
		time.Sleep(max(500*time.Millisecond, time.Since(t)))
	}
	elapsed := time.Since(p.started)
	// The full sync may still be writing what comes after IPVS (ipsets,
	// iptables); the figures below are taken when it has ended.
	// The steady-state scenarios start only when the first sync has ended
	// (kube-proxy's IPVS mode keeps syncing ipsets long after its IPVS
	// writes), or at the cap.
	for last := time.Now(); !syncedSince(ctx, p.started) && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if time.Since(last) > 30*time.Second {
			m, err := scrape(ctx)
			logf("waiting for the first sync to end: last sync %v, /healthz 200 %v (%v)", lastSync(m), healthy(ctx), err)
			last = time.Now()
		}
	}
	synced := time.Since(p.started)
	syncNote := fmt.Sprintf("its first sync ended %.1f s after the start", synced.Seconds())
	if !syncedSince(ctx, p.started) {
		logf("no sync of %s has ended %.0fs after its start although the table is in the kernel; going on", b.c.proxy, synced.Seconds())
		syncNote = fmt.Sprintf("no sync had ended %.0f s after the start (kube-proxy's IPVS mode runs one `ipset add` process per ipset entry after the IPVS writes)", synced.Seconds())
	}
	logf("cold start: table in %.2fs, first sync ended by %.2fs (%d kernel reads)", elapsed.Seconds(), synced.Seconds(), polls)
	if !measure {
		return true
	}
	emit(b.rec(results.ColdStart, results.Seconds, elapsed.Seconds(),
		fmt.Sprintf("kernel polled every max(0.5 s, read time), %d reads; %s", polls, syncNote)))
	if st, err := p.stats(); err == nil {
		emit(b.rec(results.ColdStart, results.PeakRSSBytes, st.PeakRSSBytes, "VmHWM after the first full sync (or at the cap)"))
		emit(b.rec(results.ColdStart, results.CPUSeconds, st.CPUSeconds, "utime+stime until the first full sync ended (or at the cap)"))
	}
	if b.isKipvs() {
		m, err := scrape(ctx)
		if err == nil {
			emit(b.rec(results.ColdStart, results.KernelOps, sumPrefix(m, kernelOpsPrefix), opsNote(m)))
		}
	} else {
		b.notMeasured(results.ColdStart, results.KernelOps, "not measured: kube-proxy does not count its kernel operations")
	}
	return true
}

// opsNote lists kipvs's succeeded kernel operations by kind and the first
// full sync's duration.
func opsNote(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		if strings.HasPrefix(k, kernelOpsPrefix) && strings.Contains(k, `result="succeeded"`) && v > 0 {
			op := strings.TrimSuffix(strings.TrimPrefix(k, kernelOpsPrefix+`operation="`), `",result="succeeded"}`)
			parts = append(parts, fmt.Sprintf("%s=%.0f", op, v))
		}
	}
	sort.Strings(parts)
	return fmt.Sprintf("%s; full sync %.2fs", strings.Join(parts, " "),
		m["kubeproxy_sync_full_proxy_rules_duration_seconds_sum"])
}

// waitEndpoints polls the kernel until the Service at vip has want endpoints.
// It returns when the kernel first showed them and when it last did not: the
// kernel write happened between the two.
func (b *bench) waitEndpoints(ctx context.Context, vip netip.Addr, want int, timeout time.Duration) (shown, lastMiss time.Time, err error) {
	deadline := time.Now().Add(timeout)
	for {
		t := time.Now()
		n, err := b.view.endpoints(ctx, vip)
		now := time.Now()
		if err == nil && n == want {
			return now, lastMiss, nil
		}
		lastMiss = t
		if now.After(deadline) {
			return now, lastMiss, fmt.Errorf("%s: %d endpoints after %s, want %d (%v)", vip, n, timeout, want, err)
		}
		time.Sleep(b.view.pollInterval())
	}
}

// waitSyncEnd waits (at most 10 s) until the proxy reports a sync that ended
// at or after t, so that its kernel writes are counted.
func waitSyncEnd(ctx context.Context, t time.Time) {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if m, err := scrape(ctx); err == nil && lastSync(m) >= float64(t.UnixNano())/1e9 {
			return
		}
	}
}

// changeTimeout bounds the wait for one change to show in the kernel.
func (b *bench) changeTimeout() time.Duration { return min(b.c.capDur, 2*time.Minute) }

// oneChange adds one endpoint to one Service, times until the kernel shows it,
// and removes it again (not timed), c.changes times on different Services.
func (b *bench) oneChange(ctx context.Context) error {
	var lat, ops []float64
	capped := false
	for k := range b.c.changes {
		i := k % min(b.c.services, 100)
		vip, err := b.api.vip(ctx, i)
		if err != nil {
			return err
		}
		if err := b.api.prepare(ctx, i); err != nil {
			return err
		}
		var before map[string]float64
		if b.isKipvs() {
			before, _ = scrape(ctx)
		}
		t0 := time.Now()
		if err := b.api.setEndpoints(ctx, i, b.c.eps+1); err != nil {
			return err
		}
		shown, miss, err := b.waitEndpoints(ctx, vip, b.c.eps+1, b.changeTimeout())
		if err != nil {
			logf("one change: %v", err)
			capped = true
			break
		}
		lat = append(lat, shown.Sub(t0).Seconds())
		// Wait for the sync that wrote it to end, then count its writes.
		waitSyncEnd(ctx, miss)
		if b.isKipvs() && before != nil {
			if after, err := scrape(ctx); err == nil {
				ops = append(ops, sumPrefix(after, kernelOpsPrefix)-sumPrefix(before, kernelOpsPrefix))
			}
		}
		if err := b.api.setEndpoints(ctx, i, b.c.eps); err != nil {
			return err
		}
		_, miss, err = b.waitEndpoints(ctx, vip, b.c.eps, b.changeTimeout())
		if err != nil {
			return err
		}
		waitSyncEnd(ctx, miss)
		logf("one change %d: %.3fs", k, lat[len(lat)-1])
	}
	note := fmt.Sprintf("%d changes; API write to kernel, kernel polled every %s", len(lat), b.view.pollInterval())
	b.emitLatency(results.OneChange, lat, capped, note)
	if b.isKipvs() {
		if len(ops) > 0 {
			emit(b.rec(results.OneChange, results.KernelOps, record.Percentile(ops, 50),
				fmt.Sprintf("median writes per change (add + its sync); max %.0f", record.Percentile(ops, 100))))
		}
	} else {
		b.notMeasured(results.OneChange, results.KernelOps, "not measured: kube-proxy does not count its kernel operations")
	}
	return nil
}

// emitLatency emits p50 and p99 of lat (seconds), or capped records.
func (b *bench) emitLatency(scenario string, lat []float64, capped bool, note string) {
	for _, m := range []struct {
		metric string
		p      float64
	}{{results.P50Seconds, 50}, {results.P99Seconds, 99}} {
		if capped || len(lat) == 0 {
			r := b.rec(scenario, m.metric, b.changeTimeout().Seconds(), "a change did not show within "+b.changeTimeout().String())
			r.Capped = true
			emit(r)
			continue
		}
		emit(b.rec(scenario, m.metric, record.Percentile(lat, m.p), note))
	}
}

// restart stops the proxy (SIGTERM, the table stays), starts it again and
// times until /healthz answers 200 after a sync of the new process.
func (b *bench) restart(ctx context.Context) error {
	b.proxy.stop(syscall.SIGTERM)
	p, err := b.start()
	if err != nil {
		return err
	}
	b.proxy = p
	deadline := p.started.Add(b.c.capDur)
	for !syncedSince(ctx, p.started) {
		if done, err := p.exited(); done {
			return fmt.Errorf("exited after restart: %v", err)
		}
		if time.Now().After(deadline) {
			r := b.rec(results.Restart, results.Seconds, b.c.capDur.Seconds(), "not ready within the cap")
			r.Capped = true
			emit(r)
			p.stop(syscall.SIGKILL)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(p.started)
	emit(b.rec(results.Restart, results.Seconds, elapsed.Seconds(), "start to /healthz 200 after the new process's first sync"))
	if b.isKipvs() {
		m, err := scrape(ctx)
		if err != nil {
			return err
		}
		writes := sumPrefix(m, kernelOpsPrefix) - sumSkipped(m)
		emit(b.rec(results.Restart, results.KernelWrites, writes, "kernel writes of the restarted kipvs until ready: "+opsNote(m)))
	} else {
		b.notMeasured(results.Restart, results.KernelWrites, "not measured: kube-proxy does not count its kernel writes")
	}
	return nil
}

// sumSkipped sums kipvs's operations that were skipped, not written.
func sumSkipped(m map[string]float64) float64 {
	var s float64
	for k, v := range m {
		if strings.HasPrefix(k, kernelOpsPrefix) && strings.Contains(k, `result="skipped"`) {
			s += v
		}
	}
	return s
}

// packetCost times connect + one request/reply through the probe Service's
// VIP from the client pod, c.requests times, each on a new connection.
func (b *bench) packetCost(ctx context.Context) error {
	vip := netip.AddrPortFrom(b.probe, 80)
	if err := b.waitAnswer(ctx, vip); err != nil {
		return err
	}
	// Unmeasured warm-up (TCG translates each new code path once).
	for range 20 {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, _ = netpod.Ask(rctx, b.pods.client, netpod.TCP, vip)
		cancel()
	}
	lat := make([]float64, 0, b.c.requests)
	for range b.c.requests {
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := netpod.Ask(rctx, b.pods.client, netpod.TCP, vip)
		cancel()
		if err != nil {
			return fmt.Errorf("request through %s: %w", vip, err)
		}
		lat = append(lat, time.Since(t0).Seconds())
	}
	note := fmt.Sprintf("%d connections (after 20 unmeasured) from a pod through the ClusterIP to a pod on another bridge", len(lat))
	emit(b.rec(results.PacketCost, results.P50Seconds, record.Percentile(lat, 50), note))
	emit(b.rec(results.PacketCost, results.P99Seconds, record.Percentile(lat, 99), note))
	return nil
}

// waitAnswer waits until the probe answers through addr.
func (b *bench) waitAnswer(ctx context.Context, addr netip.AddrPort) error {
	deadline := time.Now().Add(b.changeTimeout())
	for {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := netpod.Ask(rctx, b.pods.client, netpod.TCP, addr)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probe %s does not answer: %w", addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// throughput streams from the client pod to the sink straight to the pod, then
// through the VIP, for c.streamDur each.
func (b *bench) throughput(ctx context.Context) error {
	vip := netip.AddrPortFrom(b.probe, probeSinkPort)
	if err := b.waitAnswer(ctx, netip.AddrPortFrom(b.probe, 80)); err != nil {
		return err
	}
	podAddr := netip.AddrPortFrom(b.pods.server.IP, probeSinkPort)
	// Under TCG the first run of a code path is slow (it is translated):
	// one short unmeasured stream on each path first.
	for _, a := range []netip.AddrPort{podAddr, vip} {
		if _, err := b.pods.stream(ctx, a, time.Second); err != nil {
			return fmt.Errorf("warm-up stream to %s: %w", a, err)
		}
	}
	direct, err := b.pods.stream(ctx, podAddr, b.c.streamDur)
	if err != nil {
		return fmt.Errorf("direct stream: %w", err)
	}
	via, err := b.pods.stream(ctx, vip, b.c.streamDur)
	if err != nil {
		return fmt.Errorf("stream through %s: %w", vip, err)
	}
	note := fmt.Sprintf("one TCP stream for %s from a pod after a 1 s warm-up on each path; direct measured in the same VM just before", b.c.streamDur)
	emit(b.rec(results.Throughput, results.BitsPerSecond, via, note+fmt.Sprintf(" (ratio %.2f)", via/direct)))
	r := b.rec(results.Throughput, results.BitsPerSecond, direct, "one TCP stream pod to pod across the node, no Service, measured in each proxy's VM")
	r.Proxy = results.Direct
	emit(r)
	return nil
}
