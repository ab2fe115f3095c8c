package vm

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"sync"
)

// console turns the guest's serial output into lines for Stdout: it removes
// \r, finds the exit marker (which may follow a partial line of test output)
// and keeps the last lines for error messages. Output after the marker
// (power-off messages) is dropped.
type console struct {
	mu     sync.Mutex
	out    io.Writer
	marker string
	buf    []byte
	tail   []string
	code   int
	found  bool
}

const consoleTailLines = 40

func newConsole(out io.Writer, marker string) *console {
	if out == nil {
		out = io.Discard
	}
	return &console{out: out, marker: marker}
}

// Write implements io.Writer.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	for {
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			break
		}
		line := string(bytes.ReplaceAll(c.buf[:i], []byte("\r"), nil))
		c.buf = c.buf[i+1:]
		c.line(line)
	}
	return len(p), nil
}

func (c *console) line(line string) {
	if c.found {
		return
	}
	if i := strings.Index(line, c.marker); i >= 0 {
		if code, err := strconv.Atoi(strings.TrimSpace(line[i+len(c.marker):])); err == nil {
			c.found, c.code = true, code
			if i > 0 {
				c.emit(line[:i])
			}
			return
		}
	}
	c.emit(line)
}

func (c *console) emit(line string) {
	io.WriteString(c.out, line+"\n")
	c.tail = append(c.tail, line)
	if len(c.tail) > consoleTailLines {
		c.tail = c.tail[len(c.tail)-consoleTailLines:]
	}
}

// Flush emits a final line without newline, if any.
func (c *console) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) > 0 {
		c.line(string(bytes.ReplaceAll(c.buf, []byte("\r"), nil)))
		c.buf = nil
	}
}

// ExitCode returns the code from the marker, if it was seen.
func (c *console) ExitCode() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code, c.found
}

// Tail returns the last console lines.
func (c *console) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}
