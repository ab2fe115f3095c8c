package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/kipvs/kipvs/test/bench/layout"
	"github.com/kipvs/kipvs/test/bench/results"
)

// pendingChange is a written change the kernel does not show yet.
type pendingChange struct {
	vip     netip.Addr
	want    int
	written time.Time
}

// churnScenario toggles one endpoint of Services 0..K-1 in turn at
// c.churnRate changes per second for c.churn, while a poller times each
// change from its API write until the kernel shows it. It reports p50 and p99
// latency and the proxy's CPU seconds over the window.
func (b *bench) churnScenario(ctx context.Context) error {
	k := min(b.c.services, layout.MutableServices)
	vips := make([]netip.Addr, k)
	for i := range k {
		var err error
		if vips[i], err = b.api.vip(ctx, i); err != nil {
			return err
		}
		if err := b.api.prepare(ctx, i); err != nil {
			return err
		}
	}
	state := make([]int, k)
	for i := range state {
		state[i] = b.c.eps
	}
	var (
		mu      sync.Mutex
		pending = map[int]pendingChange{}
		lat     []float64
		skipped int
	)
	before, err := b.proxy.stats()
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			mu.Lock()
			todo := make(map[int]pendingChange, len(pending))
			for i, p := range pending {
				todo[i] = p
			}
			mu.Unlock()
			for i, p := range todo {
				if n, err := b.view.endpoints(ctx, p.vip); err == nil && n == p.want {
					now := time.Now()
					mu.Lock()
					delete(pending, i)
					lat = append(lat, now.Sub(p.written).Seconds())
					mu.Unlock()
				}
			}
			select {
			case <-stop:
				mu.Lock()
				left := len(pending)
				mu.Unlock()
				if left == 0 {
					return
				}
			default:
			}
			time.Sleep(b.view.pollInterval())
		}
	}()
	start := time.Now()
	interval := time.Duration(float64(time.Second) / b.c.churnRate)
	tick := time.NewTicker(interval)
	writes, next := 0, 0
	for time.Since(start) < b.c.churn {
		<-tick.C
		i := next % k
		next++
		mu.Lock()
		_, busy := pending[i]
		mu.Unlock()
		if busy {
			skipped++
			continue
		}
		want := b.c.eps + 1
		if state[i] == want {
			want = b.c.eps
		}
		t0 := time.Now()
		if err := b.api.setEndpoints(ctx, i, want); err != nil {
			logf("churn write: %v", err)
			continue
		}
		state[i] = want
		writes++
		mu.Lock()
		pending[i] = pendingChange{vip: vips[i], want: want, written: t0}
		mu.Unlock()
	}
	tick.Stop()
	close(stop)
	capped := false
	select {
	case <-polled:
	case <-time.After(b.changeTimeout()):
		capped = true
		logf("churn: changes still not in the kernel %s after the last write", b.changeTimeout())
	}
	window := time.Since(start)
	after, err := b.proxy.stats()
	if err != nil {
		return err
	}
	mu.Lock()
	got := append([]float64(nil), lat...)
	mu.Unlock()
	note := fmt.Sprintf("%d writes in %s (%.1f/s asked, %d skipped: Service still pending), kernel polled every %s",
		writes, b.c.churn, b.c.churnRate, skipped, b.view.pollInterval())
	b.emitLatency(results.Churn, got, capped, note)
	emit(b.rec(results.Churn, results.CPUSeconds, after.CPUSeconds-before.CPUSeconds,
		fmt.Sprintf("proxy CPU over the %.0f s window (writes + drain)", window.Seconds())))
	// Put the table back as it was for the next scenarios: every write
	// first, then wait for the kernel.
	for i := range k {
		if state[i] != b.c.eps {
			if err := b.api.setEndpoints(ctx, i, b.c.eps); err != nil {
				return err
			}
		}
	}
	for i := range k {
		if state[i] != b.c.eps {
			if _, _, err := b.waitEndpoints(ctx, vips[i], b.c.eps, b.changeTimeout()); err != nil {
				return err
			}
		}
	}
	return nil
}
