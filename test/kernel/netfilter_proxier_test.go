//go:build kerneltest

package kernel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// netfilterKernel opens the real netfilter boundaries and removes every
// iptables chain and ipset when the test ends, so that the next test (with or
// without netfilter) starts from empty tables.
func netfilterKernel(t *testing.T) proxier.NetfilterKernel {
	t.Helper()
	k, msg, err := proxier.NewNetfilterKernel(t.Context())
	if err != nil {
		t.Fatalf("NewNetfilterKernel: %v", err)
	}
	t.Logf("netfilter: %s", msg)
	t.Cleanup(func() { flushNetfilter(t) })
	return k
}

// flushNetfilter empties the nat, filter and mangle tables and destroys every ipset.
func flushNetfilter(t *testing.T) {
	t.Helper()
	for _, cmd := range [][]string{
		{"iptables", "-t", "nat", "-F"}, {"iptables", "-t", "nat", "-X"},
		{"iptables", "-t", "filter", "-F"}, {"iptables", "-t", "filter", "-X"},
		{"ip6tables", "-t", "nat", "-F"}, {"ip6tables", "-t", "nat", "-X"},
		{"ip6tables", "-t", "filter", "-F"}, {"ip6tables", "-t", "filter", "-X"},
		{"iptables", "-t", "mangle", "-F"}, {"iptables", "-t", "mangle", "-X"},
		{"ip6tables", "-t", "mangle", "-F"}, {"ip6tables", "-t", "mangle", "-X"},
		{"ipset", "destroy"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
}

// logNetfilterState logs the nat table with counters, kipvs's sets, the
// conntrack table and IPVS's connections, to explain a failed packet test.
func logNetfilterState(t *testing.T) {
	t.Helper()
	for _, cmd := range [][]string{
		{"iptables-save", "-c"}, {"ipset", "list"}, {"conntrack", "-L"}, {"ipvsadm", "-Lnc"},
	} {
		out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		t.Logf("%s (%v):\n%s", strings.Join(cmd, " "), err, out)
	}
}

// startNF is cluster.start with the netfilter layer on the real kernel and
// the given proxier options.
func (c *cluster) startNF(cfg proxier.Config, opts ...proxier.Option) *runningProxier {
	t := c.t
	t.Helper()
	k := netfilterKernel(t)
	ctx, cancel := context.WithCancel(testContext(t))
	p := &runningProxier{Proxier: proxier.New(cfg, c.state, c.ipvs, proxier.NewNetlinkAddresses(), clock.RealClock{}, opts...),
		cancel: cancel, done: make(chan struct{})}
	// These tests are IPv4; TestIPv6Netfilter (traffic) and
	// TestNetfilterRuleCount (ip6tables-save) cover the ip6tables side.
	k.IPv6 = nil
	p.UseNetfilter(k)
	if err := p.Setup(ctx); err != nil {
		cancel()
		t.Fatalf("Setup: %v", err)
	}
	go func() {
		defer close(p.done)
		p.Run(ctx)
	}()
	t.Cleanup(func() { p.stop(t) })
	// The first sync creates the sets and some 30 rules, one iptables process
	// each: seconds under TCG. Traffic checks start once it is done.
	start := time.Now()
	waitFor(t, time.Minute, "the first sync", func() error {
		res := p.LastSync()
		switch {
		case res.Time.IsZero():
			return errors.New("no sync yet")
		case res.Err != nil:
			return res.Err
		}
		return nil
	})
	t.Logf("first sync done after %s: %+v", time.Since(start).Round(time.Millisecond), p.LastNetfilterSync())
	return p
}

// nfConfig is defaultConfig with the cluster's pod range as --cluster-cidr.
func (c *cluster) nfConfig() proxier.Config {
	cfg := defaultConfig()
	cfg.ClusterCIDRs = []netip.Prefix{c.net.PodCIDR}
	return cfg
}

// seenAs asks to over TCP from from (nil: the node) until a pod answers and
// returns the answering pod and the client address it saw.
func seenAs(t *testing.T, from *netpod.Pod, to netip.AddrPort) (string, netip.Addr) {
	t.Helper()
	var r netpod.Reply
	waitFor(t, converge, fmt.Sprintf("%s to answer", to), func() error {
		reply, err := netpod.Ask(t.Context(), from, tcp, to)
		if err != nil {
			return err
		}
		r, err = netpod.ParseReply(reply)
		return err
	})
	return r.Pod, r.Client.Addr()
}

// lbService makes a LoadBalancer Service with ingress IP lb and source ranges.
func lbService(name string, clusterIP netip.Addr, lb netip.Addr, ranges ...string) *v1.Service {
	return makeService(name, clusterIP.String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30090)}, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		s.Spec.LoadBalancerSourceRanges = ranges
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lb.String()}}
	})
}

