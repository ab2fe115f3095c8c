package apiserver

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// TestServingCertificate checks that the serving certificate verifies against
// our CA for the names the tests and the VM use, and only for those.
func TestServingCertificate(t *testing.T) {
	dir := t.TempDir()
	p, err := writePKI(dir, []net.IP{net.ParseIP("192.0.2.7")})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, p.caCert))
	leaf := readCert(t, p.servingCert)

	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{"127.0.0.1", true},
		{"::1", true},
		{"10.0.2.100", true},
		{"10.96.0.1", true},
		{"192.0.2.7", true},
		{"localhost", true},
		{"kubernetes.default.svc", true},
		{"10.0.2.101", false},
		{"10.0.2.2", false},
		{"example.com", false},
	} {
		_, err := leaf.Verify(x509.VerifyOptions{
			DNSName:   tc.host,
			Roots:     roots,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if (err == nil) != tc.ok {
			t.Errorf("verify for %s: err=%v, want ok=%v", tc.host, err, tc.ok)
		}
	}
}

// TestTokenKubeconfig checks that client-go reads the generated kubeconfig
// with the token, the server override and the embedded CA.
func TestTokenKubeconfig(t *testing.T) {
	dir := t.TempDir()
	p, err := writePKI(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{URL: "https://127.0.0.1:6443", CAFile: p.caCert, Dir: dir}
	ca, err := os.ReadFile(p.caCert)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, server, wantHost string
	}{
		{"default server", "abc123", "", "https://127.0.0.1:6443"},
		{"VM override", "eyJhbGciOi.x-y_z", "https://10.0.2.100:6443", "https://10.0.2.100:6443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, err := s.TokenKubeconfig(tc.token, tc.server)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != tc.wantHost || cfg.BearerToken != tc.token || string(cfg.CAData) != string(ca) {
				t.Errorf("got host %q token %q CA %d bytes; want %q %q %d bytes", cfg.Host, cfg.BearerToken, len(cfg.CAData), tc.wantHost, tc.token, len(ca))
			}
		})
	}
	if _, err := s.TokenKubeconfig("bad\"token", ""); err == nil {
		t.Error("token with a quote: want error")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("no PEM in %s", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
