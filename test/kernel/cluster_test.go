//go:build kerneltest

package kernel

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

const (
	nodeName  = "node-1"
	namespace = "default"
	echoPort  = 8080
	// converge bounds how long the proxier may take to program a change.
	converge = 10 * time.Second
	// spread is how many requests traffic assertions send: with rr over at
	// most 3 real servers every one of them answers at least 3 times.
	spread = 12
)

// cluster is one node: pods on a bridge (PodCIDR 10.244.N.0/24, gateway
// 10.244.N.1), the endpoints.State the informers would feed, and the real
// IPVS table.
type cluster struct {
	t *testing.T
	// n numbers this cluster's ranges: pods in 10.244.n.0/24, Service IPs in
	// 10.96.n.0/24; web and api are the usual Services' VIPs, port 80.
	n        byte
	web, api netip.AddrPort

	net   *netpod.Net
	pods  map[string]*netpod.Pod
	state *endpoints.State
	ipvs  *ipvs.Real

	services map[string]*v1.Service
	slices   map[string]*discoveryv1.EndpointSlice
}

// clusters counts the clusters built, to number their address ranges.
var clusters atomic.Int32

// The kernel outlives a test's cleanup in one way: IPVS connection entries
// stay until they time out (TIME_WAIT 2 minutes, UDP 5 minutes). A real
// server added again with the same virtual server, address and port is taken
// back from the kernel's trash with those connections counted, and a new
// client flow whose addresses and ports match an old entry pointing at a
// deleted real server is dropped (EPERM for a local UDP sender). Fresh pod and
// Service addresses per test (a node's own connections to a VIP come from
// the VIP itself) keep one test's connections out of the next test.

// vip returns 10.96.n.host.
func (c *cluster) vip(host byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 96, c.n, host}) }

// newCluster builds the node with pods that serve TCP and UDP echo on
// echoPort. The kernel state is flushed when the test ends.
func newCluster(t *testing.T, pods ...string) *cluster {
	c := &cluster{
		t: t, n: byte(clusters.Add(1)), ipvs: newReal(t), pods: map[string]*netpod.Pod{}, state: endpoints.NewState(nodeName),
		services: map[string]*v1.Service{}, slices: map[string]*discoveryv1.EndpointSlice{},
	}
	c.web, c.api = netip.AddrPortFrom(c.vip(10), 80), netip.AddrPortFrom(c.vip(11), 80)
	c.net = netpod.NewNet(t, netpod.NetOptions{PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, c.n, 0}), 24)})
	for _, name := range pods {
		p := c.net.AddPod(t, name)
		p.ServeEcho(t, echoPort)
		c.pods[name] = p
	}
	c.state.SetSynced()
	return c
}

// runningProxier is a Proxier whose Run loop is running.
type runningProxier struct {
	*proxier.Proxier
	cancel context.CancelFunc
	done   chan struct{}
}

// defaultConfig is the proxier configuration of these tests: syncs at most
// every 100ms, full resyncs every 30s.
func defaultConfig() proxier.Config {
	return proxier.Config{
		NodeName: nodeName, Scheduler: "rr", MinSyncPeriod: 100 * time.Millisecond, SyncPeriod: 30 * time.Second,
		DrainTimeout: time.Hour,
	}
}

// start runs a Proxier over src, ipv and addrs until stop or the end of the
// test; ipv and addrs default to the real kernel.
func (c *cluster) start(cfg proxier.Config, src proxier.Source, ipv ipvs.Interface, addrs proxier.Addresses) *runningProxier {
	t := c.t
	t.Helper()
	if src == nil {
		src = c.state
	}
	if ipv == nil {
		ipv = c.ipvs
	}
	if addrs == nil {
		addrs = proxier.NewNetlinkAddresses()
	}
	ctx, cancel := context.WithCancel(testContext(t))
	applyKernelSettings(t, cfg)
	p := &runningProxier{Proxier: proxier.New(cfg, src, ipv, addrs, clock.RealClock{}), cancel: cancel, done: make(chan struct{})}
	if err := p.Setup(ctx); err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// applyKernelSettings applies proxier.KernelSettings as kipvs's setup step
// does. Among them net.ipv4.vs.expire_nodest_conn=1, without which IPVS drops
// a flow whose real server was deleted until its entry times out
// (TestProxierUDPFlowToRemovedEndpoint).
func applyKernelSettings(t *testing.T, cfg proxier.Config) {
	t.Helper()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatalf("uname: %v", err)
	}
	settings, notes := proxier.KernelSettings(cfg, unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU())
	changed, warnings, err := proxier.ApplyKernelSettings(t.Context(), proxier.NewProcSysctl(), settings)
	if err != nil {
		t.Fatalf("kernel settings: %v", err)
	}
	if len(changed)+len(warnings) > 0 {
		t.Logf("kernel settings: changed %v, warnings %v, notes %v", changed, warnings, notes)
	}
}

