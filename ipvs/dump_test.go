package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// makeVS builds a virtual server status from "PROTO addr:port" and a scheduler.
func makeVS(t *testing.T, protoAddrPort, sched string, rss ...RealServerStatus) VirtualServerStatus {
	t.Helper()
	proto, ap, ok := strings.Cut(protoAddrPort, " ")
	if !ok {
		t.Fatalf("makeVS(%q): want \"PROTO addr:port\"", protoAddrPort)
	}
	p, err := ParseProtocol(proto)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ap)
	return VirtualServerStatus{
		VirtualServer: VirtualServer{
			VirtualServerKey: VirtualServerKey{Address: a.Addr(), Protocol: p, Port: a.Port()},
			Scheduler:        sched,
		},
		RealServers: rss,
	}
}

// makeRS builds a real server status from "addr:port" and a weight.
func makeRS(addrPort string, weight int) RealServerStatus {
	a := netip.MustParseAddrPort(addrPort)
	return RealServerStatus{RealServer: RealServer{RealServerKey: RealServerKey{Address: a.Addr(), Port: a.Port()}, Weight: weight}}
}

// withConns sets the active and inactive counters of rs.
func withConns(rs RealServerStatus, active, inactive int) RealServerStatus {
	rs.ActiveConns, rs.InactiveConns = active, inactive
	return rs
}

// withFlags sets flags and timeout of vs.
func withFlags(vs VirtualServerStatus, flags Flags, timeout uint32) VirtualServerStatus {
	vs.Flags, vs.Timeout = flags, timeout
	return vs
}

func TestFormatDump(t *testing.T) {
	// Given out of order on purpose: FormatDump sorts.
	vss := []VirtualServerStatus{
		withFlags(makeVS(t, "UDP [fd00::1]:53", "sh"), FlagPersistent|FlagSHPort, 10800),
		makeVS(t, "TCP 10.0.0.1:80", "rr",
			withConns(makeRS("10.1.0.2:8080", 0), 3, 1),
			makeRS("10.1.0.1:8080", 1),
		),
	}
	want := `TCP 10.0.0.1:80 rr
  -> 10.1.0.1:8080 weight 1
  -> 10.1.0.2:8080 weight 0 active 3 inactive 1
UDP [fd00::1]:53 sh persistent 10800 flags sh-port
`
	if got := FormatDump(vss); got != want {
		t.Errorf("FormatDump() = \n%s\nwant\n%s", got, want)
	}
	if got := FormatDump(nil); got != "" {
		t.Errorf("FormatDump(nil) = %q, want empty", got)
	}
	if vss[0].Protocol != UDP {
		t.Errorf("FormatDump reordered its input")
	}
}

func TestDumpRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		vss  []VirtualServerStatus
	}{
		{name: "empty"},
		{name: "ipv4 with counters", vss: []VirtualServerStatus{
			makeVS(t, "TCP 10.0.0.1:80", "rr", makeRS("10.1.0.1:8080", 1), withConns(makeRS("10.1.0.2:8080", 0), 3, 1)),
			makeVS(t, "UDP 10.0.0.1:80", "wrr", withConns(makeRS("10.1.0.1:80", 5), 0, 7)),
		}},
		{name: "ipv6 persistent with sh flags", vss: []VirtualServerStatus{
			withFlags(makeVS(t, "UDP [fd00::1]:53", "sh", makeRS("[fd00:1::5]:5353", 1)), FlagPersistent|FlagSHPort|FlagSHFallback, 10800),
		}},
		{name: "sctp mh", vss: []VirtualServerStatus{
			withFlags(makeVS(t, "SCTP 192.0.2.1:9000", "mh", makeRS("192.0.2.10:9000", 100)), FlagSHPort, 0),
		}},
		{name: "persistent with zero timeout", vss: []VirtualServerStatus{
			withFlags(makeVS(t, "TCP 10.0.0.2:443", "lc"), FlagPersistent, 0),
		}},
		{name: "timeout without persistence", vss: []VirtualServerStatus{
			withFlags(makeVS(t, "TCP 10.0.0.2:443", "lc"), 0, 300),
		}},
		{name: "every flag and unnamed bits", vss: []VirtualServerStatus{
			withFlags(makeVS(t, "UDP 10.0.0.3:53", "dh"), FlagPersistent|FlagHashed|FlagOnePacket|FlagSHFallback|FlagSHPort|0x20|0x400, 60),
		}},
		{name: "empty scheduler", vss: []VirtualServerStatus{makeVS(t, "TCP 10.0.0.4:1", "")}},
		{name: "sorted mix of families", vss: []VirtualServerStatus{
			makeVS(t, "TCP 10.0.0.1:80", "rr"),
			makeVS(t, "UDP 10.0.0.1:80", "rr"),
			makeVS(t, "TCP 10.0.0.1:443", "rr"),
			makeVS(t, "TCP [fd00::1]:80", "rr", makeRS("[fd00::2]:80", 1), makeRS("[fd00::10]:80", 1)),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := FormatDump(tc.vss)
			got, err := ParseDump(text)
			if err != nil {
				t.Fatalf("ParseDump(%q): %v", text, err)
			}
			want := append([]VirtualServerStatus(nil), tc.vss...)
			sortStatuses(want)
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("round trip of\n%s(-want +got):\n%s", text, diff)
			}
			if again := FormatDump(got); again != text {
				t.Errorf("FormatDump(ParseDump(x)) = \n%s\nwant\n%s", again, text)
			}
		})
	}
}

