package proxier_test

// Reliability tests: kernel faults injected with ipvs.Faulty, and kernel state
// edited by hand behind kipvs's back. Objects go in as v1 Services and
// EndpointSlices through endpoints.State, as in production; the kernel is the
// fakes, compared as text with a fault-free run.

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	basemetrics "k8s.io/component-base/metrics"
	"k8s.io/klog/v2"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/metrics"
	"github.com/kipvs/kipvs/proxier"
)

// rigNodeAddrs are the node's links in FakeAddresses text.
const rigNodeAddrs = "eth0: 192.168.1.10\nlo: 127.0.0.1 ::1\n"

// rigSysctls are the kernel settings the netfilter layer reads and writes.
const rigSysctls = `
net/ipv4/ip_forward = 0
net/ipv4/vs/conntrack = 0
net/ipv4/vs/expire_nodest_conn = 0
net/ipv4/vs/expire_quiescent_template = 0
net/ipv4/vs/conn_reuse_mode = 1
net/ipv4/conf/all/arp_ignore = 0
net/ipv4/conf/all/arp_announce = 0
net/netfilter/nf_conntrack_max = 65536
net/netfilter/nf_conntrack_tcp_timeout_established = 432000
net/netfilter/nf_conntrack_tcp_timeout_close_wait = 60
net/bridge/bridge-nf-call-iptables = 1
/sys/module/nf_conntrack/parameters/hashsize = 16384
`

// rig is a Proxier fed by an endpoints.State, over a fake kernel wrapped in an
// ipvs.Faulty, observed by kipvs's metrics.
type rig struct {
	t      testing.TB
	ctx    context.Context
	state  *endpoints.State
	kernel *ipvs.Fake
	faulty *ipvs.Faulty
	addrs  *proxier.FakeAddresses
	ipset  *proxier.FakeIpset
	ipt    *proxier.FakeIptables
	clk    *testclock.FakeClock
	cfg    proxier.Config
	p      *proxier.Proxier
	reg    basemetrics.KubeRegistry
}

func rigConfig() proxier.Config {
	return proxier.Config{
		NodeName: "node1", Scheduler: "rr", DummyLink: proxier.DefaultDummyLink,
		SyncPeriod: 30 * time.Second, MinSyncPeriod: time.Second,
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
	}
}

// newRig builds a rig whose Faulty fails every nth write (0: none), with the
// netfilter layer on fakes when netfilter is true, and runs Setup.
func newRig(t testing.TB, every int, netfilter bool) *rig {
	t.Helper()
	return newRigConfig(t, rigConfig(), every, netfilter)
}

// newRigWithConfig builds a fault-free rig without netfilter running cfg.
func newRigWithConfig(t testing.TB, cfg proxier.Config) *rig {
	t.Helper()
	return newRigConfig(t, cfg, 0, false)
}

// newRigConfig is newRig with a Config.
func newRigConfig(t testing.TB, cfg proxier.Config, every int, netfilter bool) *rig {
	t.Helper()
	fa, err := proxier.NewFakeAddressesFromText(rigNodeAddrs)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ctx: klog.NewContext(context.Background(), logr.Discard()), state: endpoints.NewState("node1"), kernel: ipvs.NewFake(), addrs: fa,
		clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), cfg: cfg,
		reg: basemetrics.NewKubeRegistry()}
	r.faulty = ipvs.NewFaulty(r.kernel, every)
	var opts []proxier.Option
	if netfilter {
		sc, err := proxier.NewFakeSysctlFromText(rigSysctls)
		if err != nil {
			t.Fatal(err)
		}
		r.ipset, r.ipt = proxier.NewFakeIpset(), proxier.NewFakeIptables()
		opts = append(opts, proxier.WithNetfilter(proxier.NetfilterKernel{
			Sysctl: sc, Ipset: r.ipset, IPv4: r.ipt,
			KernelRelease: func() (string, error) { return "6.1.0-56-cloud-amd64", nil },
			NumCPU:        func() int { return 4 },
		}))
	}
	r.p = proxier.New(r.cfg, r.state, r.faulty, fa, r.clk, opts...)
	m := metrics.New(nil, t.TempDir())
	m.Register(r.reg)
	r.p.AddObserver(m)
	r.state.SetSynced()
	if err := r.p.Setup(r.ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return r
}

