package vm

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

//go:embed KERNEL_VERSION
var kernelVersionFile string

//go:embed init.sh
var initScript []byte

// imageFormat changes whenever the way the image is built changes in a way
// the other inputs of the cache key do not capture.
const imageFormat = "kipvs-vm-image-v2"

// compressInitrd selects a gzip-compressed base initramfs. Uncompressed boots
// faster under TCG (see README.md for the measurement), so it is off.
var compressInitrd = false

// Image is a built, cached base image: a kernel and its initramfs.
type Image struct {
	// Dir is the cache directory holding this image.
	Dir string
	// Kernel is the path of the bzImage (vmlinuz).
	Kernel string
	// Initrd is the path of the base initramfs (newc cpio).
	Initrd string
	// KernelRelease is the guest's uname -r.
	KernelRelease string
}

// CacheDir is where downloads and images are kept:
// ${KIPVS_CACHE:-$HOME/.cache/kipvs}/vm.
func CacheDir() (string, error) {
	base := os.Getenv("KIPVS_CACHE")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no KIPVS_CACHE and no home directory: %w", err)
		}
		base = filepath.Join(home, ".cache", "kipvs")
	}
	return filepath.Join(base, "vm"), nil
}

// pinnedKernel is the kernel recorded in test/vm/KERNEL_VERSION.
func pinnedKernel() (kernelPin, error) { return parseKernelPin(kernelVersionFile) }

// imageKey identifies an image by everything that goes into it.
func imageKey(pin kernelPin) string {
	h := sha256.New()
	fmt.Fprintln(h, imageFormat, pin.Package, pin.Version, compressInitrd)
	for _, list := range [][]string{guestRoots, guestModules, netModules, guestPrograms, guestTrees, guestEtc} {
		fmt.Fprintln(h, strings.Join(list, " "))
	}
	h.Write(initScript)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func imageAt(dir, kver string) Image {
	name := "initrd.cpio"
	if compressInitrd {
		name += ".gz"
	}
	return Image{Dir: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, name), KernelRelease: kver}
}

// cachedImage returns the image for the pinned kernel if it is already built.
func cachedImage() (Image, bool) {
	pin, err := pinnedKernel()
	if err != nil {
		return Image{}, false
	}
	cache, err := CacheDir()
	if err != nil {
		return Image{}, false
	}
	dir := filepath.Join(cache, "image-"+imageKey(pin))
	ok := filepath.Join(dir, "ok")
	if _, err := os.Stat(ok); err != nil {
		return Image{}, false
	}
	now := time.Now()
	os.Chtimes(ok, now, now) // last use, for pruneImages
	return imageAt(dir, pin.KernelRelease()), true
}

// imageMaxIdle is how long an image of another key (older checkout, other
// kernel) stays in the cache without being used.
const imageMaxIdle = 7 * 24 * time.Hour

// pruneImages removes images other than keep that were not used recently.
func pruneImages(cache, keep string) {
	dirs, _ := filepath.Glob(filepath.Join(cache, "image-*"))
	for _, d := range dirs {
		if d == keep {
			continue
		}
		if st, err := os.Stat(filepath.Join(d, "ok")); err == nil && time.Since(st.ModTime()) < imageMaxIdle {
			continue
		}
		os.RemoveAll(d)
	}
}

