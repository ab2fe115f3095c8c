package proxier

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// foreignTables holds chains and rules of other programs that kipvs must keep.
const foreignTables = `*nat
:PREROUTING
:OUTPUT
:POSTROUTING
:INPUT
:FOREIGN
-A PREROUTING -j FOREIGN
-A OUTPUT -d 192.0.2.9/32 -j FOREIGN
-A FOREIGN -s 198.51.100.0/24 -j RETURN
COMMIT
*filter
:INPUT
:FORWARD
:OUTPUT
:KUBE-FIREWALL
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
COMMIT
`

func TestFakeIptablesRestore(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		wantErr    bool
		// want lists "table chain: rules joined by |" after the restore.
		want []string
	}{{
		name: "declaring a foreign-free new chain creates it; builtin declarations keep the rules",
		text: "*nat\n:PREROUTING ACCEPT [0:0]\n:KIPVS-X - [0:0]\n-A KIPVS-X -j RETURN\n-I PREROUTING 1 -j KIPVS-X\nCOMMIT\n",
		want: []string{"nat PREROUTING: -j KIPVS-X|-j FOREIGN", "nat KIPVS-X: -j RETURN", "nat FOREIGN: -s 198.51.100.0/24 -j RETURN"},
	}, {
		name: "declaring an existing chain flushes it",
		text: "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j ACCEPT\nCOMMIT\n",
		want: []string{"nat FOREIGN: -j ACCEPT", "nat PREROUTING: -j FOREIGN"},
	}, {
		name: "-I with a position, quoted arguments",
		text: "*filter\n-I INPUT 2 -m comment --comment \"a b\" -j ACCEPT\nCOMMIT\n",
		want: []string{"filter INPUT: -j KUBE-FIREWALL|-m comment --comment a b -j ACCEPT"},
	}, {
		name:    "a jump to a missing chain fails and changes nothing",
		text:    "*nat\n:KIPVS-X - [0:0]\n-A PREROUTING -j KIPVS-MISSING\nCOMMIT\n",
		wantErr: true,
		want:    []string{"nat PREROUTING: -j FOREIGN"},
	}, {
		name:    "no COMMIT changes nothing",
		text:    "*nat\n:FOREIGN - [0:0]\n",
		wantErr: true,
		want:    []string{"nat FOREIGN: -s 198.51.100.0/24 -j RETURN"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFakeIptablesFromText(foreignTables)
			if err != nil {
				t.Fatal(err)
			}
			before := f.DumpText()
			err = f.Restore(context.Background(), tc.text)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Restore: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && f.DumpText() != before {
				t.Errorf("a failed restore changed the tables:\n%s", cmp.Diff(before, f.DumpText()))
			}
			for _, w := range tc.want {
				tc, rest, _ := strings.Cut(w, ": ")
				table, chain, _ := strings.Cut(tc, " ")
				if got := strings.Join(f.tables[table][chain], "|"); got != rest {
					t.Errorf("%s %s = %q, want %q", table, chain, got, rest)
				}
			}
		})
	}
}

func TestRestoreRuleRoundTrip(t *testing.T) {
	for _, rule := range [][]string{
		{"-m", "comment", "--comment", "kipvs-services", "-j", "KIPVS-SERVICES"},
		{"-m", "comment", "--comment", "two words", "-j", "ACCEPT"},
		{"-m", "comment", "--comment", `say "hi" \ there`, "-j", "ACCEPT"},
	} {
		if got := splitRuleArgs(RestoreRule(rule)); !cmp.Equal(got, rule) {
			t.Errorf("splitRuleArgs(RestoreRule(%q)) = %q", rule, got)
		}
	}
}

