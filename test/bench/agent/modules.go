package main

import (
	"errors"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// guestModules is where the runner copies extra kernel modules, named
// NN-name.ko in load order (the REJECT target and reject statement
// kube-proxy needs; see cmd/bench/modules.go).
const guestModules = "/bench/modules"

// loadModules loads every module in guestModules, in name order; a module
// already loaded is fine.
func loadModules() error {
	files, _ := filepath.Glob(filepath.Join(guestModules, "*.ko"))
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		fd, err := os.Open(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = unix.FinitModule(int(fd.Fd()), "", 0)
		fd.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, &os.PathError{Op: "finit_module", Path: f, Err: err})
			continue
		}
		logf("loaded %s", filepath.Base(f))
	}
	return errors.Join(errs...)
}
