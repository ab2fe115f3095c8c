package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// guestRoots are the Debian packages whose programs the guest gets. Their
// library dependencies are followed (lib* packages only, so that maintainer
// tooling such as debconf is not dragged in); which files are really copied
// into the initramfs is decided later from the ELF dependencies.
var guestRoots = []string{
	"busybox", "iptables", "ipset", "ipvsadm", "nftables", "iproute2", "conntrack", "netbase",
}

// initShellPackage provides the shell /init runs under (initShell in the
// guest): busybox-static runs its applets without exec.
const initShellPackage = "busybox-static"

// initShell is where the guest gets busybox-static; init.sh's #! names it.
const initShell = "usr/libexec/kipvs/busybox"

// fetchPackage makes sure one package's .deb is cached.
func fetchPackage(ctx context.Context, debDir, pkg string) (string, error) {
	if deb, ok := cachedDeb(debDir, pkg); ok {
		return deb, nil
	}
	if err := aptDownload(ctx, debDir, pkg); err != nil {
		return "", err
	}
	deb, ok := cachedDeb(debDir, pkg)
	if !ok {
		return "", fmt.Errorf("apt-get download %s left no .deb", pkg)
	}
	return deb, nil
}

// hostPackages maps a host tool to the Debian package that provides it.
// busybox-static (not busybox) because the two conflict and the host only
// needs depmod; the guest's dynamic busybox is downloaded, not installed.
var hostPackages = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"busybox":            "busybox-static",
	"dpkg-deb":           "dpkg",
	"apt-get":            "apt",
}

// ensureHostTools installs missing host tools with apt-get when running as
// root; otherwise it reports what is missing.
func ensureHostTools(ctx context.Context, logf func(string, ...any)) error {
	var missing []string
	for _, tool := range sortedKeys(hostPackages) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, hostPackages[tool])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing host packages %v and not root to install them", missing)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing host packages %v and no apt-get", missing)
	}
	logf("vm: installing host packages %v", missing)
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
	if _, err := run(ctx, "", nil, "apt-get", args...); err != nil {
		if _, uerr := run(ctx, "", nil, "apt-get", "update", "-q"); uerr != nil {
			return fmt.Errorf("apt-get update: %w", uerr)
		}
		if _, err := run(ctx, "", nil, "apt-get", args...); err != nil {
			return err
		}
	}
	return nil
}

// kernelPin is the kernel package recorded in KERNEL_VERSION.
type kernelPin struct {
	Package string // linux-image-6.1.0-NN-cloud-amd64
	Version string // Debian version of that package, may be empty
}

// KernelRelease is the uname -r of the pinned kernel.
func (k kernelPin) KernelRelease() string { return strings.TrimPrefix(k.Package, "linux-image-") }

func parseKernelPin(s string) (kernelPin, error) {
	f := strings.Fields(s)
	if len(f) < 1 || len(f) > 2 || !strings.HasPrefix(f[0], "linux-image-") {
		return kernelPin{}, fmt.Errorf("KERNEL_VERSION: want \"linux-image-<release> [debian-version]\", got %q", s)
	}
	p := kernelPin{Package: f[0]}
	if len(f) == 2 {
		p.Version = f[1]
	}
	return p, nil
}

// cachedDeb returns the cached .deb of a package (any version), if present.
func cachedDeb(debDir, pkg string) (string, bool) {
	m, _ := filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
	if len(m) == 0 {
		return "", false
	}
	sort.Strings(m)
	return m[len(m)-1], true
}

