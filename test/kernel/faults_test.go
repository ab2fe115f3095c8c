//go:build kerneltest

package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	basemetrics "k8s.io/component-base/metrics"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/metrics"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// TestFaultsConverge drives a proxier over the real kernel whose writes fail:
// ipvs.Faulty around ipvs.Real, and the same schedule around the dummy-link
// addresses and (with netfilter) the ipset and iptables writes. It checks, in
// three phases:
//
//  1. every write fails: the runner retries with its doubling backoff (1 s,
//     2 s, 4 s between attempts, no request in between), every failed write is
//     counted in kipvs_kernel_operations_total{result="failed"} and every
//     failed sync in kipvs_syncs_total{result="error"}, and nothing reached
//     the kernel;
//  2. every Nth operation fails while Services and endpoints change: syncs
//     fail and are retried;
//  3. the faults stop: the kernel converges to the model (IPVS table, VIPs on
//     kube-ipvs0, ipset members), a fault-free proxier started over that
//     kernel finds nothing to write (no stale and no missing entry in IPVS, on
//     the dummy link or in netfilter), and packets reach the right backends.
func TestFaultsConverge(t *testing.T) {
	cases := []struct {
		name      string
		mode      ipvs.FaultMode
		every     int
		reads     bool // IPVS dumps and real-server reads fail too
		netfilter bool
	}{
		{name: "every 3rd write fails", mode: ipvs.FaultError, every: 3},
		{name: "every 4th operation times out, dumps included", mode: ipvs.FaultTimeout, every: 4, reads: true},
		{name: "every 3rd write fails, netfilter on", mode: ipvs.FaultError, every: 3, netfilter: true},
		{name: "every 2nd operation times out, dumps included, netfilter on", mode: ipvs.FaultTimeout, every: 2, reads: true, netfilter: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "a", "b", "c")
			f := newFaultRig(t, c, tc.mode, tc.reads, tc.netfilter)
			f.setEvery(1)
			c.setService(c.webService())
			c.setSlice(webSlice(c.endpointsOf("a", "b", "c")...))
			c.setService(makeService("api", c.api.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
			c.setSlice(httpSlice("api-1", "api", c.endpointsOf("a")...))
			c.setService(makeService("sticky", c.vip(12).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)},
				clientIPAffinity(600)))
			c.setSlice(httpSlice("sticky-1", "sticky", c.endpointsOf("b", "c")...))
			f.start(faultConfig(c, tc.netfilter))

			t.Log("phase 1: every write fails")
			f.checkBackoff(t)
			if got := dumpText(t, c.ipvs, false); got != "" {
				t.Errorf("writes that failed reached the kernel:\n%s", got)
			}
			f.checkCounted(t, !tc.reads)

			t.Logf("phase 2: 1 operation in %d fails while Services and endpoints change", tc.every)
			before := f.failedSyncs()
			f.resetFaults()
			f.setEvery(tc.every)
			extra := netip.AddrPortFrom(c.vip(13), 80)
			for _, change := range []struct {
				what string
				do   func()
			}{
				{"c leaves web", func() { c.setSlice(webSlice(c.endpointsOf("a", "b")...)) }},
				{"b joins api", func() { c.setSlice(httpSlice("api-1", "api", c.endpointsOf("a", "b")...)) }},
				{"Service extra added", func() {
					c.setService(makeService("extra", extra.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
					c.setSlice(httpSlice("extra-1", "extra", c.endpointsOf("c")...))
				}},
				{"Service sticky deleted", func() { c.deleteService("sticky"); c.deleteSlice("sticky-1") }},
				{"a joins extra", func() { c.setSlice(httpSlice("extra-1", "extra", c.endpointsOf("a", "c")...)) }},
			} {
				since := time.Now()
				change.do()
				f.p.QueueSync()
				f.waitAttempt(t, since, change.what)
			}
			faults := f.faults()
			if faults == 0 || f.failedSyncs() == before {
				t.Errorf("phase 2 injected %d faults and failed %d syncs: the faults did not bite", faults, f.failedSyncs()-before)
			}

			t.Log("phase 3: the faults stop")
			f.setEvery(0)
			ab := c.backends(echoPort, 1, "a", "b")
			want := table(entry(key("TCP", c.web), ab), entry(key("UDP", c.web), ab), entry(key("TCP", c.api), ab),
				entry(key("TCP", extra), c.backends(echoPort, 1, "a", "c")))
			stopped := time.Now()
			waitFor(t, 3*converge, "the kernel to converge once the faults stopped", func() error {
				f.p.QueueSync()
				if got := dumpText(t, c.ipvs, false); got != want {
					return fmt.Errorf("table\n%s\nwant\n%s", got, want)
				}
				if res := f.p.LastSync(); res.Err != nil || !res.Time.After(stopped) {
					return fmt.Errorf("last sync at %s: %v", res.Time.Format(time.StampMilli), res.Err)
				}
				return nil
			})
			t.Logf("converged %s after the faults stopped; %d faults injected in phase 2, %d syncs in all, %d failed",
				time.Since(stopped).Round(time.Millisecond), faults, len(f.log.all()), f.failedSyncs())
			vips := []netip.Addr{c.web.Addr(), c.api.Addr(), extra.Addr()}
			assertVIPs(t, vips...)
			if tc.netfilter {
				assertSet(t, proxier.SetName(proxier.SetClusterIP, false), clusterIPEntries(
					"tcp", c.web, "udp", c.web, "tcp", c.api, "tcp", extra))
				assertSet(t, proxier.SetName(proxier.SetVIPs, false), addrEntries(vips...))
			}
			f.checkCounted(t, !tc.reads)
			f.p.stop(t)
			assertNothingToWrite(t, c, tc.netfilter)
			for _, proto := range []string{tcp, udp} {
				flows(t, nil, proto, c.web, "a", "b")
			}
			flows(t, nil, tcp, c.api, "a", "b")
			flows(t, nil, tcp, extra, "a", "c")
			if tc.netfilter {
				flows(t, c.pods["b"], tcp, extra, "a", "c") // b is no backend: no hairpin
			}
		})
	}
}

