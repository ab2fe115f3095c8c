package proxier

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"

	goiptables "github.com/coreos/go-iptables/iptables"
)

// Iptables is kipvs's boundary to one IP family's iptables tables. Rules are
// given as argument lists in the form iptables-save prints them, without the
// leading "-A CHAIN".
type Iptables interface {
	// Save returns every chain of table with its rules (a chain without rules
	// maps to an empty slice), as iptables-save prints them.
	Save(ctx context.Context, table string) (map[string][]string, error)
	// NewChain creates an empty chain.
	NewChain(ctx context.Context, table, chain string) error
	// FlushChain removes every rule of chain.
	FlushChain(ctx context.Context, table, chain string) error
	// Append appends a rule to chain.
	Append(ctx context.Context, table, chain string, rule []string) error
	// Insert inserts a rule at position pos (1 is the first) of chain.
	Insert(ctx context.Context, table, chain string, pos int, rule []string) error
	// Restore feeds text (iptables-save format: "*table", ":CHAIN - [0:0]",
	// "-A"/"-I" lines, "COMMIT") to iptables-restore --noflush: each table
	// is replaced atomically; a user chain declared with ":CHAIN" is created,
	// or flushed when it exists; chains not declared keep their rules, and a
	// builtin chain's declaration changes nothing but its policy.
	Restore(ctx context.Context, text string) error
	// Mode names the backend: "nft" or "legacy".
	Mode() string
	// RandomFully reports whether MASQUERADE --random-fully is available.
	RandomFully() bool
}

// The iptables backends.
const (
	IptablesNFT    = "nft"
	IptablesLegacy = "legacy"
)

// GoIptables implements Iptables: reads are one iptables-save per table, the
// full sync's writes one iptables-restore --noflush per table (Restore; as
// kube-proxy does), single-rule writes and the probes (backend, MASQUERADE
// --random-fully) go through github.com/coreos/go-iptables.
type GoIptables struct {
	ipt         *goiptables.IPTables
	mode        string
	savePath    string
	restorePath string
}

var _ Iptables = (*GoIptables)(nil)

// NewGoIptables opens the iptables (ipv6: ip6tables) of the given backend
// ("nft" or "legacy"; see DetectIptablesMode): iptables-<mode> and
// iptables-<mode>-save as Debian and most distributions name them, else plain
// iptables and iptables-save when `iptables --version` names that backend.
func NewGoIptables(mode string, ipv6 bool) (*GoIptables, error) {
	base := "iptables"
	proto := goiptables.ProtocolIPv4
	if ipv6 {
		base, proto = "ip6tables", goiptables.ProtocolIPv6
	}
	cmd, save, restore := base+"-"+mode, base+"-"+mode+"-save", base+"-"+mode+"-restore"
	savePath, err := exec.LookPath(save)
	restorePath, rerr := exec.LookPath(restore)
	if _, cerr := exec.LookPath(cmd); cerr != nil || err != nil || rerr != nil {
		out, verr := exec.Command(base, "--version").Output()
		if verr != nil {
			return nil, fmt.Errorf("iptables backend %s: neither %s nor %s runs: %w", mode, cmd, base, verr)
		}
		if got := versionMode(string(out)); got != mode {
			return nil, fmt.Errorf("iptables backend %s: %s not found and %s is %s", mode, cmd, base, got)
		}
		if savePath, err = exec.LookPath(base + "-save"); err != nil {
			return nil, fmt.Errorf("iptables backend %s: %s-save not found: %w", mode, base, err)
		}
		if restorePath, err = exec.LookPath(base + "-restore"); err != nil {
			return nil, fmt.Errorf("iptables backend %s: %s-restore not found: %w", mode, base, err)
		}
		cmd = base
	}
	ipt, err := goiptables.New(goiptables.IPFamily(proto), goiptables.Path(cmd), goiptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", cmd, err)
	}
	return &GoIptables{ipt: ipt, mode: mode, savePath: savePath, restorePath: restorePath}, nil
}

// versionMode reads the backend from `iptables --version` ("iptables
// v1.8.9 (nf_tables)"); versions without a suffix are legacy.
func versionMode(out string) string {
	if strings.Contains(out, "(nf_tables)") {
		return IptablesNFT
	}
	return IptablesLegacy
}

// Mode implements Iptables.
func (g *GoIptables) Mode() string { return g.mode }

// RandomFully implements Iptables.
func (g *GoIptables) RandomFully() bool { return g.ipt.HasRandomFully() }

// Save implements Iptables.
func (g *GoIptables) Save(ctx context.Context, table string) (map[string][]string, error) {
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, g.savePath, "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", g.savePath, table, err, strings.TrimSpace(stderr.String()))
	}
	return ParseIptablesSave(out.String(), table)
}