func httpSlice(name, svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return makeSlice(name, svc, []discoveryv1.EndpointPort{slicePort("http", v1.ProtocolTCP, echoPort)}, eps...)
}

// TestNetfilterMasquerade: traffic to a ClusterIP from outside --cluster-cidr
// reaches the backend from the node's address; from a pod inside it keeps the
// pod's address; a pod reaching itself through its Service (hairpin) works and
// is masqueraded.
func TestNetfilterMasquerade(t *testing.T) {
	c := newCluster(t, "a", "client")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	c.setService(makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
	c.setSlice(httpSlice("web-1", "web", c.endpointsOf("a")...))
	c.startNF(c.nfConfig())

	if pod, src := seenAs(t, c.pods["client"], c.web); pod != "a" || src != c.pods["client"].IP {
		t.Errorf("from a pod in the cluster CIDR: answered by %s, seen from %s; want a seeing the pod's %s", pod, src, c.pods["client"].IP)
	}
	if pod, src := seenAs(t, ext, c.web); pod != "a" || src != c.net.Gateway {
		t.Errorf("from %s outside the cluster CIDR: answered by %s, seen from %s; want a seeing the node's %s", ext.IP, pod, src, c.net.Gateway)
	}
	t.Run("hairpin", func(t *testing.T) {
		// As kubelet's --hairpin-mode=hairpin-veth and the CNI bridge
		// plugin's hairpinMode do: with br_netfilter, the reply's de-SNAT
		// back to the pod happens at the bridge, which then bridges the
		// frame out of the port it came in on.
		veth, err := netlink.LinkByName(c.pods["a"].HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetHairpin(veth, true); err != nil {
			t.Fatalf("hairpin mode on %s: %v", c.pods["a"].HostVeth, err)
		}
		defer func() {
			if t.Failed() {
				logNetfilterState(t)
			}
		}()
		if pod, src := seenAs(t, c.pods["a"], c.web); pod != "a" || src != c.net.Gateway {
			t.Errorf("a to itself via its ClusterIP: answered by %s, seen from %s; want a seeing the node's %s", pod, src, c.net.Gateway)
		}
	})
}

// TestNetfilterNodePortTrafficPolicy: a NodePort with externalTrafficPolicy
// Cluster is masqueraded, one with Local keeps the client's address.
func TestNetfilterNodePortTrafficPolicy(t *testing.T) {
	c := newCluster(t, "a")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	c.setService(makeService("cluster", c.vip(20).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30180)}, nodePortType))
	c.setSlice(httpSlice("cluster-1", "cluster", c.endpointsOf("a")...))
	c.setService(makeService("local", c.vip(21).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30181)}, nodePortType,
		func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }))
	c.setSlice(httpSlice("local-1", "local", c.endpointsOf("a")...))
	c.startNF(c.nfConfig())

	node := outside.Gateway // the node's address on the client's network
	if pod, src := seenAs(t, ext, netip.AddrPortFrom(node, 30180)); pod != "a" || src != c.net.Gateway {
		t.Errorf("NodePort, policy Cluster: answered by %s, seen from %s; want a seeing the node's %s", pod, src, c.net.Gateway)
	}
	if pod, src := seenAs(t, ext, netip.AddrPortFrom(node, 30181)); pod != "a" || src != ext.IP {
		t.Errorf("NodePort, policy Local: answered by %s, seen from %s; want a seeing the client's %s", pod, src, ext.IP)
	}
}

