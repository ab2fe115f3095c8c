// Command gendocs writes docs/configuration.md, kipvs's flag and config file
// reference, from the code: the flags that config.Options.AddFlags registers,
// the fields of kube-proxy's KubeProxyConfiguration, and what kipvs's loader
// (config.Options.Complete) does with each of them. Run it from the
// repository root after changing flags or the loader:
//
//	go run ./hack/gendocs
//
// The package's test fails when docs/configuration.md is stale.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	out := flag.String("o", "docs/configuration.md", "file to write")
	flag.Parse()
	if err := generate(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

// generate probes kipvs's configuration loader and writes the reference to path.
func generate(path string) error {
	dir, err := os.MkdirTemp("", "gendocs")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ref, err := Probe(dir)
	if err != nil {
		return err
	}
	return os.WriteFile(path, Render(ref), 0o644)
}