// aptDownload fetches packages into dir with apt-get download, retrying once
// after apt-get update (stale lists are the usual cause of a 404).
func aptDownload(ctx context.Context, dir string, pkgs ...string) error {
	args := append([]string{"download", "-q"}, pkgs...)
	if _, err := run(ctx, dir, nil, "apt-get", args...); err == nil {
		return nil
	}
	if _, err := run(ctx, "", nil, "apt-get", "update", "-q"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	_, err := run(ctx, dir, nil, "apt-get", args...)
	return err
}

// fetchKernel makes sure the pinned kernel .deb is in the cache. When the pin
// cannot be downloaded any more (Debian drops old ABI packages) it falls back
// to the newest cloud kernel with a warning.
func fetchKernel(ctx context.Context, debDir string, pin kernelPin, logf func(string, ...any)) (kernelPin, string, error) {
	if deb, ok := cachedDeb(debDir, pin.Package); ok {
		return pin, deb, nil
	}
	spec := pin.Package
	if pin.Version != "" {
		spec += "=" + pin.Version
	}
	err := aptDownload(ctx, debDir, spec)
	if err == nil {
		if deb, ok := cachedDeb(debDir, pin.Package); ok {
			return pin, deb, nil
		}
	}
	logf("vm: WARNING: pinned kernel %s could not be downloaded (%v); falling back to the newest cloud kernel", spec, err)
	newest, rerr := resolveCloudKernel(ctx)
	if rerr != nil {
		return pin, "", fmt.Errorf("pinned kernel unavailable (%v) and resolving the newest failed: %w", err, rerr)
	}
	if err := aptDownload(ctx, debDir, newest.Package); err != nil {
		return pin, "", err
	}
	deb, ok := cachedDeb(debDir, newest.Package)
	if !ok {
		return pin, "", fmt.Errorf("apt-get download %s left no .deb", newest.Package)
	}
	logf("vm: WARNING: using %s; update test/vm/KERNEL_VERSION to pin it", newest.Package)
	return newest, deb, nil
}

// resolveCloudKernel resolves the linux-image-cloud-amd64 meta package to its
// concrete ABI package.
func resolveCloudKernel(ctx context.Context) (kernelPin, error) {
	out, err := run(ctx, "", nil, "apt-cache", "depends", "linux-image-cloud-amd64")
	if err != nil {
		return kernelPin{}, err
	}
	m := regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-cloud-amd64)`).FindStringSubmatch(out)
	if m == nil {
		return kernelPin{}, fmt.Errorf("no concrete kernel in apt-cache depends output:\n%s", out)
	}
	return kernelPin{Package: m[1]}, nil
}

// resolveGuestPackages computes the guest package closure: the roots plus
// every library package reachable through Depends/Pre-Depends from them
// without passing through a non-library package. One recursive apt-cache
// call (each call costs seconds of cache loading) gives the whole graph.
func resolveGuestPackages(ctx context.Context) ([]string, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, guestRoots...)
	out, err := run(ctx, "", nil, "apt-cache", args...)
	if err != nil {
		return nil, err
	}
	graph := parseAptDepends(out)
	for _, r := range guestRoots {
		if _, ok := graph[r]; !ok {
			return nil, fmt.Errorf("apt-cache knows no package %s (run apt-get update?)", r)
		}
	}
	return libraryClosure(graph, guestRoots), nil
}

// libraryClosure returns roots plus the library packages reachable from them
// through library packages only.
func libraryClosure(graph map[string][]string, roots []string) []string {
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		for _, d := range graph[p] {
			if isLibraryPackage(d) {
				visit(d)
			}
		}
	}
	for _, r := range roots {
		visit(r)
	}
	return sortedKeys(seen)
}

// parseAptDepends parses apt-cache depends output into package -> hard
// dependencies (virtual packages, shown as <name>, are dropped).
func parseAptDepends(out string) map[string][]string {
	graph := map[string][]string{}
	cur := ""
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			continue
		}
		if line[0] != ' ' {
			cur = strings.TrimSpace(line)
			if _, ok := graph[cur]; !ok {
				graph[cur] = nil
			}
			continue
		}
		f := strings.TrimPrefix(strings.TrimSpace(line), "|")
		kind, dep, ok := strings.Cut(f, ": ")
		if !ok || (kind != "Depends" && kind != "PreDepends") || strings.HasPrefix(dep, "<") {
			continue
		}
		graph[cur] = append(graph[cur], strings.TrimSuffix(dep, ":any"))
	}
	return graph
}

// isLibraryPackage tells which dependencies are followed: shared library
// packages (zlib1g breaks the lib* naming rule).
func isLibraryPackage(name string) bool {
	return strings.HasPrefix(name, "lib") || name == "zlib1g"
}

// fetchGuestPackages downloads the guest packages not yet cached. The
// resolved list is kept in the cache so warm builds never call apt.
func fetchGuestPackages(ctx context.Context, debDir string) ([]string, error) {
	h := sha256.Sum256([]byte(strings.Join(guestRoots, " ") + " follow:lib*,zlib1g"))
	listFile := filepath.Join(debDir, "guest-packages-"+hex.EncodeToString(h[:6])+".list")
	var pkgs []string
	if b, err := os.ReadFile(listFile); err == nil {
		pkgs = strings.Fields(string(b))
	} else {
		if pkgs, err = resolveGuestPackages(ctx); err != nil {
			return nil, fmt.Errorf("resolve guest packages: %w", err)
		}
	}
	var missing []string
	for _, p := range pkgs {
		if _, ok := cachedDeb(debDir, p); !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		if err := aptDownload(ctx, debDir, missing...); err != nil {
			return nil, fmt.Errorf("download guest packages: %w", err)
		}
	}
	var debs []string
	for _, p := range pkgs {
		deb, ok := cachedDeb(debDir, p)
		if !ok {
			return nil, fmt.Errorf("apt-get download %s left no .deb", p)
		}
		debs = append(debs, deb)
	}
	if err := writeFileAtomic(listFile, []byte(strings.Join(pkgs, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	return debs, nil
}

// run runs a command and returns its stdout; stderr is included in the error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