// stop cancels Run and waits for it; later calls do nothing.
func (p *runningProxier) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(converge):
		t.Errorf("proxier Run did not return %s after its context was cancelled", converge)
	}
}

// waitSynced waits until a sync that started after since succeeded.
func (p *runningProxier) waitSynced(t *testing.T, since time.Time, full bool) proxier.SyncResult {
	t.Helper()
	var res proxier.SyncResult
	waitFor(t, converge, "a sync", func() error {
		res = p.LastSync()
		switch {
		case !res.Time.After(since):
			return fmt.Errorf("last sync at %s", res.Time.Format(time.StampMilli))
		case full && !res.Full:
			return fmt.Errorf("last sync was incremental")
		case res.Err != nil:
			return res.Err
		}
		return nil
	})
	return res
}

// setService records a Service add or update, as the informer would.
func (c *cluster) setService(svc *v1.Service) {
	c.state.OnServiceUpdate(c.services[svc.Name], svc)
	c.services[svc.Name] = svc
}

func (c *cluster) deleteService(name string) {
	c.state.OnServiceUpdate(c.services[name], nil)
	delete(c.services, name)
}

func (c *cluster) setSlice(s *discoveryv1.EndpointSlice) {
	c.state.OnEndpointSliceUpdate(c.slices[s.Name], s)
	c.slices[s.Name] = s
}

func (c *cluster) deleteSlice(name string) {
	c.state.OnEndpointSliceUpdate(c.slices[name], nil)
	delete(c.slices, name)
}

// feed replays every current object into another State, as a restarted
// kipvs's informers would list them.
func (c *cluster) feed(s *endpoints.State) {
	for _, svc := range c.services {
		s.OnServiceUpdate(nil, svc)
	}
	for _, sl := range c.slices {
		s.OnEndpointSliceUpdate(nil, sl)
	}
	s.SetSynced()
}

// svcOption changes a Service under construction.
type svcOption func(*v1.Service)

// makeService builds a ClusterIP Service in namespace default.
func makeService(name, clusterIP string, ports []v1.ServicePort, opts ...svcOption) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports,
			SessionAffinity: v1.ServiceAffinityNone,
		},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func svcPort(name string, proto v1.Protocol, port, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: port, NodePort: nodePort}
}

// clientIPAffinity turns on ClientIP session affinity with a timeout.
func clientIPAffinity(seconds int32) svcOption {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &seconds}}
	}
}

func nodePortType(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }

func annotation(k, v string) svcOption {
	return func(s *v1.Service) { s.Annotations = map[string]string{k: v} }
}

// makeSlice builds an IPv4 EndpointSlice of Service svc.
func makeSlice(name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: ports, Endpoints: eps,
	}
}

func slicePort(name string, proto v1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

// endpoint is the slice entry of a pod on this node.
func endpoint(p *netpod.Pod, ready bool) discoveryv1.Endpoint {
	node := nodeName
	serving, terminating := ready, false
	return discoveryv1.Endpoint{
		Addresses:  []string{p.IP.String()},
		Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
		NodeName:   &node,
		TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: p.Name},
	}
}

// endpointsOf returns ready endpoints of the named pods.
func (c *cluster) endpointsOf(names ...string) []discoveryv1.Endpoint {
	out := make([]discoveryv1.Endpoint, 0, len(names))
	for _, n := range names {
		out = append(out, endpoint(c.pods[n], true))
	}
	return out
}

// answering sends n requests from the pod from (nil: the node) and returns
// the names of the pods that answered, sorted.
func answering(ctx context.Context, from *netpod.Pod, proto string, to netip.AddrPort, n int) ([]string, map[string]int, error) {
	counts, err := netpod.AskMany(ctx, from, proto, to, n)
	return slices.Sorted(maps.Keys(counts)), counts, err
}

// waitAnswering waits until n requests are answered by exactly the pods in
// want, then checks it once more with more requests.
func waitAnswering(t *testing.T, from *netpod.Pod, proto string, to netip.AddrPort, want ...string) {
	t.Helper()
	slices.Sort(want)
	check := func(n int) error {
		got, counts, err := answering(t.Context(), from, proto, to, n)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s %s answered by %v, want %v", proto, to, counts, want)
		}
		return nil
	}
	waitFor(t, converge, fmt.Sprintf("%s %s to be answered by %v", proto, to, want), func() error { return check(spread) })
	if err := check(2 * spread); err != nil {
		t.Fatalf("after converging: %v", err)
	}
}

