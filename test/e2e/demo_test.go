//go:build e2etest

package e2e

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
)

// demoRequests is how many requests the demo sends to each Service.
const demoRequests = 30

// TestDemo is the guest half of `go run ./test/demo` (skipped unless
// KIPVS_E2E_DEMO=1): three pods, a ClusterIP and a NodePort Service with
// hand-made EndpointSlices, traffic through both, then the kernel's view.
// Its output goes to the console with a "demo: " prefix; the host picks the
// "demo: answered" lines for its summary.
func TestDemo(t *testing.T) {
	if os.Getenv(DemoEnv) != "1" {
		t.Skipf("demo only (%s=1, set by go run ./test/demo)", DemoEnv)
	}
	pods := []string{"pod-a", "pod-b", "pod-c"}
	e := newEnv(t, pods...)
	for _, p := range pods {
		demof("pod %s at %s serves TCP/UDP echo on :%d", p, e.pods[p].IP, echoPort)
	}
	web := e.createService("web")
	e.setSlice("web-1", "web", httpPorts, pods...)
	np := e.createService("web-nodeport", nodePort)
	e.setSlice("web-nodeport-1", "web-nodeport", httpPorts, pods...)
	nodeTo := netip.AddrPortFrom(netip.MustParseAddr(nodeIP), nodePortOf(t, np, 0))
	demof("Service %s/web: ClusterIP %s", e.ns, vip(t, web, 80))
	demof("Service %s/web-nodeport: NodePort %s (ClusterIP %s)", e.ns, nodeTo, vip(t, np, 80))

	for _, c := range []struct {
		what string
		to   netip.AddrPort
	}{{"ClusterIP", vip(t, web, 80)}, {"NodePort", nodeTo}} {
		waitAnswering(t, tcp, c.to, pods...)
		counts, err := answering(t.Context(), tcp, c.to, demoRequests)
		if err != nil {
			t.Fatalf("%s: %v", c.what, err)
		}
		var parts []string
		for _, p := range slices.Sorted(maps.Keys(counts)) {
			parts = append(parts, fmt.Sprintf("%s=%d", p, counts[p]))
		}
		demof("answered: %d TCP connections to %s %s: %s", demoRequests, c.what, c.to, strings.Join(parts, " "))
	}
	fmt.Printf("\n$ ipvsadm -Ln\n%s\n$ ip addr show kube-ipvs0\n%s\n", run(t, "ipvsadm", "-Ln"), run(t, "ip", "addr", "show", "kube-ipvs0"))
}

func demof(format string, args ...any) {
	fmt.Printf("demo: "+format+"\n", args...)
}
