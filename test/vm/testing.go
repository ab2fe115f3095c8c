package vm

import (
	"context"
	"os"
	"testing"
	"time"
)

// RequireImage returns the VM image for a test, building it if needed. When
// VMs cannot run here (no qemu, no image and no way to build it) the test is
// skipped with the reason — unless KIPVS_REQUIRE_VM=1 (set by CI), in which
// case it fails.
func RequireImage(tb testing.TB) Image {
	tb.Helper()
	reason, ok := Available()
	var img Image
	if ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		var err error
		if img, err = EnsureImage(ctx); err != nil {
			reason, ok = "cannot build the VM image: "+err.Error(), false
		}
	}
	if !ok {
		if os.Getenv("KIPVS_REQUIRE_VM") == "1" {
			tb.Fatalf("VM required (KIPVS_REQUIRE_VM=1) but unavailable: %s", reason)
		}
		tb.Skipf("VM unavailable (set KIPVS_REQUIRE_VM=1 to fail instead): %s", reason)
	}
	return img
}