// Restore implements Iptables. The legacy backend waits up to 5 s for the
// xtables lock (-w); iptables-nft needs no lock.
func (g *GoIptables) Restore(ctx context.Context, text string) error {
	args := []string{"--noflush"}
	if g.mode == IptablesLegacy {
		args = append(args, "-w", "5")
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, g.restorePath, args...)
	cmd.Stdin, cmd.Stderr = strings.NewReader(text), &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", g.restorePath, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// NewChain implements Iptables.
func (g *GoIptables) NewChain(ctx context.Context, table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.NewChain(table, chain); err != nil {
		return fmt.Errorf("creating chain %s in table %s: %w", chain, table, err)
	}
	return nil
}

// FlushChain implements Iptables.
func (g *GoIptables) FlushChain(ctx context.Context, table, chain string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.ClearChain(table, chain); err != nil {
		return fmt.Errorf("flushing chain %s in table %s: %w", chain, table, err)
	}
	return nil
}

// Append implements Iptables.
func (g *GoIptables) Append(ctx context.Context, table, chain string, rule []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.Append(table, chain, rule...); err != nil {
		return fmt.Errorf("appending to %s/%s %q: %w", table, chain, strings.Join(rule, " "), err)
	}
	return nil
}

// Insert implements Iptables.
func (g *GoIptables) Insert(ctx context.Context, table, chain string, pos int, rule []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := g.ipt.Insert(table, chain, pos, rule...); err != nil {
		return fmt.Errorf("inserting into %s/%s %q: %w", table, chain, strings.Join(rule, " "), err)
	}
	return nil
}

// ParseIptablesSave reads the chains and rules of table from iptables-save
// output. Rules keep iptables-save's spelling (arguments split on blanks,
// double-quoted arguments kept whole with their quotes removed).
func ParseIptablesSave(text, table string) (map[string][]string, error) {
	return parseIptablesSave(text, table, NormalizeRule)
}

// parseIptablesSave reads the chains of table from iptables-save output, each
// rule turned into a T by rule; a chain without rules maps to an empty slice.
func parseIptablesSave[T any](text, table string, rule func(string) T) (map[string][]T, error) {
	chains := map[string][]T{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			in = line[1:] == table
		case !in:
		case line == "COMMIT":
			in = false
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := chains[name]; !ok {
				chains[name] = []T{}
			}
		case strings.HasPrefix(line, "-A "):
			chain, r, _ := strings.Cut(line[3:], " ")
			chains[chain] = append(chains[chain], rule(r))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return chains, nil
}

// NormalizeRule rewrites a rule as kipvs compares rules: arguments separated by
// one blank, double quotes removed (splitRuleArgs). Desired rules are
// normalized the same way.
func NormalizeRule(rule string) string {
	return strings.Join(splitRuleArgs(rule), " ")
}

// splitRuleArgs splits a rule on blanks outside double quotes; a backslash
// escapes the next character inside quotes (iptables-save escapes quotes so).
func splitRuleArgs(rule string) []string {
	var args []string
	var cur strings.Builder
	quoted, have, escaped := false, false, false
	for _, r := range rule {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quoted && r == '\\':
			escaped = true
		case r == '"':
			quoted, have = !quoted, true
		case (r == ' ' || r == '\t') && !quoted:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

// CommandRunner runs a program and returns its standard output; tests replace it.
type CommandRunner func(ctx context.Context, name string, args ...string) (string, error)

// ExecRunner is the CommandRunner of the real system.
func ExecRunner(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}

// DetectIptablesMode picks the iptables backend the node uses, like
// kube-proxy's iptables-wrapper: the backend whose tables hold the kubelet's
// hint chain (KUBE-IPTABLES-HINT, or the older KUBE-KUBELET-CANARY) wins; else
// the backend holding more rules (legacy only when strictly more, since
// iptables-nft also sees rules that nft-based tools wrote); else the one
// `iptables --version` names. The reason says which rule decided.
func DetectIptablesMode(ctx context.Context, run CommandRunner) (mode, reason string, err error) {
	type probe struct {
		ok    bool
		rules int
		hint  bool
	}
	var p [2]probe // legacy, nft
	for i, m := range []string{IptablesLegacy, IptablesNFT} {
		for _, bin := range []string{"iptables-" + m + "-save", "ip6tables-" + m + "-save"} {
			out, err := run(ctx, bin)
			if err != nil {
				continue
			}
			p[i].ok = true
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "-") {
					p[i].rules++
				}
				if strings.Contains(line, "KUBE-IPTABLES-HINT") || strings.Contains(line, "KUBE-KUBELET-CANARY") {
					p[i].hint = true
				}
			}
		}
	}
	legacy, nft := p[0], p[1]
	switch {
	case !legacy.ok && !nft.ok:
		out, err := run(ctx, "iptables", "--version")
		if err != nil {
			return "", "", fmt.Errorf("no iptables found (neither iptables-nft-save, iptables-legacy-save nor iptables runs): %w", err)
		}
		m := versionMode(out)
		return m, fmt.Sprintf("only plain iptables is installed and `iptables --version` says %s", m), nil
	case nft.hint && !legacy.hint:
		return IptablesNFT, "the kubelet's KUBE-IPTABLES-HINT chain is in the nft tables", nil
	case legacy.hint && !nft.hint:
		return IptablesLegacy, "the kubelet's KUBE-IPTABLES-HINT chain is in the legacy tables", nil
	case legacy.rules > nft.rules:
		return IptablesLegacy, fmt.Sprintf("the legacy tables hold more rules (%d against %d)", legacy.rules, nft.rules), nil
	case nft.rules > legacy.rules || !legacy.ok:
		return IptablesNFT, fmt.Sprintf("the nft tables hold at least as many rules (%d against %d)", nft.rules, legacy.rules), nil
	case !nft.ok:
		return IptablesLegacy, "only iptables-legacy is installed", nil
	}
	out, err := run(ctx, "iptables", "--version")
	if err == nil && versionMode(out) == IptablesLegacy {
		return IptablesLegacy, "no rules in either backend; `iptables --version` says legacy", nil
	}
	return IptablesNFT, "no rules in either backend; defaulting to nft", nil
}

// RestoreRule renders a rule's arguments for iptables-restore: arguments with
// blanks or quotes are double-quoted, inner quotes and backslashes escaped, so
// that splitRuleArgs reads them back unchanged.
func RestoreRule(rule []string) string {
	out := make([]string, len(rule))
	for i, a := range rule {
		if a != "" && !strings.ContainsAny(a, " \t\"\\") {
			out[i] = a
			continue
		}
		out[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
	}
	return strings.Join(out, " ")
}