// TestEnsureRulesRestore: the fixed rules are written with one restore per
// table, foreign chains and foreign rules of builtin chains are kept, an
// unchanged table is not written, and a drifted chain is rewritten alone.
func TestEnsureRulesRestore(t *testing.T) {
	ctx := context.Background()
	rs := BuildRules(RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), RandomFully: true})
	ipt, err := NewFakeIptablesFromText(foreignTables)
	if err != nil {
		t.Fatal(err)
	}
	sync := func(what string) NetfilterResult {
		t.Helper()
		var res NetfilterResult
		if err := ensureRules(ctx, ipt, rs, &res); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return res
	}
	w := ipt.Writes()
	res := sync("first sync")
	if n := ipt.Writes() - w; n != len(rs.Tables()) {
		t.Errorf("first sync: %d iptables writes, want one restore per table (%d)", n, len(rs.Tables()))
	}
	wantLines := len(rs.Jumps)
	for _, c := range rs.Chains {
		wantLines += 1 + len(c.Rules)
	}
	if res.RuleWrites != wantLines {
		t.Errorf("first sync: RuleWrites %d, want %d (every chain, rule and jump)", res.RuleWrites, wantLines)
	}
	got := ipt.DumpText()
	for _, keep := range strings.Split(strings.TrimSpace(foreignTables), "\n") {
		if chain, rule, ok := strings.Cut(strings.TrimPrefix(keep, "-A "), " "); ok && strings.HasPrefix(keep, "-A ") &&
			!strings.Contains(got, "-A "+chain+" "+NormalizeRule(rule)) {
			t.Errorf("foreign rule %q lost:\n%s", keep, got)
		}
	}
	for _, j := range rs.Jumps {
		if first := ipt.tables[j.Table][j.Chain][0]; !strings.Contains(first, "--comment kipvs-") {
			t.Errorf("%s/%s starts with %q, want kipvs's jumps on top", j.Table, j.Chain, first)
		}
	}
	if diff := cmp.Diff(rs.Text(), kipvsPart(t, got)); diff != "" {
		t.Errorf("kipvs's rules (-want +got):\n%s", diff)
	}

	w, r := ipt.Writes(), ipt.Reads()
	if res := sync("unchanged"); res.Writes() != 0 || ipt.Writes() != w {
		t.Errorf("unchanged: %+v, %d iptables writes; want none", res, ipt.Writes()-w)
	}
	if n := ipt.Reads() - r; n != len(rs.Tables()) {
		t.Errorf("unchanged: %d reads, want one iptables-save per table (%d)", n, len(rs.Tables()))
	}

	if err := ipt.Append(ctx, "nat", ChainMarkMasq, []string{"-j", "ACCEPT"}); err != nil {
		t.Fatal(err)
	}
	w = ipt.Writes()
	if res := sync("drifted"); ipt.Writes()-w != 1 || res.RuleWrites != 2 {
		t.Errorf("one drifted chain: %d restores and %d lines, want 1 restore of 2 lines (declare, rule)", ipt.Writes()-w, res.RuleWrites)
	}
	if diff := cmp.Diff(rs.Text(), kipvsPart(t, ipt.DumpText())); diff != "" {
		t.Errorf("after repair (-want +got):\n%s", diff)
	}
}

// kipvsPart keeps the tables' headers, kipvs's chain declarations and the
// rules that mention KIPVS, in RuleSet.Text's order, from a DumpText.
func kipvsPart(t *testing.T, dump string) string {
	t.Helper()
	ipt, err := NewFakeIptablesFromText(dump)
	if err != nil {
		t.Fatal(err)
	}
	var rs RuleSet
	for table, chains := range ipt.tables {
		for name, rules := range chains {
			if strings.HasPrefix(name, "KIPVS") {
				c := Chain{Table: table, Name: name}
				for _, r := range rules {
					c.Rules = append(c.Rules, splitRuleArgs(r))
				}
				rs.Chains = append(rs.Chains, c)
				continue
			}
			for _, r := range rules {
				if strings.Contains(r, "KIPVS") {
					rs.Jumps = append(rs.Jumps, Jump{Table: table, Chain: name, Rule: splitRuleArgs(r)})
				}
			}
		}
	}
	// Order chains and jumps as BuildRules does, for the comparison.
	want := BuildRules(RuleConfig{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), RandomFully: true})
	order := func(s string) int { return strings.Index(want.Text(), s) }
	sortBy(rs.Chains, func(c Chain) int { return order(":" + c.Name + "\n") })
	sortBy(rs.Jumps, func(j Jump) int { return order("-A " + j.Chain + " " + strings.Join(j.Rule, " ")) })
	return rs.Text()
}

func sortBy[T any](s []T, key func(T) int) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && key(s[j-1]) > key(s[j]); j-- {
			s[j-1], s[j] = s[j], s[j-1]
		}
	}
}
