//go:build e2etest

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kipvs/kipvs/ipvs"
)

// vmMarker is written by test/vm for every run; these tests refuse to run
// where it is missing, since they flush IPVS state and create links.
const vmMarker = "/kipvs/run.conf"

// nodeName is kipvs's --hostname-override; a Node of that name is created.
const nodeName = "e2e-node"

// kipvsArgs are the flags of every kipvs the tests start, after --kubeconfig;
// KIPVS_E2E_KIPVS_V overrides the log verbosity (default 2: a line per sync).
func kipvsArgs() []string {
	v := "2"
	if s := os.Getenv("KIPVS_E2E_KIPVS_V"); s != "" {
		v = s
	}
	return []string{"--hostname-override", nodeName, "--min-sync-period", "200ms", "--sync-period", "10s", "-v=" + v}
}

var (
	// admin is the test driver's client (system:masters).
	admin kubernetes.Interface
	// proxy is the kipvs that TestMain started; TestRBAC replaces it for a while.
	proxy *kipvsProcess
)

func TestMain(m *testing.M) {
	if _, err := os.Stat(vmMarker); err != nil {
		fmt.Fprintf(os.Stderr, "e2e tests: refusing to run outside the kipvs test VM (%s: %v); "+
			"run `go test ./test/e2e` without -tags e2etest instead\n", vmMarker, err)
		os.Exit(1)
	}
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e setup: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if proxy != nil {
		if err := proxy.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kipvs did not stop cleanly on SIGTERM: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// setup builds the admin client, registers the Node and starts kipvs. The VM's
// /init already gave eth0 10.0.2.15/24 (no default route) and set ip_forward
// and vs/conntrack.
func setup() error {
	if err := checkNodeIP(); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", GuestAdminKubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	if admin, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Node %s: %w", nodeName, err)
	}
	proxy, err = startKipvs("kipvs", GuestKipvsKubeconfig)
	if err != nil {
		return err
	}
	return waitKipvsReady(ctx, proxy)
}

// checkNodeIP checks that eth0 has nodeIP, as the VM's /init configures it
// when the VM has a NIC.
func checkNodeIP() error {
	eth0, err := net.InterfaceByName("eth0")
	if err != nil {
		return fmt.Errorf("no eth0 (the VM needs vm.Options.Network): %w", err)
	}
	addrs, err := eth0.Addrs()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == nodeIP {
			return nil
		}
	}
	return fmt.Errorf("eth0 has %v, not %s", addrs, nodeIP)
}

// waitKipvsReady waits until kipvs has programmed the virtual server of
// Service default/kubernetes, which the API server always has: then kipvs has
// synced its caches, and its signal handler is installed.
func waitKipvsReady(ctx context.Context, p *kipvsProcess) error {
	svc, err := admin.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("Service default/kubernetes: %w", err)
	}
	key := ipvs.VirtualServerKey{Address: addr, Protocol: ipvs.TCP, Port: uint16(svc.Spec.Ports[0].Port)}
	r, err := ipvs.New()
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		if done, err := p.Exited(); done {
			return fmt.Errorf("%s exited before it was ready: %v", p.name, err)
		}
		vss, err := r.Dump(ctx)
		if err != nil {
			return err
		}
		for _, vs := range vss {
			if vs.VirtualServerKey == key && firstFullSyncDone() {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not program %s: %w", p.name, key, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// firstFullSyncDone reports whether kipvs's metrics count a successful full
// sync. The virtual servers appear before the sync ends (netfilter comes after
// IPVS, and under emulation the first iptables setup takes many seconds), so a
// test that starts earlier would measure the first sync instead of its change.
func firstFullSyncDone() bool {
	resp, err := http.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `kipvs_syncs_total{kind="full",result="success"} `); ok {
			return v != "0"
		}
	}
	return false
}

// kipvsProcess is a kipvs subprocess whose log goes to the console, each line
// prefixed, and is kept for assertions.
type kipvsProcess struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, once done is closed

	mu  sync.Mutex
	log bytes.Buffer
}

// startKipvs starts GuestKipvs with kubeconfig and kipvsArgs.
func startKipvs(name, kubeconfig string) (*kipvsProcess, error) {
	return startKipvsWith(name, kubeconfig)
}

// startKipvsWith is startKipvs with extra flags after kipvsArgs (a repeated
// flag's last value wins, so "-v=6" overrides the default verbosity).
func startKipvsWith(name, kubeconfig string, extra ...string) (*kipvsProcess, error) {
	p := &kipvsProcess{name: name, done: make(chan struct{})}
	args := append([]string{"--kubeconfig", kubeconfig}, kipvsArgs()...)
	p.cmd = exec.Command(GuestKipvs, append(args, extra...)...)
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kipvs: %w", err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			fmt.Fprintf(os.Stdout, "%s| %s\n", p.name, sc.Text())
			p.mu.Lock()
			p.log.Write(sc.Bytes())
			p.log.WriteByte('\n')
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	go func() {
		p.err = p.cmd.Wait()
		w.Close()
		<-copied
		close(p.done)
	}()
	return p, nil
}

// Log returns everything kipvs has logged so far.
func (p *kipvsProcess) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Exited returns the exit status once kipvs has ended.
func (p *kipvsProcess) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits up to 15 s (then SIGKILL). It returns an error
// unless kipvs exited with status 0, as it must on SIGTERM.
func (p *kipvsProcess) Stop() error {
	if done, err := p.Exited(); done {
		return fmt.Errorf("%s had already exited: %v", p.name, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New(p.name + " did not exit within 15s of SIGTERM; killed")
	}
}

// requireKipvs fails t when the shared kipvs is not running.
func requireKipvs(t *testing.T) {
	t.Helper()
	if proxy == nil {
		t.Fatal("kipvs is not running")
	}
	if done, err := proxy.Exited(); done {
		t.Fatalf("kipvs exited: %v", err)
	}
}

// Kill sends SIGKILL and waits for kipvs to end; the kernel keeps whatever
// kipvs programmed.
func (p *kipvsProcess) Kill() error {
	if done, err := p.Exited(); done {
		return fmt.Errorf("%s had already exited: %v", p.name, err)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		return err
	}
	<-p.done
	return nil
}

// stopSharedKipvs stops the shared kipvs for the rest of t (a test that runs
// its own kipvs) and starts a fresh one with the default flags when t ends.
// The test must stop its own kipvs before then: two would fight over the
// kernel and the ports.
func stopSharedKipvs(t *testing.T) {
	t.Helper()
	requireKipvs(t)
	shared := proxy
	proxy = nil
	t.Cleanup(func() {
		p, err := startKipvs("kipvs", GuestKipvsKubeconfig)
		if err != nil {
			t.Fatalf("restart the shared kipvs: %v", err)
		}
		proxy = p
		ctx, cancel := context.WithTimeout(context.Background(), converge)
		defer cancel()
		if err := waitKipvsReady(ctx, p); err != nil {
			t.Fatal(err)
		}
	})
	if err := shared.Stop(); err != nil {
		t.Fatalf("stop the shared kipvs: %v", err)
	}
}
