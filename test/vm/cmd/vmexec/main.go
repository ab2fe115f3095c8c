// Command vmexec runs a program inside a kipvs test VM, as go test -exec
// expects: vmexec BINARY ARGS... exits with the binary's status. Example:
//
//	go build -o /tmp/vmexec ./test/vm/cmd/vmexec
//	CGO_ENABLED=0 go test -exec /tmp/vmexec ./test/kernel/...
//
// The guest working directory is the current directory (go test runs the
// binary in the package directory); its testdata/ directory, if any, is
// copied in. Environment: KIPVS_VM_TIMEOUT (Go duration, default the
// -test.timeout argument plus one minute, or 10m), KIPVS_VM_MEMORY (MiB), and
// every KIPVS_*, GODEBUG and GOTRACEBACK variable is passed to the guest.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kipvs/kipvs/test/vm"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vmexec BINARY [ARGS...]")
		os.Exit(2)
	}
	opts, err := options(os.Args[1], os.Args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		os.Exit(2)
	}
	code, err := vm.Run(context.Background(), opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		if code < 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func options(bin string, args []string) (vm.Options, error) {
	opts := vm.Options{Binary: bin, Args: args, Stdout: os.Stdout, Timeout: 10 * time.Minute}
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				opts.Timeout = d + time.Minute
			}
		}
	}
	if v := os.Getenv("KIPVS_VM_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return opts, fmt.Errorf("KIPVS_VM_TIMEOUT: %w", err)
		}
		opts.Timeout = d
	}
	if v := os.Getenv("KIPVS_VM_MEMORY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return opts, fmt.Errorf("KIPVS_VM_MEMORY: %w", err)
		}
		opts.MemoryMB = n
	}
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "KIPVS_") || strings.HasPrefix(e, "GODEBUG=") || strings.HasPrefix(e, "GOTRACEBACK=") {
			opts.Env = append(opts.Env, e)
		}
	}
	if wd, err := os.Getwd(); err == nil && filepath.IsAbs(wd) && !hidden(wd) {
		opts.Dir = wd
		if st, err := os.Stat(filepath.Join(wd, "testdata")); err == nil && st.IsDir() {
			opts.Files = map[string]string{filepath.Join(wd, "testdata"): filepath.Join(wd, "testdata")}
		}
	}
	return opts, nil
}

// hidden reports directories the guest mounts over.
func hidden(dir string) bool {
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		if dir == d || strings.HasPrefix(dir, d+"/") {
			return true
		}
	}
	return false
}
