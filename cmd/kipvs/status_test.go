package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/proxier"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// statusJSON is a status document rendered by proxier's golden test
// (proxier/testdata/status.json, copied here).
func statusJSON(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "status.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}

func TestRenderStatusGolden(t *testing.T) {
	var st proxier.Status
	if err := json.Unmarshal(statusJSON(t), &st); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		golden string
		wide   bool
	}{{"status.txt", false}, {"status-wide.txt", true}} {
		var b bytes.Buffer
		if err := renderStatus(&b, &st, tt.wide); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, tt.golden, b.String())
	}
}

// statusServer serves the golden status and records the queries it got.
func statusServer(t *testing.T) (*httptest.Server, *[]string) {
	t.Helper()
	body := statusJSON(t)
	var queries []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &queries
}

// runInProcess runs the kipvs command with args in this process.
func runInProcess(ctx context.Context, args ...string) (string, error) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestStatusCommand(t *testing.T) {
	srv, queries := statusServer(t)
	addr := srv.URL + "/status"
	tests := []struct {
		name      string
		args      []string
		wantQuery string
		// want is a line the output must contain; "" for the golden JSON itself.
		want    string
		wantErr string
	}{
		{name: "table", args: []string{"status", "--address", addr}, want: "ns/web:http TCP 10.0.0.1:80 clusterIP rr None 1/2 3 1 1 draining"},
		{name: "service argument", args: []string{"status", "--address", addr, "ns/web"}, wantQuery: "service=ns%2Fweb", want: "WARNING: the conntrack table is 85.0% full"},
		{name: "VIP argument", args: []string{"status", "--address", addr, "10.0.0.10:53"}, wantQuery: "vip=10.0.0.10%3A53", want: "REJECTED"},
		{name: "IPv6 VIP argument", args: []string{"status", "--address", addr, "[fd00::1]:53"}, wantQuery: "vip=%5Bfd00%3A%3A1%5D%3A53", want: "DRIFT"},
		{name: "json", args: []string{"status", "--address", addr, "-o", "json"}},
		{name: "wide", args: []string{"status", "--address", addr, "-o", "wide"}, want: "-> 10.1.0.2:8080 3 1 ns/web-2 node2 zone-node2 draining (4m30s left) 0"},
		{name: "bad argument", args: []string{"status", "--address", addr, "web"}, wantErr: `argument "web": want namespace/service or VIP:port`},
		{name: "bad format", args: []string{"status", "--address", addr, "-o", "yaml"}, wantErr: `unknown output format "yaml"`},
		{name: "not kipvs", args: []string{"status", "--address", srv.URL + "/nope"}, wantErr: "HTTP 404"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			*queries = nil
			out, err := runInProcess(context.Background(), tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{tt.wantQuery}, *queries); diff != "" {
				t.Errorf("queries (-want +got):\n%s", diff)
			}
			if tt.want == "" {
				if out != string(statusJSON(t)) {
					t.Errorf("-o json printed something else than the endpoint's JSON:\n%s", out)
				}
			} else if !strings.Contains(squeeze(out), tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
		})
	}
}

func TestStatusWatch(t *testing.T) {
	srv, queries := statusServer(t)
	defer func(d time.Duration) { watchInterval = d }(watchInterval)
	watchInterval = 10 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	out, err := runInProcess(ctx, "status", "--address", srv.URL+"/status", "--watch")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "\033[H\033[2J"); n < 2 || len(*queries) < 2 {
		t.Errorf("--watch refreshed %d times with %d requests in 200ms, want several", n, len(*queries))
	}
}

// TestStatusNotRunning runs the binary against a port nothing listens on.
func TestStatusNotRunning(t *testing.T) {
	addr := "http://127.0.0.1:1/status"
	code, stdout, stderr := kipvs(t, "status", "--address", addr)
	want := "kipvs: cannot reach kipvs status at " + addr + ": is kipvs running on this node?"
	if code == 0 || !strings.HasPrefix(stderr, want) || stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want a failure with %q", code, stdout, stderr, want)
	}
}

// squeeze collapses the runs of spaces that align columns.
func squeeze(s string) string {
	var lines []string
	for line := range strings.Lines(s) {
		lines = append(lines, strings.Join(strings.Fields(line), " "))
	}
	return strings.Join(lines, "\n")
}