// flows waits until one round of 2*spread requests from from (nil: the node)
// to to, each on a new connection or flow, is answered by exactly the pods in
// want. Unlike waitAnswering it allows a lost request in an earlier round:
// under TCG on a loaded host a request can time out with nothing wrong in the
// kernel's state, which these tests have already compared.
func flows(t *testing.T, from *netpod.Pod, proto string, to netip.AddrPort, want ...string) {
	t.Helper()
	slices.Sort(want)
	rounds := 0
	waitFor(t, 6*converge, fmt.Sprintf("%s %s to be answered by %v", proto, to, want), func() error {
		rounds++
		got, counts, err := answering(t.Context(), from, proto, to, 2*spread)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s %s answered by %v, want %v", proto, to, counts, want)
		}
		return nil
	})
	if rounds > 1 {
		src := "the node"
		if from != nil {
			src = "pod " + from.Name
		}
		t.Logf("%s %s from %s answered by %v in round %d", proto, to, src, want, rounds)
	}
}

// faultConfig is the proxier configuration of the fault tests.
func faultConfig(c *cluster, netfilter bool) proxier.Config {
	if netfilter {
		return c.nfConfig()
	}
	return defaultConfig()
}

// faultRig is a proxier over the real kernel whose writes go through fault
// injectors, observed by kipvs's metrics and a log of its syncs.
type faultRig struct {
	t     *testing.T
	c     *cluster
	ipvs  *ipvs.Faulty
	addrs *schedule // dummy-link address writes
	nfs   *schedule // ipset and iptables writes
	nf    *proxier.NetfilterKernel
	reg   basemetrics.KubeRegistry
	log   *syncLog
	p     *runningProxier
}

