//go:build linux

package ipvs

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	mipvs "github.com/moby/ipvs"
)

// addrCmp lets go-cmp compare netip.Addr values.
var addrCmp = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestToMobyService(t *testing.T) {
	tests := []struct {
		name string
		vs   VirtualServer
		want *mipvs.Service
	}{
		{"ipv4 tcp", withFlags(makeVS(t, "TCP 10.0.0.1:80", "rr"), FlagPersistent, 10800).VirtualServer, &mipvs.Service{
			Address: net.IP{10, 0, 0, 1}, Protocol: 6, Port: 80, SchedName: "rr", Flags: 0x1, Timeout: 10800,
			Netmask: 0xffffffff, AddressFamily: syscall.AF_INET,
		}},
		{"ipv6 udp, hashed flag not sent", withFlags(makeVS(t, "UDP [fd00::1]:53", "sh"), FlagHashed|FlagSHPort|FlagSHFallback, 0).VirtualServer, &mipvs.Service{
			Address: net.ParseIP("fd00::1"), Protocol: 17, Port: 53, SchedName: "sh", Flags: 0x18,
			Netmask: 128, AddressFamily: syscall.AF_INET6,
		}},
		{"sctp", makeVS(t, "SCTP 192.0.2.1:9000", "mh").VirtualServer, &mipvs.Service{
			Address: net.IP{192, 0, 2, 1}, Protocol: 132, Port: 9000, SchedName: "mh",
			Netmask: 0xffffffff, AddressFamily: syscall.AF_INET,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := toMobyService(tc.vs)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("toMobyService(%+v) (-want +got):\n%s", tc.vs, diff)
			}
			back, err := fromMobyService(got)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.vs
			want.Flags &^= FlagHashed
			if diff := cmp.Diff(want, back, addrCmp); diff != "" {
				t.Errorf("fromMobyService(toMobyService(x)) (-want +got):\n%s", diff)
			}
		})
	}
}

func TestToMobyServiceInvalid(t *testing.T) {
	bad := []VirtualServer{
		{VirtualServerKey: VirtualServerKey{Protocol: TCP, Port: 80}, Scheduler: "rr"},
		makeVS(t, "TCP [::ffff:10.0.0.1]:80", "rr").VirtualServer,
		makeVS(t, "TCP [fe80::1%eth0]:80", "rr").VirtualServer,
		{VirtualServerKey: VirtualServerKey{Address: netip.MustParseAddr("10.0.0.1"), Protocol: "icmp", Port: 80}},
	}
	for _, vs := range bad {
		if _, err := toMobyService(vs); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("toMobyService(%+v) error = %v, want EINVAL", vs, err)
		}
	}
}

