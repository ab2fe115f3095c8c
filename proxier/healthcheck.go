package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Listener opens the TCP listeners of the health check servers; tests use
// FakeListener.
type Listener interface {
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// NetListener is the real Listener (net.ListenConfig).
type NetListener struct{}

// Listen implements Listener.
func (NetListener) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

// HealthCheckServer serves the healthCheckNodePort of every LoadBalancer
// Service with externalTrafficPolicy Local, as kube-proxy does
// (pkg/proxy/healthcheck/service_health.go): any GET answers a JSON document
// {"service":{"namespace","name"},"localEndpoints":N,"serviceProxyHealthy":B}
// with status 200 when the node has at least one ready local endpoint of the
// Service and the proxy is healthy, else 503. Load balancers use it to send
// traffic only to nodes with local endpoints.
//
// Servers start and stop incrementally as Services come and go (Set); a port
// that cannot be opened is retried at every Retry.
type HealthCheckServer struct {
	listener Listener
	// addrs are the addresses to listen on; empty means every address.
	addrs []netip.Addr
	// healthy reports whether the proxy is healthy; nil means always.
	healthy func() bool

	mu       sync.RWMutex
	services map[types.NamespacedName]*hcService
}

// hcService is one Service's health check: what it serves and its servers.
type hcService struct {
	hc        HealthCheck
	servers   []*http.Server
	listeners []net.Listener // closed explicitly: a Server closed before Serve runs does not know them
	err       error          // last listen error; nil once listening
}

// NewHealthCheckServer returns a server that listens through l on addrs (every
// address when empty); healthy (nil: always) feeds serviceProxyHealthy.
func NewHealthCheckServer(l Listener, addrs []netip.Addr, healthy func() bool) *HealthCheckServer {
	return &HealthCheckServer{listener: l, addrs: addrs, healthy: healthy, services: map[types.NamespacedName]*hcService{}}
}

// Set makes the health check of Service name serve hc, or stops it when hc is
// nil. A changed port closes the old listeners and opens new ones; a changed
// count only changes the answers.
func (s *HealthCheckServer) Set(ctx context.Context, name types.NamespacedName, hc *HealthCheck) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.services[name]
	switch {
	case hc == nil && cur == nil:
		return nil
	case hc == nil:
		klog.FromContext(ctx).V(2).Info("Closing health check", "service", name, "port", cur.hc.NodePort)
		cur.close()
		delete(s.services, name)
		return nil
	case cur != nil && cur.hc.NodePort == hc.NodePort:
		cur.hc = *hc
		if cur.err != nil {
			return s.open(ctx, name, cur)
		}
		return nil
	}
	if cur != nil {
		cur.close()
	}
	svc := &hcService{hc: *hc}
	s.services[name] = svc
	klog.FromContext(ctx).V(2).Info("Opening health check", "service", name, "port", hc.NodePort)
	return s.open(ctx, name, svc)
}

// Sync makes the served health checks exactly want: it stops the others.
func (s *HealthCheckServer) Sync(ctx context.Context, want map[types.NamespacedName]*HealthCheck) error {
	s.mu.RLock()
	names := slices.Collect(maps.Keys(s.services))
	s.mu.RUnlock()
	var errs []error
	for _, n := range names {
		if want[n] == nil {
			errs = append(errs, s.Set(ctx, n, nil))
		}
	}
	for n, hc := range want {
		errs = append(errs, s.Set(ctx, n, hc))
	}
	return errors.Join(errs...)
}

// Retry opens the listeners that failed before.
func (s *HealthCheckServer) Retry(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for name, svc := range s.services {
		if svc.err != nil {
			errs = append(errs, s.open(ctx, name, svc))
		}
	}
	return errors.Join(errs...)
}

// Ports returns the health check node port of every Service that is listening.
func (s *HealthCheckServer) Ports() map[types.NamespacedName]uint16 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[types.NamespacedName]uint16, len(s.services))
	for n, svc := range s.services {
		if svc.err == nil {
			out[n] = svc.hc.NodePort
		}
	}
	return out
}

// Close stops every server.
func (s *HealthCheckServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, svc := range s.services {
		svc.close()
		delete(s.services, n)
	}
}