// sync steps the clock by MinSyncPeriod and syncs; it returns the sync's error.
func (r *rig) sync() error {
	r.clk.Step(r.cfg.MinSyncPeriod)
	return r.p.Sync(r.ctx)
}

// syncFull steps the clock by SyncPeriod so that the sync is full.
func (r *rig) syncFull() error {
	r.t.Helper()
	r.clk.Step(r.cfg.SyncPeriod)
	err := r.p.Sync(r.ctx)
	if !r.p.LastSync().Full {
		r.t.Fatal("sync after SyncPeriod was not full")
	}
	return err
}

// mustSync syncs and fails the test on error.
func (r *rig) mustSync(full bool) {
	r.t.Helper()
	sync := r.sync
	if full {
		sync = r.syncFull
	}
	if err := sync(); err != nil {
		r.t.Fatalf("sync (full %v): %v\nkernel:\n%s", full, err, r.kernel.DumpText())
	}
}

// kernelText is the whole fake kernel as text: IPVS, dummy link, netfilter.
func (r *rig) kernelText() string {
	s := "# ipvs\n" + r.kernel.DumpText() + "# addresses\n" + r.addrs.DumpText()
	if r.ipset != nil {
		s += "# ipset\n" + r.ipset.DumpText() + "# iptables\n" + r.ipt.DumpText()
	}
	return s
}

// writes counts the writes to every fake.
func (r *rig) writes() int {
	n := r.kernel.Writes() + r.addrs.Writes()
	if r.ipset != nil {
		n += r.ipset.Writes() + r.ipt.Writes()
	}
	return n
}

// counter sums the samples of a counter whose labels include every pair of match.
func (r *rig) counter(name string, match map[string]string) float64 {
	r.t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// svcOpt changes a v1 Service under construction.
type svcOpt func(*v1.Service)

// v1Service builds a ClusterIP Service with one TCP port "http" 80.
func v1Service(ns, name, clusterIP string, opts ...svcOpt) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withNodePort(n int32) svcOpt {
	return func(s *v1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = v1.ServiceTypeNodePort, n }
}

func withLB(ingress string) svcOpt {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ingress}}
	}
}

func withPorts(ports ...v1.ServicePort) svcOpt { return func(s *v1.Service) { s.Spec.Ports = ports } }

func withAnnotation(k, v string) svcOpt {
	return func(s *v1.Service) { s.Annotations = map[string]string{k: v} }
}

// v1Slice builds an IPv4 EndpointSlice of Service ns/svc with port "http"
// (TCP, number p) and ready endpoints at addrs.
func v1Slice(ns, name, svc string, p int32, addrs ...string) *discoveryv1.EndpointSlice {
	return v1SliceProto(ns, name, svc, "http", v1.ProtocolTCP, p, addrs...)
}