// newFaultRig wraps the cluster's kernel in fault injectors that fail no
// operation yet. mode applies to all of them; reads makes IPVS reads fail
// too. With netfilter, the ipset and iptables writes are faulted as well.
func newFaultRig(t *testing.T, c *cluster, mode ipvs.FaultMode, reads, netfilter bool) *faultRig {
	const delay = 200 * time.Millisecond // of a timed-out operation
	f := &faultRig{t: t, c: c, ipvs: ipvs.NewFaulty(c.ipvs, 0), addrs: &schedule{}, nfs: &schedule{},
		reg: basemetrics.NewKubeRegistry(), log: &syncLog{}}
	f.ipvs.Mode, f.ipvs.Reads, f.ipvs.Delay = mode, reads, delay
	if mode == ipvs.FaultTimeout {
		f.addrs.delay, f.nfs.delay = delay, delay
	}
	if netfilter {
		k := netfilterKernel(t)
		k.IPv6 = nil
		k.Ipset = &faultyIpset{Ipset: k.Ipset, s: f.nfs}
		k.IPv4 = &faultyIptables{Iptables: k.IPv4, s: f.nfs}
		f.nf = &k
	}
	return f
}

// start runs the proxier; unlike cluster.start it does not wait for a sync.
func (f *faultRig) start(cfg proxier.Config) {
	t := f.t
	t.Helper()
	if f.nf == nil {
		applyKernelSettings(t, cfg)
	}
	addrs := &faultyAddresses{Addresses: proxier.NewNetlinkAddresses(), s: f.addrs}
	ctx, cancel := context.WithCancel(testContext(t))
	p := &runningProxier{Proxier: proxier.New(cfg, f.c.state, f.ipvs, addrs, clock.RealClock{}), cancel: cancel, done: make(chan struct{})}
	if f.nf != nil {
		p.UseNetfilter(*f.nf)
	}
	m := metrics.New(nil, t.TempDir())
	m.Register(f.reg)
	p.AddObserver(m)
	p.AddObserver(f.log)
	if err := p.Setup(ctx); err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	f.log.nf = p.LastNetfilterSync
	f.p = p
}

// setEvery makes every nth operation of every injector fail (0: none).
func (f *faultRig) setEvery(n int) {
	f.ipvs.SetFailEvery(n)
	f.addrs.set(n)
	f.nfs.set(n)
}

// resetFaults sets the fault counts back to zero and starts a new phase of
// the sync log. Call it between syncs.
func (f *faultRig) resetFaults() {
	f.ipvs.ResetCounts()
	f.addrs.reset()
	f.nfs.reset()
	f.log.markNow()
}

// faults is the number of operations failed since the last resetFaults.
func (f *faultRig) faults() int { return f.ipvs.Faults() + f.addrs.count() + f.nfs.count() }

// failedSyncs counts the syncs that failed so far.
func (f *faultRig) failedSyncs() int {
	n := 0
	for _, r := range f.log.all() {
		if r.Err != nil {
			n++
		}
	}
	return n
}

// checkBackoff waits for four consecutive failed syncs with no request in
// between and checks that their starts are at least the runner's backoff
// apart (1 s, then 2 s, then 4 s; a sync that takes longer than its backoff
// is followed at once), and not much later than that.
func (f *faultRig) checkBackoff(t *testing.T) {
	t.Helper()
	var rs []proxier.SyncResult
	waitFor(t, 3*converge, "four failed syncs", func() error {
		rs = f.log.all()
		if len(rs) < 4 {
			return fmt.Errorf("%d syncs so far", len(rs))
		}
		return nil
	})
	rs = rs[:4]
	backoff := proxier.DefaultRetryInitial
	for i := 1; i < len(rs); i++ {
		if rs[i-1].Err == nil {
			t.Fatalf("sync %d succeeded with every write failing: %+v", i, rs[i-1])
		}
		gap := rs[i].Time.Sub(rs[i-1].Time)
		t.Logf("failed sync %d (%s, full %v): next attempt %s later (backoff %s): %v", i,
			rs[i-1].Duration.Round(time.Millisecond), rs[i-1].Full, gap.Round(time.Millisecond), backoff, firstLine(rs[i-1].Err))
		if gap < backoff-10*time.Millisecond {
			t.Errorf("attempt %d came %s after the failed one, before the backoff of %s", i+1, gap, backoff)
		}
		if limit := max(backoff, rs[i-1].Duration) + 3*time.Second; gap > limit {
			t.Errorf("attempt %d came %s after the failed one, later than %s (backoff %s, the sync took %s)",
				i+1, gap, limit, backoff, rs[i-1].Duration)
		}
		backoff *= 2
	}
}

