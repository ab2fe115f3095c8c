// Command demo shows kipvs end to end in a couple of minutes: it starts a
// local etcd + kube-apiserver (test/apiserver), applies deploy/, boots the
// test VM (test/vm) and runs the in-guest demo there (TestDemo in test/e2e):
// kipvs with the ServiceAccount token of deploy/, three echo pods, a ClusterIP
// and a NodePort Service, traffic through both, `ipvsadm -Ln` and
// `ip addr show kube-ipvs0`. It then prints a short summary and stops
// everything it started.
//
//	go run ./test/demo      (or make demo)
//
// It needs the API server binaries (test/apiserver/build.sh) and qemu; the VM
// image is built on first use.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kipvs/kipvs/test/apiserver"
	"github.com/kipvs/kipvs/test/e2e"
	"github.com/kipvs/kipvs/test/vm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := demo(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context) (err error) {
	start := time.Now()
	if reason, ok := apiserver.Available(); !ok {
		return fmt.Errorf("%s", reason)
	}
	if reason, ok := vm.Available(); !ok {
		return fmt.Errorf("cannot run the VM: %s", reason)
	}
	dir, err := os.MkdirTemp("", "kipvs-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	logf("starting etcd and kube-apiserver")
	s, err := apiserver.Start(ctx, apiserver.Options{})
	if err != nil {
		return fmt.Errorf("start the API server: %w", err)
	}
	defer func() {
		if serr := s.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop the API server: %w", serr)
		}
	}()
	logf("API server %s ready; applying deploy/ and building kipvs", s.URL)
	h, err := e2e.Prepare(ctx, s, dir, logf)
	if err != nil {
		return err
	}

	logf("booting the VM (guest reaches the API server at %s only)", h.GuestServer)
	var console bytes.Buffer
	vmStart := time.Now()
	code, err := h.RunGuest(ctx, []string{"-test.run=^TestDemo$", "-test.count=1", "-test.timeout=3m"},
		[]string{e2e.DemoEnv + "=1", "KIPVS_E2E_KIPVS_V=0"}, 5*time.Minute, io.MultiWriter(os.Stdout, &console))
	vmTime := time.Since(vmStart)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("the in-guest demo failed with exit code %d (console above)", code)
	}
	fmt.Println("\n=== summary ===")
	for _, line := range strings.Split(console.String(), "\n") {
		if after, ok := strings.CutPrefix(line, "demo: answered: "); ok {
			fmt.Println(after)
		}
	}
	fmt.Printf("VM run %s, total %s; API server stopped, VM powered off\n",
		vmTime.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	return nil
}

func logf(format string, args ...any) {
	fmt.Printf("demo: "+format+"\n", args...)
}
