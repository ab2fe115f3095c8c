//go:build kerneltest

package kernel

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/proxier"
)

// drainSetMembers runs `ipset list KIPVS-DRAINING` and returns its members
// with the seconds each has left.
func drainSetMembers(t *testing.T) map[string]int {
	t.Helper()
	out, err := exec.Command("ipset", "list", proxier.DrainSetName(false)).CombinedOutput()
	if err != nil {
		t.Fatalf("ipset list: %v\n%s", err, out)
	}
	_, members, ok := strings.Cut(string(out), "Members:\n")
	if !ok {
		t.Fatalf("ipset list without members:\n%s", out)
	}
	got := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(members), "\n") {
		if line == "" {
			continue
		}
		entry, left, ok := strings.Cut(line, " timeout ")
		n, err := strconv.Atoi(left)
		if !ok || err != nil {
			t.Fatalf("ipset member %q has no timeout:\n%s", line, out)
		}
		got[entry] = n
	}
	return got
}

// TestProxierDrainDeadlineRestart (issue 8): a TCP real server drains with an
// open connection; kipvs restarts half-way through DrainTimeout (a new Proxier
// over the same kernel, with a fresh State). The new Proxier reads the drain's
// start from KIPVS-DRAINING, whose entry counts down in the kernel, and
// deletes the real server at the original deadline: not before it, and not a
// whole DrainTimeout after the restart.
func TestProxierDrainDeadlineRestart(t *testing.T) {
	const drainTimeout = 20 * time.Second
	c := newCluster(t, "a", "b")
	c.setService(c.webService())
	c.setSlice(webSlice(c.endpointsOf("a", "b")...))
	cfg := c.nfConfig()
	cfg.SyncPeriod, cfg.DrainTimeout = time.Second, drainTimeout
	first := c.startNFFamilies(cfg, false)
	both := c.backends(echoPort, 1, "a", "b")
	c.waitTable(t, c.webTable(both, both))

	conn, gone := dialLong(t, c.web)
	keep := "a"
	if gone == "a" {
		keep = "b"
	}
	removed := time.Now()
	c.setSlice(webSlice(c.endpointsOf(keep)...))
	first.QueueSync()
	var seen time.Time
	waitFor(t, converge, gone+" to drain", func() error {
		rs, ok := c.realServer(t, key("TCP", c.web), gone)
		if !ok || rs.Weight != 0 {
			return fmt.Errorf("%s is %s (present %v)", gone, rsString(rs), ok)
		}
		seen = time.Now()
		return nil
	})
	entry := fmt.Sprintf("%s,tcp:%d,%s", c.web.Addr(), c.web.Port(), c.pods[gone].IP)
	var before int
	waitFor(t, converge, "the drain set entry", func() error {
		m := drainSetMembers(t)
		if n, ok := m[entry]; ok {
			before = n
			return nil
		}
		return fmt.Errorf("KIPVS-DRAINING holds %v, want %s", m, entry)
	})
	t.Logf("%s draining %s after its removal; drain set entry %s timeout %d", gone,
		seen.Sub(removed).Round(time.Millisecond), entry, before)

	time.Sleep(time.Until(removed.Add(drainTimeout / 2)))
	t.Logf("kipvs restarts %s after the removal", time.Since(removed).Round(time.Millisecond))
	first.stop(t)
	c.state = endpoints.NewState(nodeName)
	c.feed(c.state)
	c.startNFFamilies(cfg, false)
	restarted := time.Now()
	if rs, ok := c.realServer(t, key("TCP", c.web), gone); !ok || rs.Weight != 0 || rs.ActiveConns != 1 {
		t.Errorf("after the restart %s is %s (present %v), want draining with its connection", gone, rsString(rs), ok)
	}
	after, ok := drainSetMembers(t)[entry]
	switch {
	case !ok:
		t.Errorf("drain set entry %s gone after the restart", entry)
	case after >= before:
		t.Errorf("drain set entry %s: timeout %d after the restart, %d before: want it counting down", entry, after, before)
	default:
		t.Logf("drain set entry timeout %d before the restart, %d after", before, after)
	}
	if got, err := conn.ask(); err != nil || got != gone {
		t.Errorf("established connection after the restart: answered by %q, %v; want %s", got, err, gone)
	}

	waitFor(t, drainTimeout, gone+" to be deleted at its original deadline", func() error {
		if rs, ok := c.realServer(t, key("TCP", c.web), gone); ok {
			return fmt.Errorf("still there: %s", rsString(rs))
		}
		return nil
	})
	deleted := time.Now()
	// The drain started in the sync that applied the removal: its clock
	// reading comes just before it reads the State, so at most moments before
	// the removal (250 ms of slack for that), and before the weight 0 was seen.
	earliest := removed.Add(drainTimeout - 250*time.Millisecond)
	latest := seen.Add(drainTimeout + cfg.SyncPeriod + 3*time.Second)
	t.Logf("%s deleted %s after its removal (DrainTimeout %s; deadline error %s, from the removal); "+
		"second Proxier synced %s after the removal", gone, deleted.Sub(removed).Round(time.Millisecond), drainTimeout,
		deleted.Sub(removed.Add(drainTimeout)).Round(time.Millisecond), restarted.Sub(removed).Round(time.Millisecond))
	if deleted.Before(earliest) {
		t.Errorf("%s deleted %s after its removal, before DrainTimeout %s", gone, deleted.Sub(removed), drainTimeout)
	}
	if deleted.After(latest) {
		t.Errorf("%s deleted %s after it was seen draining, want at most DrainTimeout %s + sync period %s + 3 s",
			gone, deleted.Sub(seen), drainTimeout, cfg.SyncPeriod)
	}
	waitFor(t, converge, "the drain set entry to go", func() error {
		if m := drainSetMembers(t); len(m) != 0 {
			return fmt.Errorf("KIPVS-DRAINING holds %v", m)
		}
		return nil
	})
	one := c.backends(echoPort, 1, keep)
	c.waitTable(t, c.webTable(one, one))
}
