package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCPIOReadableByCpio checks our newc writer against an independent
// reader: cpio(1) (busybox-static on the host) must list and extract it.
func TestCPIOReadableByCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	args := []string{"-i", "-d", "-m"}
	if err != nil {
		if _, berr := exec.LookPath("busybox"); berr != nil {
			t.Skip("no cpio or busybox on the host")
		}
		cpio, args = "busybox", append([]string{"cpio"}, args...)
	}
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("etc", 0o755)
	c.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n"))
	c.File("etc/odd", 0o600, []byte("abc")) // length not a multiple of 4
	c.Symlink("hosts", "/etc/hosts")
	c.Dir("a", 0o755)
	c.Dir("a/b", 0o700)
	c.File("a/b/empty", 0o644, nil)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%512 != 0 {
		t.Errorf("archive length %d is not padded to 512", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command(cpio, args...)
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("etc/hosts"); got != "127.0.0.1 localhost\n" {
		t.Errorf("etc/hosts = %q", got)
	}
	if got := read("etc/odd"); got != "abc" {
		t.Errorf("etc/odd = %q", got)
	}
	if got, err := os.Readlink(filepath.Join(dir, "hosts")); err != nil || got != "/etc/hosts" {
		t.Errorf("symlink hosts -> %q, %v", got, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a/b")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("a/b: %v %v", st, err)
	}
	if got := read("a/b/empty"); !strings.EqualFold(got, "") {
		t.Errorf("a/b/empty = %q", got)
	}
}
