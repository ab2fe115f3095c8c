package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var guestcheck struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if guestcheck.dir != "" {
		os.RemoveAll(guestcheck.dir)
	}
	os.Exit(code)
}

// guestcheckBinary builds internal/guestcheck static, once per test process.
func guestcheckBinary(t testing.TB) string {
	t.Helper()
	guestcheck.once.Do(func() {
		guestcheck.dir, guestcheck.err = os.MkdirTemp("", "kipvs-guestcheck-")
		if guestcheck.err != nil {
			return
		}
		guestcheck.path = filepath.Join(guestcheck.dir, "guestcheck")
		cmd := exec.Command("go", "build", "-o", guestcheck.path, "./internal/guestcheck")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			guestcheck.err = fmt.Errorf("build guestcheck: %v\n%s", err, out)
		}
	})
	if guestcheck.err != nil {
		t.Fatal(guestcheck.err)
	}
	return guestcheck.path
}

// runGuest runs guestcheck with args in a VM and returns its exit code,
// error and console output.
func runGuest(t *testing.T, opts Options, args ...string) (int, error, string) {
	t.Helper()
	RequireImage(t)
	var out bytes.Buffer
	opts.Binary = guestcheckBinary(t)
	opts.Args = args
	opts.Stdout = &out
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	code, err := Run(context.Background(), opts)
	t.Logf("guest console:\n%s", out.String())
	return code, err, out.String()
}

func TestGuestKernel(t *testing.T) {
	code, err, out := runGuest(t, Options{}, "kernel")
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, err %v; want 0", code, err)
	}
	for _, want := range []string{"TCP  10.96.0.1:80 rr", "10.0.0.7:8080", "guestcheck: OK"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if strings.Contains(out, "KIPVS-EXIT-") {
		t.Errorf("exit marker leaked into the console output")
	}
}

func TestExitCodePassesThrough(t *testing.T) {
	code, err, _ := runGuest(t, Options{Env: []string{"X=a'b"}}, "exit", "3")
	if err != nil || code != 3 {
		t.Fatalf("exit code %d, err %v; want 3 and no error", code, err)
	}
}

func TestTimeoutKillsGuest(t *testing.T) {
	const timeout = 20 * time.Second
	start := time.Now()
	code, err, _ := runGuest(t, Options{Timeout: timeout}, "sleep")
	if code != ExitTimeout || err == nil {
		t.Fatalf("exit code %d, err %v; want %d and an error", code, err, ExitTimeout)
	}
	if took := time.Since(start); took > timeout+30*time.Second {
		t.Errorf("Run returned %s after a %s timeout: qemu was not killed promptly", took, timeout)
	}
}

func TestGuestPanicHasNoMarker(t *testing.T) {
	code, err, _ := runGuest(t, Options{}, "panic")
	if code != ExitNoMarker || err == nil || !strings.Contains(err.Error(), "exit marker") {
		t.Fatalf("exit code %d, err %v; want %d and a missing-marker error", code, err, ExitNoMarker)
	}
}

// TestNetworkOnlyReachesRelay checks the guest reaches the host listener
// through the forward and nothing else: not the slirp gateway (which would
// be the host itself without restrict=on), not an outside address.
func TestNetworkOnlyReachesRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if line, err := bufio.NewReader(c).ReadString('\n'); err == nil && line == "ping\n" {
					fmt.Fprint(c, "pong\n")
				}
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	opts := Options{Network: &Network{ForwardPort: port, HostAddr: ln.Addr().String()}}
	forward := fmt.Sprintf("%s:%d", GuestForwardIP, port)
	denied := []string{
		fmt.Sprintf("10.0.2.2:%d", port),             // slirp's host alias
		fmt.Sprintf("%s:%d", GuestForwardIP, port+1), // not forwarded
		"1.1.1.1:80", // outside; no default route
	}
	code, err, out := runGuest(t, opts, append([]string{"net", forward}, denied...)...)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d, err %v; want 0", code, err)
	}
	for _, d := range denied {
		if !strings.Contains(out, d+" unreachable") {
			t.Errorf("console does not show %s as unreachable", d)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("host listener accepted %d connections, want exactly 1 (through the relay)", n)
	}
}

func TestRunRejectsNonLoopbackHost(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"10.0.0.1:80", "example.com:80", "0.0.0.0:80"} {
		_, err := Run(context.Background(), Options{Binary: bin, Network: &Network{ForwardPort: 80, HostAddr: host}})
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("HostAddr %s: err %v, want a loopback error", host, err)
		}
	}
}

// BenchmarkWarmCycle measures one VM run with a cached image (boot, module
// preload, a binary that exits at once, power-off). qemu-cpu-s/op is the CPU
// time qemu used, which varies less than wall time on a shared machine.
func BenchmarkWarmCycle(b *testing.B) {
	RequireImage(b)
	bin := guestcheckBinary(b)
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &r0)
	for b.Loop() {
		code, err := Run(context.Background(), Options{Binary: bin, Args: []string{"exit", "0"}, Timeout: 3 * time.Minute})
		if err != nil || code != 0 {
			b.Fatalf("exit code %d, err %v", code, err)
		}
	}
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &r1)
	cpu := time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
	b.ReportMetric(cpu.Seconds()/float64(b.N), "qemu-cpu-s/op")
}
