//go:build kerneltest

package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kipvs/kipvs/ipvs"
)

// twin runs every operation on the real kernel and on an ipvs.Fake and
// checks that both answer alike and end in the same state: this proves that
// the Fake the unit tests use is faithful to the kernel.
type twin struct {
	t    *testing.T
	real *ipvs.Real
	fake *ipvs.Fake
}

func newTwin(t *testing.T) *twin {
	return &twin{t: t, real: newReal(t), fake: ipvs.NewFake()}
}

// errCheck says what error an operation must return.
type errCheck int

const (
	wantOK errCheck = iota
	wantExist
	wantNotFound
)

func (c errCheck) check(err error) error {
	switch {
	case c == wantOK && err != nil:
		return fmt.Errorf("unexpected error %w", err)
	case c == wantExist && !ipvs.IsExist(err):
		return fmt.Errorf("got %v, want an IsExist error", err)
	case c == wantNotFound && !ipvs.IsNotFound(err):
		return fmt.Errorf("got %v, want an IsNotFound error", err)
	}
	return nil
}

// step is one operation of a twin sequence.
type step struct {
	name string
	op   func(ipvs.Interface) error
	want errCheck
	// sameMessage asks for identical error texts; off where the Fake explains
	// more than the kernel's errno (unknown scheduler).
	sameMessage bool
	// dump, when not empty, is the state both must hold after the step.
	dump string
}

// do runs s on both tables and compares errors, dumps and RealServers.
func (tw *twin) do(s step) {
	t := tw.t
	t.Helper()
	realErr, fakeErr := s.op(tw.real), s.op(tw.fake)
	if err := s.want.check(realErr); err != nil {
		t.Errorf("%s: kernel: %v", s.name, err)
	}
	if err := s.want.check(fakeErr); err != nil {
		t.Errorf("%s: fake: %v", s.name, err)
	}
	if s.sameMessage && realErr != nil && fakeErr != nil && realErr.Error() != fakeErr.Error() {
		t.Errorf("%s: error texts differ:\nkernel: %v\nfake:   %v", s.name, realErr, fakeErr)
	}
	got, want := dumpText(t, tw.real, true), tw.fake.DumpText()
	if got != want {
		t.Fatalf("%s: kernel and fake differ:\nkernel:\n%s\nfake:\n%s", s.name, got, want)
	}
	if s.dump != "" && got != s.dump {
		t.Fatalf("%s: state\n%s\nwant\n%s", s.name, got, s.dump)
	}
	vss, _ := tw.fake.Dump(t.Context())
	for _, vs := range vss {
		rr, err := tw.real.RealServers(t.Context(), vs.VirtualServerKey)
		if err != nil {
			t.Fatalf("%s: kernel RealServers(%s): %v", s.name, vs.VirtualServerKey, err)
		}
		fr, _ := tw.fake.RealServers(t.Context(), vs.VirtualServerKey)
		got := ipvs.FormatDump([]ipvs.VirtualServerStatus{{VirtualServer: vs.VirtualServer, RealServers: rr}})
		want := ipvs.FormatDump([]ipvs.VirtualServerStatus{{VirtualServer: vs.VirtualServer, RealServers: fr}})
		if got != want {
			t.Errorf("%s: RealServers(%s): kernel\n%s\nfake\n%s", s.name, vs.VirtualServerKey, got, want)
		}
	}
}

func addVS(vs ipvs.VirtualServer) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.AddVirtualServer(bg, vs) }
}

func updateVS(vs ipvs.VirtualServer) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.UpdateVirtualServer(bg, vs) }
}

func deleteVS(k ipvs.VirtualServerKey) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.DeleteVirtualServer(bg, k) }
}

func addRS(k ipvs.VirtualServerKey, rs ipvs.RealServer) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.AddRealServer(bg, k, rs) }
}

func updateRS(k ipvs.VirtualServerKey, rs ipvs.RealServer) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.UpdateRealServer(bg, k, rs) }
}

func deleteRS(k ipvs.VirtualServerKey, rs ipvs.RealServerKey) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { return i.DeleteRealServer(bg, k, rs) }
}

func listRS(k ipvs.VirtualServerKey) func(ipvs.Interface) error {
	return func(i ipvs.Interface) error { _, err := i.RealServers(bg, k); return err }
}

func vsKey(proto ipvs.Protocol, addrPort string) ipvs.VirtualServerKey {
	ap := netip.MustParseAddrPort(addrPort)
	return ipvs.VirtualServerKey{Address: ap.Addr(), Protocol: proto, Port: ap.Port()}
}

