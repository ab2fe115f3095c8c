package proxier

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/utils/clock"
)

// FakeIpset is an in-memory Ipset for tests. Its canonical text (DumpText) is
// one block per set, sorted by name, entries sorted and indented:
//
//	KIPVS-CLUSTER-IP hash:ip,port
//	  10.96.0.10,tcp:80
//
// (" inet6" follows the type of an IPv6 hash set, " skbinfo" that of a set
// whose entries carry marks, shown as " skbmark 0x...", " timeout N" that of a
// set with timeouts, whose entries show the seconds they have left as
// " timeout N"). Create, and Add and Del that change something, count in
// Writes; List counts in Reads.
//
// With a clock (SetClock) the entries of a set with timeouts count down as the
// kernel's do: List reports the whole seconds left, rounded down, and an entry
// whose time is up is gone. Without one their timeouts stay as added.
type FakeIpset struct {
	mu     sync.Mutex
	sets   map[string]*fakeSet
	writes int
	reads  int
	fail   map[string]error
	clock  clock.PassiveClock
}

type fakeSet struct {
	spec    IPSetSpec
	entries map[IPSetEntry]struct{}
	// expires holds, for a set with timeouts, when each entry expires (with a
	// clock) or its timeout as added (without one, as a time after the zero time).
	expires map[IPSetEntry]time.Time
}

// SetClock makes the timeouts of entries count down on clk.
func (f *FakeIpset) SetClock(clk clock.PassiveClock) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = clk
}

// now is the fake's time: the clock's, or the zero time without one.
func (f *FakeIpset) now() time.Time {
	if f.clock == nil {
		return time.Time{}
	}
	return f.clock.Now()
}

// expire drops the entries of s whose timeout has passed.
func (f *FakeIpset) expire(s *fakeSet) {
	if f.clock == nil {
		return
	}
	now := f.clock.Now()
	for e, t := range s.expires {
		if !t.After(now) {
			delete(s.expires, e)
			delete(s.entries, e)
		}
	}
}

// withTimeout returns e with the seconds it has left in s, as the kernel
// lists it (rounded down, at least 1).
func (f *FakeIpset) withTimeout(s *fakeSet, e IPSetEntry) IPSetEntry {
	if t, ok := s.expires[e]; ok {
		e.Timeout = max(t.Sub(f.now()).Truncate(time.Second), time.Second)
	}
	return e
}

var (
	_ Ipset        = (*FakeIpset)(nil)
	_ IpsetBatcher = (*FakeIpset)(nil)
)

// NewFakeIpset returns a FakeIpset with no sets.
func NewFakeIpset() *FakeIpset {
	return &FakeIpset{sets: map[string]*fakeSet{}, fail: map[string]error{}}
}

// NewFakeIpsetFromText parses DumpText output.
func NewFakeIpsetFromText(text string) (*FakeIpset, error) {
	f := NewFakeIpset()
	var cur *fakeSet
	var err error
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if strings.HasPrefix(line, " ") {
			if cur == nil {
				return nil, fmt.Errorf("line %d: entry before any set", i+1)
			}
			e, err := ParseIPSetEntry(strings.TrimSpace(line))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			if e.Timeout != 0 && cur.spec.Timeout == 0 {
				return nil, fmt.Errorf("line %d: timeout in a set without timeouts", i+1)
			}
			cur.add(time.Time{}, e)
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("line %d: want \"NAME TYPE [inet6] [skbinfo]\", got %q", i+1, line)
		}
		spec := IPSetSpec{Name: fields[0], Type: fields[1]}
		opts := fields[2:]
		for len(opts) > 0 {
			switch opts[0] {
			case "inet6":
				spec.IPv6 = true
			case "skbinfo":
				spec.Skbinfo = true
			case "timeout":
				var secs uint64
				if len(opts) > 1 {
					secs, err = strconv.ParseUint(opts[1], 10, 32)
				}
				if len(opts) == 1 || err != nil || secs == 0 {
					return nil, fmt.Errorf("line %d: bad timeout in %q", i+1, line)
				}
				spec.Timeout = time.Duration(secs) * time.Second
				opts = opts[1:]
			default:
				return nil, fmt.Errorf("line %d: want \"NAME TYPE [inet6] [skbinfo] [timeout N]\", got %q", i+1, line)
			}
			opts = opts[1:]
		}
		cur = newFakeSet(spec)
		f.sets[cur.spec.Name] = cur
	}
	return f, nil
}

