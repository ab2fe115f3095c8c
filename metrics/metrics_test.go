package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	basemetrics "k8s.io/component-base/metrics"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// fakeSource is a proxier.Source over maps; Apply reports what changed.
type fakeSource struct {
	services        endpoints.ServiceMap
	eps             endpoints.EndpointsMap
	changed         sets.Set[types.NamespacedName]
	svcChanges      int
	epChanges       int
	pendingServices int
}

func newFakeSource() *fakeSource {
	return &fakeSource{services: endpoints.ServiceMap{}, eps: endpoints.EndpointsMap{}, changed: sets.New[types.NamespacedName]()}
}

func (s *fakeSource) Synced() bool { return true }

func (s *fakeSource) Apply() endpoints.Snapshot {
	snap := endpoints.Snapshot{Services: s.services, Endpoints: s.eps, Node: endpoints.Node{Name: "node1"}, Changed: s.changed,
		ServiceChanges: s.svcChanges, EndpointChanges: s.epChanges}
	s.changed, s.svcChanges, s.epChanges = sets.New[types.NamespacedName](), 0, 0
	return snap
}

// setWeb sets Service ns/web (cluster IP 10.0.0.1, TCP 80, optionally
// externalTrafficPolicy Local with a NodePort) and its endpoints on node.
func (s *fakeSource) setWeb(local bool, node string, eps ...string) {
	name := types.NamespacedName{Namespace: "ns", Name: "web"}
	pn := endpoints.ServicePortName{NamespacedName: name, Port: "http", Protocol: v1.ProtocolTCP}
	sp := &endpoints.ServicePort{Name: pn, Protocol: v1.ProtocolTCP, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	if local {
		sp.NodePort, sp.ExternalPolicyLocal = 30080, true
	}
	s.services[name] = &endpoints.Service{Name: name, Type: v1.ServiceTypeClusterIP, Ports: []*endpoints.ServicePort{sp}}
	var list []*endpoints.Endpoint
	for _, e := range eps {
		ap := netip.MustParseAddrPort(e)
		list = append(list, &endpoints.Endpoint{Address: ap.Addr(), Port: ap.Port(), Ready: true, Serving: true, NodeName: node})
	}
	s.eps[pn] = list
	s.changed.Insert(name)
	s.svcChanges++
	s.epChanges++
}

// setup returns metrics registered in a fresh registry, observing a Proxier on fakes.
func setup(t *testing.T) (*Metrics, basemetrics.KubeRegistry, *proxier.Proxier, *fakeSource, *ipvs.Fake, *testclock.FakeClock) {
	t.Helper()
	src := newFakeSource()
	fi := ipvs.NewFake()
	fa, err := proxier.NewFakeAddressesFromText("eth0: 192.168.1.10\nlo: 127.0.0.1\n")
	if err != nil {
		t.Fatal(err)
	}
	clk := testclock.NewFakeClock(time.Unix(1_800_000_000, 0))
	cfg := proxier.Config{NodeName: "node1", Scheduler: "rr", DummyLink: proxier.DefaultDummyLink,
		SyncPeriod: time.Minute, MinSyncPeriod: time.Second, DrainTimeout: time.Minute}
	p := proxier.New(cfg, src, fi, fa, clk)
	if err := p.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := New(func() (int, int) { return src.pendingServices, 7 }, t.TempDir())
	reg := basemetrics.NewKubeRegistry()
	m.Register(reg)
	p.AddObserver(m)
	return m, reg, p, src, fi, clk
}

// samples renders the samples of the named metrics in reg, one per line in
// the exposition format's "name{labels} value" form, sorted; histograms give
// their _count and _sum. (component-base/metrics/testutil needs a go.mod
// entry this module lacks: github.com/kylelemons/godebug.)
func samples(t *testing.T, reg basemetrics.Gatherer, names ...string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			l := ""
			if len(labels) > 0 {
				l = "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.GetHistogram() != nil:
				out = append(out, fmt.Sprintf("%s_count%s %d", mf.GetName(), l, m.GetHistogram().GetSampleCount()),
					fmt.Sprintf("%s_sum%s %g", mf.GetName(), l, m.GetHistogram().GetSampleSum()))
			case m.GetCounter() != nil:
				out = append(out, fmt.Sprintf("%s%s %g", mf.GetName(), l, m.GetCounter().GetValue()))
			case m.GetGauge() != nil:
				out = append(out, fmt.Sprintf("%s%s %g", mf.GetName(), l, m.GetGauge().GetValue()))
			}
		}
	}
	slices.Sort(out)
	return out
}