// waitTable waits until the kernel's table, without counters, is want.
func (c *cluster) waitTable(t *testing.T, want string) {
	t.Helper()
	waitFor(t, converge, "the IPVS table", func() error {
		if got := dumpText(t, c.ipvs, false); got != want {
			return fmt.Errorf("table\n%s\nwant\n%s", got, want)
		}
		return nil
	})
}

// vips returns the addresses on kube-ipvs0, sorted.
func vips(t *testing.T) []netip.Addr {
	t.Helper()
	got, err := proxier.NewNetlinkAddresses().List(t.Context(), proxier.DefaultDummyLink)
	if err != nil {
		t.Fatalf("list VIPs: %v", err)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	return got
}

// assertVIPs checks the addresses on kube-ipvs0.
func assertVIPs(t *testing.T, want ...netip.Addr) {
	t.Helper()
	got := vips(t)
	w := slices.SortedFunc(slices.Values(want), netip.Addr.Compare)
	if !slices.Equal(got, w) {
		t.Errorf("VIPs on %s = %v, want %v", proxier.DefaultDummyLink, got, w)
	}
}

// key renders a virtual server key as entry and realServer take it.
func key(proto string, ap netip.AddrPort) string { return proto + " " + ap.String() }

// table renders the expected kernel state, sorted like a dump.
func table(vss ...ipvs.VirtualServerStatus) string { return ipvs.FormatDump(vss) }

// entry is one expected virtual server: "TCP 10.96.1.10:80" with scheduler
// rr unless opts change it, and its real servers.
func entry(key string, rss []ipvs.RealServerStatus, opts ...func(*ipvs.VirtualServer)) ipvs.VirtualServerStatus {
	proto, addrPort, _ := strings.Cut(key, " ")
	vs := ipvs.VirtualServer{VirtualServerKey: vsKey(ipvs.Protocol(proto), addrPort), Scheduler: "rr"}
	for _, o := range opts {
		o(&vs)
	}
	return ipvs.VirtualServerStatus{VirtualServer: vs, RealServers: rss}
}

func persistent(timeout uint32) func(*ipvs.VirtualServer) {
	return func(vs *ipvs.VirtualServer) { vs.Flags |= ipvs.FlagPersistent; vs.Timeout = timeout }
}

// backends are the real servers of the named pods on port, with weight.
func (c *cluster) backends(port uint16, weight int, pods ...string) []ipvs.RealServerStatus {
	out := make([]ipvs.RealServerStatus, 0, len(pods))
	for _, p := range pods {
		out = append(out, ipvs.RealServerStatus{RealServer: ipvs.RealServer{
			RealServerKey: ipvs.RealServerKey{Address: c.pods[p].IP, Port: port}, Weight: weight}})
	}
	return out
}

// countingIPVS counts the writes that reach the kernel.
type countingIPVS struct {
	ipvs.Interface
	mu  sync.Mutex
	ops []string
}

func (c *countingIPVS) record(op string, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, op)
	return err
}

func (c *countingIPVS) writes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ops)
}

func (c *countingIPVS) AddVirtualServer(ctx context.Context, vs ipvs.VirtualServer) error {
	return c.record("add "+vs.VirtualServerKey.String(), c.Interface.AddVirtualServer(ctx, vs))
}

func (c *countingIPVS) UpdateVirtualServer(ctx context.Context, vs ipvs.VirtualServer) error {
	return c.record("update "+vs.VirtualServerKey.String(), c.Interface.UpdateVirtualServer(ctx, vs))
}

func (c *countingIPVS) DeleteVirtualServer(ctx context.Context, k ipvs.VirtualServerKey) error {
	return c.record("delete "+k.String(), c.Interface.DeleteVirtualServer(ctx, k))
}

func (c *countingIPVS) AddRealServer(ctx context.Context, k ipvs.VirtualServerKey, rs ipvs.RealServer) error {
	return c.record("add "+k.String()+" -> "+rs.RealServerKey.String(), c.Interface.AddRealServer(ctx, k, rs))
}

func (c *countingIPVS) UpdateRealServer(ctx context.Context, k ipvs.VirtualServerKey, rs ipvs.RealServer) error {
	return c.record("update "+k.String()+" -> "+rs.RealServerKey.String(), c.Interface.UpdateRealServer(ctx, k, rs))
}

