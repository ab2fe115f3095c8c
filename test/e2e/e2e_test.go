//go:build !e2etest

package e2e

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
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

// Guest variables for the long forms, passed into the guest like OutageEnv.
const (
	// churnEnv is TestChurnMemory's run time (a Go duration, default
	// defaultChurn; the long form is 10m or more).
	churnEnv = "KIPVS_E2E_CHURN"
	// bulkEnv is how many Services TestHostileAccepted's bulk case creates at
	// once (default defaultBulk; the full form is 20000).
	bulkEnv = "KIPVS_E2E_BULK"
)

// Defaults of the in-guest tests for churnEnv and bulkEnv (copies of
// churn_test.go's and hostile_test.go's, which build only for the guest), and
// the time one bulk Service beyond the default may add to the run: created,
// programmed, deleted and waited for, within twice hostile_test.go's
// bulkBound (~60 ms a Service measured under TCG).
const (
	defaultChurn   = 2 * time.Minute
	defaultBulk    = 2000
	perBulkService = 100 * time.Millisecond
)

// guestTimeoutFor is guestTimeout plus what a long churn run or a large bulk
// asks for beyond their defaults; malformed values are left to the guest
// tests to refuse. go test's -timeout must grow by as much (TestE2E cuts the
// VM's time to the test deadline).
func guestTimeoutFor(getenv func(string) string) time.Duration {
	d := guestTimeout
	if c, err := time.ParseDuration(getenv(churnEnv)); err == nil && c > defaultChurn {
		d += c - defaultChurn
	}
	if n, err := strconv.Atoi(getenv(bulkEnv)); err == nil && n > defaultBulk {
		d += time.Duration(n-defaultBulk) * perBulkService
	}
	return d
}

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

	guest := guestTimeoutFor(os.Getenv)
	args := []string{"-test.v", "-test.count=1", "-test.timeout=" + guest.String()}
	if run := os.Getenv("KIPVS_E2E_RUN"); run != "" {
		args = append(args, "-test.run="+run)
	}
	var env []string
	for _, k := range []string{"GOTRACEBACK", OutageEnv, churnEnv, bulkEnv} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	timeout := guest + 2*time.Minute
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

// TestGuestTimeoutFor: the default forms keep guestTimeout; a long churn run
// and a large bulk add their excess; values the guest refuses add nothing.
func TestGuestTimeoutFor(t *testing.T) {
	for _, c := range []struct {
		churn, bulk string
		want        time.Duration
	}{
		{"", "", guestTimeout},
		{"2m", "2000", guestTimeout},
		{"12m", "", guestTimeout + 10*time.Minute},
		{"", "20000", guestTimeout + 18000*perBulkService},
		{"30m", "20000", guestTimeout + 28*time.Minute + 18000*perBulkService},
		{"forever", "many", guestTimeout},
	} {
		env := map[string]string{churnEnv: c.churn, bulkEnv: c.bulk}
		if got := guestTimeoutFor(func(k string) string { return env[k] }); got != c.want {
			t.Errorf("%s=%q %s=%q: guest timeout %s, want %s", churnEnv, c.churn, bulkEnv, c.bulk, got, c.want)
		}
	}
}