// TestNetfilterVIPFilter (kube-proxy #72236): a VIP on a port that is not a
// Service port must not reach a host listener on that port: it is dropped.
func TestNetfilterVIPFilter(t *testing.T) {
	c := newCluster(t, "a", "client")
	c.setService(makeService("web", c.web.Addr().String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}))
	c.setSlice(httpSlice("web-1", "web", c.endpointsOf("a")...))
	ln, err := net.Listen("tcp", ":9999")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	client := c.pods["client"]
	dial := func(to netip.AddrPort) error {
		conn, err := netpod.Dial(t.Context(), client, tcp, to)
		if err == nil {
			conn.Close()
		}
		return err
	}
	c.startNF(c.nfConfig())
	seenAs(t, client, c.web) // converged
	if err := dial(netip.AddrPortFrom(c.net.Gateway, 9999)); err != nil {
		t.Fatalf("the host listener is not reachable on the node's address: %v", err)
	}
	err = dial(netip.AddrPortFrom(c.web.Addr(), 9999))
	if err == nil {
		t.Fatalf("%s:9999 reached the host listener through the VIP", c.web.Addr())
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("connecting to the VIP on a non-Service port: %v, want a timeout (dropped)", err)
	}
}

// TestNetfilterSourceRanges: an LB IP with loadBalancerSourceRanges answers a
// source inside the ranges and drops another.
func TestNetfilterSourceRanges(t *testing.T) {
	c := newCluster(t, "a", "allowed", "denied")
	lb := netip.AddrFrom4([4]byte{192, 0, 2, c.n})
	c.setService(lbService("lb", c.vip(30), lb, netip.PrefixFrom(c.pods["allowed"].IP, 32).String()))
	c.setSlice(httpSlice("lb-1", "lb", c.endpointsOf("a")...))
	c.startNF(c.nfConfig())
	to := netip.AddrPortFrom(lb, 80)
	if pod, _ := seenAs(t, c.pods["allowed"], to); pod != "a" {
		t.Errorf("allowed source answered by %s, want a", pod)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if reply, err := netpod.Ask(ctx, c.pods["denied"], tcp, to); err == nil {
		t.Errorf("a source outside loadBalancerSourceRanges got an answer: %q", reply)
	} else if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
		t.Errorf("a source outside loadBalancerSourceRanges: %v, want a timeout (dropped)", err)
	}
	// The ClusterIP of the same Service is not subject to the ranges.
	if pod, _ := seenAs(t, c.pods["denied"], netip.AddrPortFrom(c.vip(30), 80)); pod != "a" {
		t.Errorf("ClusterIP answered by %s, want a", pod)
	}
}