func TestFromMobyService(t *testing.T) {
	tests := []struct {
		name    string
		in      *mipvs.Service
		want    VirtualServer
		wantErr bool
	}{
		{name: "hashed flag stripped", in: &mipvs.Service{
			Address: net.IP{10, 0, 0, 1}, Protocol: 6, Port: 80, SchedName: "wrr", Flags: 0x2 | 0x1, Timeout: 300,
			AddressFamily: syscall.AF_INET, Netmask: 0xffffffff,
		}, want: withFlags(makeVS(t, "TCP 10.0.0.1:80", "wrr"), FlagPersistent, 300).VirtualServer},
		{name: "ipv4 in a 16-byte slice", in: &mipvs.Service{
			Address: net.ParseIP("10.0.0.1"), Protocol: 17, Port: 53, SchedName: "rr", Flags: 0x2, AddressFamily: syscall.AF_INET,
		}, want: makeVS(t, "UDP 10.0.0.1:53", "rr").VirtualServer},
		{name: "ipv6 sctp", in: &mipvs.Service{
			Address: net.ParseIP("fd00::5"), Protocol: 132, Port: 7, SchedName: "lc", Flags: 0x2, AddressFamily: syscall.AF_INET6, Netmask: 128,
		}, want: makeVS(t, "SCTP [fd00::5]:7", "lc").VirtualServer},
		{name: "fwmark", in: &mipvs.Service{FWMark: 7, Protocol: 6, AddressFamily: syscall.AF_INET}, wantErr: true},
		{name: "unknown protocol", in: &mipvs.Service{Address: net.IP{10, 0, 0, 1}, Protocol: 1, AddressFamily: syscall.AF_INET}, wantErr: true},
		{name: "family mismatch", in: &mipvs.Service{Address: net.ParseIP("fd00::1"), Protocol: 6, AddressFamily: syscall.AF_INET}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fromMobyService(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("fromMobyService() error = %v, wantErr %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got, addrCmp); !tc.wantErr && diff != "" {
				t.Errorf("fromMobyService() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMobyDestination(t *testing.T) {
	vs4, vs6 := vsKey(t, "TCP 10.0.0.1:80"), vsKey(t, "TCP [fd00::1]:80")
	d, err := toMobyDestination(vs4, makeRS("10.1.0.1:8080", 3).RealServer)
	if err != nil {
		t.Fatal(err)
	}
	want := &mipvs.Destination{Address: net.IP{10, 1, 0, 1}, Port: 8080, Weight: 3,
		ConnectionFlags: mipvs.ConnectionFlagMasq, AddressFamily: syscall.AF_INET}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("toMobyDestination (-want +got):\n%s", diff)
	}
	d6, err := toMobyDestination(vs6, makeRS("[fd00::2]:80", 0).RealServer)
	if err != nil || d6.AddressFamily != syscall.AF_INET6 || len(d6.Address) != net.IPv6len || d6.Weight != 0 {
		t.Errorf("toMobyDestination(ipv6) = %+v, %v", d6, err)
	}
	for _, tc := range []struct {
		vs    VirtualServerKey
		rs    RealServer
		errno error
	}{
		{vs4, makeRS("[fd00::2]:80", 1).RealServer, syscall.EINVAL},
		{vs6, makeRS("10.1.0.1:80", 1).RealServer, syscall.EINVAL},
		{vs4, makeRS("10.1.0.1:80", -1).RealServer, syscall.ERANGE},
		{vs4, makeRS("10.1.0.1:80", MaxWeight+1).RealServer, syscall.ERANGE},
	} {
		if _, err := toMobyDestination(tc.vs, tc.rs); !errors.Is(err, tc.errno) {
			t.Errorf("toMobyDestination(%s, %+v) error = %v, want %v", tc.vs, tc.rs, err, tc.errno)
		}
	}

	got, err := fromMobyDestination(&mipvs.Destination{
		Address: net.IP{10, 1, 0, 1}, Port: 8080, Weight: 2, ConnectionFlags: mipvs.ConnectionFlagMasq,
		AddressFamily: syscall.AF_INET, ActiveConnections: 4, InactiveConnections: 5,
		Stats: mipvs.DstStats{Connections: 6, PacketsIn: 7, PacketsOut: 8, BytesIn: 9, BytesOut: 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantRS := withConns(makeRS("10.1.0.1:8080", 2), 4, 5)
	wantRS.Connections, wantRS.PacketsIn, wantRS.PacketsOut, wantRS.BytesIn, wantRS.BytesOut = 6, 7, 8, 9, 10
	if diff := cmp.Diff(wantRS, got, addrCmp); diff != "" {
		t.Errorf("fromMobyDestination (-want +got):\n%s", diff)
	}
	if _, err := fromMobyDestination(&mipvs.Destination{Address: net.IP{1, 2, 3, 4}, AddressFamily: syscall.AF_INET6}); err == nil {
		t.Errorf("fromMobyDestination with a 4-byte IPv6 address: no error")
	}
}

func TestMobyConfig(t *testing.T) {
	in := Timeouts{TCP: 900 * time.Second, UDP: 30 * time.Second}
	c, err := toMobyConfig(in)
	if err != nil {
		t.Fatal(err)
	}
	if c.TimeoutTCP != in.TCP || c.TimeoutTCPFin != 0 || c.TimeoutUDP != in.UDP {
		t.Errorf("toMobyConfig(%+v) = %+v", in, c)
	}
	if got := fromMobyConfig(c); got != in {
		t.Errorf("fromMobyConfig(toMobyConfig(x)) = %+v, want %+v", got, in)
	}
	if _, err := toMobyConfig(Timeouts{TCP: 10 * time.Millisecond}); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("toMobyConfig(10ms) error = %v, want EINVAL", err)
	}
}
