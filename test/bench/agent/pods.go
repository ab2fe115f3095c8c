package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/kipvs/kipvs/test/netpod"
)

// agentTB lets the agent use test/netpod outside a test. Only the methods
// netpod calls are implemented; the embedded nil interface is never called
// (testing.TB cannot be implemented outside package testing otherwise).
type agentTB struct {
	testing.TB
	cleanups []func()
}

func (t *agentTB) Helper()                   {}
func (t *agentTB) Name() string              { return "kipvs-bench" }
func (t *agentTB) Cleanup(f func())          { t.cleanups = append(t.cleanups, f) }
func (t *agentTB) Logf(f string, a ...any)   { fmt.Printf("netpod: "+f+"\n", a...) }
func (t *agentTB) Errorf(f string, a ...any) { fmt.Printf("netpod error: "+f+"\n", a...) }
func (t *agentTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf("netpod: "+f, a...)) }

// runCleanups runs the registered cleanups, last first.
func (t *agentTB) runCleanups() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// pods are the server and client pods of the packet scenarios, on two bridges
// so that both the direct and the Service path are routed by the node (the
// reply to a NATed packet must pass the node to be un-NATed).
type pods struct {
	tb             *agentTB
	server, client *netpod.Pod
	sink           net.Listener
}

func newPods() (p *pods, err error) {
	p = &pods{tb: &agentTB{}}
	defer func() {
		if r := recover(); r != nil {
			p.tb.runCleanups()
			p, err = nil, fmt.Errorf("%v", r)
		}
	}()
	serverNet := netpod.NewNet(p.tb, netpod.NetOptions{PodCIDR: netip.MustParsePrefix("198.18.0.0/26")})
	clientNet := netpod.NewNet(p.tb, netpod.NetOptions{PodCIDR: netip.MustParsePrefix("198.18.1.0/26")})
	p.server = serverNet.AddPod(p.tb, "server")
	p.client = clientNet.AddPod(p.tb, "client")
	p.server.ServeEcho(p.tb, probeEchoPort, netpod.TCP)
	if err := p.server.Do(func() error {
		var err error
		p.sink, err = net.Listen("tcp", ":"+strconv.Itoa(probeSinkPort))
		return err
	}); err != nil {
		panic(err)
	}
	go serveSink(p.sink)
	return p, nil
}

func (p *pods) close() {
	if p.sink != nil {
		p.sink.Close()
	}
	p.tb.runCleanups()
}

// serveSink reads and discards every connection's bytes.
func serveSink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}()
	}
}

// stream sends bytes from the client pod to addr for d and returns bits/s.
func (p *pods) stream(ctx context.Context, addr netip.AddrPort, d time.Duration) (float64, error) {
	var c net.Conn
	err := p.client.Do(func() error {
		var err error
		dialer := net.Dialer{Timeout: 10 * time.Second}
		c, err = dialer.DialContext(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	var sent int64
	_ = c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break
			}
			return 0, err
		}
	}
	return float64(sent) * 8 / time.Since(start).Seconds(), nil
}
