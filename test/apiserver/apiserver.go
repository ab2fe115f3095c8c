// Package apiserver runs a real etcd and kube-apiserver (k8s.io/kubernetes
// v1.37.2) on free 127.0.0.1 ports for kipvs's tests.
//
// The binaries are built outside the repository by test/apiserver/build.sh
// into BinDir. Tests call ForTest, which skips when they are missing (or fails
// when KIPVS_REQUIRE_APISERVER=1). There is no controller manager: nothing
// creates EndpointSlices from selectors, no "default" ServiceAccount exists,
// and deleted namespaces stay Terminating, so use a fresh namespace per test.
package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Binary names build.sh produces in BinDir.
const (
	EtcdBinary       = "etcd"
	APIServerBinary  = "kube-apiserver"
	KubectlBinary    = "kubectl"
	KubeProxyBinary  = "kube-proxy"
	stampFile        = ".stamp"
	defaultReadyWait = 90 * time.Second
)

// Defaults for Options.
const (
	// DefaultServiceClusterIPRange is dual-stack so tests can create IPv4,
	// IPv6 and dual-stack Services.
	DefaultServiceClusterIPRange = "10.96.0.0/16,fd00:10:96::/112"
	// ServiceAccountIssuer is the issuer and the audience of ServiceAccount
	// tokens; TokenRequest without audiences gets this one.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	// AdminUser is the user name of Server.AdminToken, in group system:masters.
	AdminUser = "kipvs-admin"
)

// Options configure Start. The zero value is usable.
type Options struct {
	// BinDir holds the binaries; empty means BinDir().
	BinDir string
	// Dir is the working directory (etcd data, certificates, logs,
	// kubeconfigs). Empty means a new temporary directory that Stop removes;
	// a given Dir is created if needed and kept. Use an unused one: old etcd
	// data there would be served with new certificates and keys.
	Dir string
	// ServiceClusterIPRange is --service-cluster-ip-range; empty means
	// DefaultServiceClusterIPRange.
	ServiceClusterIPRange string
	// ExtraServingIPs are added to the serving certificate's addresses
	// (127.0.0.1, ::1, 10.0.2.100 and 10.96.0.1 are always there).
	ExtraServingIPs []net.IP
	// ExtraArgs are appended to kube-apiserver's command line, e.g.
	// "--disable-admission-plugins=ServiceAccount" to create Pods without
	// a controller manager.
	ExtraArgs []string
	// ReadyTimeout bounds each wait for etcd's /health and
	// kube-apiserver's /readyz; 0 means 90 s.
	ReadyTimeout time.Duration
}

// Server is a running etcd + kube-apiserver pair. Its exported fields are
// fixed for its lifetime, also across RestartAPIServer.
type Server struct {
	// URL is the API server's address, https://127.0.0.1:PORT.
	URL string
	// Port is the API server's secure port on 127.0.0.1.
	Port int
	// AdminKubeconfig is a kubeconfig file for AdminToken at URL.
	AdminKubeconfig string
	// AdminToken is a static bearer token of AdminUser in system:masters.
	AdminToken string
	// CAFile is the PEM CA that signed the serving certificate.
	CAFile string
	// Dir is the working directory; the logs are Dir/etcd.log and
	// Dir/kube-apiserver.log.
	Dir string
	// EtcdURL is etcd's client URL, http://127.0.0.1:PORT.
	EtcdURL string

	binDir     string
	ownDir     bool
	readyWait  time.Duration
	apiArgs    []string
	httpClient *http.Client

	mu        sync.Mutex
	etcd      *process
	apiserver *process
}

// BinDir is where build.sh puts the binaries:
// $KIPVS_APISERVER_BIN, else ${KIPVS_CACHE:-$HOME/.cache/kipvs}/apiserver/bin.
func BinDir() string {
	if d := os.Getenv("KIPVS_APISERVER_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("KIPVS_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache", "kipvs")
	}
	return filepath.Join(cache, "apiserver", "bin")
}

// Available reports whether build.sh has finished a build in BinDir; when it
// has not, reason says what is missing and how to fix it.
func Available() (reason string, ok bool) {
	dir := BinDir()
	for _, name := range []string{EtcdBinary, APIServerBinary, KubectlBinary, KubeProxyBinary, stampFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Sprintf("API server binaries not built (%s missing in %s): run test/apiserver/build.sh", name, dir), false
		}
	}
	return "", true
}

// Start starts etcd and kube-apiserver on free 127.0.0.1 ports and waits until
// /readyz answers ok. On error nothing is left running.
func Start(ctx context.Context, opts Options) (*Server, error) {
	s := &Server{binDir: opts.BinDir, Dir: opts.Dir, readyWait: opts.ReadyTimeout}
	if s.binDir == "" {
		s.binDir = BinDir()
	}
	if s.readyWait == 0 {
		s.readyWait = defaultReadyWait
	}
	if s.Dir == "" {
		dir, err := os.MkdirTemp("", "kipvs-apiserver-")
		if err != nil {
			return nil, err
		}
		s.Dir, s.ownDir = dir, true
	} else if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := s.start(ctx, opts); err != nil {
		return nil, errors.Join(err, s.Stop())
	}
	return s, nil
}

