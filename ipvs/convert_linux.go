//go:build linux

package ipvs

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// Conversions between our types and github.com/moby/ipvs v1.1.0. They are pure
// so that unit tests can check them without a kernel. moby/ipvs is a thin
// netlink encoder: it sends what it is given and returns what the kernel says,
// so every quirk is handled here.

// protocolNumber returns the IP protocol number the kernel uses for p.
func protocolNumber(p Protocol) (uint16, error) {
	switch p {
	case TCP:
		return unix.IPPROTO_TCP, nil
	case UDP:
		return unix.IPPROTO_UDP, nil
	case SCTP:
		return unix.IPPROTO_SCTP, nil
	}
	return 0, fmt.Errorf("unsupported protocol %q: %w", p, syscall.EINVAL)
}

// protocolFromNumber is the inverse of protocolNumber.
func protocolFromNumber(n uint16) (Protocol, error) {
	switch n {
	case unix.IPPROTO_TCP:
		return TCP, nil
	case unix.IPPROTO_UDP:
		return UDP, nil
	case unix.IPPROTO_SCTP:
		return SCTP, nil
	}
	return "", fmt.Errorf("unsupported IP protocol number %d", n)
}

// addressFamily returns AF_INET or AF_INET6 for a.
func addressFamily(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// hostNetmask returns the netmask the kernel expects for a single-address
// service: all ones for IPv4 (as ipvsadm sends), a prefix length of 128 for
// IPv6 (the kernel rejects an IPv6 netmask outside 1..128 with EINVAL).
func hostNetmask(a netip.Addr) uint32 {
	if a.Is4() {
		return 0xffffffff
	}
	return 128
}

// toMobyServiceKey returns a moby Service that identifies k, enough for
// delete, get and the real server commands. moby/ipvs sends AddressFamily and
// Netmask as given, so they are always filled.
func toMobyServiceKey(k VirtualServerKey) (*mipvs.Service, error) {
	if err := validateVirtualServerKey(k); err != nil {
		return nil, err
	}
	proto, err := protocolNumber(k.Protocol)
	if err != nil {
		return nil, err
	}
	return &mipvs.Service{
		Address:       net.IP(k.Address.AsSlice()),
		Protocol:      proto,
		Port:          k.Port,
		AddressFamily: addressFamily(k.Address),
		Netmask:       hostNetmask(k.Address),
	}, nil
}

// toMobyService returns the full moby Service for an add or update. The
// hashed flag is kernel state and never sent.
func toMobyService(vs VirtualServer) (*mipvs.Service, error) {
	s, err := toMobyServiceKey(vs.VirtualServerKey)
	if err != nil {
		return nil, err
	}
	s.SchedName = vs.Scheduler
	s.Flags = uint32(vs.Flags &^ FlagHashed)
	s.Timeout = vs.Timeout
	return s, nil
}

// isFWMarkService reports whether s is a firewall-mark service, which has no
// address, protocol or port of its own. kipvs never creates those, so Dump
// skips them as foreign.
func isFWMarkService(s *mipvs.Service) bool { return s.FWMark != 0 }

// fromMobyService converts a service read from the kernel. It strips the
// kernel's hashed flag (0x2), which the kernel sets on every service it has
// linked into its tables.
func fromMobyService(s *mipvs.Service) (VirtualServer, error) {
	var vs VirtualServer
	if isFWMarkService(s) {
		return vs, fmt.Errorf("firewall-mark service %#x has no address", s.FWMark)
	}
	addr, err := addrFromIP(s.Address, s.AddressFamily)
	if err != nil {
		return vs, err
	}
	proto, err := protocolFromNumber(s.Protocol)
	if err != nil {
		return vs, err
	}
	vs.VirtualServerKey = VirtualServerKey{Address: addr, Protocol: proto, Port: s.Port}
	vs.Scheduler = s.SchedName
	vs.Flags = Flags(s.Flags) &^ FlagHashed
	vs.Timeout = s.Timeout
	return vs, nil
}

// toMobyDestination returns the moby Destination for rs in vs. Forwarding is
// always masquerading. moby/ipvs does not send the destination's address
// family (the kernel then assumes the service's), so validateRealServer
// rejects a family mismatch first; AddressFamily is filled anyway.
func toMobyDestination(vs VirtualServerKey, rs RealServer) (*mipvs.Destination, error) {
	if err := validateRealServer(vs, rs); err != nil {
		return nil, err
	}
	return &mipvs.Destination{
		Address:         net.IP(rs.Address.AsSlice()),
		Port:            rs.Port,
		Weight:          rs.Weight,
		ConnectionFlags: mipvs.ConnectionFlagMasq,
		AddressFamily:   addressFamily(rs.Address),
	}, nil
}

// fromMobyDestination converts a destination read from the kernel, with its
// counters. The forwarding method is not reported: kipvs only writes masq.
func fromMobyDestination(d *mipvs.Destination) (RealServerStatus, error) {
	var rs RealServerStatus
	addr, err := addrFromIP(d.Address, d.AddressFamily)
	if err != nil {
		return rs, err
	}
	rs.RealServerKey = RealServerKey{Address: addr, Port: d.Port}
	rs.Weight = d.Weight
	rs.ActiveConns = d.ActiveConnections
	rs.InactiveConns = d.InactiveConnections
	rs.Connections = uint64(d.Stats.Connections)
	rs.PacketsIn = uint64(d.Stats.PacketsIn)
	rs.PacketsOut = uint64(d.Stats.PacketsOut)
	rs.BytesIn = d.Stats.BytesIn
	rs.BytesOut = d.Stats.BytesOut
	return rs, nil
}

// addrFromIP converts an address moby parsed for family (4 bytes for AF_INET,
// 16 for AF_INET6) into a netip.Addr of that family.
func addrFromIP(ip net.IP, family uint16) (netip.Addr, error) {
	switch {
	case family == unix.AF_INET && len(ip) == net.IPv4len:
		return netip.AddrFrom4([4]byte(ip)), nil
	case family == unix.AF_INET && len(ip) == net.IPv6len && ip.To4() != nil:
		return netip.AddrFrom4([4]byte(ip.To4())), nil
	case family == unix.AF_INET6 && len(ip) == net.IPv6len:
		return netip.AddrFrom16([16]byte(ip)), nil
	}
	return netip.Addr{}, fmt.Errorf("bad address %v for address family %d", ip, family)
}

// toMobyConfig converts timeouts for SetConfig, where 0 means "no change".
func toMobyConfig(t Timeouts) (*mipvs.Config, error) {
	if err := validateTimeouts(t); err != nil {
		return nil, err
	}
	return &mipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP}, nil
}

// fromMobyConfig converts timeouts read with GetConfig.
func fromMobyConfig(c *mipvs.Config) Timeouts {
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}
}