func (c *countingIPVS) DeleteRealServer(ctx context.Context, k ipvs.VirtualServerKey, rs ipvs.RealServerKey) error {
	return c.record("delete "+k.String()+" -> "+rs.String(), c.Interface.DeleteRealServer(ctx, k, rs))
}

func (c *countingIPVS) SetTimeouts(ctx context.Context, t ipvs.Timeouts) error {
	return c.record("set timeouts", c.Interface.SetTimeouts(ctx, t))
}

// countingAddresses counts Add and Delete calls on the dummy link.
type countingAddresses struct {
	proxier.Addresses
	n atomic.Int64
}

func (c *countingAddresses) Add(ctx context.Context, link string, a netip.Addr) error {
	c.n.Add(1)
	return c.Addresses.Add(ctx, link, a)
}

func (c *countingAddresses) Delete(ctx context.Context, link string, a netip.Addr) error {
	c.n.Add(1)
	return c.Addresses.Delete(ctx, link, a)
}

// traffic asks a VIP over and over from the node until stopped, counting
// successes and recording failures.
type traffic struct {
	ok     atomic.Int64
	mu     sync.Mutex
	failed []error
	cancel context.CancelFunc
	done   chan struct{}
}

func startTraffic(ctx context.Context, proto string, to netip.AddrPort) *traffic {
	ctx, cancel := context.WithCancel(ctx)
	tr := &traffic{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for ctx.Err() == nil {
			if _, err := netpod.Ask(ctx, nil, proto, to); err != nil {
				if ctx.Err() != nil {
					return
				}
				tr.mu.Lock()
				tr.failed = append(tr.failed, err)
				tr.mu.Unlock()
			} else {
				tr.ok.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return tr
}

// stop ends the traffic and returns the successes and failures.
func (tr *traffic) stop() (int64, []error) {
	tr.cancel()
	<-tr.done
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.ok.Load(), tr.failed
}

// longConn is a TCP connection from the node that stays open, so draining
// can be observed on it.
type longConn struct {
	c *net.TCPConn
	r *bufio.Reader
}

// dialLong connects to vip and returns the connection and the pod behind it.
func dialLong(t *testing.T, vip netip.AddrPort) (*longConn, string) {
	t.Helper()
	var d net.Dialer
	c, err := d.DialContext(t.Context(), "tcp", vip.String())
	if err != nil {
		t.Fatalf("dial %s: %v", vip, err)
	}
	lc := &longConn{c: c.(*net.TCPConn), r: bufio.NewReader(c)}
	t.Cleanup(func() { lc.c.Close() })
	pod, err := lc.ask()
	if err != nil {
		t.Fatalf("first request on %s: %v", vip, err)
	}
	return lc, pod
}

// ask sends one line and returns the name of the pod that answered.
func (lc *longConn) ask() (string, error) {
	if err := lc.c.SetDeadline(time.Now().Add(netpod.DefaultTimeout)); err != nil {
		return "", err
	}
	if _, err := lc.c.Write([]byte("again\n")); err != nil {
		return "", err
	}
	line, err := lc.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	r, err := netpod.ParseReply(line)
	return r.Pod, err
}

// reset closes the connection with a RST. IPVS then keeps its entry in state
// CLOSE for 10 s (a FIN would leave it in TIME_WAIT for 2 minutes).
func (lc *longConn) reset() error {
	if err := lc.c.SetLinger(0); err != nil {
		return err
	}
	return lc.c.Close()
}

// realServer returns the real server of pod in the kernel's virtual server key.
func (c *cluster) realServer(t *testing.T, key string, pod string) (ipvs.RealServerStatus, bool) {
	t.Helper()
	proto, addrPort, _ := strings.Cut(key, " ")
	rss, err := c.ipvs.RealServers(t.Context(), vsKey(ipvs.Protocol(proto), addrPort))
	if err != nil {
		t.Fatalf("RealServers(%s): %v", key, err)
	}
	for _, rs := range rss {
		if rs.Address == c.pods[pod].IP {
			return rs, true
		}
	}
	return ipvs.RealServerStatus{}, false
}

// rsString renders a real server with its counters (RealServerStatus's
// promoted String method shows only the key).
func rsString(rs ipvs.RealServerStatus) string {
	return fmt.Sprintf("%s weight %d active %d inactive %d", rs.RealServerKey, rs.Weight, rs.ActiveConns, rs.InactiveConns)
}
