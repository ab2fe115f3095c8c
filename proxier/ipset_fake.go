package proxier

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// FakeIpset is an in-memory Ipset for tests. Its canonical text (DumpText) is
// one block per set, sorted by name, entries sorted and indented:
//
//	KIPVS-CLUSTER-IP hash:ip,port
//	  10.96.0.10,tcp:80
//
// (" inet6" follows the type of an IPv6 hash set, " skbinfo" that of a set
// whose entries carry marks, shown as " skbmark 0x..."). Create, and Add and Del
// that change something, count in Writes; List counts in Reads.
type FakeIpset struct {
	mu     sync.Mutex
	sets   map[string]*fakeSet
	writes int
	reads  int
	fail   map[string]error
}

type fakeSet struct {
	spec    IPSetSpec
	entries map[IPSetEntry]struct{}
}

var _ Ipset = (*FakeIpset)(nil)

// NewFakeIpset returns a FakeIpset with no sets.
func NewFakeIpset() *FakeIpset {
	return &FakeIpset{sets: map[string]*fakeSet{}, fail: map[string]error{}}
}

// NewFakeIpsetFromText parses DumpText output.
func NewFakeIpsetFromText(text string) (*FakeIpset, error) {
	f := NewFakeIpset()
	var cur *fakeSet
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
			cur.entries[e] = struct{}{}
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("line %d: want \"NAME TYPE [inet6] [skbinfo]\", got %q", i+1, line)
		}
		spec := IPSetSpec{Name: fields[0], Type: fields[1]}
		for _, opt := range fields[2:] {
			switch opt {
			case "inet6":
				spec.IPv6 = true
			case "skbinfo":
				spec.Skbinfo = true
			default:
				return nil, fmt.Errorf("line %d: want \"NAME TYPE [inet6] [skbinfo]\", got %q", i+1, line)
			}
		}
		cur = &fakeSet{spec: spec, entries: map[IPSetEntry]struct{}{}}
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
		b.WriteString("\n")
		for _, e := range sortedEntries(s.entries) {
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
	for _, e := range sortedEntries(s.entries) {
		out = append(out, e.String())
	}
	return out
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
	f.sets[spec.Name] = &fakeSet{spec: spec, entries: map[IPSetEntry]struct{}{}}
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
	return s.spec.Type, sortedEntries(s.entries), nil
}

// Add implements Ipset; an entry that does not fit the set's type or family
// fails with EINVAL, as the kernel's type handlers do.
func (f *FakeIpset) Add(_ context.Context, set string, e IPSetEntry) error {
	return f.change(set, e, true)
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
	if !fitsSet(s.spec, e) {
		return fmt.Errorf(verb, e, set, syscall.EINVAL)
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
	e.Mark = 0
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
