//go:build kerneltest

package kernel

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kipvs/kipvs/proxier"
)

// run runs a command and fails the test when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// kernelSnapshot renders the IPVS table, the dummy link's addresses, the nat
// and filter tables (without comments and counters) and the ipsets, to
// compare before and after.
func kernelSnapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(run(t, "ipvsadm", "-Sn"))
	out, _ := exec.Command("ip", "-o", "addr", "show", "dev", proxier.DefaultDummyLink).CombinedOutput()
	b.Write(out)
	for _, table := range []string{"nat", "filter"} {
		for _, line := range strings.Split(run(t, "iptables-save", "-t", table), "\n") {
			if !strings.HasPrefix(line, "#") {
				line, _, _ = strings.Cut(line, " [") // ":CHAIN POLICY [0:0]"
				b.WriteString(line + "\n")
			}
		}
	}
	b.WriteString(run(t, "ipset", "save"))
	return b.String()
}

// addForeign adds what cleanup must leave: an ipvsadm virtual server, a
// FOREIGN chain with a rule and a jump to it, the kubelet's canary chains and
// KUBE-FIREWALL, and a FOREIGN ipset.
func addForeign(t *testing.T) {
	t.Helper()
	for _, cmd := range [][]string{
		{"ipvsadm", "-A", "-t", "192.0.2.1:80", "-s", "rr"},
		{"ipvsadm", "-a", "-t", "192.0.2.1:80", "-r", "192.0.2.2:80", "-m"},
		{"iptables", "-t", "nat", "-N", "FOREIGN"},
		{"iptables", "-t", "nat", "-A", "FOREIGN", "-s", "198.51.100.0/24", "-j", "RETURN"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN"},
		{"iptables", "-t", "nat", "-N", "KUBE-KUBELET-CANARY"},
		{"iptables", "-t", "filter", "-N", "KUBE-KUBELET-CANARY"},
		{"iptables", "-t", "filter", "-N", "KUBE-FIREWALL"},
		{"iptables", "-t", "filter", "-A", "KUBE-FIREWALL", "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
			"-m", "comment", "--comment", "block incoming localnet connections", "-j", "DROP"},
		{"iptables", "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL"},
		{"ipset", "create", "FOREIGN", "hash:ip"},
		{"ipset", "add", "FOREIGN", "203.0.113.7"},
	} {
		run(t, cmd[0], cmd[1:]...)
	}
}

// cleanupKernel opens the boundaries `kipvs cleanup` uses (IPv4 only, as the
// proxier of this test).
func cleanupKernel(t *testing.T, c *cluster) proxier.CleanupKernel {
	t.Helper()
	nk, _, err := proxier.NewNetfilterKernel(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	nk.IPv6 = nil
	k := proxier.NetfilterCleaner(nk)
	if k.IPv4 == nil || k.Ipset == nil {
		t.Fatalf("real netfilter boundaries lack the cleanup methods: %+v", k)
	}
	k.IPVS, k.Links = c.ipvs, proxier.NewNetlinkAddresses()
	return k
}

// TestCleanup: after kipvs ran with a ClusterIP + NodePort Service and the
// netfilter layer, cleanup removes its virtual servers, addresses, link,
// chains, jumps and sets, and leaves foreign IPVS entries, chains, rules and
// sets; --dry-run changes nothing; a second run removes nothing.
func TestCleanup(t *testing.T) {
	c := newCluster(t, "a")
	c.setService(makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30280)}, nodePortType))
	c.setSlice(httpSlice("web-1", "web", c.endpointsOf("a")...))
	p := c.startNF(c.nfConfig())
	waitAnswering(t, nil, tcp, c.web, "a")
	p.stop(t)
	addForeign(t)
	before := kernelSnapshot(t)
	for _, want := range []string{c.web.String(), ":30280", "KIPVS-SERVICES", "KIPVS-NODE-PORT-TCP", "FOREIGN"} {
		if !strings.Contains(before, want) {
			t.Fatalf("kernel before cleanup lacks %q:\n%s", want, before)
		}
	}
	k := cleanupKernel(t, c)
	ctx := testContext(t)

	dry, err := proxier.Cleanup(ctx, k, proxier.DefaultDummyLink, nil, true, nil)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if after := kernelSnapshot(t); after != before {
		t.Fatalf("dry run changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	var lines []string
	plan, err := proxier.Cleanup(ctx, k, proxier.DefaultDummyLink, nil, false, func(r proxier.Removal, err error) {
		if err != nil {
			t.Errorf("removing %s: %v", r, err)
		}
		lines = append(lines, r.String())
	})
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("cleanup removed %d objects:\n%s", len(lines), strings.Join(lines, "\n"))
	if !slices.EqualFunc(dry, plan, func(a, b proxier.Removal) bool { return a.String() == b.String() }) {
		t.Errorf("dry run planned %d removals, the real run %d", len(dry), len(plan))
	}
	for _, want := range []string{
		"virtual-server TCP/" + c.web.String(), "address " + c.web.Addr().String() + " on kube-ipvs0", "link kube-ipvs0",
		"chain ipv4 nat KIPVS-SERVICES", "rule ipv4 nat PREROUTING -m comment --comment kipvs-services -j KIPVS-SERVICES",
		"ipset KIPVS-NODE-PORT-TCP",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("cleanup did not report %q", want)
		}
	}
	nodePorts := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "virtual-server TCP/") && strings.HasSuffix(l, ":30280") {
			nodePorts++
		}
	}
	if nodePorts == 0 {
		t.Errorf("cleanup removed no NodePort virtual server")
	}

	after := kernelSnapshot(t)
	if strings.Contains(after, "KIPVS") || strings.Contains(after, c.web.Addr().String()) || strings.Contains(after, ":30280") {
		t.Errorf("kipvs's objects left after cleanup:\n%s", after)
	}
	if got := strings.TrimSpace(run(t, "ipvsadm", "-Sn")); got != "-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 192.0.2.2:80 -m -w 1" {
		t.Errorf("IPVS after cleanup:\n%s\nwant only the foreign 192.0.2.1:80", got)
	}
	for _, want := range []string{
		":FOREIGN", "-A FOREIGN -s 198.51.100.0/24 -j RETURN", "-A PREROUTING -j FOREIGN", ":KUBE-KUBELET-CANARY",
		":KUBE-FIREWALL", "-A INPUT -j KUBE-FIREWALL", "block incoming localnet connections", "add FOREIGN 203.0.113.7",
	} {
		if !strings.Contains(after, want) {
			t.Errorf("foreign %q removed by cleanup; kernel now:\n%s", want, after)
		}
	}
	if _, err := exec.Command("ip", "link", "show", proxier.DefaultDummyLink).CombinedOutput(); err == nil {
		t.Errorf("link %s still exists", proxier.DefaultDummyLink)
	}

	again, err := proxier.Cleanup(ctx, k, proxier.DefaultDummyLink, nil, false, nil)
	if err != nil || len(again) != 0 {
		t.Errorf("second cleanup: removed %d objects (%v), err %v; want nothing", len(again), again, err)
	}
	if got := kernelSnapshot(t); got != after {
		t.Errorf("second cleanup changed the kernel:\nbefore:\n%s\nafter:\n%s", after, got)
	}
}