// start does Start's work after the directory exists; on error the caller
// stops whatever did start.
func (s *Server) start(ctx context.Context, opts Options) error {
	ports, err := freePorts(3)
	if err != nil {
		return fmt.Errorf("pick ports: %w", err)
	}
	s.Port = ports[2]
	s.URL = "https://127.0.0.1:" + strconv.Itoa(s.Port)
	if err := s.prepare(opts); err != nil {
		return err
	}
	if err := s.startEtcd(ctx, ports[0], ports[1]); err != nil {
		return err
	}
	return s.RestartAPIServer(ctx)
}

// prepare writes certificates, the token file and the admin kubeconfig, and
// builds kube-apiserver's command line.
func (s *Server) prepare(opts Options) error {
	p, err := writePKI(s.Dir, opts.ExtraServingIPs)
	if err != nil {
		return err
	}
	s.CAFile = p.caCert
	if s.AdminToken, err = randomToken(); err != nil {
		return err
	}
	tokens := filepath.Join(s.Dir, "tokens.csv")
	line := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", s.AdminToken, AdminUser, AdminUser)
	if err := os.WriteFile(tokens, []byte(line), 0o600); err != nil {
		return err
	}
	s.AdminKubeconfig = filepath.Join(s.Dir, "admin.kubeconfig")
	if err := s.writeKubeconfig(s.AdminKubeconfig, s.AdminToken, ""); err != nil {
		return err
	}
	if s.httpClient, err = s.newHTTPClient(); err != nil {
		return err
	}
	ipRange := opts.ServiceClusterIPRange
	if ipRange == "" {
		ipRange = DefaultServiceClusterIPRange
	}
	s.apiArgs = append([]string{
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(s.Port),
		// 127.0.0.1 as the advertised address is only accepted when
		// the endpoint reconciler is off (VM-NOTES "API server").
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--client-ca-file=" + p.caCert,
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		// Like kubeadm clusters: node proxies (kube-proxy, kipvs) run privileged.
		"--allow-privileged=true",
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--api-audiences=" + ServiceAccountIssuer,
		"--service-account-key-file=" + p.saKey,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=" + ipRange,
		"--profiling=false",
		"--v=1",
	}, opts.ExtraArgs...)
	return nil
}

// startEtcd starts a single-member etcd without fsync (test data only) and
// waits for its /health.
func (s *Server) startEtcd(ctx context.Context, clientPort, peerPort int) error {
	s.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	args := []string{
		"--name=kipvs-test",
		"--data-dir=" + filepath.Join(s.Dir, "etcd-data"),
		"--listen-client-urls=" + s.EtcdURL,
		"--advertise-client-urls=" + s.EtcdURL,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=kipvs-test=" + peer,
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
	p, err := startProcess("etcd", filepath.Join(s.binDir, EtcdBinary), args, filepath.Join(s.Dir, "etcd.log"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.etcd = p
	s.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, s.readyWait)
	defer cancel()
	return p.waitReady(wctx, func(ctx context.Context) error {
		return s.expectOK(ctx, s.EtcdURL+"/health", `"health":"true"`)
	})
}

// StopAPIServer stops kube-apiserver and leaves etcd running, so that
// RestartAPIServer brings back the same state on the same URL.
func (s *Server) StopAPIServer() error {
	s.mu.Lock()
	p := s.apiserver
	s.apiserver = nil
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop()
}

// KillAPIServer kills kube-apiserver with SIGKILL, like a crash: clients see
// connections reset instead of a graceful shutdown. etcd keeps running.
func (s *Server) KillAPIServer() {
	s.mu.Lock()
	p := s.apiserver
	s.apiserver = nil
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// RestartAPIServer starts kube-apiserver (stopping it first if it runs) with
// the same port, certificates and tokens, and waits for /readyz.
func (s *Server) RestartAPIServer(ctx context.Context) error {
	if err := s.StopAPIServer(); err != nil {
		return err
	}
	args := append([]string{"--etcd-servers=" + s.EtcdURL}, s.apiArgs...)
	p, err := startProcess("kube-apiserver", filepath.Join(s.binDir, APIServerBinary), args, filepath.Join(s.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.apiserver = p
	s.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, s.readyWait)
	defer cancel()
	return p.waitReady(wctx, func(ctx context.Context) error {
		return s.expectOK(ctx, s.URL+"/readyz", "ok")
	})
}

// APIServerRunning reports whether kube-apiserver is started and has not exited.
func (s *Server) APIServerRunning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apiserver != nil && s.apiserver.running()
}

// Stop stops kube-apiserver, then etcd, and removes Dir when Start created
// it. It is safe to call more than once.
func (s *Server) Stop() error {
	errs := []error{s.StopAPIServer()}
	s.mu.Lock()
	etcd := s.etcd
	s.etcd = nil
	s.mu.Unlock()
	if etcd != nil {
		errs = append(errs, etcd.stop())
	}
	if s.ownDir && s.Dir != "" {
		errs = append(errs, os.RemoveAll(s.Dir))
		s.ownDir = false
	}
	return errors.Join(errs...)
}

// ClientConfig returns an admin client configuration (system:masters) with
// rate limits high enough for tests that create many objects.
func (s *Server) ClientConfig() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile},
		QPS:             200,
		Burst:           400,
	}
}

// Kubectl runs the matching kubectl as admin and returns its combined output.
func (s *Server) Kubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(s.binDir, KubectlBinary), append([]string{"--kubeconfig=" + s.AdminKubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// LogTail returns the last n lines of kube-apiserver's log, for test failures.
func (s *Server) LogTail(n int) string {
	return logTail(filepath.Join(s.Dir, "kube-apiserver.log"), n)
}
