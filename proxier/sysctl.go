package proxier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Sysctl is kipvs's boundary to kernel settings. Keys are sysctl names with
// slashes ("net/ipv4/ip_forward"), read from and written to /proc/sys; a key
// that starts with "/sys/" is a module parameter file under /sys (the conntrack
// hash size has no sysctl).
type Sysctl interface {
	// Get returns a setting's value without surrounding blanks; an error
	// wrapping fs.ErrNotExist when the kernel has no such setting.
	Get(ctx context.Context, key string) (string, error)
	// Set writes a setting.
	Set(ctx context.Context, key, value string) error
}

// ProcSysctl implements Sysctl on /proc/sys and /sys.
type ProcSysctl struct {
	// Root prefixes every path; empty in production, a directory in tests.
	Root string
}

var _ Sysctl = (*ProcSysctl)(nil)

// NewProcSysctl returns the /proc/sys implementation of Sysctl.
func NewProcSysctl() *ProcSysctl { return &ProcSysctl{} }

func (p *ProcSysctl) path(key string) string {
	if strings.HasPrefix(key, "/sys/") {
		return filepath.Join(p.Root, key)
	}
	return filepath.Join(p.Root, "/proc/sys", key)
}

// Get implements Sysctl.
func (p *ProcSysctl) Get(ctx context.Context, key string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	b, err := os.ReadFile(p.path(key))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (p *ProcSysctl) Set(ctx context.Context, key, value string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// O_WRONLY without O_CREATE: a missing setting stays missing.
	f, err := os.OpenFile(p.path(key), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("writing %s=%s: %w", key, value, err)
	}
	_, err = f.WriteString(value + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s=%s: %w", key, value, err)
	}
	return nil
}

// FakeSysctl is an in-memory Sysctl: only keys that exist can be read or
// written, like /proc/sys. Its canonical text is "key = value" lines, sorted.
type FakeSysctl struct {
	mu     sync.Mutex
	values map[string]string
	writes int
	fail   map[string]error
}

var _ Sysctl = (*FakeSysctl)(nil)

// NewFakeSysctlFromText parses DumpText output ("key = value" lines).
func NewFakeSysctlFromText(text string) (*FakeSysctl, error) {
	f := &FakeSysctl{values: map[string]string{}, fail: map[string]error{}}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("line %d: want \"key = value\", got %q", i+1, line)
		}
		f.values[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return f, nil
}

// DumpText renders the settings canonically.
func (f *FakeSysctl) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(f.values)) {
		fmt.Fprintf(&b, "%s = %s\n", k, f.values[k])
	}
	return b.String()
}

// Writes counts the Set calls that changed a value.
func (f *FakeSysctl) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// SetError makes Set of key fail with err (nil clears it).
func (f *FakeSysctl) SetError(key string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, key)
	} else {
		f.fail[key] = err
	}
}

// Get implements Sysctl.
func (f *FakeSysctl) Get(_ context.Context, key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[key]
	if !ok {
		return "", fmt.Errorf("reading %s: %w", key, fs.ErrNotExist)
	}
	return v, nil
}

// Set implements Sysctl.
func (f *FakeSysctl) Set(_ context.Context, key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[key]; err != nil {
		return fmt.Errorf("writing %s=%s: %w", key, value, err)
	}
	old, ok := f.values[key]
	if !ok {
		return fmt.Errorf("writing %s=%s: %w", key, value, fs.ErrNotExist)
	}
	if old != value {
		f.values[key] = value
		f.writes++
	}
	return nil
}

// ensureSysctl writes key=value unless it already has that value (kube-proxy's
// EnsureSysctl), so a restart writes nothing.
func ensureSysctl(ctx context.Context, s Sysctl, key, value string) (bool, error) {
	cur, err := s.Get(ctx, key)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("kernel setting %s does not exist (is the module that provides it loaded?): %w", key, err)
		}
		return false, err
	}
	if cur == value {
		return false, nil
	}
	return true, s.Set(ctx, key, value)
}