// TestNetfilterSysctls reads back the kernel settings Setup applies.
func TestNetfilterSysctls(t *testing.T) {
	sc := proxier.NewProcSysctl()
	keys := []string{proxier.SysctlARPIgnore, proxier.SysctlARPAnnounce, proxier.SysctlConntrackMax,
		proxier.SysctlConntrackEstablished, proxier.SysctlConntrackCloseWait, proxier.SysctlVSConnReuseMode}
	before := map[string]string{}
	for _, k := range keys {
		v, err := sc.Get(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		before[k] = v
	}
	t.Cleanup(func() {
		for k, v := range before {
			if err := sc.Set(context.Background(), k, v); err != nil {
				t.Errorf("restore %s: %v", k, err)
			}
		}
	})
	cfg := defaultConfig()
	cfg.StrictARP = true
	cfg.Conntrack = proxier.ConntrackConfig{MaxPerCore: 1000, Min: 70000, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 90 * time.Second}
	p := proxier.New(cfg, endpoints.NewState(nodeName), ipvs.NewFake(), proxier.NewFakeAddresses(), clock.RealClock{})
	p.UseNetfilter(netfilterKernel(t))
	if err := p.Setup(testContext(t)); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	want := map[string]string{
		proxier.SysctlIPForward: "1", proxier.SysctlVSConntrack: "1", proxier.SysctlVSExpireNodestConn: "1",
		proxier.SysctlVSExpireQuiescent: "1", proxier.SysctlARPIgnore: "1", proxier.SysctlARPAnnounce: "2",
		proxier.SysctlConntrackMax:         strconv.Itoa(max(1000*runtime.NumCPU(), 70000)),
		proxier.SysctlConntrackEstablished: "7200", proxier.SysctlConntrackCloseWait: "90",
		// 6.1 >= 5.9: left as is (kubernetes #93297).
		proxier.SysctlVSConnReuseMode: before[proxier.SysctlVSConnReuseMode],
	}
	for k, w := range want {
		if got, err := sc.Get(t.Context(), k); err != nil || got != w {
			t.Errorf("%s = %q (%v), want %q", k, got, err, w)
		}
	}
	if hs, err := os.ReadFile(proxier.ConntrackHashsizeParam); err != nil {
		t.Errorf("hashsize: %v", err)
	} else if n, _ := strconv.Atoi(strings.TrimSpace(string(hs))); n < 70000/4 {
		t.Errorf("conntrack hashsize %d, want at least %d", n, 70000/4)
	}
}

// ruleCountService is Service i of TestNetfilterRuleCount: every fifth one
// IPv6, the others IPv4; by i%8 a ClusterIP, a NodePort with
// externalTrafficPolicy Cluster or Local, or a LoadBalancer (without NodePort)
// with policy Cluster or Local.
func ruleCountService(i int) *v1.Service {
	v6 := i%5 == 4
	ip := netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)})
	lb := netip.AddrFrom4([4]byte{10, 200, byte(i / 250), byte(i%250 + 1)})
	if v6 {
		ip = netip.AddrFrom16([16]byte{0xfd, 0, 1, 0, 14: byte(i >> 8), 15: byte(i)})
		lb = netip.AddrFrom16([16]byte{0xfd, 0, 2, 0, 14: byte(i >> 8), 15: byte(i)})
	}
	port := svcPort("http", v1.ProtocolTCP, 80, 0)
	var opts []svcOption
	policy := func(p v1.ServiceExternalTrafficPolicy) svcOption {
		return func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = p }
	}
	loadBalancer := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.AllocateLoadBalancerNodePorts = new(false)
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lb.String()}}
	}
	switch i % 8 {
	case 1, 5: // odd i: NodePorts 30000 + i/2, unique up to i = 5,534
		port.NodePort = int32(30000 + i/2)
		opts = append(opts, nodePortType, policy(v1.ServiceExternalTrafficPolicyCluster))
	case 3, 7:
		port.NodePort = int32(30000 + i/2)
		opts = append(opts, nodePortType, policy(v1.ServiceExternalTrafficPolicyLocal))
	case 2:
		opts = append(opts, loadBalancer, policy(v1.ServiceExternalTrafficPolicyCluster))
	case 6:
		opts = append(opts, loadBalancer, policy(v1.ServiceExternalTrafficPolicyLocal))
	}
	svc := makeService("s"+strconv.Itoa(i), ip.String(), []v1.ServicePort{port}, opts...)
	if v6 {
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	}
	return svc
}

