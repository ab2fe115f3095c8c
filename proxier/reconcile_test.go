package proxier

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// planText renders a plan's ops one per line.
func planText(p Plan) string {
	var b strings.Builder
	for _, op := range p.Ops {
		b.WriteString(op.String())
		b.WriteString("\n")
	}
	return b.String()
}

func TestReconcileOrdersAndScopesOps(t *testing.T) {
	dump, err := ipvs.ParseDump(`TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1
  -> 10.1.0.9:8080 weight 1
TCP 10.0.0.3:80 rr
  -> 10.1.0.3:8080 weight 1
TCP 10.0.0.4:80 lc
UDP 10.99.0.1:53 rr
`)
	if err != nil {
		t.Fatal(err)
	}
	observed := NewKernelState()
	observed.SetDump(dump, addrs("10.0.0.1", "10.0.0.3", "10.0.0.4"))
	services := endpoints.ServiceMap{}
	for _, s := range []*endpoints.Service{
		makeService("ns/a", "10.0.0.1", port("", "TCP", 80)),
		makeService("ns/b", "10.0.0.2", port("", "TCP", 80)),
		makeService("ns/d", "10.0.0.4", port("", "TCP", 80)),
	} {
		services[s.Name] = s
	}
	eps := endpoints.EndpointsMap{
		spn("ns/a", "", "TCP"): makeEndpoints("10.1.0.1:8080", "10.1.0.2:8080"),
		spn("ns/b", "", "TCP"): makeEndpoints("10.1.0.5:8080"),
	}
	desired := NewDesired(BuildModel(services, eps, NodeInfo{}, Config{Scheduler: "rr"}))
	in := ReconcileInput{Desired: desired, Observed: observed, Scope: Scope{Full: true}, Now: time.Unix(0, 0), DrainTimeout: time.Minute}

	want := `add_address 10.0.0.2
add_real_server TCP/10.0.0.1:80 -> 10.1.0.2:8080 weight=1
update_real_server TCP/10.0.0.1:80 -> 10.1.0.9:8080 weight=0
add_virtual_server TCP/10.0.0.2:80 rr flags=0x0 timeout=0
add_real_server TCP/10.0.0.2:80 -> 10.1.0.5:8080 weight=1
update_virtual_server TCP/10.0.0.4:80 rr flags=0x0 timeout=0
delete_virtual_server TCP/10.0.0.3:80
delete_address 10.0.0.3
`
	plan := Reconcile(in)
	if diff := cmp.Diff(want, planText(plan)); diff != "" {
		t.Errorf("full plan (-want +got):\n%s", diff)
	}
	if len(plan.Draining) != 1 || plan.Draining[0].RealServer.String() != "10.1.0.9:8080" {
		t.Errorf("Draining = %v, want 10.1.0.9:8080", plan.Draining)
	}

	// The same inputs scoped to one key plan only that key.
	in.Scope = Scope{VirtualServers: map[ipvs.VirtualServerKey]struct{}{vsKey("10.0.0.3", 80, ipvs.TCP): {}}}
	if diff := cmp.Diff("delete_virtual_server TCP/10.0.0.3:80\n", planText(Reconcile(in))); diff != "" {
		t.Errorf("scoped plan (-want +got):\n%s", diff)
	}

	// Excluded addresses are never touched, even when owned.
	in.Scope = Scope{Full: true}
	in.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.3/32")}
	if got := planText(Reconcile(in)); strings.Contains(got, "10.0.0.3") {
		t.Errorf("plan touches an excluded address:\n%s", got)
	}
}

func TestFakeAddressesTextRoundTrip(t *testing.T) {
	text := "eth0: 192.168.1.10 2001:db8::10\nkube-ipvs0: 10.0.0.1 10.0.0.10 fd00::1\nlo: 127.0.0.1\n"
	f, err := NewFakeAddressesFromText(text)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.DumpText(); got != text {
		t.Errorf("round trip:\n%s", cmp.Diff(text, got))
	}
	got, err := f.NodeIPs(t.Context(), "kube-ipvs0")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(addrs("127.0.0.1", "192.168.1.10", "2001:db8::10"), got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("NodeIPs (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"eth0 10.0.0.1", "eth0: 10.0.0.300", ": 10.0.0.1"} {
		if _, err := NewFakeAddressesFromText(bad); err == nil {
			t.Errorf("parsed %q without error", bad)
		}
	}
}

func TestNodePortIPs(t *testing.T) {
	local := addrs("127.0.0.1", "::1", "192.168.1.10", "fe80::1", "2001:db8::10", "172.16.0.10")
	tests := []struct {
		name     string
		prefixes []netip.Prefix
		want     []netip.Addr
	}{
		{"all but loopback and link-local", nil, addrs("192.168.1.10", "2001:db8::10", "172.16.0.10")},
		{"nodePortAddresses", []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("127.0.0.0/8")}, addrs("127.0.0.1", "192.168.1.10")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := NodePortIPs(local, tc.prefixes)
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