// waitAttempt waits until a sync that started after since has ended,
// whatever its result.
func (f *faultRig) waitAttempt(t *testing.T, since time.Time, what string) {
	t.Helper()
	waitFor(t, 3*converge, "a sync after "+what, func() error {
		if res := f.p.LastSync(); !res.Time.After(since) {
			return fmt.Errorf("last sync at %s", res.Time.Format(time.StampMilli))
		}
		return nil
	})
	res := f.p.LastSync()
	t.Logf("%s: sync (full %v) took %s: %v", what, res.Full, res.Duration.Round(time.Millisecond), firstLine(res.Err))
}

// checkCounted compares kipvs's metrics with the sync log and the injectors:
// every failed sync is counted once in kipvs_syncs_total{result="error"},
// every failed IPVS or address write once in
// kipvs_kernel_operations_total{result="failed"}. With writesOnly (no read
// faults), the failed writes since the last resetFaults are exactly the IPVS
// and address faults injected since then. The ipset and iptables writes are
// not in that metric: they fail the sync and show in NetfilterResult.Failed.
func (f *faultRig) checkCounted(t *testing.T, writesOnly bool) {
	t.Helper()
	rs := f.log.all()
	failedSyncs, failedOps := 0, 0
	for _, r := range rs {
		if r.Err != nil {
			failedSyncs++
		}
		for _, n := range r.Ops {
			failedOps += n.Failed
		}
	}
	if got := counterSum(t, f.reg, "kipvs_syncs_total", map[string]string{"result": metrics.ResultError}); got != float64(failedSyncs) {
		t.Errorf("kipvs_syncs_total{result=error} = %v, want %d (failed syncs observed)", got, failedSyncs)
	}
	got := counterSum(t, f.reg, "kipvs_kernel_operations_total", map[string]string{"result": metrics.OpFailed})
	if got != float64(failedOps) {
		t.Errorf("kipvs_kernel_operations_total{result=failed} = %v, want %d (failed writes in the sync results)", got, failedOps)
	}
	t.Logf("%d syncs, %d failed; %v failed kernel writes counted; faults injected since the last reset: IPVS %d, addresses %d, netfilter %d",
		len(rs), failedSyncs, got, f.ipvs.Faults(), f.addrs.count(), f.nfs.count())
	if failedSyncs == 0 {
		t.Errorf("no failed sync")
	}
	if !writesOnly {
		return
	}
	if n, injected := f.phaseFailedOps(rs), f.ipvs.Faults()+f.addrs.count(); n != injected || n == 0 {
		t.Errorf("failed writes in the sync results since the last reset: %d; IPVS and address faults injected: %d", n, injected)
	}
}

// phaseFailedOps counts the failed writes of the syncs since the counts were
// last reset: the rig resets them between phases, so these are the writes
// the log recorded after the mark.
func (f *faultRig) phaseFailedOps(rs []proxier.SyncResult) int {
	n := 0
	for _, r := range rs[f.log.mark():] {
		for _, c := range r.Ops {
			n += c.Failed
		}
	}
	return n
}

// syncLog records every sync's result (a proxier.SyncObserver), and with nf
// set the netfilter counts of each sync.
type syncLog struct {
	// nf returns the netfilter counts of the latest sync; set before Run.
	nf func() proxier.NetfilterResult

	mu      sync.Mutex
	results []proxier.SyncResult
	nfs     []proxier.NetfilterResult
	from    int // index of the first result after the last markNow
}

// SyncQueued implements proxier.SyncObserver.
func (l *syncLog) SyncQueued(time.Time) {}