func rs(addrPort string, weight int) ipvs.RealServer {
	ap := netip.MustParseAddrPort(addrPort)
	return ipvs.RealServer{RealServerKey: ipvs.RealServerKey{Address: ap.Addr(), Port: ap.Port()}, Weight: weight}
}

func TestRealProbe(t *testing.T) {
	r := newReal(t)
	// Probe twice: the second one must cope with whatever the first left.
	if err := r.Probe(t.Context()); err != nil {
		t.Fatalf("second Probe: %v", err)
	}
	if got := dumpText(t, r, true); got != "" {
		t.Errorf("Probe left virtual servers behind:\n%s", got)
	}
	if out := ipvsadm(t, "-Sn"); strings.TrimSpace(out) != "" {
		t.Errorf("Probe left entries that ipvsadm sees (firewall-mark ones included):\n%s", out)
	}
}

// TestRealMatchesFake runs the same life cycle of a virtual server on the
// kernel and on the Fake, for every family and protocol, errors included.
func TestRealMatchesFake(t *testing.T) {
	type family struct{ vip, rs1, rs2, missing string }
	families := map[string]family{
		"ipv4": {"10.96.0.1:80", "10.244.0.2:8080", "10.244.0.3:8080", "10.96.0.99:80"},
		"ipv6": {"[fd00:96::1]:80", "[fd00:244::2]:8080", "[fd00:244::3]:8080", "[fd00:96::99]:80"},
	}
	for fname, f := range families {
		for _, proto := range []ipvs.Protocol{ipvs.TCP, ipvs.UDP, ipvs.SCTP} {
			t.Run(fname+"/"+string(proto), func(t *testing.T) {
				tw := newTwin(t)
				k, missing := vsKey(proto, f.vip), vsKey(proto, f.missing)
				vs := ipvs.VirtualServer{VirtualServerKey: k, Scheduler: "rr"}
				r1, r2 := rs(f.rs1, 1), rs(f.rs2, 2)
				r1w5, r1w0 := r1, r1
				r1w5.Weight, r1w0.Weight = 5, 0
				persistent := vs
				persistent.Scheduler, persistent.Flags, persistent.Timeout = "wrr", ipvs.FlagPersistent, 300
				shFlags := vs
				shFlags.Scheduler, shFlags.Flags = "sh", ipvs.FlagSHFallback|ipvs.FlagSHPort
				mh := vs
				mh.Scheduler, mh.Flags = "mh", ipvs.FlagSHPort
				timeoutOnly := vs
				timeoutOnly.Timeout = 60
				vsLine := fmt.Sprintf("%s %s", proto, netip.MustParseAddrPort(f.vip))
				steps := []step{
					{name: "add virtual server", op: addVS(vs), dump: vsLine + " rr\n"},
					{name: "add virtual server again", op: addVS(vs), want: wantExist, sameMessage: true},
					{name: "add real server 1", op: addRS(k, r1)},
					{name: "add real server 2", op: addRS(k, r2), dump: fmt.Sprintf("%s rr\n  -> %s weight 1\n  -> %s weight 2\n",
						vsLine, r1.RealServerKey, r2.RealServerKey)},
					{name: "add real server 1 again", op: addRS(k, r1), want: wantExist, sameMessage: true},
					{name: "list real servers", op: listRS(k)},
					{name: "update weight", op: updateRS(k, r1w5)},
					{name: "update weight to 0", op: updateRS(k, r1w0)},
					{name: "persistence", op: updateVS(persistent), dump: fmt.Sprintf("%s wrr persistent 300\n  -> %s weight 0\n  -> %s weight 2\n",
						vsLine, r1.RealServerKey, r2.RealServerKey)},
					{name: "sh flags", op: updateVS(shFlags)},
					{name: "mh with sh-port", op: updateVS(mh)},
					{name: "timeout without persistence", op: updateVS(timeoutOnly)},
					{name: "back to plain rr", op: updateVS(vs)},
					{name: "delete real server 1", op: deleteRS(k, r1.RealServerKey)},
					{name: "delete real server 1 again", op: deleteRS(k, r1.RealServerKey), want: wantNotFound, sameMessage: true},
					{name: "update missing real server", op: updateRS(k, r1), want: wantNotFound, sameMessage: true},
					{name: "add real server to missing virtual server", op: addRS(missing, r1), want: wantNotFound, sameMessage: true},
					{name: "delete real server of missing virtual server", op: deleteRS(missing, r1.RealServerKey), want: wantNotFound, sameMessage: true},
					{name: "list real servers of missing virtual server", op: listRS(missing), want: wantNotFound, sameMessage: true},
					{name: "update missing virtual server", op: updateVS(ipvs.VirtualServer{VirtualServerKey: missing, Scheduler: "rr"}), want: wantNotFound, sameMessage: true},
					{name: "delete missing virtual server", op: deleteVS(missing), want: wantNotFound, sameMessage: true},
					{name: "delete virtual server", op: deleteVS(k), dump: ""},
					{name: "delete virtual server again", op: deleteVS(k), want: wantNotFound, sameMessage: true},
				}
				for _, s := range steps {
					tw.do(s)
				}
			})
		}
	}
}