// open starts svc's listeners; on failure it closes those it opened and keeps
// the error for Retry. s.mu is held.
func (s *HealthCheckServer) open(ctx context.Context, name types.NamespacedName, svc *hcService) error {
	addrs := []string{":" + strconv.Itoa(int(svc.hc.NodePort))}
	if len(s.addrs) > 0 {
		addrs = addrs[:0]
		for _, a := range s.addrs {
			addrs = append(addrs, netip.AddrPortFrom(a, svc.hc.NodePort).String())
		}
	}
	for _, addr := range addrs {
		l, err := s.listener.Listen(ctx, "tcp", addr)
		if err != nil {
			svc.close()
			svc.err = fmt.Errorf("health check of service %s on %s: %w", name, addr, err)
			return svc.err
		}
		srv := &http.Server{Handler: hcHandler{s: s, name: name}, ReadHeaderTimeout: 10 * time.Second}
		svc.servers = append(svc.servers, srv)
		svc.listeners = append(svc.listeners, l)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.FromContext(ctx).Error(err, "Health check server stopped", "service", name, "address", addr)
			}
		}()
	}
	svc.err = nil
	return nil
}

// close stops svc's servers.
func (svc *hcService) close() {
	for _, srv := range svc.servers {
		_ = srv.Close()
	}
	for _, l := range svc.listeners {
		_ = l.Close()
	}
	svc.servers, svc.listeners = nil, nil
}

// hcHandler answers the health check of one Service.
type hcHandler struct {
	s    *HealthCheckServer
	name types.NamespacedName
}

// ServeHTTP implements http.Handler with kube-proxy's answer.
func (h hcHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.RLock()
	svc := h.s.services[h.name]
	count := 0
	if svc != nil {
		count = svc.hc.LocalEndpoints
	}
	h.s.mu.RUnlock()
	healthy := h.s.healthy == nil || h.s.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		h.name.Namespace, h.name.Name, count, healthy)
}

// FakeListener is an in-memory Listener: it keeps the open listeners by
// address, and Dial connects to one through a pipe. Addresses in Busy fail to
// listen, like a port another process holds.
type FakeListener struct {
	mu        sync.Mutex
	listeners map[string]*fakeNetListener
	busy      map[string]bool
}

var _ Listener = (*FakeListener)(nil)

// NewFakeListener returns a FakeListener with nothing open.
func NewFakeListener() *FakeListener {
	return &FakeListener{listeners: map[string]*fakeNetListener{}, busy: map[string]bool{}}
}

// SetBusy makes Listen on address fail (busy true) or work again.
func (f *FakeListener) SetBusy(address string, busy bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.busy[address] = busy
}

// Listen implements Listener.
func (f *FakeListener) Listen(_ context.Context, network, address string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[address] {
		return nil, fmt.Errorf("listen %s %s: address already in use", network, address)
	}
	if _, ok := f.listeners[address]; ok {
		return nil, fmt.Errorf("listen %s %s: address already in use", network, address)
	}
	l := &fakeNetListener{f: f, addr: address, conns: make(chan net.Conn), done: make(chan struct{})}
	f.listeners[address] = l
	return l, nil
}

// Open returns the addresses being listened on, sorted.
func (f *FakeListener) Open() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.listeners))
}

// Dial connects to the listener on address.
func (f *FakeListener) Dial(ctx context.Context, address string) (net.Conn, error) {
	f.mu.Lock()
	l := f.listeners[address]
	f.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("dial %s: connection refused", address)
	}
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, fmt.Errorf("dial %s: connection refused", address)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fakeNetListener is a net.Listener fed by FakeListener.Dial.
type fakeNetListener struct {
	f     *FakeListener
	addr  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *fakeNetListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *fakeNetListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.f.mu.Lock()
		if l.f.listeners[l.addr] == l {
			delete(l.f.listeners, l.addr)
		}
		l.f.mu.Unlock()
	})
	return nil
}

func (l *fakeNetListener) Addr() net.Addr { return fakeAddr(l.addr) }

// fakeAddr is a FakeListener address.
type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }
