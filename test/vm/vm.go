// Package vm boots Debian's cloud kernel in qemu from an initramfs and runs a
// static test binary inside it as root, so that tests can use the real IPVS,
// netfilter, ipset and network namespace code that the host kernel lacks.
//
// The base image (kernel + initramfs with iproute2, ipvsadm, ipset,
// iptables-nft, nft, conntrack, busybox and the netfilter/IPVS modules) is
// built once into ${KIPVS_CACHE:-$HOME/.cache/kipvs}/vm by EnsureImage. Each
// Run appends a small cpio with the binary and its run configuration to it and
// boots a fresh VM; see README.md.
package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exit codes Run returns when the guest binary did not produce one.
const (
	// ExitTimeout is returned when the run exceeded Options.Timeout or ctx ended.
	ExitTimeout = 124
	// ExitNoMarker is returned when the guest stopped without reporting the
	// binary's exit status (panic, broken init, qemu failure).
	ExitNoMarker = 125
)

// Options describe one VM run.
type Options struct {
	// Binary is the host path of the program to run as root in the guest,
	// ideally static (CGO_ENABLED=0). It is copied to /kipvs/bin/.
	Binary string
	// Args are passed to the binary.
	Args []string
	// Env is the binary's extra environment ("K=V"); PATH, HOME and TMPDIR are set.
	Env []string
	// Files maps host paths (files or directories) to absolute guest paths.
	// Guest paths under /proc, /sys and /dev are hidden by mounts and rejected.
	Files map[string]string
	// Dir is the binary's working directory in the guest (created if
	// missing); default /root.
	Dir string
	// Timeout bounds the whole run, boot included; default 5 minutes.
	Timeout time.Duration
	// MemoryMB is the guest RAM; default 512 (128 cannot unpack the initramfs).
	MemoryMB int
	// Network gives the guest a NIC whose only reachable destination is one
	// relay to a host loopback address; nil means no NIC at all.
	Network *Network
	// Stdout receives the guest console (test output), with \r removed and
	// the exit marker filtered out; nil discards it.
	Stdout io.Writer
}

// Network is the guest's single, restricted way out: the guest connects to
// 10.0.2.100:ForwardPort and qemu runs our relay, which dials HostAddr.
// The guest has eth0 10.0.2.15/24 and no default route.
type Network struct {
	// ForwardPort is the port on 10.0.2.100 the guest connects to.
	ForwardPort int
	// HostAddr is the host loopback address ("127.0.0.1:port") the relay dials.
	HostAddr string
}

// GuestForwardIP is the guest-side address of the forward.
const GuestForwardIP = "10.0.2.100"