func v1SliceProto(ns, name, svc, portName string, proto v1.Protocol, p int32, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

// event is one change the API server delivers.
type event func(s *endpoints.State)

func addService(svc *v1.Service) event {
	return func(s *endpoints.State) { s.OnServiceUpdate(nil, svc) }
}
func delService(svc *v1.Service) event {
	return func(s *endpoints.State) { s.OnServiceUpdate(svc, nil) }
}
func setSlice(prev, cur *discoveryv1.EndpointSlice) event {
	return func(s *endpoints.State) { s.OnEndpointSliceUpdate(prev, cur) }
}

// workload is an initial set of objects and the changes that follow, each
// change followed by a sync.
type workload struct {
	initial, changes []event
}

// standardWorkload is a dozen Services of every type and a few changes: a
// scale-up, a Service deleted, one added, endpoints removed, a scheduler changed.
func standardWorkload() workload {
	web := v1Service("ns", "web", "10.96.0.10", withNodePort(30080))
	webSlice := v1Slice("ns", "web-1", "web", 8080, "10.244.1.1", "10.244.1.2", "10.244.1.3")
	dns := v1Service("ns", "dns", "10.96.0.53", withPorts(
		v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
		v1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP}))
	dnsUDP := v1SliceProto("ns", "dns-1", "dns", "dns", v1.ProtocolUDP, 53, "10.244.2.1", "10.244.2.2")
	dnsTCP := v1SliceProto("ns", "dns-2", "dns", "dns-tcp", v1.ProtocolTCP, 53, "10.244.2.1", "10.244.2.2")
	lb := v1Service("ns", "lb", "10.96.0.20", withLB("203.0.113.5"), withNodePort(30443), func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"198.51.100.7"}
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	})
	lbSlice := v1Slice("ns", "lb-1", "lb", 8443, "10.244.3.1", "10.244.3.2")
	w := workload{initial: []event{
		addService(web), setSlice(nil, webSlice), addService(dns), setSlice(nil, dnsUDP), setSlice(nil, dnsTCP),
		addService(lb), setSlice(nil, lbSlice),
	}}
	many := make([]*v1.Service, 10)
	for i := range many {
		many[i] = v1Service("bulk", fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.1.%d", i+1))
		w.initial = append(w.initial, addService(many[i]),
			setSlice(nil, v1Slice("bulk", fmt.Sprintf("svc-%d-1", i), fmt.Sprintf("svc-%d", i), 8080,
				fmt.Sprintf("10.244.4.%d", i+1), fmt.Sprintf("10.244.5.%d", i+1))))
	}
	webScaled := v1Slice("ns", "web-1", "web", 8080, "10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5")
	dnsShrunk := v1SliceProto("ns", "dns-1", "dns", "dns", v1.ProtocolUDP, 53, "10.244.2.2")
	lbLC := lb.DeepCopy()
	lbLC.Annotations = map[string]string{proxier.SchedulerAnnotation: "lc"}
	w.changes = []event{
		setSlice(webSlice, webScaled),
		delService(many[3]),
		addService(v1Service("ns", "new", "10.96.0.99")),
		setSlice(nil, v1Slice("ns", "new-1", "new", 9090, "10.244.6.1")),
		setSlice(dnsUDP, dnsShrunk),
		func(s *endpoints.State) { s.OnServiceUpdate(lb, lbLC) },
	}
	return w
}

// run feeds w to r: the initial objects and a first sync, then each change
// and a sync, then a full sync. It returns the errors of those syncs.
func (r *rig) run(w workload) []error {
	var errs []error
	for _, e := range w.initial {
		e(r.state)
	}
	errs = append(errs, r.p.Sync(r.ctx))
	for _, e := range w.changes {
		e(r.state)
		errs = append(errs, r.sync())
	}
	return append(errs, r.syncFull())
}

// reference returns the kernel text that a fault-free run of w produces.
func reference(t *testing.T, w workload, netfilter bool) string {
	t.Helper()
	r := newRig(t, 0, netfilter)
	for i, err := range r.run(w) {
		if err != nil {
			t.Fatalf("fault-free sync %d: %v", i, err)
		}
	}
	return r.kernelText()
}