// TestNetfilterRuleCount: `iptables-save | grep -c KIPVS` and the same for
// ip6tables-save are the same with 10 and with 5,000 Services (a mix of
// ClusterIP, NodePort and LoadBalancer, externalTrafficPolicy Cluster and
// Local, IPv4 and IPv6), and an unchanged full resync writes nothing. The
// Services go straight into the model's source; IPVS and the dummy link are
// fakes, the ipsets and iptables are the kernel's.
func TestNetfilterRuleCount(t *testing.T) {
	cfg := defaultConfig()
	cfg.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd10:244::/56")}
	cfg.SyncPeriod = time.Nanosecond // every sync is full
	state := endpoints.NewState(nodeName)
	state.SetSynced()
	// The node needs an address of each family, or the model skips that
	// family's virtual servers.
	addrs, err := proxier.NewFakeAddressesFromText("eth0: 192.168.1.10 2001:db8::10\n")
	if err != nil {
		t.Fatal(err)
	}
	p := proxier.New(cfg, state, ipvs.NewFake(), addrs, clock.RealClock{})
	k := netfilterKernel(t)
	if k.IPv6 == nil {
		t.Fatal("ip6tables is not usable in the VM")
	}
	p.UseNetfilter(k)
	// The fwmark virtual servers of the ETP-Local Services (the LB IP
	// short-circuit) are the real kernel's: remove them for the next test.
	t.Cleanup(func() { flushKernel(t) })
	ctx := testContext(t)
	if err := p.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	addServices := func(from, to int) {
		for i := from; i < to; i++ {
			state.OnServiceUpdate(nil, ruleCountService(i))
		}
	}
	count := func(cmd string) int {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		return strings.Count(string(out), "KIPVS")
	}
	sync := func(what string) proxier.NetfilterResult {
		start := time.Now()
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		res := p.LastNetfilterSync()
		t.Logf("%s: %s, %+v", what, time.Since(start).Round(time.Millisecond), res)
		if errs := p.LastSync().ServiceErrors; len(errs) > 0 {
			t.Fatalf("%s: Service errors: %v", what, errs)
		}
		return res
	}
	addServices(0, 10)
	sync("10 Services")
	n10, n10v6 := count("iptables-save"), count("ip6tables-save")
	t.Logf("10 Services: iptables-save mentions KIPVS %d times, ip6tables-save %d", n10, n10v6)
	if res := sync("unchanged full resync"); res.Writes() != 0 || !res.Full {
		t.Errorf("unchanged full resync: %+v, want a full sync with 0 writes", res)
	}
	addServices(10, 5000)
	sync("5,000 Services")
	if n := count("iptables-save"); n != n10 || n10 == 0 {
		t.Errorf("iptables-save mentions KIPVS %d times with 5,000 Services, %d with 10", n, n10)
	}
	if n := count("ip6tables-save"); n != n10v6 || n10v6 == 0 {
		t.Errorf("ip6tables-save mentions KIPVS %d times with 5,000 Services, %d with 10", n, n10v6)
	}
	for _, set := range []struct {
		id   proxier.SetID
		v6   bool
		want int
	}{
		{proxier.SetClusterIP, false, 4000}, {proxier.SetClusterIP, true, 1000},
	} {
		name := proxier.SetName(set.id, set.v6)
		typ, entries, err := proxier.NewNetlinkIpset().List(ctx, name)
		if err != nil || typ != proxier.SetTypeHashIPPort || len(entries) != set.want {
			t.Errorf("%s: type %q, %d entries, %v; want hash:ip,port with %d", name, typ, len(entries), err, set.want)
		}
	}
	if res := sync("unchanged full resync at 5,000"); res.Writes() != 0 {
		t.Errorf("unchanged full resync at 5,000 Services: %+v, want 0 writes", res)
	}
}

// TestNetfilterNoLocalEndpointsDrop: a NodePort with externalTrafficPolicy
// Local and a ClusterIP with internalTrafficPolicy Local whose only endpoint is
// on another node drop new connections (as kube-proxy's iptables and nftables
// modes do) instead of IPVS's ICMP reject of a virtual server without real
// servers; once a local endpoint appears they answer.
func TestNetfilterNoLocalEndpointsDrop(t *testing.T) {
	c := newCluster(t, "a", "client")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	c.setService(makeService("elocal", c.vip(30).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30182)}, nodePortType,
		func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }))
	c.setSlice(httpSlice("elocal-1", "elocal", remoteEndpoint(c.pods["a"])))
	c.setService(makeService("ilocal", c.vip(31).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 0)}, internalLocalPolicy))
	c.setSlice(httpSlice("ilocal-1", "ilocal", remoteEndpoint(c.pods["a"])))
	p := c.startNF(c.nfConfig())

	cases := []struct {
		what string
		from *netpod.Pod
		to   netip.AddrPort
	}{
		{"NodePort, policy Local, from outside", ext, netip.AddrPortFrom(outside.Gateway, 30182)},
		{"ClusterIP, internal policy Local, from a pod", c.pods["client"], netip.AddrPortFrom(c.vip(31), 80)},
	}
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		reply, err := netpod.Ask(ctx, tc.from, tcp, tc.to)
		cancel()
		switch {
		case err == nil:
			t.Errorf("%s: answered %q with no local endpoint", tc.what, reply)
		case refused(err):
			t.Errorf("%s: refused (%v); want the connection dropped", tc.what, err)
		default:
			t.Logf("%s: %v (dropped)", tc.what, err)
		}
	}
	if t.Failed() {
		logNetfilterState(t)
	}

	t.Log("the endpoint becomes local: both answer")
	c.setSlice(httpSlice("elocal-1", "elocal", c.endpointsOf("a")...))
	c.setSlice(httpSlice("ilocal-1", "ilocal", c.endpointsOf("a")...))
	p.QueueSync()
	for _, tc := range cases {
		if pod, _ := seenAs(t, tc.from, tc.to); pod != "a" {
			t.Errorf("%s: answered by %s, want a", tc.what, pod)
		}
	}
}
