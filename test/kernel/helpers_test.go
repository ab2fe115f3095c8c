//go:build kerneltest

package kernel

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// vmMarker is written by test/vm for every run; its presence tells the guest
// apart from a host, where these tests would flush the host's IPVS table.
const vmMarker = "/kipvs/run.conf"

// bg is the context of kernel calls made in cleanups and small closures.
var bg = context.Background()

func TestMain(m *testing.M) {
	if _, err := os.Stat(vmMarker); err != nil {
		fmt.Fprintf(os.Stderr, "kernel tests: refusing to run outside the kipvs test VM (%s: %v); "+
			"run `go test ./test/kernel` without -tags kerneltest instead\n", vmMarker, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// testContext returns a context whose klog logger writes to t at the
// verbosity of KIPVS_KERNEL_V (default 2: one line per sync).
func testContext(t *testing.T) context.Context {
	v := 2
	if s := os.Getenv("KIPVS_KERNEL_V"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			v = n
		}
	}
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(v)))
	return klog.NewContext(t.Context(), logger)
}

// newReal opens ipvs.Real and probes it. The kernel must have IPVS: a missing
// family fails the test (these tests only run in the VM, where it must work).
// The IPVS table must be empty at the start, and is flushed when the test
// ends, together with the dummy link kube-ipvs0 (left by proxier tests).
func newReal(t *testing.T) *ipvs.Real {
	t.Helper()
	r, err := ipvs.New()
	if err != nil {
		t.Fatalf("ipvs.New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	if err := r.Probe(t.Context()); err != nil {
		t.Fatalf("IPVS probe failed on the VM's kernel: %v", err)
	}
	if out := ipvsadm(t, "-Sn"); strings.TrimSpace(out) != "" {
		t.Fatalf("IPVS table not empty at the start (a previous test leaked it):\n%s", out)
	}
	t.Cleanup(func() { flushKernel(t) })
	return r
}

// flushKernel empties the IPVS table and deletes kube-ipvs0.
func flushKernel(t *testing.T) {
	t.Helper()
	ipvsadm(t, "-C")
	if l, err := netlink.LinkByName(proxier.DefaultDummyLink); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			t.Errorf("delete %s: %v", proxier.DefaultDummyLink, err)
		}
	}
}

// ipvsadm runs the real ipvsadm and fails the test when it fails.
func ipvsadm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ipvsadm", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ipvsadm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dumpText returns the kernel's table in ipvs.FormatDump text; with counters
// false the connection counters are left out, so the text does not depend on
// traffic.
func dumpText(t *testing.T, ipv ipvs.Interface, counters bool) string {
	t.Helper()
	vss, err := ipv.Dump(t.Context())
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	if !counters {
		for i := range vss {
			for j := range vss[i].RealServers {
				vss[i].RealServers[j].ActiveConns, vss[i].RealServers[j].InactiveConns = 0, 0
			}
		}
	}
	return ipvs.FormatDump(vss)
}

// waitFor polls cond every 100ms until it returns nil, and fails the test with
// cond's last error after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test context ended waiting for %s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
