//go:build linux

package netpod

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// SCTP is the protocol name of SCTP echo servers and clients. Go's standard
// library has no SCTP: these are one-to-one style sockets (SOCK_STREAM,
// IPPROTO_SCTP, RFC 6458 section 4) made with golang.org/x/sys/unix and handed
// to package net, which treats a connected stream socket like a TCP one
// (read/write, accept, the poller), so echo servers and clients reuse the TCP
// code. The kernel needs the sctp module.
const SCTP = "sctp"

// listenSCTP listens on port on every address of the current netns, IPv4 and
// IPv6 (a dual-stack IPv6 socket, as net.Listen("tcp", ":port") makes).
func listenSCTP(port uint16) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, fmt.Errorf("sctp socket (is the sctp module loaded?): %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp-listener")
	defer f.Close() // net.FileListener dups it
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, fmt.Errorf("sctp IPV6_V6ONLY=0: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("sctp SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(port)}); err != nil {
		return nil, fmt.Errorf("sctp bind :%d: %w", port, err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		return nil, fmt.Errorf("sctp listen :%d: %w", port, err)
	}
	return net.FileListener(f)
}

// dialSCTP connects to addr from the current netns. The connect blocks until
// the association is up (INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK) or the
// deadline of ctx passes (SO_SNDTIMEO bounds a blocking SCTP connect).
func dialSCTP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, fmt.Errorf("sctp socket (is the sctp module loaded?): %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp-client")
	defer f.Close() // net.FileConn dups it
	timeout := DefaultTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sctp SO_SNDTIMEO: %w", err)
	}
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil:
	case unix.EINPROGRESS, unix.EAGAIN:
		return nil, fmt.Errorf("sctp connect: association not up after %s: %w", timeout, os.ErrDeadlineExceeded)
	default:
		return nil, fmt.Errorf("sctp connect: %w", err)
	}
	return net.FileConn(f)
}
