package ipvs

import (
	"fmt"
	"math"
	"syscall"
	"time"
)

// MaxWeight is the largest real server weight kipvs writes. The kernel accepts
// any non-negative int, but github.com/moby/ipvs v1.1.0 reads the weight back as
// a uint16 (assembleDestination), so a larger weight would read back wrong and
// look like drift on every resync.
const MaxWeight = 65535

// validateVirtualServerKey checks what both Real and Fake require of a key
// before anything reaches the kernel. Errors wrap EINVAL, the kernel's answer
// to a malformed request.
func validateVirtualServerKey(k VirtualServerKey) error {
	if err := validateAddr(k.Address.IsValid(), k.Address.Is4In6(), k.Address.Zone()); err != nil {
		return err
	}
	switch k.Protocol {
	case TCP, UDP, SCTP:
		return nil
	}
	return fmt.Errorf("unsupported protocol %q: %w", k.Protocol, syscall.EINVAL)
}

// validateRealServer checks a real server against its virtual server. IPVS
// masquerading cannot mix address families (the kernel answers EINVAL), and
// moby/ipvs does not even send the real server's family, so a mismatch would
// otherwise be misread by the kernel. Negative weights are ERANGE, as in the
// kernel's ip_vs_add_dest.
func validateRealServer(vs VirtualServerKey, rs RealServer) error {
	if err := validateRealServerKey(vs, rs.RealServerKey); err != nil {
		return err
	}
	if rs.Weight < 0 || rs.Weight > MaxWeight {
		return fmt.Errorf("weight %d outside 0..%d: %w", rs.Weight, MaxWeight, syscall.ERANGE)
	}
	return nil
}

// validateRealServerKey checks the address of a real server key against vs.
func validateRealServerKey(vs VirtualServerKey, rs RealServerKey) error {
	if err := validateAddr(rs.Address.IsValid(), rs.Address.Is4In6(), rs.Address.Zone()); err != nil {
		return err
	}
	if rs.Address.Is4() != vs.Address.Is4() {
		return fmt.Errorf("real server %s and virtual server %s differ in address family: %w",
			rs, vs, syscall.EINVAL)
	}
	return nil
}

// validateAddr rejects the netip.Addr values that have no single IPVS meaning.
func validateAddr(valid, is4In6 bool, zone string) error {
	switch {
	case !valid:
		return fmt.Errorf("missing address: %w", syscall.EINVAL)
	case is4In6:
		return fmt.Errorf("IPv4-mapped IPv6 address is ambiguous, use the IPv4 form: %w", syscall.EINVAL)
	case zone != "":
		return fmt.Errorf("address zone %q not supported: %w", zone, syscall.EINVAL)
	}
	return nil
}

// validateTimeouts checks that every timeout is a whole, non-negative number
// of seconds that fits the kernel's 32-bit field (moby/ipvs would silently
// truncate anything else).
func validateTimeouts(t Timeouts) error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"tcp", t.TCP}, {"tcpfin", t.TCPFin}, {"udp", t.UDP}} {
		if f.d < 0 || f.d%time.Second != 0 || f.d/time.Second > math.MaxUint32 {
			return fmt.Errorf("%s timeout %v is not a whole number of seconds in 0..%d: %w",
				f.name, f.d, uint32(math.MaxUint32), syscall.EINVAL)
		}
	}
	return nil
}