// EnsureImage returns the cached base image, building it first when needed:
// it installs missing host tools (qemu-system-x86, busybox-static) with
// apt-get, downloads the pinned kernel and the guest packages into the cache
// and assembles the initramfs. Concurrent callers (parallel test processes)
// serialize on a lock file.
func EnsureImage(ctx context.Context) (Image, error) {
	if img, ok := cachedImage(); ok {
		return img, nil
	}
	cache, err := CacheDir()
	if err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(filepath.Join(cache, "debs"), 0o755); err != nil {
		return Image{}, err
	}
	unlock, err := lockFile(filepath.Join(cache, ".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if img, ok := cachedImage(); ok {
		return img, nil
	}
	return buildImage(ctx, cache)
}

func buildImage(ctx context.Context, cache string) (Image, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	start := time.Now()
	if err := ensureHostTools(ctx, logf); err != nil {
		return Image{}, err
	}
	pin, err := pinnedKernel()
	if err != nil {
		return Image{}, err
	}
	// The caller holds the cache lock: build-* directories are leftovers of
	// an interrupted build.
	if stale, _ := filepath.Glob(filepath.Join(cache, "build-*")); len(stale) > 0 {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	debDir := filepath.Join(cache, "debs")
	pin, kernelDeb, err := fetchKernel(ctx, debDir, pin, logf)
	if err != nil {
		return Image{}, err
	}
	guestDebs, err := fetchGuestPackages(ctx, debDir)
	if err != nil {
		return Image{}, err
	}
	staticDeb, err := fetchPackage(ctx, debDir, initShellPackage)
	if err != nil {
		return Image{}, err
	}
	fetched := time.Since(start)

	staging, err := os.MkdirTemp(cache, "build-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(staging)
	pkgs, root, out := filepath.Join(staging, "pkgs"), filepath.Join(staging, "root"), filepath.Join(staging, "image")
	for _, d := range []string{pkgs, root, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Image{}, err
		}
	}
	for _, deb := range append([]string{kernelDeb}, guestDebs...) {
		if _, err := run(ctx, "", nil, "dpkg-deb", "-x", deb, pkgs); err != nil {
			return Image{}, err
		}
	}
	// busybox-static also ships /bin/busybox: unpack it apart.
	if _, err := run(ctx, "", nil, "dpkg-deb", "-x", staticDeb, filepath.Join(staging, "static")); err != nil {
		return Image{}, err
	}
	kver := pin.KernelRelease()
	if err := buildRootfs(ctx, pkgs, root, kver, initScript); err != nil {
		return Image{}, fmt.Errorf("assemble initramfs tree: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(initShell)), 0o755); err != nil {
		return Image{}, err
	}
	if err := copyFile(filepath.Join(staging, "static", "bin", "busybox"), filepath.Join(root, initShell), 0o755); err != nil {
		return Image{}, err
	}
	if err := writeModuleLists(root); err != nil {
		return Image{}, err
	}
	img := imageAt(out, kver)
	if err := copyFile(filepath.Join(pkgs, "boot", "vmlinuz-"+kver), img.Kernel, 0o644); err != nil {
		return Image{}, err
	}
	if err := writeBaseInitrd(root, img.Initrd); err != nil {
		return Image{}, err
	}
	manifest := fmt.Sprintf("kernel %s %s\nkernel-deb %s\nfetch %s\nbuild %s\n", pin.Package, pin.Version,
		filepath.Base(kernelDeb), fetched.Round(time.Millisecond), (time.Since(start) - fetched).Round(time.Millisecond))
	if err := os.WriteFile(filepath.Join(out, "ok"), []byte(manifest), 0o644); err != nil {
		return Image{}, err
	}
	final := filepath.Join(cache, "image-"+imageKey(pin))
	os.RemoveAll(final)
	if err := os.Rename(out, final); err != nil {
		return Image{}, err
	}
	pruneImages(cache, final)
	logf("vm: built image %s in %s (downloads %s)", final, time.Since(start).Round(time.Millisecond), fetched.Round(time.Millisecond))
	return imageAt(final, kver), nil
}

func writeModuleLists(root string) error {
	dir := filepath.Join(root, "etc", "kipvs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf("KIPVS_MODULES=%q\nKIPVS_NET_MODULES=%q\n", strings.Join(guestModules, " "), strings.Join(netModules, " "))
	return os.WriteFile(filepath.Join(dir, "modules.conf"), []byte(conf), 0o644)
}

// writeBaseInitrd archives root (plus /dev/console, which the kernel opens
// for init before devtmpfs is mounted) into a newc cpio.
func writeBaseInitrd(root, dst string) (err error) {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	var w io.Writer = f
	var gz *gzip.Writer
	if compressInitrd {
		gz = gzip.NewWriter(f)
		w = gz
	}
	c := newCPIOWriter(w)
	if err := c.AddTree(root); err != nil {
		return err
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	if err := c.Close(); err != nil {
		return err
	}
	if gz != nil {
		return gz.Close()
	}
	return nil
}

// lockFile takes an exclusive flock on path; the returned func releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// Available reports whether VM runs can work here: qemu is installed (or
// installable as root with apt-get) and the image is cached (or the tools to
// build it are present). It does not touch the network; EnsureImage may still
// fail when the Debian mirror is unreachable.
func Available() (reason string, ok bool) {
	installable := os.Geteuid() == 0 && hasTool("apt-get")
	if !hasTool("qemu-system-x86_64") && !installable {
		return "qemu-system-x86_64 not found and cannot install qemu-system-x86 (need root and apt-get)", false
	}
	if _, ok := cachedImage(); ok {
		return "", true
	}
	if _, err := pinnedKernel(); err != nil {
		return err.Error(), false
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if !hasTool(tool) {
			return fmt.Sprintf("image not cached and %s not found to build it", tool), false
		}
	}
	if !hasTool("busybox") && !installable {
		return "image not cached and no busybox (busybox-static) for depmod", false
	}
	return "", true
}

func hasTool(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

var errNoMarker = errors.New("guest ended without printing its exit marker (kernel panic, init failure or qemu error)")