// compare checks the samples of the metrics named in want (one sample per
// line, as samples renders them) against reg.
func compare(t *testing.T, reg basemetrics.Gatherer, want string) {
	t.Helper()
	var lines, names []string
	for _, l := range strings.Split(strings.TrimSpace(want), "\n") {
		if l = strings.TrimSpace(l); l == "" {
			continue
		}
		lines = append(lines, l)
		name, _, _ := strings.Cut(l, " ")
		name, _, _ = strings.Cut(name, "{")
		name = strings.TrimSuffix(strings.TrimSuffix(name, "_count"), "_sum")
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(lines)
	if diff := cmp.Diff(lines, samples(t, reg, names...)); diff != "" {
		t.Errorf("samples (-want +got):\n%s", diff)
	}
}

func TestSyncMetrics(t *testing.T) {
	_, reg, p, src, fi, clk := setup(t)
	ctx := context.Background()
	src.setWeb(false, "node2", "10.1.0.1:8080", "10.1.0.2:8080")
	p.QueueSync()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Second)
	// 10.1.0.2 leaves with a connection open: it drains.
	vs := ipvs.VirtualServerKey{Address: netip.MustParseAddr("10.0.0.1"), Protocol: ipvs.TCP, Port: 80}
	if err := fi.SetConnections(vs, ipvs.RealServerKey{Address: netip.MustParseAddr("10.1.0.2"), Port: 8080}, 1, 0); err != nil {
		t.Fatal(err)
	}
	src.setWeb(false, "node2", "10.1.0.1:8080")
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// A failing kernel: the next change fails and counts as an error.
	fi.Fault = func(string) error { return errors.New("injected") }
	clk.Step(time.Second)
	src.setWeb(false, "node2", "10.1.0.1:8080", "10.1.0.3:8080")
	if err := p.Sync(ctx); err == nil {
		t.Fatal("sync with a failing kernel succeeded")
	}

	compare(t, reg, `
kipvs_syncs_total{kind="full",result="error"} 0
kipvs_syncs_total{kind="full",result="success"} 1
kipvs_syncs_total{kind="incremental",result="error"} 1
kipvs_syncs_total{kind="incremental",result="success"} 1
kipvs_virtual_servers 1
kipvs_virtual_servers_failed 1
kipvs_real_servers 2
kipvs_real_servers_draining 1
kipvs_ipset_entries 0
kubeproxy_sync_proxy_rules_service_changes_total 3
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.800000001e+09
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1.8e+09
`)

	ops := map[string]float64{
		"add_virtual_server/succeeded": 1, "add_real_server/succeeded": 2, "add_address/succeeded": 1,
		"update_real_server/succeeded": 1, // 10.1.0.2 starts draining
		"add_real_server/failed":       1, // 10.1.0.3 refused
		"delete_real_server/succeeded": 0, "add_virtual_server/failed": 0,
	}
	for key, want := range ops {
		op, result, _ := strings.Cut(key, "/")
		m, _ := setupCounter(reg, "kipvs_kernel_operations_total", map[string]string{"operation": op, "result": result})
		if m != want {
			t.Errorf("kipvs_kernel_operations_total{operation=%q,result=%q} = %v, want %v", op, result, m, want)
		}
	}
	compare(t, reg, `
kubeproxy_sync_proxy_rules_duration_seconds_count 3
kubeproxy_sync_proxy_rules_duration_seconds_sum 0
kubeproxy_sync_full_proxy_rules_duration_seconds_count 1
kubeproxy_sync_full_proxy_rules_duration_seconds_sum 0
kubeproxy_sync_partial_proxy_rules_duration_seconds_count 2
kubeproxy_sync_partial_proxy_rules_duration_seconds_sum 0
kipvs_sync_operations_count 3
kipvs_sync_operations_sum 6
`)
}

// setupCounter reads one counter sample from reg; ok is false when absent.
func setupCounter(reg basemetrics.KubeRegistry, name string, labels map[string]string) (float64, bool) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func TestNoLocalEndpoints(t *testing.T) {
	_, reg, p, src, _, _ := setup(t)
	src.setWeb(true, "node2", "10.1.0.1:8080")
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	compare(t, reg, `
kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external"} 1
kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"} 0
`)
	src.setWeb(true, "node1", "10.1.0.1:8080")
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	compare(t, reg, `
kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external"} 0
kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"} 0
`)
}