// DumpText renders every set and its entries canonically.
func (f *FakeIpset) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.sets))
	for n := range f.sets {
		names = append(names, n)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		s := f.sets[n]
		b.WriteString(n + " " + s.spec.Type)
		if s.spec.IPv6 {
			b.WriteString(" inet6")
		}
		if s.spec.Skbinfo {
			b.WriteString(" skbinfo")
		}
		if s.spec.Timeout != 0 {
			fmt.Fprintf(&b, " timeout %d", timeoutSeconds(s.spec.Timeout))
		}
		b.WriteString("\n")
		for _, e := range f.listLocked(s) {
			b.WriteString("  " + e.String() + "\n")
		}
	}
	return b.String()
}

// Entries returns the sorted entries of a set as strings, nil when it does not exist.
func (f *FakeIpset) Entries(set string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[set]
	if !ok {
		return nil
	}
	out := []string{}
	for _, e := range f.listLocked(s) {
		out = append(out, e.String())
	}
	return out
}

// listLocked returns the live entries of s, sorted, with the time they have left.
func (f *FakeIpset) listLocked(s *fakeSet) []IPSetEntry {
	f.expire(s)
	out := sortedEntries(s.entries)
	for i := range out {
		out[i] = f.withTimeout(s, out[i])
	}
	return out
}

func newFakeSet(spec IPSetSpec) *fakeSet {
	s := &fakeSet{spec: spec, entries: map[IPSetEntry]struct{}{}}
	if spec.Timeout != 0 {
		s.expires = map[IPSetEntry]time.Time{}
	}
	return s
}

// add stores e (whose Timeout, in a set with timeouts, is how long it lives:
// 0 for the set's default) at now.
func (s *fakeSet) add(now time.Time, e IPSetEntry) {
	if s.expires != nil {
		d := e.Timeout
		if d == 0 {
			d = s.spec.Timeout
		}
		e.Timeout = 0
		s.expires[e] = now.Add(time.Duration(timeoutSeconds(d)) * time.Second)
	}
	s.entries[e] = struct{}{}
}

// SetError makes every Add and Del on set fail with err until SetError(set, nil).
func (f *FakeIpset) SetError(set string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, set)
	} else {
		f.fail[set] = err
	}
}

// Writes counts Create calls and the Add and Del calls that changed a set.
func (f *FakeIpset) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Reads counts List calls.
func (f *FakeIpset) Reads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// Create implements Ipset; like the kernel it refuses an existing name (EEXIST)
// and an invalid spec (EINVAL).
func (f *FakeIpset) Create(_ context.Context, spec IPSetSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if err := checkSpec(spec); err != nil {
		return fmt.Errorf("creating ipset %s (%s): %w", spec.Name, spec.Type, err)
	}
	if _, ok := f.sets[spec.Name]; ok {
		return fmt.Errorf("creating ipset %s (%s): %w", spec.Name, spec.Type, syscall.EEXIST)
	}
	f.sets[spec.Name] = newFakeSet(spec)
	return nil
}

// checkSpec applies the kernel's limits on names and the types kipvs knows.
func checkSpec(spec IPSetSpec) error {
	if spec.Name == "" || len(spec.Name) > ipsetNameMax {
		return fmt.Errorf("bad set name %q: %w", spec.Name, syscall.EINVAL)
	}
	switch spec.Type {
	case SetTypeHashIP, SetTypeHashIPPort, SetTypeHashIPPortIP, SetTypeHashIPPortNet, SetTypeBitmapPort:
		return nil
	}
	return fmt.Errorf("unknown set type %q: %w", spec.Type, syscall.EINVAL)
}

// List implements Ipset.
func (f *FakeIpset) List(_ context.Context, name string) (string, []IPSetEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	s, ok := f.sets[name]
	if !ok {
		return "", nil, fmt.Errorf("listing ipset %s: %w", name, ErrSetNotFound)
	}
	return s.spec.Type, f.listLocked(s), nil
}

