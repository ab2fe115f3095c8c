package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vsKey builds a virtual server key from "PROTO addr:port".
func vsKey(t *testing.T, s string) VirtualServerKey {
	t.Helper()
	return makeVS(t, s, "").VirtualServerKey
}

// rsKey builds a real server key from "addr:port".
func rsKey(s string) RealServerKey { return makeRS(s, 0).RealServerKey }

// newFake seeds a Fake from dump text or fails the test.
func newFake(t *testing.T, text string) *Fake {
	t.Helper()
	f, err := NewFakeFromText(text)
	if err != nil {
		t.Fatalf("NewFakeFromText: %v", err)
	}
	return f
}

const seed = `
TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`

func TestFakeWrites(t *testing.T) {
	ctx := context.Background()
	tcp80 := "TCP 10.0.0.1:80"
	tests := []struct {
		name string
		op   func(t *testing.T, f *Fake) error
		want string
	}{
		{"add virtual server", func(t *testing.T, f *Fake) error {
			return f.AddVirtualServer(ctx, withFlags(makeVS(t, "SCTP 10.0.0.2:9", "wlc"), FlagHashed|FlagOnePacket, 0).VirtualServer)
		}, `TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1
SCTP 10.0.0.2:9 wlc flags one-packet
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`},
		{"update virtual server keeps real servers", func(t *testing.T, f *Fake) error {
			return f.UpdateVirtualServer(ctx, withFlags(makeVS(t, tcp80, "sh"), FlagPersistent|FlagHashed, 60).VirtualServer)
		}, `TCP 10.0.0.1:80 sh persistent 60
  -> 10.1.0.1:8080 weight 1
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`},
		{"delete virtual server with real servers", func(t *testing.T, f *Fake) error {
			return f.DeleteVirtualServer(ctx, vsKey(t, tcp80))
		}, "UDP [fd00::1]:53 sh persistent 10800 flags sh-port\n"},
		{"add real server", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, "UDP [fd00::1]:53"), makeRS("[fd00::9]:53", 0).RealServer)
		}, `TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
  -> [fd00::9]:53 weight 0
`},
		{"update real server keeps counters", func(t *testing.T, f *Fake) error {
			if err := f.SetConnections(vsKey(t, tcp80), rsKey("10.1.0.1:8080"), 2, 5); err != nil {
				return err
			}
			return f.UpdateRealServer(ctx, vsKey(t, tcp80), makeRS("10.1.0.1:8080", 0).RealServer)
		}, `TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 0 active 2 inactive 5
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`},
		{"delete real server", func(t *testing.T, f *Fake) error {
			return f.DeleteRealServer(ctx, vsKey(t, tcp80), rsKey("10.1.0.1:8080"))
		}, `TCP 10.0.0.1:80 rr
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, seed)
			if err := tc.op(t, f); err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if got := f.DumpText(); got != tc.want {
				t.Errorf("state after %s:\n%s\nwant\n%s", tc.name, got, tc.want)
			}
		})
	}
}

func TestFakeWriteErrors(t *testing.T) {
	ctx := context.Background()
	tcp80 := "TCP 10.0.0.1:80"
	tests := []struct {
		name     string
		op       func(t *testing.T, f *Fake) error
		wantIs   error // errno the error must wrap
		wantText string
	}{
		{"add existing virtual server", func(t *testing.T, f *Fake) error {
			return f.AddVirtualServer(ctx, makeVS(t, tcp80, "wrr").VirtualServer)
		}, syscall.EEXIST, "add virtual server TCP/10.0.0.1:80: file exists"},
		{"add with unknown scheduler", func(t *testing.T, f *Fake) error {
			return f.AddVirtualServer(ctx, makeVS(t, "TCP 10.0.0.9:80", "fancy").VirtualServer)
		}, syscall.ENOENT, "ip_vs_fancy not found"},
		{"add with empty scheduler", func(t *testing.T, f *Fake) error {
			return f.AddVirtualServer(ctx, makeVS(t, "TCP 10.0.0.9:80", "").VirtualServer)
		}, syscall.ENOENT, "not found"},
		{"add with 4in6 address", func(t *testing.T, f *Fake) error {
			return f.AddVirtualServer(ctx, makeVS(t, "TCP [::ffff:10.0.0.9]:80", "rr").VirtualServer)
		}, syscall.EINVAL, "IPv4-mapped"},
		{"add with bad protocol", func(t *testing.T, f *Fake) error {
			vs := makeVS(t, "TCP 10.0.0.9:80", "rr").VirtualServer
			vs.Protocol = "ICMP"
			return f.AddVirtualServer(ctx, vs)
		}, syscall.EINVAL, "unsupported protocol"},
		{"update missing virtual server", func(t *testing.T, f *Fake) error {
			return f.UpdateVirtualServer(ctx, makeVS(t, "UDP 10.0.0.1:80", "rr").VirtualServer)
		}, syscall.ESRCH, "update virtual server UDP/10.0.0.1:80: no such process"},
		{"update to unknown scheduler", func(t *testing.T, f *Fake) error {
			return f.UpdateVirtualServer(ctx, makeVS(t, tcp80, "nope").VirtualServer)
		}, syscall.ENOENT, "ip_vs_nope"},
		{"delete missing virtual server", func(t *testing.T, f *Fake) error {
			return f.DeleteVirtualServer(ctx, vsKey(t, "TCP 10.0.0.1:81"))
		}, syscall.ESRCH, "delete virtual server TCP/10.0.0.1:81"},
		{"add real server to missing virtual server", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, "TCP 10.0.0.1:81"), makeRS("10.1.0.1:8080", 1).RealServer)
		}, syscall.ESRCH, "add real server TCP/10.0.0.1:81 -> 10.1.0.1:8080: no such process"},
		{"add existing real server", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, tcp80), makeRS("10.1.0.1:8080", 3).RealServer)
		}, syscall.EEXIST, "file exists"},
		{"add real server of other family", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, tcp80), makeRS("[fd00::1]:8080", 1).RealServer)
		}, syscall.EINVAL, "differ in address family"},
		{"add real server with negative weight", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, tcp80), makeRS("10.1.0.2:8080", -1).RealServer)
		}, syscall.ERANGE, "weight -1"},
		{"add real server with too large weight", func(t *testing.T, f *Fake) error {
			return f.AddRealServer(ctx, vsKey(t, tcp80), makeRS("10.1.0.2:8080", MaxWeight+1).RealServer)
		}, syscall.ERANGE, "weight 65536"},
		{"update missing real server", func(t *testing.T, f *Fake) error {
			return f.UpdateRealServer(ctx, vsKey(t, tcp80), makeRS("10.1.0.2:8080", 1).RealServer)
		}, syscall.ENOENT, "update real server TCP/10.0.0.1:80 -> 10.1.0.2:8080: no such file or directory"},
		{"update real server of missing virtual server", func(t *testing.T, f *Fake) error {
			return f.UpdateRealServer(ctx, vsKey(t, "UDP 10.0.0.1:80"), makeRS("10.1.0.1:8080", 1).RealServer)
		}, syscall.ESRCH, "no such process"},
		{"delete missing real server", func(t *testing.T, f *Fake) error {
			return f.DeleteRealServer(ctx, vsKey(t, tcp80), rsKey("10.1.0.2:8080"))
		}, syscall.ENOENT, "delete real server"},
		{"delete real server of missing virtual server", func(t *testing.T, f *Fake) error {
			return f.DeleteRealServer(ctx, vsKey(t, "UDP 10.0.0.1:80"), rsKey("10.1.0.1:8080"))
		}, syscall.ESRCH, "delete real server"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, seed)
			before := f.DumpText()
			err := tc.op(t, f)
			if !errors.Is(err, tc.wantIs) || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("error = %v, want one wrapping %v and containing %q", err, tc.wantIs, tc.wantText)
			}
			wantNotFound := tc.wantIs == syscall.ESRCH || tc.wantIs == syscall.ENOENT
			if IsNotFound(err) != wantNotFound || IsExist(err) != (tc.wantIs == syscall.EEXIST) {
				t.Errorf("IsNotFound = %v, IsExist = %v for %v", IsNotFound(err), IsExist(err), err)
			}
			if after := f.DumpText(); after != before {
				t.Errorf("failed write changed state:\n%s\nwas\n%s", after, before)
			}
			if f.Writes() != 1 {
				t.Errorf("Writes() = %d after one failed write, want 1", f.Writes())
			}
		})
	}
}

func TestFakeReads(t *testing.T) {
	ctx := context.Background()
	f := newFake(t, seed)
	if err := f.SetConnections(vsKey(t, "TCP 10.0.0.1:80"), rsKey("10.1.0.1:8080"), 4, 2); err != nil {
		t.Fatal(err)
	}
	vss, err := f.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := `TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1 active 4 inactive 2
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`
	if got := FormatDump(vss); got != want {
		t.Errorf("Dump() =\n%s\nwant\n%s", got, want)
	}
	// Dump returns a copy: changing it does not change the Fake.
	vss[0].RealServers[0].Weight = 50
	vss[0].Scheduler = "lc"
	if got := f.DumpText(); got != want {
		t.Errorf("Dump result aliases the Fake's state:\n%s", got)
	}

	rss, err := f.RealServers(ctx, vsKey(t, "TCP 10.0.0.1:80"))
	if err != nil || len(rss) != 1 || rss[0].ActiveConns != 4 || rss[0].InactiveConns != 2 {
		t.Errorf("RealServers() = %+v, %v; want one real server with counters 4/2", rss, err)
	}
	rss, err = f.RealServers(ctx, vsKey(t, "UDP [fd00::1]:53"))
	if err != nil || rss != nil {
		t.Errorf("RealServers(no real servers) = %+v, %v; want nil, nil", rss, err)
	}
	if _, err := f.RealServers(ctx, vsKey(t, "UDP 10.0.0.1:80")); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("RealServers(missing) error = %v, want ESRCH", err)
	}
	if err := f.SetConnections(vsKey(t, "TCP 10.0.0.1:80"), rsKey("10.1.0.9:8080"), 1, 1); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("SetConnections(missing real server) error = %v, want ENOENT", err)
	}
	if err := f.SetConnections(vsKey(t, "TCP 10.0.0.9:80"), rsKey("10.1.0.1:8080"), 1, 1); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("SetConnections(missing virtual server) error = %v, want ESRCH", err)
	}
	if f.Reads() != 4 || f.Writes() != 0 {
		t.Errorf("Reads() = %d, Writes() = %d; want 4 and 0", f.Reads(), f.Writes())
	}
}

func TestFakeCounts(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	vs := makeVS(t, "TCP 10.0.0.1:80", "rr").VirtualServer
	rs := makeRS("10.1.0.1:80", 1).RealServer
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustOK(f.AddVirtualServer(ctx, vs))
	mustOK(f.AddRealServer(ctx, vs.VirtualServerKey, rs))
	mustOK(f.UpdateRealServer(ctx, vs.VirtualServerKey, rs))
	_ = f.AddVirtualServer(ctx, vs) // fails, still a write
	mustOK(f.SetTimeouts(ctx, Timeouts{UDP: time.Minute}))
	_, _ = f.Dump(ctx)
	_, _ = f.Timeouts(ctx)
	_ = f.DumpText() // not counted
	if f.Writes() != 5 || f.Reads() != 2 {
		t.Errorf("Writes() = %d, Reads() = %d; want 5 and 2", f.Writes(), f.Reads())
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.DeleteVirtualServer(cancelled, vs.VirtualServerKey); !errors.Is(err, context.Canceled) {
		t.Errorf("write with cancelled ctx: error = %v, want context.Canceled", err)
	}
	if _, err := f.Dump(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("read with cancelled ctx: error = %v, want context.Canceled", err)
	}
	if f.Writes() != 5 || f.Reads() != 2 {
		t.Errorf("calls with a cancelled ctx were counted: Writes() = %d, Reads() = %d", f.Writes(), f.Reads())
	}

	f.ResetCounts()
	if f.Writes() != 0 || f.Reads() != 0 {
		t.Errorf("after ResetCounts: Writes() = %d, Reads() = %d", f.Writes(), f.Reads())
	}
}

func TestFakeFaults(t *testing.T) {
	ctx := context.Background()
	f := newFake(t, seed)
	key := vsKey(t, "TCP 10.0.0.1:80")
	rs := makeRS("10.1.0.2:8080", 1).RealServer

	f.FailNext("AddRealServer", syscall.ENOMEM)
	f.FailNext("AddRealServer", syscall.ESRCH)
	err := f.AddRealServer(ctx, key, rs)
	if !errors.Is(err, syscall.ENOMEM) || !strings.Contains(err.Error(), "add real server TCP/10.0.0.1:80 -> 10.1.0.2:8080") {
		t.Errorf("first injected failure = %v, want ENOMEM with op and keys", err)
	}
	if err := f.AddRealServer(ctx, key, rs); !IsNotFound(err) {
		t.Errorf("second injected failure = %v, want IsNotFound", err)
	}
	if strings.Contains(f.DumpText(), "10.1.0.2") {
		t.Errorf("injected failure changed state:\n%s", f.DumpText())
	}
	if err := f.AddRealServer(ctx, key, rs); err != nil {
		t.Errorf("FailNext queue not drained after two failures: %v", err)
	}

	var ops []string
	f.Fault = func(op string) error {
		ops = append(ops, op)
		if op == "DeleteVirtualServer" {
			return syscall.EBUSY
		}
		return nil
	}
	if err := f.DeleteVirtualServer(ctx, key); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("Fault error = %v, want EBUSY", err)
	}
	if err := f.SetTimeouts(ctx, Timeouts{}); err != nil {
		t.Errorf("SetTimeouts with Fault returning nil: %v", err)
	}
	if _, err := f.Dump(ctx); err != nil {
		t.Errorf("Dump: %v", err)
	}
	if want := "DeleteVirtualServer,SetTimeouts"; strings.Join(ops, ",") != want {
		t.Errorf("Fault saw %v, want %s (writes only)", ops, want)
	}
	if !strings.Contains(f.DumpText(), "TCP 10.0.0.1:80 rr") {
		t.Errorf("virtual server deleted despite Fault:\n%s", f.DumpText())
	}

	defer func() {
		if recover() == nil {
			t.Errorf("FailNext with an unknown op did not panic")
		}
	}()
	f.FailNext("AddVirtualserver", syscall.EIO)
}

func TestFakeTimeouts(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		set     Timeouts
		want    Timeouts
		wantErr bool
	}{
		{"zero changes nothing", Timeouts{}, DefaultTimeouts, false},
		{"partial", Timeouts{TCP: time.Hour}, Timeouts{TCP: time.Hour, TCPFin: 2 * time.Minute, UDP: 5 * time.Minute}, false},
		{"all", Timeouts{TCP: 1 * time.Second, TCPFin: 2 * time.Second, UDP: 3 * time.Second},
			Timeouts{TCP: 1 * time.Second, TCPFin: 2 * time.Second, UDP: 3 * time.Second}, false},
		{"negative", Timeouts{UDP: -time.Second}, DefaultTimeouts, true},
		{"fraction of a second", Timeouts{TCPFin: 1500 * time.Millisecond}, DefaultTimeouts, true},
		{"beyond 32 bits", Timeouts{TCP: (1 << 32) * time.Second}, DefaultTimeouts, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			err := f.SetTimeouts(ctx, tc.set)
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, syscall.EINVAL)) {
				t.Fatalf("SetTimeouts(%+v) error = %v, wantErr %v (EINVAL)", tc.set, err, tc.wantErr)
			}
			got, err := f.Timeouts(ctx)
			if err != nil || got != tc.want {
				t.Errorf("Timeouts() = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestNewFakeFromText(t *testing.T) {
	tests := []struct {
		name, text, wantErr string
	}{
		{"counters kept", "TCP 10.0.0.1:80 rr\n  -> 10.1.0.1:80 weight 2 active 1 inactive 9\n", ""},
		{"empty", "", ""},
		{"parse error", "TCP 10.0.0.1:80", "want <protocol>"},
		{"unknown scheduler", "TCP 10.0.0.1:80 xx", "add virtual server TCP/10.0.0.1:80: scheduler module ip_vs_xx not found"},
		{"mixed families", "TCP 10.0.0.1:80 rr\n-> [fd00::1]:80 weight 1", "add real server TCP/10.0.0.1:80 -> [fd00::1]:80"},
		{"negative weight", "TCP 10.0.0.1:80 rr\n-> 10.1.0.1:80 weight -2", "weight -2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFakeFromText(tc.text)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.DumpText(); got != tc.text {
				t.Errorf("DumpText() =\n%s\nwant\n%s", got, tc.text)
			}
			if f.String() != f.DumpText() {
				t.Errorf("String() differs from DumpText()")
			}
			if f.Writes() != 0 || f.Reads() != 0 {
				t.Errorf("seeding counted operations: Writes() = %d, Reads() = %d", f.Writes(), f.Reads())
			}
		})
	}
}

func TestFakeEverySchedulerAndProtocol(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	for i, sched := range Schedulers {
		for j, proto := range []Protocol{TCP, UDP, SCTP} {
			vs := VirtualServer{
				VirtualServerKey: VirtualServerKey{Address: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(j)}), Protocol: proto, Port: 80},
				Scheduler:        sched,
			}
			if err := f.AddVirtualServer(ctx, vs); err != nil {
				t.Errorf("AddVirtualServer(%s, %s): %v", sched, proto, err)
			}
		}
	}
	vss, err := f.Dump(ctx)
	if err != nil || len(vss) != 3*len(Schedulers) {
		t.Errorf("Dump() has %d virtual servers, %v; want %d", len(vss), err, 3*len(Schedulers))
	}
}
