package apiserver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RequireEnv names the environment variable that turns a missing API server
// build from a skip into a failure (CI sets KIPVS_REQUIRE_APISERVER=1).
const RequireEnv = "KIPVS_REQUIRE_APISERVER"

// ForTest starts a Server for t and stops it in t.Cleanup. Without binaries it
// skips t, or fails it when KIPVS_REQUIRE_APISERVER=1. When t fails, the tail
// of kube-apiserver's log is logged.
func ForTest(t testing.TB, opts Options) *Server {
	t.Helper()
	RequireBinaries(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	start := time.Now()
	s, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start API server: %v", err)
	}
	t.Logf("API server %s ready in %v (dir %s)", s.URL, time.Since(start).Round(time.Millisecond), s.Dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", s.LogTail(40))
		}
		if err := s.Stop(); err != nil {
			t.Errorf("stop API server: %v", err)
		}
	})
	return s
}

// RequireBinaries skips t when build.sh has not built the binaries, or fails
// it when KIPVS_REQUIRE_APISERVER=1.
func RequireBinaries(t testing.TB) {
	t.Helper()
	if reason, ok := Available(); !ok {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s (%s=1)", reason, RequireEnv)
		}
		t.Skip(reason)
	}
}

// ServiceAccountToken creates the ServiceAccount namespace/name if it does not
// exist (there is no controller manager to do it) and returns a bound token
// for it from the TokenRequest API, valid for expiration (at least 10 min, the
// API's minimum) and for ServiceAccountIssuer as audience. The namespace must
// exist.
func (s *Server) ServiceAccountToken(ctx context.Context, namespace, name string, expiration time.Duration) (string, error) {
	cs, err := kubernetes.NewForConfig(s.ClientConfig())
	if err != nil {
		return "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err = cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, name, err)
	}
	seconds := int64(max(expiration, 10*time.Minute) / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	tr, err = cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}
