package proxier

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// builtinChains are the chains every table starts with.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// FakeIptables is an in-memory Iptables for tests: tables of chains of rules.
// Its canonical text (DumpText) is iptables-save's format without counters,
// tables and chains sorted by name, rules in order; it parses back with
// NewFakeIptablesFromText. Every write call counts in Writes, Save in Reads.
type FakeIptables struct {
	mu     sync.Mutex
	tables map[string]map[string][]string
	writes int
	reads  int
	mode   string
	// NoRandomFully makes RandomFully report false.
	NoRandomFully bool
}

var _ Iptables = (*FakeIptables)(nil)

// NewFakeIptables returns a FakeIptables whose tables hold only their builtin chains.
func NewFakeIptables() *FakeIptables {
	f := &FakeIptables{tables: map[string]map[string][]string{}, mode: IptablesNFT}
	for t, chains := range builtinChains {
		f.tables[t] = map[string][]string{}
		for _, c := range chains {
			f.tables[t][c] = nil
		}
	}
	return f
}

// NewFakeIptablesFromText parses DumpText (or iptables-save) output.
func NewFakeIptablesFromText(text string) (*FakeIptables, error) {
	f := NewFakeIptables()
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "*") {
			t := line[1:]
			chains, err := ParseIptablesSave(text, t)
			if err != nil {
				return nil, err
			}
			if f.tables[t] == nil {
				f.tables[t] = map[string][]string{}
			}
			for c, rules := range chains {
				f.tables[t][c] = rules
			}
		}
	}
	return f, nil
}