// TestRealSchedulers checks that the kernel accepts every scheduler kipvs
// offers, and refuses an unknown one like the Fake does.
func TestRealSchedulers(t *testing.T) {
	tw := newTwin(t)
	for i, sched := range ipvs.Schedulers {
		v4 := vsKey(ipvs.TCP, fmt.Sprintf("10.96.1.%d:80", i+1))
		v6 := vsKey(ipvs.UDP, fmt.Sprintf("[fd00:96::%x]:53", i+1))
		tw.do(step{name: sched + " ipv4", op: addVS(ipvs.VirtualServer{VirtualServerKey: v4, Scheduler: sched})})
		tw.do(step{name: sched + " ipv6", op: addVS(ipvs.VirtualServer{VirtualServerKey: v6, Scheduler: sched})})
		// Switching to rr and back proves Update accepts it too.
		tw.do(step{name: sched + " -> rr", op: updateVS(ipvs.VirtualServer{VirtualServerKey: v4, Scheduler: "rr"})})
		tw.do(step{name: "rr -> " + sched, op: updateVS(ipvs.VirtualServer{VirtualServerKey: v4, Scheduler: sched})})
	}
	if got, want := strings.Count(dumpText(t, tw.real, false), "\n"), 2*len(ipvs.Schedulers); got != want {
		t.Errorf("kernel holds %d virtual servers, want %d", got, want)
	}
	bad := vsKey(ipvs.TCP, "10.96.2.1:80")
	tw.do(step{name: "unknown scheduler", op: addVS(ipvs.VirtualServer{VirtualServerKey: bad, Scheduler: "nosuch"}), want: wantNotFound})
	tw.do(step{name: "update to unknown scheduler",
		op: updateVS(ipvs.VirtualServer{VirtualServerKey: vsKey(ipvs.TCP, "10.96.1.1:80"), Scheduler: "nosuch"}), want: wantNotFound})
}

// TestRealFlags covers the flag combinations kipvs writes, and one-packet
// scheduling for UDP.
func TestRealFlags(t *testing.T) {
	tw := newTwin(t)
	k := vsKey(ipvs.UDP, "10.96.0.53:53")
	tests := []struct {
		name string
		vs   ipvs.VirtualServer
		line string
	}{
		{"persistent", ipvs.VirtualServer{Scheduler: "rr", Flags: ipvs.FlagPersistent, Timeout: 10800}, "rr persistent 10800"},
		{"persistent without timeout", ipvs.VirtualServer{Scheduler: "rr", Flags: ipvs.FlagPersistent}, "rr persistent 0"},
		{"sh fallback", ipvs.VirtualServer{Scheduler: "sh", Flags: ipvs.FlagSHFallback}, "sh flags sh-fallback"},
		{"sh port", ipvs.VirtualServer{Scheduler: "sh", Flags: ipvs.FlagSHPort}, "sh flags sh-port"},
		{"mh both", ipvs.VirtualServer{Scheduler: "mh", Flags: ipvs.FlagSHFallback | ipvs.FlagSHPort}, "mh flags sh-fallback,sh-port"},
		{"one-packet", ipvs.VirtualServer{Scheduler: "rr", Flags: ipvs.FlagOnePacket}, "rr flags one-packet"},
		{"persistent sh", ipvs.VirtualServer{Scheduler: "sh", Flags: ipvs.FlagPersistent | ipvs.FlagSHPort, Timeout: 60}, "sh persistent 60 flags sh-port"},
		{"none", ipvs.VirtualServer{Scheduler: "wlc"}, "wlc"},
	}
	tw.do(step{name: "add", op: addVS(ipvs.VirtualServer{VirtualServerKey: k, Scheduler: "rr"})})
	tw.do(step{name: "add real server", op: addRS(k, rs("10.244.0.2:53", 1))})
	for _, tc := range tests {
		tc.vs.VirtualServerKey = k
		want := fmt.Sprintf("UDP 10.96.0.53:53 %s\n  -> 10.244.0.2:53 weight 1\n", tc.line)
		tw.do(step{name: tc.name, op: updateVS(tc.vs), dump: want})
	}
}