func TestPendingAndHealthMetrics(t *testing.T) {
	m, reg, _, src, _, _ := setup(t)
	src.pendingServices = 4
	m.ObserveHealthCheck("/healthz", 200)
	m.ObserveHealthCheck("/healthz", 503)
	m.ObserveHealthCheck("/healthz", 503)
	m.ObserveHealthCheck("/livez", 200)
	m.ObserveHealthCheck("/other", 200)
	compare(t, reg, `
kubeproxy_sync_proxy_rules_service_changes_pending 4
kubeproxy_sync_proxy_rules_endpoint_changes_pending 7
kubeproxy_proxy_healthz_total{code="200"} 1
kubeproxy_proxy_healthz_total{code="503"} 2
kubeproxy_proxy_livez_total{code="200"} 1
`)
}

func TestNetworkProgramming(t *testing.T) {
	m, reg, _, _, _, _ := setup(t)
	now := time.Unix(1_800_000_000, 0)
	m.ObserveNetworkProgramming([]time.Time{now.Add(-1500 * time.Millisecond), now.Add(-10 * time.Second), now.Add(time.Second)}, now)
	// The trigger in the future (clock skew) is dropped.
	compare(t, reg, `
kubeproxy_network_programming_duration_seconds_count 2
kubeproxy_network_programming_duration_seconds_sum 11.5
`)
}

func TestSyncedObservesNetworkProgramming(t *testing.T) {
	m, reg, _, _, _, _ := setup(t)
	start := time.Unix(1_800_000_000, 0)
	trig := []time.Time{start.Add(-2 * time.Second)}
	m.Synced(proxier.SyncResult{Time: start, Duration: time.Second, TriggerTimes: trig, Err: errors.New("kernel said no")}, nil)
	m.Synced(proxier.SyncResult{Time: start, Duration: time.Second, TriggerTimes: trig}, nil)
	// Only the successful sync counts: 2 s before the start + 1 s of sync.
	compare(t, reg, `
kubeproxy_network_programming_duration_seconds_count 1
kubeproxy_network_programming_duration_seconds_sum 3
`)
}

func TestConntrack(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		want   string
		fill   ConntrackFill
		wantOK bool
	}{
		{name: "present", files: map[string]string{"nf_conntrack_count": "850\n", "nf_conntrack_max": "1000\n"}, wantOK: true,
			fill: ConntrackFill{Entries: 850, Limit: 1000}, want: `
kipvs_conntrack_entries 850
kipvs_conntrack_limit 1000
`},
		{name: "absent (nf_conntrack not loaded)", files: nil, want: ""},
		{name: "only the count", files: map[string]string{"nf_conntrack_count": "5\n"}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "sys", "net", "netfilter")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, text := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			fill, ok, err := ReadConntrack(root)
			if err != nil || ok != tt.wantOK || fill != tt.fill {
				t.Errorf("ReadConntrack = %+v, %v, %v; want %+v, %v, nil", fill, ok, err, tt.fill, tt.wantOK)
			}
			reg := basemetrics.NewKubeRegistry()
			reg.CustomMustRegister(NewConntrackCollector(root))
			var want []string
			for _, l := range strings.Split(strings.TrimSpace(tt.want), "\n") {
				if l != "" {
					want = append(want, l)
				}
			}
			if diff := cmp.Diff(want, samples(t, reg, "kipvs_conntrack_entries", "kipvs_conntrack_limit")); diff != "" {
				t.Errorf("samples (-want +got):\n%s", diff)
			}
		})
	}
	if r := (ConntrackFill{Entries: 850, Limit: 1000}).Ratio(); r != 0.85 {
		t.Errorf("Ratio = %v, want 0.85", r)
	}
}

func TestServe(t *testing.T) {
	_, reg, _, _, _, _ := setup(t)
	l, err := Listen("metrics", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("metrics", l.Addr().String()); err == nil || !strings.Contains(err.Error(), "metrics server on "+l.Addr().String()) {
		t.Errorf("second Listen on a busy port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, l, Handler(reg)) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !strings.Contains(string(body), "\nkipvs_ipset_entries 0\n") {
		t.Errorf("scrape lacks kipvs_ipset_entries 0:\n%s", body)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve after cancel = %v", err)
	}
}
