// Package ipvs is kipvs's boundary to the kernel's IP Virtual Server table: a small
// interface, a real implementation over github.com/moby/ipvs and an in-memory Fake.
//
// Desired and observed types are kept apart: a RealServer is what kipvs wants, a
// RealServerStatus is what it read back from the kernel, with the kernel's counters.
package ipvs

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Protocol is a transport protocol that IPVS balances.
type Protocol string

// The protocols IPVS supports and Kubernetes Services use.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Flags are the kernel's IP_VS_SVC_F_* virtual server flags that kipvs sets.
// The kernel's "hashed" flag (0x2) is internal state and never appears here: the
// real implementation strips it on read.
type Flags uint32

// Virtual server flags, as in include/uapi/linux/ip_vs.h.
const (
	FlagPersistent Flags = 0x1  // IP_VS_SVC_F_PERSISTENT: session affinity
	FlagHashed     Flags = 0x2  // IP_VS_SVC_F_HASHED: kernel-internal, stripped on read
	FlagOnePacket  Flags = 0x4  // IP_VS_SVC_F_ONEPACKET
	FlagSHFallback Flags = 0x8  // IP_VS_SVC_F_SCHED1: sh/mh fallback
	FlagSHPort     Flags = 0x10 // IP_VS_SVC_F_SCHED2: sh/mh hash the port too
)

// VirtualServerKey identifies a virtual server: what a client connects to.
type VirtualServerKey struct {
	Address  netip.Addr
	Protocol Protocol
	Port     uint16
}

// String renders the key as "TCP/10.0.0.1:80" or "TCP/[fd00::1]:80".
func (k VirtualServerKey) String() string {
	return string(k.Protocol) + "/" + netip.AddrPortFrom(k.Address, k.Port).String()
}

// VirtualServer is a virtual server as kipvs wants it. Forwarding is always
// masquerading (NAT) on the real servers.
type VirtualServer struct {
	VirtualServerKey
	Scheduler string
	Flags     Flags
	// Timeout is the persistence timeout in seconds; it matters only with FlagPersistent.
	Timeout uint32
}

// RealServerKey identifies a real server (a backend) within a virtual server.
type RealServerKey struct {
	Address netip.Addr
	Port    uint16
}

// String renders the key as "10.1.0.1:8080" or "[fd00::1]:8080".
func (k RealServerKey) String() string { return netip.AddrPortFrom(k.Address, k.Port).String() }

// RealServer is a real server as kipvs wants it. Weight 0 means draining: no new
// connections, existing ones continue.
type RealServer struct {
	RealServerKey
	Weight int
}

// RealServerStatus is a real server as read from the kernel, with its live counters.
type RealServerStatus struct {
	RealServer
	ActiveConns   int
	InactiveConns int
	Connections   uint64
	PacketsIn     uint64
	PacketsOut    uint64
	BytesIn       uint64
	BytesOut      uint64
}

// VirtualServerStatus is a virtual server as read from the kernel, with its real servers.
type VirtualServerStatus struct {
	VirtualServer
	RealServers []RealServerStatus
}

// Timeouts are the kernel's global IPVS connection timeouts (ipvsadm --set).
// A zero field means "leave as is" when setting.
type Timeouts struct {
	TCP    time.Duration
	TCPFin time.Duration
	UDP    time.Duration
}

// Interface is the IPVS table. Every method takes ctx first; errors are wrapped
// with %w and can be tested with IsNotFound and IsExist.
type Interface interface {
	// Dump lists every virtual server in the kernel with its real servers, sorted
	// by key, including virtual servers that kipvs does not own.
	Dump(ctx context.Context) ([]VirtualServerStatus, error)
	// RealServers lists the real servers of one virtual server, with counters.
	RealServers(ctx context.Context, vs VirtualServerKey) ([]RealServerStatus, error)
	AddVirtualServer(ctx context.Context, vs VirtualServer) error
	UpdateVirtualServer(ctx context.Context, vs VirtualServer) error
	DeleteVirtualServer(ctx context.Context, vs VirtualServerKey) error
	AddRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error
	UpdateRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error
	DeleteRealServer(ctx context.Context, vs VirtualServerKey, rs RealServerKey) error
	Timeouts(ctx context.Context) (Timeouts, error)
	SetTimeouts(ctx context.Context, t Timeouts) error
}

// Schedulers are the IPVS schedulers that Debian's kernels ship and kipvs accepts.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"}

// ValidScheduler reports whether name is one of Schedulers.
func ValidScheduler(name string) bool {
	return slices.Contains(Schedulers, name)
}

// ParseProtocol turns "TCP", "UDP" or "SCTP" (any case) into a Protocol.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToUpper(s)); p {
	case TCP, UDP, SCTP:
		return p, nil
	}
	return "", fmt.Errorf("unsupported protocol %q", s)
}

// Compare orders keys by address, then port, then protocol; Dump output uses it.
func (k VirtualServerKey) Compare(o VirtualServerKey) int {
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	if k.Port != o.Port {
		return cmp.Compare(k.Port, o.Port)
	}
	return cmp.Compare(k.Protocol, o.Protocol)
}

// Compare orders real server keys by address, then port.
func (k RealServerKey) Compare(o RealServerKey) int {
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	return cmp.Compare(k.Port, o.Port)
}
