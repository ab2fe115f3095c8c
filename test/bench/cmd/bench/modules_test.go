package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kipvs/kipvs/test/vm"
)

// TestExtractRejectModules unpacks the extra modules from the cached kernel
// package. It needs the VM image cache and dpkg-deb, so it runs only with
// KIPVS_BENCH_MODULES_TEST=1.
func TestExtractRejectModules(t *testing.T) {
	if os.Getenv("KIPVS_BENCH_MODULES_TEST") != "1" {
		t.Skip("set KIPVS_BENCH_MODULES_TEST=1 (needs the VM image cache)")
	}
	img, err := vm.EnsureImage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := extractRejectModules(context.Background(), img, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := filepath.Glob(filepath.Join(dst, "*.ko"))
	if len(got) != len(rejectModules) {
		t.Errorf("%d modules extracted, want %d: %v", len(got), len(rejectModules), got)
	}
}
