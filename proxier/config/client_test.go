package config

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: abc
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`

func TestRESTConfig(t *testing.T) {
	// No in-cluster environment, whatever the host running the test has.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(testKubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantHost string
		wantErr  string
	}{
		{name: "master only", args: []string{"--master=http://127.0.0.1:1"}, wantHost: "http://127.0.0.1:1"},
		{name: "kubeconfig", args: []string{"--kubeconfig=" + kubeconfig}, wantHost: "https://10.0.0.1:6443"},
		{name: "master overrides kubeconfig", args: []string{"--kubeconfig=" + kubeconfig, "--master=https://10.9.9.9"}, wantHost: "https://10.9.9.9"},
		{name: "missing kubeconfig", args: []string{"--kubeconfig=/nonexistent/kubeconfig"}, wantErr: "/nonexistent/kubeconfig"},
		{name: "nothing and not in a pod", wantErr: "no API server configured: pass --kubeconfig or --master"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := parsed(t, append(tt.args, "--kube-api-qps=7", "--kube-api-burst=9")...)
			rc, err := o.RESTConfig()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != tt.wantHost || rc.QPS != 7 || rc.Burst != 9 || rc.ContentType != DefaultContentType {
				t.Errorf("host %q qps %v burst %d content type %q; want %q 7 9 %q",
					rc.Host, rc.QPS, rc.Burst, rc.ContentType, tt.wantHost, DefaultContentType)
			}
			if _, err := NewClient(o); err != nil {
				t.Errorf("NewClient: %v", err)
			}
		})
	}
}

// flakyServer is an API server that answers /version with 503 for its first
// `failures` requests, then with a version.
type flakyServer struct {
	mu       sync.Mutex
	failures int
	requests int
}

func (s *flakyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if r.URL.Path != "/version" {
		http.NotFound(w, r)
		return
	}
	if s.requests <= s.failures {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2"}`))
}

// downServer is a ServerVersionInterface that never answers.
type downServer struct{}

func (downServer) ServerVersion() (*version.Info, error) {
	return nil, errors.New("connection refused")
}

// logLines returns a context whose logger collects messages into *lines.
func logLines(lines *[]string) context.Context {
	var mu sync.Mutex
	logger := funcr.New(func(_, args string) {
		mu.Lock()
		defer mu.Unlock()
		*lines = append(*lines, args)
	}, funcr.Options{})
	return klog.NewContext(context.Background(), logger)
}

func TestWaitForAPIServer(t *testing.T) {
	fast := wait.Backoff{Duration: time.Millisecond, Factor: 2, Steps: 3, Cap: 4 * time.Millisecond}
	tests := []struct {
		name         string
		failures     int
		wantRequests int
	}{
		{name: "answers at once", failures: 0, wantRequests: 1},
		{name: "answers after three failures", failures: 3, wantRequests: 4},
		{name: "keeps retrying after the backoff steps run out", failures: 6, wantRequests: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := &flakyServer{failures: tt.failures}
			srv := httptest.NewServer(api)
			defer srv.Close()
			client := discovery.NewDiscoveryClientForConfigOrDie(&rest.Config{Host: srv.URL})
			var lines []string
			if err := WaitForAPIServer(logLines(&lines), client, fast); err != nil {
				t.Fatalf("WaitForAPIServer: %v", err)
			}
			api.mu.Lock()
			requests := api.requests
			api.mu.Unlock()
			if requests != tt.wantRequests {
				t.Errorf("%d requests, want %d", requests, tt.wantRequests)
			}
			waiting := 0
			for _, l := range lines {
				if strings.Contains(l, `"msg"="Waiting for the API server"`) {
					waiting++
				}
			}
			if waiting != tt.failures {
				t.Errorf("%d 'Waiting' log lines, want one per failure (%d):\n%s", waiting, tt.failures, strings.Join(lines, "\n"))
			}
		})
	}
}

func TestWaitForAPIServerGivesUpWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := WaitForAPIServer(ctx, downServer{}, wait.Backoff{Duration: time.Millisecond})
	if err == nil {
		t.Fatal("WaitForAPIServer returned nil for a server that never answers")
	}
	if !strings.Contains(err.Error(), "connection refused") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q should carry the last failure and the context's deadline", err)
	}
}
