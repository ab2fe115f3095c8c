//go:build linux

package netpod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// DefaultTimeout bounds dialling and each request when the context has no
// earlier deadline. It is short so that a blackholed VIP fails a test fast.
const DefaultTimeout = 2 * time.Second

// Conn is a client connection to an echo server: a TCP connection, or a
// connected UDP socket that keeps its source port for every Send.
type Conn struct {
	// Timeout bounds each Send; DefaultTimeout unless changed.
	Timeout time.Duration

	c     net.Conn
	r     *bufio.Reader
	proto string
}

// Dial connects to addr from the pod's netns, or from the caller's netns
// (normally the root netns) when from is nil. ctx (and DefaultTimeout) bound
// only the dial, not the Sends.
func Dial(ctx context.Context, from *Pod, proto string, addr netip.AddrPort) (*Conn, error) {
	return dialWithin(ctx, from, proto, addr, DefaultTimeout)
}

// dialWithin is Dial with timeout in place of DefaultTimeout (for the dial and
// the Conn's Sends).
func dialWithin(ctx context.Context, from *Pod, proto string, addr netip.AddrPort, timeout time.Duration) (*Conn, error) {
	proto = strings.ToLower(proto)
	if proto != TCP && proto != UDP && proto != SCTP {
		return nil, fmt.Errorf("unknown protocol %q", proto)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var c net.Conn
	dial := func() error {
		var err error
		if proto == SCTP {
			c, err = dialSCTP(ctx, addr)
			return err
		}
		var d net.Dialer
		c, err = d.DialContext(ctx, proto, addr.String())
		return err
	}
	var err error
	if from != nil {
		// The socket is created, and stays, in the pod's netns.
		err = from.Do(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", proto, addr, podName(from), err)
	}
	return &Conn{Timeout: timeout, c: c, r: bufio.NewReaderSize(c, maxLine), proto: proto}, nil
}

// Send sends line (a TCP line or one UDP datagram) and returns the reply
// without its trailing newline. It fails after c.Timeout.
func (c *Conn) Send(line string) (string, error) {
	return c.SendContext(context.Background(), line)
}

// SendContext is Send bounded also by ctx.
func (c *Conn) SendContext(ctx context.Context, line string) (string, error) {
	if strings.ContainsRune(line, '\n') {
		return "", errors.New("line must not contain a newline")
	}
	deadline := time.Now().Add(c.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.c.SetDeadline(deadline); err != nil {
		return "", err
	}
	// Cancelling ctx interrupts a blocked read or write.
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.c.Write([]byte(line + "\n")); err != nil {
		return "", c.wrap("send", err)
	}
	var reply string
	var err error
	if c.proto == UDP {
		buf := make([]byte, maxLine)
		var n int
		n, err = c.c.Read(buf)
		reply = string(buf[:n])
	} else {
		reply, err = c.r.ReadString('\n')
	}
	if err != nil {
		return "", c.wrap("receive", err)
	}
	return strings.TrimSuffix(reply, "\n"), nil
}

func (c *Conn) wrap(op string, err error) error {
	return fmt.Errorf("%s %s %s -> %s: %w", op, c.proto, c.c.LocalAddr(), c.c.RemoteAddr(), err)
}

// LocalAddr is the client's address and port, as this side sees it.
func (c *Conn) LocalAddr() netip.AddrPort {
	var ap netip.AddrPort
	switch a := c.c.LocalAddr().(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Close closes the connection.
func (c *Conn) Close() error {
	return c.c.Close()
}

// Ask sends one request over a new connection (for UDP a new socket, so a new
// source port) and returns the reply line, bounded by ctx and DefaultTimeout.
func Ask(ctx context.Context, from *Pod, proto string, addr netip.AddrPort) (string, error) {
	return AskWithin(ctx, from, proto, addr, DefaultTimeout)
}

// AskWithin is Ask with timeout in place of DefaultTimeout: for request loops
// that count a request as failed only when a client would give up, not when a
// SYN had to be sent again (Linux retransmits it after 1 s and 3 s).
func AskWithin(ctx context.Context, from *Pod, proto string, addr netip.AddrPort, timeout time.Duration) (string, error) {
	c, err := dialWithin(ctx, from, proto, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.SendContext(ctx, "ask")
}

// AskMany asks n times, each over a new connection, and counts the replies by
// the name of the pod that answered. It stops at the first failure and
// returns the counts so far with the error.
func AskMany(ctx context.Context, from *Pod, proto string, addr netip.AddrPort, n int) (map[string]int, error) {
	counts := map[string]int{}
	for i := range n {
		reply, err := Ask(ctx, from, proto, addr)
		if err != nil {
			return counts, fmt.Errorf("request %d of %d: %w", i+1, n, err)
		}
		r, err := ParseReply(reply)
		if err != nil {
			return counts, fmt.Errorf("request %d of %d: %w", i+1, n, err)
		}
		counts[r.Pod]++
	}
	return counts, nil
}

// Reply is a parsed echo reply.
type Reply struct {
	// Pod is the name of the pod that answered.
	Pod string
	// Client is the source address and port the pod saw.
	Client netip.AddrPort
}

// ParseReply parses "<pod> <client ip:port>".
func ParseReply(s string) (Reply, error) {
	name, client, ok := strings.Cut(strings.TrimSuffix(s, "\n"), " ")
	if !ok || name == "" {
		return Reply{}, fmt.Errorf("malformed echo reply %q", s)
	}
	ap, err := netip.ParseAddrPort(client)
	if err != nil {
		return Reply{}, fmt.Errorf("malformed echo reply %q: %w", s, err)
	}
	return Reply{Pod: name, Client: ap}, nil
}

func podName(p *Pod) string {
	if p == nil {
		return "the current netns"
	}
	return "pod " + p.Name
}
