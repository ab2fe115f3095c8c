package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kipvs/kipvs/test/apiserver"
	"github.com/kipvs/kipvs/test/vm"
)

// Guest paths of the files Harness.RunGuest copies into the VM.
const (
	// GuestKipvs is the static kipvs binary.
	GuestKipvs = "/e2e/kipvs"
	// GuestKipvsKubeconfig authenticates as ServiceAccount kube-system/kipvs,
	// so kipvs runs with exactly the permissions of deploy/.
	GuestKipvsKubeconfig = "/e2e/kipvs.kubeconfig"
	// GuestAdminKubeconfig is for the test driver, which creates Services,
	// EndpointSlices and namespaces (system:masters).
	GuestAdminKubeconfig = "/e2e/admin.kubeconfig"
)

// Namespace and name of kipvs's ServiceAccount in deploy/.
const (
	ServiceAccountNamespace = "kube-system"
	ServiceAccountName      = "kipvs"
)

// DemoEnv, set to 1 in the guest, makes the in-guest TestDemo run instead of skipping.
const DemoEnv = "KIPVS_E2E_DEMO"

// OutageEnv sets how long the in-guest TestAPIServerOutage keeps the API
// server away from kipvs (a Go duration, default 20s; the full form is 60s).
// TestE2E passes it into the guest.
const OutageEnv = "KIPVS_E2E_OUTAGE"

// Harness is an API server prepared for kipvs in the test VM: deploy/ applied,
// kubeconfigs for the guest written, kipvs and the in-guest test binary built.
type Harness struct {
	// Server is the API server; the guest reaches it at GuestServer.
	Server *apiserver.Server
	// Root is the repository root (the directory of go.mod).
	Root string
	// KipvsBinary and GuestBinary are the static binaries built for the VM.
	KipvsBinary, GuestBinary string
	// KipvsKubeconfig (ServiceAccount token) and AdminKubeconfig are host
	// paths of the guest's kubeconfigs; both use GuestServer.
	KipvsKubeconfig, AdminKubeconfig string
	// GuestServer is the API server URL inside the VM (the relay on 10.0.2.100).
	GuestServer string
}

// Prepare readies s for an end-to-end run: it creates kube-system if missing,
// applies deploy/ with kubectl (after a server-side dry run), gets a token for
// the kipvs ServiceAccount from the TokenRequest API, writes the guest's
// kubeconfigs and builds kipvs and the in-guest tests (tag e2etest) into dir.
// logf reports progress.
func Prepare(ctx context.Context, s *apiserver.Server, dir string, logf func(format string, args ...any)) (*Harness, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	h := &Harness{Server: s, Root: root, GuestServer: "https://" + vm.GuestForwardIP + ":" + strconv.Itoa(s.Port)}
	start := time.Now()
	if err := h.applyDeploy(ctx); err != nil {
		return nil, err
	}
	token, err := s.ServiceAccountToken(ctx, ServiceAccountNamespace, ServiceAccountName, time.Hour)
	if err != nil {
		return nil, err
	}
	if h.KipvsKubeconfig, err = s.TokenKubeconfig(token, h.GuestServer); err != nil {
		return nil, err
	}
	if h.AdminKubeconfig, err = s.TokenKubeconfig(s.AdminToken, h.GuestServer); err != nil {
		return nil, err
	}
	logf("applied deploy/ and wrote guest kubeconfigs in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	h.KipvsBinary = filepath.Join(dir, "kipvs")
	if err := h.goCmd(ctx, "build", "-o", h.KipvsBinary, "./cmd/kipvs"); err != nil {
		return nil, err
	}
	h.GuestBinary = filepath.Join(dir, "e2e.test")
	if err := h.goCmd(ctx, "test", "-c", "-tags", "e2etest", "-o", h.GuestBinary, "./test/e2e"); err != nil {
		return nil, err
	}
	logf("built kipvs and the in-guest tests in %s", time.Since(start).Round(time.Millisecond))
	return h, nil
}

// applyDeploy creates kube-system if needed and applies deploy/ as admin,
// after checking that a server-side dry run accepts it.
func (h *Harness) applyDeploy(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(h.Server.ClientConfig())
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ServiceAccountNamespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ServiceAccountNamespace, err)
	}
	deploy := filepath.Join(h.Root, "deploy")
	if out, err := h.Server.Kubectl("apply", "-k", deploy, "--dry-run=server"); err != nil {
		return fmt.Errorf("server-side dry run of deploy/: %w", err)
	} else if !strings.Contains(out, "(server dry run)") {
		return fmt.Errorf("kubectl apply --dry-run=server did not report a server dry run:\n%s", out)
	}
	if _, err := h.Server.Kubectl("apply", "-k", deploy); err != nil {
		return fmt.Errorf("apply deploy/: %w", err)
	}
	return nil
}

// goCmd runs the go tool in the repository root with CGO disabled, so the
// binaries are static and run in the VM.
func (h *Harness) goCmd(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = h.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// RunGuest boots one VM with a NIC whose only way out is the API server,
// copies kipvs and the kubeconfigs in and runs the in-guest test binary with
// args and env. It returns the binary's exit status (see vm.Run).
func (h *Harness) RunGuest(ctx context.Context, args, env []string, timeout time.Duration, console io.Writer) (int, error) {
	port := h.Server.Port
	files, memory := h.guestFiles(), 0
	if _, ok := files[filepath.Join(apiserver.BinDir(), apiserver.KubeProxyBinary)]; ok {
		memory = 1024
	}
	return vm.Run(ctx, vm.Options{
		Binary:  h.GuestBinary,
		Args:    args,
		Env:     env,
		Timeout: timeout,
		Network: &vm.Network{ForwardPort: port, HostAddr: "127.0.0.1:" + strconv.Itoa(port)},
		Files:   files,
		Stdout:  console,
		// kube-proxy is 80 MB: the initramfs holds it twice while unpacking.
		MemoryMB: memory,
	})
}

// GuestKubeProxy is kube-proxy (test/apiserver's static build), for the
// takeover test; it is copied in only when it was built.
const GuestKubeProxy = "/e2e/kube-proxy"

// guestFiles maps host paths to the guest paths RunGuest copies in.
func (h *Harness) guestFiles() map[string]string {
	files := map[string]string{
		h.KipvsBinary:     GuestKipvs,
		h.KipvsKubeconfig: GuestKipvsKubeconfig,
		h.AdminKubeconfig: GuestAdminKubeconfig,
	}
	if kp := filepath.Join(apiserver.BinDir(), apiserver.KubeProxyBinary); fileExists(kp) {
		files[kp] = GuestKubeProxy
	}
	return files
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the kipvs module: run from the repository")
	}
	return filepath.Dir(gomod), nil
}