// TestRealTimeouts round-trips the global timeouts and restores them.
func TestRealTimeouts(t *testing.T) {
	tw := newTwin(t)
	orig, err := tw.real.Timeouts(t.Context())
	if err != nil {
		t.Fatalf("Timeouts: %v", err)
	}
	t.Cleanup(func() {
		if err := tw.real.SetTimeouts(bg, orig); err != nil {
			t.Errorf("restore timeouts %+v: %v", orig, err)
		}
	})
	if orig != ipvs.DefaultTimeouts {
		t.Errorf("kernel timeouts %+v, want the Fake's defaults %+v", orig, ipvs.DefaultTimeouts)
	}
	sets := []ipvs.Timeouts{
		{TCP: 901 * time.Second, TCPFin: 121 * time.Second, UDP: 301 * time.Second},
		{UDP: 30 * time.Second}, // zero fields are left as they are
		{TCPFin: 5 * time.Second},
	}
	for _, set := range sets {
		if err := errors.Join(tw.real.SetTimeouts(bg, set), tw.fake.SetTimeouts(bg, set)); err != nil {
			t.Fatalf("SetTimeouts(%+v): %v", set, err)
		}
		got, err := tw.real.Timeouts(bg)
		if err != nil {
			t.Fatalf("Timeouts: %v", err)
		}
		want, _ := tw.fake.Timeouts(bg)
		if got != want {
			t.Errorf("after SetTimeouts(%+v): kernel %+v, fake %+v", set, got, want)
		}
	}
	if got, _ := tw.real.Timeouts(bg); got != (ipvs.Timeouts{TCP: 901 * time.Second, TCPFin: 5 * time.Second, UDP: 30 * time.Second}) {
		t.Errorf("final timeouts %+v", got)
	}
}

// TestRealSeesIpvsadm checks both directions with the kernel's own tool:
// entries ipvsadm made (foreign to kipvs) appear in Dump, and what Real
// wrote is what ipvsadm reads.
func TestRealSeesIpvsadm(t *testing.T) {
	r := newReal(t)
	ipvsadm(t, "-A", "-t", "192.0.2.1:80", "-s", "wrr")
	ipvsadm(t, "-a", "-t", "192.0.2.1:80", "-r", "10.1.0.1:8080", "-m", "-w", "3")
	// Direct routing cannot map ports: ipvsadm gives the real server the
	// virtual server's port.
	ipvsadm(t, "-a", "-t", "192.0.2.1:80", "-r", "10.1.0.2", "-g", "-w", "0")
	ipvsadm(t, "-A", "-u", "[2001:db8::1]:53", "-s", "sh", "-b", "sh-fallback,sh-port", "-p", "600")
	ipvsadm(t, "-A", "-f", "7", "-s", "rr") // firewall-mark services are not kipvs's business: Dump skips them
	want := "TCP 192.0.2.1:80 wrr\n" +
		"  -> 10.1.0.1:8080 weight 3\n" +
		"  -> 10.1.0.2:80 weight 0\n" +
		"UDP [2001:db8::1]:53 sh persistent 600 flags sh-fallback,sh-port\n"
	if got := dumpText(t, r, true); got != want {
		t.Errorf("Dump of ipvsadm's entries:\n%s\nwant\n%s", got, want)
	}

	k := vsKey(ipvs.SCTP, "10.96.0.7:7777")
	if err := r.AddVirtualServer(bg, ipvs.VirtualServer{VirtualServerKey: k, Scheduler: "lc", Flags: ipvs.FlagPersistent, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if err := r.AddRealServer(bg, k, rs("10.244.0.9:7000", 4)); err != nil {
		t.Fatal(err)
	}
	saved := ipvsadm(t, "-Sn")
	for _, line := range []string{
		"-A --sctp-service 10.96.0.7:7777 -s lc -p 30",
		"-a --sctp-service 10.96.0.7:7777 -r 10.244.0.9:7000 -m -w 4",
	} {
		if !strings.Contains(saved, line+"\n") {
			t.Errorf("ipvsadm -Sn lacks %q:\n%s", line, saved)
		}
	}
}
