package vm

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// runInitrd writes the per-run initramfs: the cached base archive followed by
// a small second archive with the binary, extra files and run configuration
// (the kernel unpacks concatenated archives in order). The caller removes it.
func runInitrd(img Image, opts Options, nonce string) (string, error) {
	f, err := os.CreateTemp("", "kipvs-vm-initrd-*.cpio")
	if err != nil {
		return "", err
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", err
	}
	base, err := os.Open(img.Initrd)
	if err != nil {
		return fail(err)
	}
	n, err := io.Copy(f, base)
	base.Close()
	if err != nil {
		return fail(err)
	}
	// The kernel parses each archive from a 4-byte aligned offset and skips
	// zero padding between archives; a gzip base can end anywhere.
	if r := n % 512; r != 0 {
		if _, err := f.Write(make([]byte, 512-r)); err != nil {
			return fail(err)
		}
	}
	c := newCPIOWriter(f)
	dirs := map[string]bool{}
	mkdirs := func(p string) {
		var parents []string
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			if !dirs[parents[i]] {
				dirs[parents[i]] = true
				c.Dir(strings.TrimPrefix(parents[i], "/"), 0o755)
			}
		}
	}
	guestBin := "/kipvs/bin/" + filepath.Base(opts.Binary)
	mkdirs(guestBin)
	c.FileFrom(strings.TrimPrefix(guestBin, "/"), 0o755, opts.Binary)
	for _, host := range sortedKeys(opts.Files) {
		if err := addHostPath(c, mkdirs, dirs, host, opts.Files[host]); err != nil {
			return fail(err)
		}
	}
	conf := fmt.Sprintf("KIPVS_NONCE=%s\nKIPVS_NET=%d\nKIPVS_DEBUG=%d\n", nonce, boolInt(opts.Network != nil), boolInt(debug()))
	c.File("kipvs/run.conf", 0o644, []byte(conf))
	c.File("kipvs/run.sh", 0o755, []byte(runScript(guestBin, opts)))
	if err := c.Close(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// addHostPath archives a host file or directory tree at guest path g.
func addHostPath(c *cpioWriter, mkdirs func(string), dirs map[string]bool, host, g string) error {
	st, err := os.Stat(host)
	if err != nil {
		return fmt.Errorf("vm: extra file: %w", err)
	}
	g = path.Clean(g)
	mkdirs(g)
	if !st.IsDir() {
		c.FileFrom(strings.TrimPrefix(g, "/"), uint32(st.Mode().Perm()), host)
		return c.err
	}
	var paths []string
	err = filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(host, p)
		gp := strings.TrimPrefix(path.Join(g, filepath.ToSlash(rel)), "/")
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case st.IsDir():
			if !dirs["/"+gp] {
				dirs["/"+gp] = true
				c.Dir(gp, uint32(st.Mode().Perm()))
			}
		case st.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(gp, t)
		case st.Mode().IsRegular():
			c.FileFrom(gp, uint32(st.Mode().Perm()), p)
		}
	}
	return c.err
}

// runScript is /kipvs/run.sh: a clean environment, the working directory and
// the binary with its arguments, all single-quoted.
func runScript(guestBin string, opts Options) string {
	var b strings.Builder
	dir := shellQuote(opts.Dir)
	fmt.Fprintf(&b, "[ -d %s ] || mkdir -p %s\ncd %s || exit 127\n", dir, dir, dir)
	b.WriteString("exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp")
	for _, e := range opts.Env {
		b.WriteString(" " + shellQuote(e))
	}
	b.WriteString(" " + shellQuote(guestBin))
	for _, a := range opts.Args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

var relayOnce struct {
	sync.Mutex
	path string
}

// relayBinary builds test/vm/relay (once per process) into the cache. It
// needs the source tree this package was compiled from.
func relayBinary(ctx context.Context) (string, error) {
	relayOnce.Lock()
	defer relayOnce.Unlock()
	if relayOnce.path != "" {
		return relayOnce.path, nil
	}
	_, self, _, ok := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(self), "relay")
	if _, err := os.Stat(filepath.Join(src, "main.go")); !ok || err != nil {
		return "", fmt.Errorf("vm: relay source not found next to %s (built with -trimpath?)", self)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(cache, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	if strings.ContainsAny(binDir, " \t'\"") {
		return "", fmt.Errorf("vm: cache path %q must not contain spaces or quotes (qemu guestfwd cmd)", binDir)
	}
	tmp := filepath.Join(binDir, fmt.Sprintf("relay.tmp%d", os.Getpid()))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("vm: build relay: %w\n%s", err, out)
	}
	final := filepath.Join(binDir, "relay")
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	relayOnce.path = final
	return final, nil
}