func TestParseDumpLenient(t *testing.T) {
	text := `
# comments and blank lines are ignored, indentation is optional
UDP 10.0.0.1:53 rr
-> 10.1.0.2:53 weight 1
   -> 10.1.0.1:53 weight 2 inactive 4

TCP 10.0.0.1:53 rr
`
	want := `TCP 10.0.0.1:53 rr
UDP 10.0.0.1:53 rr
  -> 10.1.0.1:53 weight 2 inactive 4
  -> 10.1.0.2:53 weight 1
`
	got, err := ParseDump(text)
	if err != nil {
		t.Fatal(err)
	}
	if s := FormatDump(got); s != want {
		t.Errorf("got\n%s\nwant\n%s", s, want)
	}
}

func TestParseDumpErrors(t *testing.T) {
	tests := []struct {
		name, text, wantErr string
	}{
		{"real server first", "-> 10.1.0.1:80 weight 1", "before any virtual server"},
		{"duplicate virtual server", "TCP 10.0.0.1:80 rr\nTCP 10.0.0.1:80 wrr", "duplicate virtual server"},
		{"duplicate real server", "TCP 10.0.0.1:80 rr\n-> 10.1.0.1:80 weight 1\n-> 10.1.0.1:80 weight 2", "duplicate real server"},
		{"too few fields", "TCP 10.0.0.1:80", "want <protocol>"},
		{"bad protocol", "ICMP 10.0.0.1:80 rr", "unsupported protocol"},
		{"bad address", "TCP 10.0.0.1 rr", "line 1"},
		{"unknown option", "TCP 10.0.0.1:80 rr sticky 5", "unknown option"},
		{"option without value", "TCP 10.0.0.1:80 rr persistent", "has no value"},
		{"options out of order", "TCP 10.0.0.1:80 rr flags sh-port persistent 5", "out of order"},
		{"persistent and timeout", "TCP 10.0.0.1:80 rr persistent 5 timeout 5", "exclusive"},
		{"bad timeout", "TCP 10.0.0.1:80 rr persistent -1", "bad timeout"},
		{"unknown flag", "TCP 10.0.0.1:80 rr flags sticky", "unknown flag"},
		{"bad flag bits", "TCP 10.0.0.1:80 rr flags 0xzz", "bad flag bits"},
		{"missing weight", "TCP 10.0.0.1:80 rr\n-> 10.1.0.1:80", "missing weight"},
		{"bad weight", "TCP 10.0.0.1:80 rr\n-> 10.1.0.1:80 weight x", "bad weight"},
		{"bad real server address", "TCP 10.0.0.1:80 rr\n-> 10.1.0.1 weight 1", "line 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDump(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseDump(%q) error = %v, want one containing %q", tc.text, err, tc.wantErr)
			}
		})
	}
}
