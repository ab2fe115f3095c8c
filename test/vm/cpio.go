package vm

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// cpioWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// Linux initramfs unpacker accepts. Writing it in Go lets the harness add
// device nodes (/dev/console) without root and build the per-run overlay
// without spawning a cpio process.
type cpioWriter struct {
	w     *bufio.Writer
	n     int64 // bytes written, for padding
	inode uint32
	err   error
}

const (
	cpioModeDir     = 0o040000
	cpioModeFile    = 0o100000
	cpioModeSymlink = 0o120000
	cpioModeChar    = 0o020000
)

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), inode: 1000}
}

func (c *cpioWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// header writes one entry header; name is relative to the archive root
// ("usr/bin/ip"), mode includes the file type bits.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) {
	c.inode++
	nlink := uint32(1)
	if mode&0o170000 == cpioModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
}

// Dir adds a directory entry.
func (c *cpioWriter) Dir(name string, perm uint32) {
	c.header(name, cpioModeDir|perm, 0, 0, 0)
}

// File adds a regular file with the given contents.
func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	c.header(name, cpioModeFile|perm, int64(len(data)), 0, 0)
	c.write(data)
	c.pad()
}

// FileFrom adds a regular file copied from a host path.
func (c *cpioWriter) FileFrom(name string, perm uint32, hostPath string) {
	if c.err != nil {
		return
	}
	f, err := os.Open(hostPath)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	c.header(name, cpioModeFile|perm, st.Size(), 0, 0)
	if c.err != nil {
		return
	}
	n, err := io.Copy(c.w, f)
	c.n += n
	if err == nil && n != st.Size() {
		err = fmt.Errorf("%s changed size while archiving", hostPath)
	}
	c.err = err
	c.pad()
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, cpioModeSymlink|0o777, int64(len(target)), 0, 0)
	c.write([]byte(target))
	c.pad()
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	c.header(name, cpioModeChar|perm, 0, major, minor)
}

// Close writes the trailer and flushes; it does not close the underlying writer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	// The kernel reads archives in 512-byte blocks only for alignment of the
	// next concatenated archive; pad to 512 like cpio(1) does.
	if r := c.n % 512; r != 0 {
		c.write(make([]byte, 512-r))
	}
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}

// AddTree adds every entry below root (not following symlinks), in sorted
// order so that the archive is reproducible. Parent directories come first.
func (c *cpioWriter) AddTree(root string) error {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel := filepath.ToSlash(strings.TrimPrefix(p, root+string(filepath.Separator)))
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		perm := uint32(st.Mode().Perm())
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(rel, t)
		case st.IsDir():
			c.Dir(rel, perm)
		case st.Mode().IsRegular():
			c.FileFrom(rel, perm, p)
		default:
			return fmt.Errorf("cpio: unsupported file type %v at %s", st.Mode().Type(), p)
		}
		if c.err != nil {
			return c.err
		}
	}
	return nil
}