// Add implements Ipset; an entry that does not fit the set's type or family
// fails with EINVAL, as the kernel's type handlers do, and so does a timeout
// for a set without timeouts (IPSET_ERR_TIMEOUT). Adding an entry that is
// there with a timeout sets its timeout anew, as `ipset -exist add` does.
func (f *FakeIpset) Add(_ context.Context, set string, e IPSetEntry) error {
	return f.change(set, e, true)
}

// AddEntries implements IpsetBatcher as the kernel does: the entries are
// added in order up to the first that fails, whose error is returned.
func (f *FakeIpset) AddEntries(_ context.Context, set string, entries []IPSetEntry) error {
	for _, e := range entries {
		if err := f.change(set, e, true); err != nil {
			return err
		}
	}
	return nil
}

// Del implements Ipset.
func (f *FakeIpset) Del(_ context.Context, set string, e IPSetEntry) error {
	return f.change(set, e, false)
}

func (f *FakeIpset) change(set string, e IPSetEntry, add bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	verb := "deleting %s from ipset %s: %w"
	if add {
		verb = "adding %s to ipset %s: %w"
	}
	s, ok := f.sets[set]
	if !ok {
		return fmt.Errorf(verb, e, set, ErrSetNotFound)
	}
	if err := f.fail[set]; err != nil {
		f.writes++
		return fmt.Errorf(verb, e, set, err)
	}
	if !fitsSet(s.spec, e) || e.Timeout != 0 && s.spec.Timeout == 0 {
		return fmt.Errorf(verb, e, set, syscall.EINVAL)
	}
	if s.expires != nil {
		f.expire(s)
		k := e
		k.Timeout = 0
		_, have := s.entries[k]
		switch {
		case add:
			s.add(f.now(), e)
			f.writes++
		case have:
			delete(s.entries, k)
			delete(s.expires, k)
			f.writes++
		}
		return nil
	}
	if s.spec.Skbinfo {
		// The mark is data: the kernel finds the entry by its key, an add
		// replaces the mark and a delete removes whatever mark it has.
		for cur := range s.entries {
			if cur.Key() == e.Key() && cur != e {
				delete(s.entries, cur)
				if add {
					s.entries[e] = struct{}{}
				}
				f.writes++
				return nil
			}
		}
	}
	_, have := s.entries[e]
	switch {
	case add && !have:
		s.entries[e] = struct{}{}
		f.writes++
	case !add && have:
		delete(s.entries, e)
		f.writes++
	}
	return nil
}

// fitsSet reports whether e has exactly the fields of spec's type and family.
func fitsSet(spec IPSetSpec, e IPSetEntry) bool {
	if e.Mark != 0 && !spec.Skbinfo {
		return false
	}
	e.Mark, e.Timeout = 0, 0
	if spec.Type == SetTypeBitmapPort {
		return e == IPSetEntry{Port: e.Port}
	}
	if !e.IP.IsValid() || e.IP.Is6() != spec.IPv6 {
		return false
	}
	switch spec.Type {
	case SetTypeHashIP:
		return e == IPSetEntry{IP: e.IP}
	case SetTypeHashIPPort:
		return e.Protocol != "" && !e.IP2.IsValid() && !e.Net.IsValid()
	case SetTypeHashIPPortIP:
		return e.Protocol != "" && e.IP2.IsValid() && e.IP2.Is6() == spec.IPv6 && !e.Net.IsValid()
	case SetTypeHashIPPortNet:
		// The kernel refuses a /0 (IPSET_ERR_INVALID_CIDR).
		return e.Protocol != "" && !e.IP2.IsValid() && e.Net.IsValid() && e.Net.Bits() > 0 && e.Net.Addr().Is6() == spec.IPv6
	}
	return false
}

// sortedEntries returns a set's entries in canonical order.
func sortedEntries(m map[IPSetEntry]struct{}) []IPSetEntry {
	out := make([]IPSetEntry, 0, len(m))
	for e := range m {
		out = append(out, e)
	}
	slices.SortFunc(out, compareEntries)
	return out
}
