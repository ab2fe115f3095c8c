//go:build kerneltest

package kernel

import (
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// TestRepairHandEdits: someone edits the kernel behind a running kipvs (with
// netfilter) using the tools an operator has: ipvsadm-like netlink calls, ip
// addr, ipset and iptables. The next full resync must put back exactly what
// was there before (IPVS table, VIPs on kube-ipvs0, kipvs's ipset members
// and iptables chains and jumps, compared as text), and Service traffic must
// flow again. Each edit is checked to change the kernel first, so a no-op edit
// cannot pass.
func TestRepairHandEdits(t *testing.T) {
	c := newCluster(t, "a", "b", "client")
	c.setService(c.webService())
	c.setSlice(webSlice(c.endpointsOf("a", "b")...))
	c.setService(makeService("api", c.api.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
	c.setSlice(httpSlice("api-1", "api", c.endpointsOf("a")...))
	cfg := c.nfConfig()
	// A full resync every 5 s: under TCG a full sync with netfilter takes
	// seconds (iptables-save per table), and traffic checks need the CPU too.
	cfg.SyncPeriod = 5 * time.Second
	// A fault rig with no fault scheduled: a plain proxier with netfilter
	// whose syncs are logged, to count the writes of each repair.
	f := newFaultRig(t, c, ipvs.FaultError, false, true)
	f.start(cfg)
	p := f.p
	res := waitFullSync(t, p, time.Time{})
	t.Logf("first sync took %s", res.Duration.Round(time.Millisecond))
	ab, a := c.backends(echoPort, 1, "a", "b"), c.backends(echoPort, 1, "a")
	c.waitTable(t, table(entry(key("TCP", c.web), ab), entry(key("UDP", c.web), ab), entry(key("TCP", c.api), a)))
	checkTraffic(t, c)
	before := ownedSnapshot(t, c)
	t.Logf("kernel before the edits:\n%s", before)

	webTCP := ipvs.VirtualServerKey{Address: c.web.Addr(), Protocol: ipvs.TCP, Port: c.web.Port()}
	apiTCP := ipvs.VirtualServerKey{Address: c.api.Addr(), Protocol: ipvs.TCP, Port: c.api.Port()}
	podA := ipvs.RealServerKey{Address: c.pods["a"].IP, Port: echoPort}
	cases := []struct {
		name string
		edit func(t *testing.T) error
		// anyOrder compares the iptables lines as a set: the jump comes
		// back, but at the top of its builtin chain (see the case).
		anyOrder bool
	}{
		{name: "virtual server deleted (ipvsadm -D)", edit: func(t *testing.T) error {
			return c.ipvs.DeleteVirtualServer(t.Context(), webTCP)
		}},
		{name: "real server deleted (ipvsadm -d)", edit: func(t *testing.T) error {
			return c.ipvs.DeleteRealServer(t.Context(), apiTCP, podA)
		}},
		{name: "real server weight set to 0 (ipvsadm -e -w 0)", edit: func(t *testing.T) error {
			return c.ipvs.UpdateRealServer(t.Context(), webTCP, ipvs.RealServer{RealServerKey: podA, Weight: 0})
		}},
		{name: "VIP deleted from kube-ipvs0 (ip addr del)", edit: func(t *testing.T) error {
			return proxier.NewNetlinkAddresses().Delete(t.Context(), proxier.DefaultDummyLink, c.web.Addr())
		}},
		{name: "ipset member deleted (ipset del KIPVS-CLUSTER-IP)", edit: func(t *testing.T) error {
			return proxier.NewNetlinkIpset().Del(t.Context(), proxier.SetName(proxier.SetClusterIP, false),
				proxier.IPSetEntry{IP: c.web.Addr(), Protocol: ipvs.TCP, Port: c.web.Port()})
		}},
		{name: "VIP deleted from ipset KIPVS-VIPS", edit: func(t *testing.T) error {
			return proxier.NewNetlinkIpset().Del(t.Context(), proxier.SetName(proxier.SetVIPs, false),
				proxier.IPSetEntry{IP: c.api.Addr()})
		}},
		{name: "first rule of KIPVS-SERVICES deleted (iptables -D)", edit: func(*testing.T) error {
			return iptables("-t", "nat", "-D", proxier.ChainServices, "1")
		}},
		{name: "KIPVS-POSTROUTING flushed (iptables -F)", edit: func(*testing.T) error {
			return iptables("-t", "nat", "-F", proxier.ChainPostrouting)
		}},
		{name: "jump to KIPVS-SERVICES deleted from nat PREROUTING", edit: func(*testing.T) error {
			return iptables("-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kipvs-services", "-j", proxier.ChainServices)
		}},
		{name: "jump to KIPVS-FIREWALL deleted from filter INPUT", edit: func(*testing.T) error {
			return iptables("-t", "filter", "-D", "INPUT", "-m", "comment", "--comment", "kipvs-firewall", "-j", proxier.ChainFirewall)
		}},
		// Last: a missing jump is inserted at position 1, so the second of
		// INPUT's two jumps comes back first. Both chains only DROP or
		// RETURN, so their order does not change what is accepted.
		{name: "second jump of filter INPUT (to KIPVS-IPVS-FILTER) deleted", anyOrder: true, edit: func(*testing.T) error {
			return iptables("-t", "filter", "-D", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
				"-m", "comment", "--comment", "kipvs-ipvs-filter", "-j", proxier.ChainIPVSFilter)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			since := time.Now()
			if err := tc.edit(t); err != nil {
				t.Fatalf("edit: %v", err)
			}
			edited := ownedSnapshot(t, c)
			if edited == before {
				t.Fatal("the edit did not change the kernel")
			}
			res := waitFullSync(t, p, since)
			writes, nf := f.log.writesSince(since)
			after := ownedSnapshot(t, c)
			switch {
			case after == before:
			case tc.anyOrder && sortedLines(after) == sortedLines(before):
				t.Logf("repaired, in another order:\n%s", after)
			default:
				t.Errorf("the full resync after the edit left the kernel\n%s\nwant\n%s", after, before)
			}
			t.Logf("repaired by the first full resync started after the edit (%s later) at the latest; writes since the edit: "+
				"%d IPVS/address, ipset entries %d added %d deleted, %d iptables-restore lines",
				res.Time.Sub(since).Round(time.Millisecond), writes, nf.EntriesAdded, nf.EntriesDeleted, nf.RuleWrites)
			checkTraffic(t, c)
		})
	}
}

// checkTraffic checks that the test's Services answer from the node and from
// a pod.
func checkTraffic(t *testing.T, c *cluster) {
	t.Helper()
	for _, proto := range []string{tcp, udp} {
		flows(t, nil, proto, c.web, "a", "b")
	}
	flows(t, c.pods["client"], tcp, c.api, "a")
}

// waitFullSync waits for a full sync that started after since and succeeded.
// It allows a minute: under TCG on a loaded host one full sync with netfilter
// took up to 15 s.
func waitFullSync(t *testing.T, p *runningProxier, since time.Time) proxier.SyncResult {
	t.Helper()
	var res proxier.SyncResult
	waitFor(t, time.Minute, "a full sync after the edit", func() error {
		res = p.LastSync()
		switch {
		case !res.Time.After(since) || !res.Full:
			return fmt.Errorf("last sync at %s, full %v", res.Time.Format(time.StampMilli), res.Full)
		case res.Err != nil:
			return res.Err
		}
		return nil
	})
	return res
}

// sortedLines returns s's lines sorted, for an order-blind comparison.
func sortedLines(s string) string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// iptables runs the iptables binary, as an operator would.
func iptables(args ...string) error {
	if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// counters matches the packet and byte counters of iptables-save's chain lines.
var counters = regexp.MustCompile(` \[\d+:\d+\]$`)

// ownedSnapshot renders what kipvs owns in the kernel as text: the IPVS
// table without connection counters, the VIPs on kube-ipvs0, the members of
// every KIPVS ipset and every iptables-save line that mentions KIPVS or kipvs
// (chains, their rules and the jumps to them, in the kernel's order).
func ownedSnapshot(t *testing.T, c *cluster) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# ipvs\n" + dumpText(t, c.ipvs, false))
	fmt.Fprintf(&b, "# %s\n%v\n", proxier.DefaultDummyLink, vips(t))
	b.WriteString("# ipsets\n")
	for id := proxier.SetClusterIP; id <= proxier.SetNodePortSCTP; id++ {
		name := proxier.SetName(id, false)
		members, err := setMembers(t.Context(), name)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", name, err)
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", name, strings.Join(members, " "))
	}
	b.WriteString("# iptables\n")
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "*"):
			b.WriteString(line + "\n")
		case strings.Contains(line, "KIPVS") || strings.Contains(line, "kipvs"):
			b.WriteString(counters.ReplaceAllString(line, "") + "\n")
		}
	}
	return b.String()
}
