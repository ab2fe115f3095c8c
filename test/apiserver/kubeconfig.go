package apiserver

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// TokenKubeconfigData renders a self-contained kubeconfig (CA embedded, so it
// also works inside the test VM) that authenticates with a bearer token.
// server overrides the URL, e.g. "https://10.0.2.100:PORT" for the VM; empty
// means s.URL.
func (s *Server) TokenKubeconfigData(token, server string) ([]byte, error) {
	if server == "" {
		server = s.URL
	}
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	// Quoted scalars: a token or URL never contains a double quote or a
	// backslash, and quoting keeps YAML from reading them as numbers.
	for _, v := range []string{token, server} {
		if strings.ContainsAny(v, "\"\\\n") {
			return nil, fmt.Errorf("kubeconfig value %q has a quote, backslash or newline", v)
		}
	}
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: kipvs-test
  cluster:
    server: "%s"
    certificate-authority-data: %s
users:
- name: kipvs-test
  user:
    token: "%s"
contexts:
- name: kipvs-test
  context:
    cluster: kipvs-test
    user: kipvs-test
current-context: kipvs-test
`, server, base64.StdEncoding.EncodeToString(ca), token), nil
}

// TokenKubeconfig writes TokenKubeconfigData to a file in Dir and returns its
// path. The file name depends on token and server, so different calls do not
// overwrite each other.
func (s *Server) TokenKubeconfig(token, server string) (path string, err error) {
	sum := sha256.Sum256([]byte(token + "\x00" + server))
	path = filepath.Join(s.Dir, "kubeconfig-"+hex.EncodeToString(sum[:6]))
	return path, s.writeKubeconfig(path, token, server)
}

func (s *Server) writeKubeconfig(path, token, server string) error {
	data, err := s.TokenKubeconfigData(token, server)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// newHTTPClient returns a client that trusts only our CA, for health checks.
func (s *Server) newHTTPClient() (*http.Client, error) {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("no certificate in %s", s.CAFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return &http.Client{Transport: tr}, nil
}

// expectOK GETs url (with the admin token for https) and wants status 200
// and a body containing want.
func (s *Server) expectOK(ctx context.Context, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if strings.HasPrefix(url, "https://") {
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
	}
	resp, err := s.httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %.300s", url, resp.Status, body)
	}
	return nil
}