// Synced implements proxier.SyncObserver.
func (l *syncLog) Synced(res proxier.SyncResult, _ *proxier.StatusSnapshot) {
	var nf proxier.NetfilterResult
	if l.nf != nil {
		nf = l.nf() // Synced runs on the sync goroutine, after the netfilter sync
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.results = append(l.results, res)
	l.nfs = append(l.nfs, nf)
}

// writesSince sums the IPVS and address writes and the netfilter counts of
// the syncs that ended after t.
func (l *syncLog) writesSince(t time.Time) (int, proxier.NetfilterResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, nf := 0, proxier.NetfilterResult{}
	for i, r := range l.results {
		if !r.Time.Add(r.Duration).After(t) {
			continue
		}
		for _, c := range r.Ops {
			n += c.Succeeded + c.Failed
		}
		x := l.nfs[i]
		nf.SetsCreated += x.SetsCreated
		nf.EntriesAdded += x.EntriesAdded
		nf.EntriesDeleted += x.EntriesDeleted
		nf.RuleWrites += x.RuleWrites
		nf.Failed += x.Failed
	}
	return n, nf
}

func (l *syncLog) all() []proxier.SyncResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// markNow starts a new phase of the log.
func (l *syncLog) markNow() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.from = len(l.results)
}

func (l *syncLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.from
}

// counterSum sums the samples of counter name whose labels include match.
func counterSum(t *testing.T, reg basemetrics.KubeRegistry, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range match {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == k && lp.GetValue() == v
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// assertNothingToWrite starts a fault-free proxier over the kernel as it is
// (the same Services, fed to a new State as a restarted kipvs's informers
// would) and fails t when its first full sync writes anything: then the
// kernel held exactly the model, with no stale and no missing entry.
func assertNothingToWrite(t *testing.T, c *cluster, netfilter bool) {
	t.Helper()
	real2, err := ipvs.New()
	if err != nil {
		t.Fatal(err)
	}
	defer real2.Close()
	counted := &countingIPVS{Interface: real2}
	addrs := &countingAddresses{Addresses: proxier.NewNetlinkAddresses()}
	state := endpoints.NewState(nodeName)
	c.feed(state)
	cfg := faultConfig(c, netfilter)
	p := proxier.New(cfg, state, counted, addrs, clock.RealClock{})
	if netfilter {
		k, _, err := proxier.NewNetfilterKernel(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		k.IPv6 = nil
		p.UseNetfilter(k)
	}
	ctx := testContext(t)
	if err := p.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatalf("fault-free full sync: %v", err)
	}
	if w := counted.writes(); len(w) > 0 {
		t.Errorf("a fault-free proxier over the converged kernel wrote to IPVS: %v", w)
	}
	if n := addrs.n.Load(); n > 0 {
		t.Errorf("a fault-free proxier over the converged kernel changed %d addresses on %s", n, proxier.DefaultDummyLink)
	}
	if nf := p.LastNetfilterSync(); nf.Writes() > 0 {
		t.Errorf("a fault-free proxier over the converged kernel wrote to netfilter: %+v", nf)
	}
}

// assertSet checks the members of an ipset.
func assertSet(t *testing.T, name string, want []string) {
	t.Helper()
	got, err := setMembers(t.Context(), name)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ipset %s = %v, want %v", name, got, want)
	}
}

// setMembers lists an ipset's members as the ipset tool prints them, sorted.
func setMembers(ctx context.Context, name string) ([]string, error) {
	_, entries, err := proxier.NewNetlinkIpset().List(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("list ipset %s: %w", name, err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.String())
	}
	slices.Sort(out)
	return out, nil
}

// clusterIPEntries renders hash:ip,port members from proto, VIP pairs.
func clusterIPEntries(pairs ...any) []string {
	var out []string
	for i := 0; i+1 < len(pairs); i += 2 {
		ap := pairs[i+1].(netip.AddrPort)
		out = append(out, fmt.Sprintf("%s,%s:%d", ap.Addr(), pairs[i], ap.Port()))
	}
	return out
}

// addrEntries renders hash:ip members.
func addrEntries(addrs ...netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// firstLine returns the first line of err's message ("<nil>" for nil).
func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// schedule fails every nth operation it counts, like ipvs.Faulty, for the
// kernel boundaries other than IPVS; with delay, a failing operation first
// blocks for delay (or until its ctx ends), as a request the kernel never
// answers.
type schedule struct {
	delay time.Duration

	mu                  sync.Mutex
	every, ops, nfaults int
}

func (s *schedule) set(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.every, s.ops = n, 0
}

func (s *schedule) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nfaults = 0
}

func (s *schedule) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nfaults
}

