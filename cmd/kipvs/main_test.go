package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// binary is the kipvs binary that TestMain builds with version testVersion.
var binary string

const testVersion = "v0.0.0-test"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kipvs-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "kipvs")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+testVersion, "-o", binary, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// kipvs runs the binary with args and returns its exit code, stdout and stderr.
func kipvs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	// No in-cluster configuration, whatever the environment of the test.
	cmd.Env = append(os.Environ(), "KUBERNETES_SERVICE_HOST=", "KUBERNETES_SERVICE_PORT=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kipvs %q did not exit within a minute\nstderr:\n%s", args, stderr.String())
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("run kipvs %q: %v", args, err)
	return 0, "", ""
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := kipvs(t, "version")
	want := fmt.Sprintf("kipvs %s (%s, %s/%s)\n", testVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if code != 0 || stdout != want {
		t.Errorf("kipvs version: exit %d, stdout %q, stderr %q; want exit 0 and %q", code, stdout, stderr, want)
	}
}

// ipvsFailure is what the IPVS probe must report on this host, or "" when the
// probe can succeed here (IPVS loaded and running as root).
func ipvsFailure() string {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return "IPVS is not available in this kernel: load the modules with `modprobe -a ip_vs ip_vs_rr"
	}
	if os.Geteuid() != 0 {
		return "kipvs needs CAP_NET_ADMIN (run as root or grant the capability)"
	}
	return ""
}

// TestStartupOrder checks that kipvs fails on configuration, then on IPVS,
// before it contacts the API server: 127.0.0.1:1 never answers, so any attempt
// would show as a "Waiting for the API server" line.
func TestStartupOrder(t *testing.T) {
	badMode := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(badMode, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noAPI := []string{"--master=http://127.0.0.1:1", "--hostname-override=test-node"}
	tests := []struct {
		name string
		args []string
		// want is expected in stderr; "ipvs" stands for ipvsFailure().
		want string
	}{
		{name: "bad scheduler", args: append([]string{"--ipvs-scheduler=fastest"}, noAPI...), want: `unknown IPVS scheduler "fastest"`},
		{name: "iptables mode in the config file", args: append([]string{"--config=" + badMode}, noAPI...), want: `proxy mode "iptables" is not supported`},
		{name: "unknown flag", args: []string{"--proxy-mode-typo=ipvs"}, want: "unknown flag: --proxy-mode-typo"},
		{name: "stray argument", args: []string{"run"}, want: `unknown command "run"`},
		{name: "IPVS checked before the API server", args: noAPI, want: "ipvs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == "ipvs" {
				if want = ipvsFailure(); want == "" {
					t.Skip("this host has IPVS and runs as root, so the probe succeeds and kipvs would go on to the API server; the VM tests in test/ cover that path")
				}
			}
			code, _, stderr := kipvs(t, tt.args...)
			if code == 0 {
				t.Fatalf("kipvs %q exited 0, want a failure\nstderr:\n%s", tt.args, stderr)
			}
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr does not contain %q:\n%s", want, stderr)
			}
			if strings.Contains(stderr, "Waiting for the API server") {
				t.Errorf("kipvs contacted the API server before failing:\n%s", stderr)
			}
		})
	}
}