// DumpText renders the tables canonically.
func (f *FakeIptables) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, t := range slices.Sorted(maps.Keys(f.tables)) {
		chains := f.tables[t]
		fmt.Fprintf(&b, "*%s\n", t)
		names := slices.Sorted(maps.Keys(chains))
		for _, c := range names {
			fmt.Fprintf(&b, ":%s\n", c)
		}
		for _, c := range names {
			for _, r := range chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Writes counts the write calls.
func (f *FakeIptables) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Reads counts the Save calls.
func (f *FakeIptables) Reads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// RuleCount counts the rules in every chain whose name contains substr, plus
// the rules elsewhere that mention substr (jumps), like `iptables-save | grep -c substr`.
func (f *FakeIptables) RuleCount(substr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, chains := range f.tables {
		for c, rules := range chains {
			if strings.Contains(c, substr) {
				n++ // the chain's ":NAME" line
			}
			for _, r := range rules {
				if strings.Contains(c, substr) || strings.Contains(r, substr) {
					n++
				}
			}
		}
	}
	return n
}

// Mode implements Iptables.
func (f *FakeIptables) Mode() string { return f.mode }

// RandomFully implements Iptables.
func (f *FakeIptables) RandomFully() bool { return !f.NoRandomFully }

// Save implements Iptables.
func (f *FakeIptables) Save(ctx context.Context, table string) (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.reads++
	chains, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("save table %s: %w", table, syscall.ENOENT)
	}
	out := make(map[string][]string, len(chains))
	for c, rules := range chains {
		out[c] = append([]string{}, rules...)
	}
	return out, nil
}

// chain returns a chain for a write, failing like iptables when it is missing.
func (f *FakeIptables) chain(ctx context.Context, table, chain string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.writes++
	rules, ok := f.tables[table][chain]
	if !ok {
		return nil, fmt.Errorf("table %s chain %s: %w", table, chain, syscall.ENOENT)
	}
	return rules, nil
}

// NewChain implements Iptables.
func (f *FakeIptables) NewChain(ctx context.Context, table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	f.writes++
	t, ok := f.tables[table]
	if !ok {
		return fmt.Errorf("creating chain %s: table %s: %w", chain, table, syscall.ENOENT)
	}
	if _, ok := t[chain]; ok {
		return fmt.Errorf("creating chain %s in table %s: %w", chain, table, syscall.EEXIST)
	}
	t[chain] = []string{}
	return nil
}

// FlushChain implements Iptables.
func (f *FakeIptables) FlushChain(ctx context.Context, table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.chain(ctx, table, chain); err != nil {
		return err
	}
	f.tables[table][chain] = []string{}
	return nil
}

// Append implements Iptables.
func (f *FakeIptables) Append(ctx context.Context, table, chain string, rule []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.chain(ctx, table, chain)
	if err != nil {
		return err
	}
	if err := f.checkTarget(table, rule); err != nil {
		return err
	}
	f.tables[table][chain] = append(rules, NormalizeRule(strings.Join(rule, " ")))
	return nil
}

// Insert implements Iptables.
func (f *FakeIptables) Insert(ctx context.Context, table, chain string, pos int, rule []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.chain(ctx, table, chain)
	if err != nil {
		return err
	}
	if pos < 1 || pos > len(rules)+1 {
		return fmt.Errorf("insert into %s/%s at %d: %w", table, chain, pos, syscall.EINVAL)
	}
	if err := f.checkTarget(table, rule); err != nil {
		return err
	}
	f.tables[table][chain] = slices.Insert(rules, pos-1, NormalizeRule(strings.Join(rule, " ")))
	return nil
}

// checkTarget refuses a jump to a chain that does not exist, as iptables does.
func (f *FakeIptables) checkTarget(table string, rule []string) error {
	return checkTarget(f.tables[table], rule)
}

// checkTarget refuses a jump to a chain missing from chains.
func checkTarget(chains map[string][]string, rule []string) error {
	i := slices.Index(rule, "-j")
	if i < 0 || i+1 >= len(rule) {
		return nil
	}
	target := rule[i+1]
	if strings.ToUpper(target) != target || !strings.Contains(target, "-") {
		return nil // a builtin target such as ACCEPT or MASQUERADE
	}
	if _, ok := chains[target]; !ok {
		return fmt.Errorf("jump to missing chain %s: %w", target, syscall.ENOENT)
	}
	return nil
}

// Restore implements Iptables with iptables-restore --noflush's semantics:
// each table block is applied on a copy and replaces the table at COMMIT, so a
// failing line changes nothing. It counts as one write.
func (f *FakeIptables) Restore(ctx context.Context, text string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	f.writes++
	var table string
	var work map[string][]string
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		fail := func(err error) error { return fmt.Errorf("iptables-restore: line %d %q: %w", i+1, line, err) }
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			t, ok := f.tables[table]
			if !ok {
				return fail(syscall.ENOENT)
			}
			work = make(map[string][]string, len(t))
			for c, rules := range t {
				work[c] = slices.Clone(rules)
			}
		case work == nil:
			return fail(syscall.EINVAL)
		case line == "COMMIT":
			f.tables[table], work = work, nil
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if !slices.Contains(builtinChains[table], name) {
				work[name] = []string{}
			}
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I "):
			chain, rest, _ := strings.Cut(line[3:], " ")
			rules, ok := work[chain]
			if !ok {
				return fail(syscall.ENOENT)
			}
			pos := len(rules) + 1
			if line[1] == 'I' {
				pos = 1
				if n, r, ok := strings.Cut(rest, " "); ok {
					if p, err := strconv.Atoi(n); err == nil {
						pos, rest = p, r
					}
				}
				if pos < 1 || pos > len(rules)+1 {
					return fail(syscall.EINVAL)
				}
			}
			rule := splitRuleArgs(rest)
			if err := checkTarget(work, rule); err != nil {
				return fail(err)
			}
			work[chain] = slices.Insert(rules, pos-1, NormalizeRule(rest))
		default:
			return fail(syscall.EINVAL)
		}
	}
	if work != nil {
		return fmt.Errorf("iptables-restore: table %s without COMMIT: %w", table, syscall.EINVAL)
	}
	return nil
}
