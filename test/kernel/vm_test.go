//go:build !kerneltest

package kernel

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kipvs/kipvs/test/vm"
)

// vmTimeout bounds the VM run, boot included, unless the host test's own
// deadline (go test -timeout, 10 minutes by default) comes sooner. The guest's
// -test.timeout is bootAllowance shorter, so a hung in-guest test still ends
// with a goroutine dump on the console rather than a killed VM.
const (
	vmTimeout     = 20 * time.Minute
	bootAllowance = 90 * time.Second
)

// TestKernel compiles this package's in-guest tests (tag kerneltest), runs
// them in one VM on Debian's kernel and fails unless they all pass.
// KIPVS_KERNEL_RUN focuses the run (-test.run), KIPVS_KERNEL_V sets the
// proxier's log verbosity in the guest.
func TestKernel(t *testing.T) {
	vm.RequireImage(t)
	ctx := t.Context()
	bin := filepath.Join(t.TempDir(), "kernel.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-tags", "kerneltest", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the in-guest tests: %v\n%s", err, out)
	}
	t.Logf("built the in-guest tests in %s", time.Since(start).Round(time.Millisecond))

	timeout := vmTimeout
	if d, ok := t.Deadline(); ok && time.Until(d)-10*time.Second < timeout {
		timeout = time.Until(d) - 10*time.Second
	}
	if timeout < 2*bootAllowance {
		t.Fatalf("only %s left before the test deadline: run with a longer -timeout", timeout)
	}
	args := []string{"-test.v", "-test.count=1", "-test.timeout=" + (timeout - bootAllowance).String()}
	if run := os.Getenv("KIPVS_KERNEL_RUN"); run != "" {
		args = append(args, "-test.run="+run)
	}
	var env []string
	for _, k := range []string{"KIPVS_KERNEL_V", "GOTRACEBACK"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	// The console goes to stdout live with -v; otherwise it is kept and
	// logged only when the run fails.
	var console bytes.Buffer
	var out io.Writer = &console
	if testing.Verbose() {
		out = io.MultiWriter(os.Stdout, &console)
	}
	start = time.Now()
	code, err := vm.Run(ctx, vm.Options{Binary: bin, Args: args, Env: env, Timeout: timeout, Stdout: out})
	t.Logf("VM run took %s, exit code %d", time.Since(start).Round(time.Millisecond), code)
	if err == nil && code == 0 && strings.Contains(console.String(), "\nPASS\n") {
		return
	}
	if !testing.Verbose() {
		t.Logf("guest console:\n%s", console.String())
	}
	failed := regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`).FindAllStringSubmatch(console.String(), -1)
	var names []string
	for _, m := range failed {
		names = append(names, m[1])
	}
	t.Fatalf("in-guest tests failed (exit code %d, err %v); failed tests: %v", code, err, names)
}
