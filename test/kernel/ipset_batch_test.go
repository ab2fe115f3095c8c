//go:build kerneltest

package kernel

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// TestIPSetBatch adds a few thousand entries per set through
// NetlinkIpset.AddEntries (many IPSET_ATTR_DATA in one IPSET_ATTR_ADT per
// request, split to fit) on its long-lived sockets, and lists them back: every
// set type kipvs uses, both families, skbinfo marks and timeouts. A batch with
// a bad entry fails with the kernel's error after adding the entries before
// it, which is what the proxier's entry-by-entry fallback relies on.
func TestIPSetBatch(t *testing.T) {
	ctx := testContext(t)
	sets, err := proxier.OpenNetlinkIpset()
	if err != nil {
		t.Fatal(err)
	}
	defer sets.Close()

	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	v6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	timeoutSpec := proxier.IPSetSpec{Name: "KIPVS-TEST-TIMEOUT", Type: proxier.SetTypeHashIPPortIP, Timeout: time.Hour}
	for _, tc := range []struct {
		spec  proxier.IPSetSpec
		n     int
		entry func(i int) proxier.IPSetEntry
	}{
		{proxier.SetSpec(proxier.SetLoopBack, false), 3000, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v4(i), Protocol: ipvs.TCP, Port: uint16(8000 + i%7), IP2: v4(i)}
		}},
		{proxier.SetSpec(proxier.SetLBSourceCIDR, true), 1500, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v6(i), Protocol: ipvs.UDP, Port: 53, Net: netip.PrefixFrom(v6(i<<8), 120)}
		}},
		{proxier.SetSpec(proxier.SetVIPs, true), 2000, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v6(i)}
		}},
		{proxier.SetSpec(proxier.SetNodePortTCP, false), 2500, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{Port: uint16(30000 + i)}
		}},
		{proxier.SetSpec(proxier.SetShortCircuit, false), 1200, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v4(i), Protocol: ipvs.SCTP, Port: 80, Mark: 0x2000 + uint32(i)<<4}
		}},
		// More than the kernel's default maxelem (65536): Create raises it.
		{proxier.SetSpec(proxier.SetVIPs, false), 70000, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v4(i)}
		}},
		{timeoutSpec, 2000, func(i int) proxier.IPSetEntry {
			return proxier.IPSetEntry{IP: v4(i), Protocol: ipvs.TCP, Port: 80, IP2: v4(i + 1), Timeout: 10 * time.Minute}
		}},
	} {
		t.Run(tc.spec.Name, func(t *testing.T) {
			destroySet(tc.spec.Name)
			t.Cleanup(func() { destroySet(tc.spec.Name) })
			if err := sets.Create(ctx, tc.spec); err != nil {
				t.Fatal(err)
			}
			want := make([]proxier.IPSetEntry, tc.n)
			for i := range want {
				want[i] = tc.entry(i)
			}
			// Two calls, the first with more entries than one request holds.
			if err := sets.AddEntries(ctx, tc.spec.Name, want[:tc.n*2/3]); err != nil {
				t.Fatal(err)
			}
			if err := sets.AddEntries(ctx, tc.spec.Name, want[tc.n*2/3:]); err != nil {
				t.Fatal(err)
			}
			typ, got, err := sets.List(ctx, tc.spec.Name)
			if err != nil || typ != tc.spec.Type {
				t.Fatalf("List: type %q, %v", typ, err)
			}
			if tc.spec.Timeout > 0 {
				for i, e := range got {
					if e.Timeout <= 9*time.Minute || e.Timeout > 10*time.Minute {
						t.Fatalf("entry %s has %v left, want about 10m", e, e.Timeout)
					}
					got[i].Timeout = 10 * time.Minute
				}
			}
			sortEntries(got)
			sortEntries(want)
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b proxier.IPSetEntry) bool { return a == b })); diff != "" {
				t.Errorf("listed entries differ from those added (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("bad entry", func(t *testing.T) {
		spec := proxier.SetSpec(proxier.SetLoopBack, false)
		destroySet(spec.Name)
		t.Cleanup(func() { destroySet(spec.Name) })
		if err := sets.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
		var batch []proxier.IPSetEntry
		for i := range 20 {
			batch = append(batch, proxier.IPSetEntry{IP: v4(i), Protocol: ipvs.TCP, Port: 80, IP2: v4(i)})
		}
		batch[10] = proxier.IPSetEntry{IP: v6(10), Protocol: ipvs.TCP, Port: 80, IP2: v6(10)} // wrong family
		err := sets.AddEntries(ctx, spec.Name, batch)
		if err == nil {
			t.Fatal("batch with an IPv6 entry in an IPv4 set succeeded")
		}
		t.Logf("batch error: %v", err)
		if err := sets.Add(ctx, spec.Name, batch[10]); err == nil {
			t.Error("adding the IPv6 entry alone succeeded")
		}
		_, got, err := sets.List(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		sortEntries(got)
		if want := batch[:10]; !slices.Equal(got, want) {
			t.Errorf("after the failed batch the set holds %v, want the 10 entries before the bad one", got)
		}
	})
}

// destroySet destroys an ipset if it exists.
func destroySet(name string) { _ = exec.Command("ipset", "destroy", name).Run() }

// sortEntries sorts entries by their text.
func sortEntries(es []proxier.IPSetEntry) {
	slices.SortFunc(es, func(a, b proxier.IPSetEntry) int { return strings.Compare(a.String(), b.String()) })
}
