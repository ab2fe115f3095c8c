//go:build linux

package netpod

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Protocol names accepted by ServeEcho, Dial, Ask and AskMany (case does not
// matter, so Kubernetes' "TCP" and "UDP" work too); SCTP (sctp.go) too, but
// ServeEcho starts it only when asked for by name.
const (
	TCP = "tcp"
	UDP = "udp"
)

// maxLine bounds one request line (TCP) or datagram (UDP).
const maxLine = 64 << 10

// ServeEcho starts echo servers on port inside the pod's netns for each
// protocol in protos (TCP and UDP when none is given). They listen on every
// address of the pod, IPv4 and IPv6, and answer every TCP line and every UDP
// datagram with one line "<pod name> <client ip:port>\n", the client address
// being the one the pod saw. A TCP connection stays open until the client
// closes it, so long-lived connections can be tested. The servers stop when
// the pod is deleted or the test ends.
func (p *Pod) ServeEcho(t testing.TB, port uint16, protos ...string) {
	t.Helper()
	if len(protos) == 0 {
		protos = []string{TCP, UDP}
	}
	for _, proto := range protos {
		s, err := p.serveEcho(port, proto)
		if err != nil {
			t.Fatalf("netpod: echo server %s/%d in pod %s: %v", proto, port, p.Name, err)
		}
		t.Cleanup(s.stop)
	}
}

func (p *Pod) serveEcho(port uint16, proto string) (*echoServer, error) {
	if port == 0 {
		return nil, errors.New("port must not be 0")
	}
	s := &echoServer{pod: p.Name, conns: map[net.Conn]struct{}{}}
	addr := ":" + strconv.Itoa(int(port))
	err := p.Do(func() error {
		var err error
		switch strings.ToLower(proto) {
		case TCP:
			s.ln, err = net.Listen("tcp", addr)
		case UDP:
			s.pc, err = net.ListenPacket("udp", addr)
		case SCTP:
			s.ln, err = listenSCTP(port)
		default:
			err = fmt.Errorf("unknown protocol %q", proto)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.deleted {
		p.mu.Unlock()
		s.stop()
		return nil, fmt.Errorf("pod %s is deleted", p.Name)
	}
	p.servers = append(p.servers, s)
	p.mu.Unlock()
	s.wg.Add(1)
	if s.ln != nil {
		go s.acceptLoop()
	} else {
		go s.packetLoop()
	}
	return s, nil
}

// echoServer is one TCP listener or UDP socket and its connections.
type echoServer struct {
	pod string
	ln  net.Listener
	pc  net.PacketConn
	wg  sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	stopped bool
}

// reply is the answer to one request from client.
func (s *echoServer) reply(client net.Addr) []byte {
	var ap netip.AddrPort
	switch a := client.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	// The dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return []byte(s.pod + " " + ap.String() + "\n")
}

func (s *echoServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed by stop
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

func (s *echoServer) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	out := s.reply(c.RemoteAddr())
	for sc.Scan() {
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (s *echoServer) packetLoop() {
	defer s.wg.Done()
	buf := make([]byte, maxLine)
	for {
		_, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP errors reported on the socket
		}
		_, _ = s.pc.WriteTo(s.reply(from), from)
	}
}

// stop closes the socket and every open connection and waits for the
// goroutines. It is safe to call more than once.
func (s *echoServer) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	if s.ln != nil {
		s.ln.Close()
	}
	if s.pc != nil {
		s.pc.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
