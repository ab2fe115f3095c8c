package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// docPath is docs/configuration.md from this package's directory.
var docPath = filepath.Join("..", "..", "docs", "configuration.md")

// TestConfigurationDocUpToDate fails when docs/configuration.md does not match
// the flags and the loader: run `go run ./hack/gendocs` and commit the result.
func TestConfigurationDocUpToDate(t *testing.T) {
	ref, err := Probe(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := func(b []byte) []string { return strings.Split(string(b), "\n") }
	if diff := cmp.Diff(lines(have), lines(Render(ref))); diff != "" {
		t.Errorf("docs/configuration.md is stale; run `go run ./hack/gendocs` from the repository root (-have +want):\n%s", diff)
	}
}

// TestProbe checks what the probe finds for settings whose treatment is
// settled, one of each kind.
func TestProbe(t *testing.T) {
	ref, err := Probe(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]Field{}
	for _, f := range ref.Fields {
		fields[f.Path] = f
	}
	for _, want := range []Field{
		{Path: "ipvs.scheduler", Type: "string", Status: Applied, Flag: "ipvs-scheduler"},
		{Path: "ipvs.syncPeriod", Type: "duration", Status: Applied, Flag: "sync-period"},
		{Path: "nodePortAddresses", Type: "[]string", Status: Applied, Flag: "nodeport-addresses"},
		{Path: "clientConnection.acceptContentTypes", Type: "string", Status: Applied},
		{Path: "logging", Type: "LoggingConfiguration", Status: Applied},
		{Path: "winkernel.enableDSR", Type: "bool", Status: Unsupported, Note: "Windows only"},
		{Path: "bindAddress", Type: "string", Status: Unsupported, SilentDefault: "0.0.0.0",
			Note: "kipvs takes the node's primary IPs from the Node object"},
		{Path: "iptables.localhostNodePorts", Type: "bool", Status: Unsupported, Note: silentNote},
		{Path: "oomScoreAdj", Type: "int32", Status: Unsupported, SilentDefault: "-999",
			Note: "set the container's OOM score instead"},
	} {
		if diff := cmp.Diff(want, fields[want.Path]); diff != "" {
			t.Errorf("field %s (-want +got):\n%s", want.Path, diff)
		}
	}
	if _, ok := fields["apiVersion"]; ok {
		t.Error("TypeMeta's apiVersion is listed as a field")
	}

	flags := map[string]Flag{}
	for _, f := range ref.Flags {
		flags[f.Name] = f
	}
	for _, want := range []Flag{
		{Name: "ipvs-sync-period", Type: "duration", Default: "30s", AliasOf: "sync-period", Fields: []string{"ipvs.syncPeriod"}},
		{Name: "dummy-link", Type: "string", Default: "kube-ipvs0"},
		{Name: "cluster-cidr", Type: "stringSlice", Fields: []string{"clusterCIDR"}},
		{Name: "v", Shorthand: "v", Type: "Level", Default: "0", Logging: true, Fields: []string{"logging"}},
	} {
		got := flags[want.Name]
		got.Usage = ""
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("flag --%s (-want +got):\n%s", want.Name, diff)
		}
	}
}

// TestCell keeps table cells on one line and escapes the column separator.
func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"a | b":      `a \| b`,
		"one\ntwo":   "one two",
		"plain text": "plain text",
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}