func TestKernelFaultsConverge(t *testing.T) {
	for _, tc := range []struct {
		name      string
		every     int
		mode      ipvs.FaultMode
		reads     bool
		netfilter bool
	}{
		{name: "every write fails", every: 1},
		{name: "every 2nd write fails", every: 2},
		{name: "every 3rd write fails", every: 3},
		{name: "every 7th write fails", every: 7, netfilter: true},
		{name: "every 5th write times out", every: 5, mode: ipvs.FaultTimeout},
		{name: "every 4th operation fails, dumps included", every: 4, reads: true},
		{name: "every 2nd operation times out, dumps included", every: 2, mode: ipvs.FaultTimeout, reads: true, netfilter: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := standardWorkload()
			want := reference(t, w, tc.netfilter)
			r := newRig(t, tc.every, tc.netfilter)
			r.faulty.Mode, r.faulty.Reads, r.faulty.Delay = tc.mode, tc.reads, time.Millisecond
			failedSyncs := 0
			for _, err := range r.run(w) {
				if err != nil {
					failedSyncs++
				}
			}
			faults := r.faulty.Faults()
			if faults == 0 || failedSyncs == 0 {
				t.Fatalf("%d faults made %d syncs fail: the test injected nothing", faults, failedSyncs)
			}
			// Failures are counted in metrics: every injected write fault is one
			// failed kernel operation, every failed sync one sync with result error.
			if got := r.counter("kipvs_syncs_total", map[string]string{"result": "error"}); int(got) != failedSyncs {
				t.Errorf("kipvs_syncs_total{result=error} = %v, want %d", got, failedSyncs)
			}
			failedOps := int(r.counter("kipvs_kernel_operations_total", map[string]string{"result": "failed"}))
			if !tc.reads && failedOps != faults {
				t.Errorf("kipvs_kernel_operations_total{result=failed} = %d, want %d (the injected faults)", failedOps, faults)
			}
			if tc.reads && (failedOps == 0 || failedOps > faults) {
				t.Errorf("kipvs_kernel_operations_total{result=failed} = %d, want 1..%d", failedOps, faults)
			}

			// The faults stop: an incremental and a full sync converge on exactly
			// what a fault-free run programs, no stale and no missing entry.
			r.faulty.SetFailEvery(0)
			before := r.writes()
			r.mustSync(false)
			r.mustSync(true)
			if diff := cmp.Diff(want, r.kernelText()); diff != "" {
				t.Errorf("kernel after faults stopped differs from a fault-free run (-want +got):\n%s", diff)
			}
			t.Logf("faults injected %d, failed syncs %d/%d, failed ops counted %d, writes to converge %d",
				faults, failedSyncs, len(w.changes)+2, failedOps, r.writes()-before)
			w0 := r.writes()
			r.mustSync(false)
			r.mustSync(true)
			if n := r.writes() - w0; n != 0 {
				t.Errorf("converged kernel still gets %d writes", n)
			}
		})
	}
}

// TestSyncDeadlineFault: a write blocks until the sync's context deadline; the
// rest of that sync fails fast, and a later sync with a fresh context converges.
func TestSyncDeadlineFault(t *testing.T) {
	w := standardWorkload()
	want := reference(t, w, false)
	r := newRig(t, 10, false)
	r.faulty.Mode = ipvs.FaultTimeout // no Delay: block until the deadline
	for _, e := range w.initial {
		e(r.state)
	}
	ctx, cancel := context.WithTimeout(r.ctx, 20*time.Millisecond)
	err := r.p.Sync(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		t.Fatalf("Sync = %v, want a deadline error", err)
	}
	for _, e := range w.changes {
		e(r.state)
	}
	r.faulty.SetFailEvery(0)
	r.mustSync(false)
	r.mustSync(true)
	if diff := cmp.Diff(want, r.kernelText()); diff != "" {
		t.Errorf("kernel differs from a fault-free run (-want +got):\n%s", diff)
	}
}

// syncRecorder is a SyncObserver that hands every sync result to a channel.
type syncRecorder chan proxier.SyncResult

func (syncRecorder) SyncQueued(time.Time)                                       {}
func (c syncRecorder) Synced(res proxier.SyncResult, _ *proxier.StatusSnapshot) { c <- res }

