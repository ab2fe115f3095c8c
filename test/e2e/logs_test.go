//go:build e2etest

package e2e

import (
	"context"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// logsVerbosity is the kipvs log level of TestNoSecretsInLogs: client-go logs
// every request with its headers from 7 and curl commands and bodies from 8-9.
const logsVerbosity = "-v=9"

// TestNoSecretsInLogs runs kipvs at the highest client-go verbosity (every
// API request, its headers and its body are logged) while it lists, watches,
// programs a Service and posts Events, and checks that its log holds neither
// its ServiceAccount token (nor a piece of it) nor any other secret of its
// kubeconfig. The log must show the masked Authorization header, so the test
// fails if the verbosity stops logging headers rather than passing vacuously.
func TestNoSecretsInLogs(t *testing.T) {
	secrets := kubeconfigSecrets(t, GuestKipvsKubeconfig)
	stopSharedKipvs(t)
	k, err := startKipvsWith("kipvs-v9", GuestKipvsKubeconfig, logsVerbosity)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = k.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), readyBound)
	defer cancel()
	if err := waitKipvsReady(ctx, k); err != nil {
		t.Fatal(err)
	}
	e := newEnvNoKipvs(t, "pod-a")
	svc := e.createService("logged")
	e.setSlice("logged-1", "logged", httpPorts, "pod-a")
	waitAnswering(t, tcp, vip(t, svc, 80), "pod-a")
	stopped = true
	if err := k.Stop(); err != nil {
		t.Fatalf("stop %s: %v", k.name, err)
	}

	log := k.Log()
	for _, want := range []string{"Authorization", "<masked>", "/apis/discovery.k8s.io/v1/endpointslices"} {
		if !strings.Contains(log, want) {
			t.Errorf("kipvs at %s did not log %q: the test no longer sees request headers", logsVerbosity, want)
		}
	}
	for what, secret := range secrets {
		if strings.Contains(log, secret) {
			// Never print the secret itself.
			t.Errorf("kipvs's log (%d bytes at %s) contains %s", len(log), logsVerbosity, what)
		}
	}
	t.Logf("FIGURES logs: %d bytes of kipvs log at %s, %d secret strings checked, none found", len(log), logsVerbosity, len(secrets))
}

// kubeconfigSecrets returns the secret material of a kubeconfig by what it
// is: bearer tokens, each signed JWT's payload and signature separately (a
// truncated or re-encoded token still leaks them), client keys, passwords.
func kubeconfigSecrets(t *testing.T, path string) map[string]string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	for name, a := range cfg.AuthInfos {
		if a.Token != "" {
			secrets["the token of user "+name] = a.Token
			if parts := strings.Split(a.Token, "."); len(parts) == 3 {
				secrets["the JWT payload of user "+name] = parts[1]
				secrets["the JWT signature of user "+name] = parts[2]
			}
		}
		if len(a.ClientKeyData) > 0 {
			secrets["the client key of user "+name] = string(a.ClientKeyData)
		}
		if a.Password != "" {
			secrets["the password of user "+name] = a.Password
		}
	}
	if len(secrets) == 0 {
		t.Fatalf("%s holds no token: the test would check nothing", path)
	}
	for what, s := range secrets {
		if len(s) < 16 {
			t.Fatalf("%s is only %d characters: too short to search for", what, len(s))
		}
	}
	return secrets
}
