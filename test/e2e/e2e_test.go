//go:build !e2etest

package e2e

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kipvs/kipvs/test/apiserver"
	"github.com/kipvs/kipvs/test/vm"
)

// guestTimeout bounds the in-guest tests (-test.timeout); the VM gets two
// more minutes for booting and a stuck guest. The whole in-guest run takes
// some 12-15 minutes under TCG (the restart, outage and churn tests are the
// long ones), so `go test` needs -timeout above go's default 10m: make test
// uses 45m.
const guestTimeout = 25 * time.Minute

// TestE2E runs the in-guest end-to-end tests in one VM against an API server
// on this host, and fails unless they all pass.
func TestE2E(t *testing.T) {
	apiserver.RequireBinaries(t)
	vm.RequireImage(t)
	s := apiserver.ForTest(t, apiserver.Options{})
	h, err := Prepare(t.Context(), s, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	checkServiceAccountAccess(t, s)

	args := []string{"-test.v", "-test.count=1", "-test.timeout=" + guestTimeout.String()}
	if run := os.Getenv("KIPVS_E2E_RUN"); run != "" {
		args = append(args, "-test.run="+run)
	}
	var env []string
	for _, k := range []string{"GOTRACEBACK", OutageEnv} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	timeout := guestTimeout + 2*time.Minute
	if d, ok := t.Deadline(); ok && time.Until(d)-10*time.Second < timeout {
		timeout = time.Until(d) - 10*time.Second
	}
	// The console goes to stdout live with -v; otherwise it is kept and
	// logged only when the run fails.
	var console bytes.Buffer
	var out io.Writer = &console
	if testing.Verbose() {
		out = io.MultiWriter(os.Stdout, &console)
	}
	start := time.Now()
	code, err := h.RunGuest(t.Context(), args, env, timeout, out)
	t.Logf("VM run took %s, exit code %d", time.Since(start).Round(time.Millisecond), code)
	if err == nil && code == 0 && strings.Contains(console.String(), "\nPASS\n") {
		return
	}
	if !testing.Verbose() {
		t.Logf("guest console:\n%s", console.String())
	}
	var failed []string
	for _, m := range regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`).FindAllStringSubmatch(console.String(), -1) {
		failed = append(failed, m[1])
	}
	t.Fatalf("in-guest tests failed (exit code %d, err %v); failed tests: %v", code, err, failed)
}