// fault counts one operation and returns its injected error, nil when it is
// to go through.
func (s *schedule) fault(ctx context.Context, what string) error {
	s.mu.Lock()
	s.ops++
	pick := s.every > 0 && s.ops%s.every == 0
	if pick {
		s.nfaults++
	}
	s.mu.Unlock()
	if !pick {
		return nil
	}
	if s.delay > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w: %w", what, ipvs.ErrInjected, ctx.Err())
		case <-time.After(s.delay):
			return fmt.Errorf("%s: %w: %w", what, ipvs.ErrInjected, syscall.ETIMEDOUT)
		}
	}
	return fmt.Errorf("%s: %w: %w", what, ipvs.ErrInjected, syscall.EIO)
}

// faultyAddresses fails the dummy link's address writes on a schedule.
type faultyAddresses struct {
	proxier.Addresses
	s *schedule
}

func (f *faultyAddresses) Add(ctx context.Context, link string, a netip.Addr) error {
	if err := f.s.fault(ctx, "add address "+a.String()+" to "+link); err != nil {
		return err
	}
	return f.Addresses.Add(ctx, link, a)
}

func (f *faultyAddresses) Delete(ctx context.Context, link string, a netip.Addr) error {
	if err := f.s.fault(ctx, "delete address "+a.String()+" from "+link); err != nil {
		return err
	}
	return f.Addresses.Delete(ctx, link, a)
}

// faultyIpset fails ipset writes (create, add, del) on a schedule; List goes through.
type faultyIpset struct {
	proxier.Ipset
	s *schedule
}

func (f *faultyIpset) Create(ctx context.Context, spec proxier.IPSetSpec) error {
	if err := f.s.fault(ctx, "create ipset "+spec.Name); err != nil {
		return err
	}
	return f.Ipset.Create(ctx, spec)
}

func (f *faultyIpset) Add(ctx context.Context, set string, e proxier.IPSetEntry) error {
	if err := f.s.fault(ctx, "ipset add "+set+" "+e.String()); err != nil {
		return err
	}
	return f.Ipset.Add(ctx, set, e)
}

func (f *faultyIpset) Del(ctx context.Context, set string, e proxier.IPSetEntry) error {
	if err := f.s.fault(ctx, "ipset del "+set+" "+e.String()); err != nil {
		return err
	}
	return f.Ipset.Del(ctx, set, e)
}

// faultyIptables fails iptables writes on a schedule; Save goes through.
type faultyIptables struct {
	proxier.Iptables
	s *schedule
}

func (f *faultyIptables) NewChain(ctx context.Context, table, chain string) error {
	if err := f.s.fault(ctx, "iptables -t "+table+" -N "+chain); err != nil {
		return err
	}
	return f.Iptables.NewChain(ctx, table, chain)
}

func (f *faultyIptables) FlushChain(ctx context.Context, table, chain string) error {
	if err := f.s.fault(ctx, "iptables -t "+table+" -F "+chain); err != nil {
		return err
	}
	return f.Iptables.FlushChain(ctx, table, chain)
}

func (f *faultyIptables) Append(ctx context.Context, table, chain string, rule []string) error {
	if err := f.s.fault(ctx, "iptables -t "+table+" -A "+chain); err != nil {
		return err
	}
	return f.Iptables.Append(ctx, table, chain, rule)
}

func (f *faultyIptables) Insert(ctx context.Context, table, chain string, pos int, rule []string) error {
	if err := f.s.fault(ctx, "iptables -t "+table+" -I "+chain); err != nil {
		return err
	}
	return f.Iptables.Insert(ctx, table, chain, pos, rule)
}

func (f *faultyIptables) Restore(ctx context.Context, text string) error {
	table, _, _ := strings.Cut(text, "\n")
	if err := f.s.fault(ctx, "iptables-restore --noflush "+table); err != nil {
		return err
	}
	return f.Iptables.Restore(ctx, text)
}

var (
	_ proxier.Addresses = (*faultyAddresses)(nil)
	_ proxier.Ipset     = (*faultyIpset)(nil)
	_ proxier.Iptables  = (*faultyIptables)(nil)
)