// TestRunnerBacksOffWhileKernelFails drives Proxier.Run with a fake clock while
// every write fails: retries come after 1s, 2s, 4s, 8s (the Runner's
// backoff), and once the faults stop the next retry converges and the loop
// goes back to the SyncPeriod.
func TestRunnerBacksOffWhileKernelFails(t *testing.T) {
	w := workload{initial: standardWorkload().initial}
	want := reference(t, w, false)
	r := newRig(t, 1, false)
	rec := make(syncRecorder, 100)
	r.p.AddObserver(rec)
	for _, e := range w.initial {
		e(r.state)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.p.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	start := r.clk.Now()
	next := func() proxier.SyncResult {
		t.Helper()
		select {
		case res := <-rec:
			return res
		case <-time.After(10 * time.Second):
			t.Fatal("no sync")
		}
		return proxier.SyncResult{}
	}
	// step waits until the loop sleeps on the clock, checks that no sync ran
	// meanwhile, and advances the clock.
	step := func(d time.Duration) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !r.clk.HasWaiters() {
			if time.Now().After(deadline) {
				t.Fatal("loop never waited on the clock")
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case res := <-rec:
			t.Fatalf("unexpected sync at +%s", res.Time.Sub(start))
		default:
		}
		r.clk.Step(d)
	}
	res := next()
	if res.Err == nil || res.Time != start {
		t.Fatalf("first sync at +%s err %v, want a failure at once", res.Time.Sub(start), res.Err)
	}
	at := time.Duration(0)
	for _, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		step(backoff - time.Millisecond) // not yet
		step(time.Millisecond)
		at += backoff
		res = next()
		if got := res.Time.Sub(start); got != at || res.Err == nil {
			t.Fatalf("retry at +%s (err %v), want a failed retry at +%s", got, res.Err, at)
		}
	}
	r.faulty.SetFailEvery(0)
	step(16 * time.Second)
	at += 16 * time.Second
	if res = next(); res.Err != nil || res.Time.Sub(start) != at {
		t.Fatalf("retry at +%s err %v, want success at +%s", res.Time.Sub(start), res.Err, at)
	}
	if diff := cmp.Diff(want, r.kernelText()); diff != "" {
		t.Errorf("kernel after the successful retry differs from a fault-free run (-want +got):\n%s", diff)
	}
	step(r.cfg.SyncPeriod) // back to the periodic full resync, which writes nothing
	if res = next(); res.Err != nil || !res.Full || res.Time.Sub(start) != at+r.cfg.SyncPeriod {
		t.Errorf("after convergence: sync at +%s full %v err %v, want a full sync at +%s",
			res.Time.Sub(start), res.Full, res.Err, at+r.cfg.SyncPeriod)
	}
	for _, c := range res.Ops {
		if c.Succeeded+c.Failed != 0 {
			t.Errorf("converged resync wrote: %+v", res.Ops)
			break
		}
	}
}

// handEdit is someone editing the kernel behind kipvs's back.
type handEdit func(ctx context.Context, r *rig) error

func vsKey(vip string, p uint16, proto ipvs.Protocol) ipvs.VirtualServerKey {
	return ipvs.VirtualServerKey{Address: netip.MustParseAddr(vip), Protocol: proto, Port: p}
}