// Run boots a VM, runs opts.Binary in it and returns its exit status, or
// ExitTimeout / ExitNoMarker with a non-nil error.
func Run(ctx context.Context, opts Options) (exitCode int, err error) {
	if err := validate(&opts); err != nil {
		return -1, err
	}
	img, err := EnsureImage(ctx)
	if err != nil {
		return -1, fmt.Errorf("vm image: %w", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return -1, err
	}
	nonce := newNonce()
	initrd, err := runInitrd(img, opts, nonce)
	if err != nil {
		return -1, err
	}
	defer os.Remove(initrd)
	args := qemuArgs(img, initrd, opts.MemoryMB)
	if opts.Network != nil {
		relay, err := relayBinary(ctx)
		if err != nil {
			return -1, err
		}
		netdev := fmt.Sprintf("user,id=n0,restrict=on,ipv6=off,guestfwd=tcp:%s:%d-cmd:%s %s", GuestForwardIP,
			opts.Network.ForwardPort, strings.ReplaceAll(relay, ",", ",,"), opts.Network.HostAddr)
		args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=")
	}
	return runQEMU(ctx, qemu, args, nonce, opts)
}

func validate(opts *Options) error {
	if opts.Binary == "" {
		return errors.New("vm: Options.Binary is empty")
	}
	if st, err := os.Stat(opts.Binary); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("vm: binary %q is not a regular file: %v", opts.Binary, err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	if opts.MemoryMB <= 0 {
		opts.MemoryMB = 512
	}
	if opts.Dir == "" {
		opts.Dir = "/root"
	}
	if !filepath.IsAbs(opts.Dir) {
		return fmt.Errorf("vm: Dir %q is not absolute", opts.Dir)
	}
	for host, guest := range opts.Files {
		if !filepath.IsAbs(guest) || hiddenGuestPath(guest) {
			return fmt.Errorf("vm: guest path %q for %s must be absolute and outside /proc, /sys, /dev", guest, host)
		}
	}
	if n := opts.Network; n != nil {
		if n.ForwardPort <= 0 || n.ForwardPort > 65535 {
			return fmt.Errorf("vm: bad ForwardPort %d", n.ForwardPort)
		}
		host, _, err := net.SplitHostPort(n.HostAddr)
		if err != nil {
			return fmt.Errorf("vm: bad HostAddr %q: %w", n.HostAddr, err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("vm: HostAddr %q must be a loopback IP: the relay only reaches this machine", n.HostAddr)
		}
	}
	for _, e := range opts.Env {
		if !strings.Contains(e, "=") {
			return fmt.Errorf("vm: Env entry %q is not K=V", e)
		}
	}
	return nil
}

func hiddenGuestPath(p string) bool {
	p = filepath.Clean(p)
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func newNonce() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// kvmUsable reports whether hardware virtualization is really there: on these
// machines /dev/kvm exists (kvm-pvm) but stock kernels crawl or abort on it.
func kvmUsable() bool {
	if os.Getenv("KIPVS_VM_NO_KVM") == "1" {
		return false
	}
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false
	}
	flags := " " + strings.ReplaceAll(string(cpuinfo), "\t", " ") + " "
	if !strings.Contains(flags, " vmx ") && !strings.Contains(flags, " svm ") {
		return false
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func qemuArgs(img Image, initrd string, memMB int) []string {
	accel := []string{"-accel", "tcg,thread=multi", "-cpu", "max"}
	if kvmUsable() {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	args := append(accel,
		"-M", "pc", "-m", strconv.Itoa(memMB)+"M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", initrd,
		"-append", kernelCmdline(),
	)
	return args
}

// kernelCmdline is the guest kernel command line. The i8042 options skip
// probing a PS/2 controller the VM does not need.
func kernelCmdline() string {
	cmdline := "console=ttyS0 panic=-1 oops=panic i8042.noaux i8042.nokbd i8042.nopnp 8250.nr_uarts=1 tsc=reliable no_timer_check"
	if debug() {
		return cmdline + " printk.time=1"
	}
	return cmdline + " quiet loglevel=3"
}

// debug is set by KIPVS_VM_DEBUG=1: kernel messages and init stage timings
// appear on the console.
func debug() bool { return os.Getenv("KIPVS_VM_DEBUG") == "1" }

// runQEMU runs qemu in its own process group, streams the console and parses
// the exit marker. On timeout the whole group (qemu and any relay) is killed.
func runQEMU(ctx context.Context, qemu string, args []string, nonce string, opts Options) (int, error) {
	cmd := exec.Command(qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return -1, err
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start qemu: %w", err)
	}
	con := newConsole(opts.Stdout, "KIPVS-EXIT-"+nonce+" ")
	copied := make(chan error, 1)
	go func() { _, err := io.Copy(con, stdout); copied <- err }()
	waited := make(chan error, 1)
	go func() { <-copied; waited <- cmd.Wait() }()

	timer := time.NewTimer(opts.Timeout)
	defer timer.Stop()
	var timeoutErr error
	select {
	case err = <-waited:
	case <-timer.C:
		timeoutErr = fmt.Errorf("vm: run exceeded %s", opts.Timeout)
	case <-ctx.Done():
		timeoutErr = fmt.Errorf("vm: %w", ctx.Err())
	}
	if timeoutErr != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waited
		con.Flush()
		return ExitTimeout, timeoutErr
	}
	con.Flush()
	if code, ok := con.ExitCode(); ok {
		return code, nil
	}
	return ExitNoMarker, fmt.Errorf("vm: %w (qemu: %v)\nqemu stderr: %s\nlast console lines:\n%s",
		errNoMarker, err, strings.TrimSpace(stderr.String()), con.Tail())
}
