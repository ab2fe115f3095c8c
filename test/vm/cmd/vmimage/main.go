// Command vmimage builds (or finds) the cached kipvs test VM image and prints
// its paths: use it to warm the cache before running VM tests.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/kipvs/kipvs/test/vm"
)

func main() {
	start := time.Now()
	img, err := vm.EnsureImage(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmimage:", err)
		os.Exit(1)
	}
	fmt.Printf("kernel  %s\ninitrd  %s\nrelease %s\ntook    %s\n", img.Kernel, img.Initrd, img.KernelRelease, time.Since(start).Round(time.Millisecond))
}