func TestHandEditsRepairedAtFullResync(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit handEdit
	}{
		{"virtual server deleted", func(ctx context.Context, r *rig) error {
			return r.kernel.DeleteVirtualServer(ctx, vsKey("10.96.0.10", 80, ipvs.TCP))
		}},
		{"NodePort virtual server deleted", func(ctx context.Context, r *rig) error {
			return r.kernel.DeleteVirtualServer(ctx, vsKey("192.168.1.10", 30080, ipvs.TCP))
		}},
		{"real server deleted", func(ctx context.Context, r *rig) error {
			return r.kernel.DeleteRealServer(ctx, vsKey("10.96.0.53", 53, ipvs.UDP),
				ipvs.RealServerKey{Address: netip.MustParseAddr("10.244.2.2"), Port: 53})
		}},
		{"real server weight changed", func(ctx context.Context, r *rig) error {
			return r.kernel.UpdateRealServer(ctx, vsKey("10.96.0.20", 80, ipvs.TCP),
				ipvs.RealServer{RealServerKey: ipvs.RealServerKey{Address: netip.MustParseAddr("10.244.3.1"), Port: 8443}, Weight: 0})
		}},
		{"scheduler and persistence changed", func(ctx context.Context, r *rig) error {
			return r.kernel.UpdateVirtualServer(ctx, ipvs.VirtualServer{VirtualServerKey: vsKey("10.96.0.20", 80, ipvs.TCP), Scheduler: "wlc"})
		}},
		{"stale virtual server added on a Service VIP", func(ctx context.Context, r *rig) error {
			return r.kernel.AddVirtualServer(ctx, ipvs.VirtualServer{VirtualServerKey: vsKey("10.96.0.10", 81, ipvs.TCP), Scheduler: "rr"})
		}},
		{"VIP removed from the dummy link", func(ctx context.Context, r *rig) error {
			return r.addrs.Delete(ctx, proxier.DefaultDummyLink, netip.MustParseAddr("10.96.0.53"))
		}},
		{"ipset entry deleted", func(ctx context.Context, r *rig) error {
			e, err := proxier.ParseIPSetEntry("10.96.0.10,tcp:80")
			if err != nil {
				return err
			}
			return r.ipset.Del(ctx, "KIPVS-CLUSTER-IP", e)
		}},
		{"stale ipset entry added", func(ctx context.Context, r *rig) error {
			e, err := proxier.ParseIPSetEntry("10.96.9.9,tcp:80")
			if err != nil {
				return err
			}
			return r.ipset.Add(ctx, "KIPVS-CLUSTER-IP", e)
		}},
		{"kipvs chain flushed", func(ctx context.Context, r *rig) error {
			return flushChainWith(ctx, r, "KIPVS-")
		}},
		{"jump from a builtin chain flushed", func(ctx context.Context, r *rig) error {
			return r.ipt.FlushChain(ctx, "nat", "PREROUTING")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := standardWorkload()
			r := newRig(t, 0, true)
			for i, err := range r.run(w) {
				if err != nil {
					t.Fatalf("sync %d: %v", i, err)
				}
			}
			want := r.kernelText()
			if err := tc.edit(r.ctx, r); err != nil {
				t.Fatalf("hand edit: %v", err)
			}
			if r.kernelText() == want {
				t.Fatal("the hand edit changed nothing")
			}
			w0 := r.writes()
			r.mustSync(true)
			if diff := cmp.Diff(want, r.kernelText()); diff != "" {
				t.Errorf("not repaired by the full resync (-want +got):\n%s", diff)
			}
			t.Logf("repaired with %d writes", r.writes()-w0)
		})
	}
}

// flushChainWith flushes the first (by name) non-empty nat or filter chain
// whose name starts with prefix, as `iptables -F` by hand would.
func flushChainWith(ctx context.Context, r *rig, prefix string) error {
	for _, table := range []string{"nat", "filter"} {
		chains, err := r.ipt.Save(ctx, table)
		if err != nil {
			return err
		}
		for _, name := range slices.Sorted(maps.Keys(chains)) {
			if rules := chains[name]; strings.HasPrefix(name, prefix) && len(rules) > 0 {
				return r.ipt.FlushChain(ctx, table, name)
			}
		}
	}
	return fmt.Errorf("no non-empty chain %s*", prefix)
}

// TestFaultErrorsNameTheObject: a failed write's error, as Sync returns it,
// names the virtual server and the errno, so the log says what to look at.
func TestFaultErrorsNameTheObject(t *testing.T) {
	r := newRig(t, 0, false)
	r.faulty.Err = syscall.ENOMEM
	r.state.OnServiceUpdate(nil, v1Service("ns", "web", "10.96.0.10"))
	r.faulty.SetFailEvery(1)
	err := r.p.Sync(r.ctx)
	if err == nil {
		t.Fatal("Sync succeeded while every write failed")
	}
	for _, want := range []string{"add virtual server TCP/10.96.0.10:80", "cannot allocate memory", "injected fault"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Sync error %q does not contain %q", err, want)
		}
	}
}
