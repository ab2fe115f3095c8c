//go:build e2etest

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

const (
	// converge bounds how long kipvs may take to make a change visible:
	// API server -> informer -> sync (min 200ms apart) -> kernel. New node
	// addresses are only seen at a full resync (--sync-period 10s).
	converge = 20 * time.Second
	// echoPort and altPort are the pods' echo server ports (TCP and UDP).
	echoPort, altPort = 8080, 8081
	// spread is how many requests a traffic check sends: with rr over at most
	// 3 real servers every one of them answers at least 4 times.
	spread = 12
	// nodeIP is the VM's eth0 address, set by the VM's /init.
	nodeIP = "10.0.2.15"
)

// podCIDR is the pods' range; the bridge (a node IP) is its .1.
var podCIDR = netip.MustParsePrefix("10.244.0.0/24")

// env is one test's slice of the cluster: a fresh namespace, a pod network
// with echo pods, and the Services and EndpointSlices it creates. Everything
// is deleted when the test ends (there is no namespace controller).
type env struct {
	t    *testing.T
	ctx  context.Context
	ns   string
	net  *netpod.Net
	pods map[string]*netpod.Pod
}

// newEnv creates a namespace and pods that serve TCP and UDP echo on echoPort
// and altPort.
func newEnv(t *testing.T, pods ...string) *env {
	t.Helper()
	requireKipvs(t)
	return newEnvNoKipvs(t, pods...)
}

// newEnvNoKipvs is newEnv without checking that the shared kipvs runs.
func newEnvNoKipvs(t *testing.T, pods ...string) *env {
	t.Helper()
	e := &env{t: t, ctx: t.Context(), ns: "e2e-" + randomSuffix(), pods: map[string]*netpod.Pod{}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}
	if _, err := admin.CoreV1().Namespaces().Create(e.ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(e.cleanup)
	e.net = netpod.NewNet(t, netpod.NetOptions{PodCIDR: podCIDR})
	for _, name := range pods {
		e.addPod(name)
	}
	return e
}

// cleanup deletes the namespace's Services and EndpointSlices, then the
// namespace, so that kipvs drops what the test created.
func (e *env) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := metav1.ListOptions{}
	svcs, err := admin.CoreV1().Services(e.ns).List(ctx, all)
	if err != nil {
		e.t.Errorf("list Services of %s: %v", e.ns, err)
	} else {
		for _, s := range svcs.Items {
			if err := admin.CoreV1().Services(e.ns).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				e.t.Errorf("delete Service %s/%s: %v", e.ns, s.Name, err)
			}
		}
	}
	if err := admin.DiscoveryV1().EndpointSlices(e.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, all); err != nil {
		e.t.Errorf("delete EndpointSlices of %s: %v", e.ns, err)
	}
	if err := admin.CoreV1().Namespaces().Delete(ctx, e.ns, metav1.DeleteOptions{}); err != nil {
		e.t.Errorf("delete namespace %s: %v", e.ns, err)
	}
}

// addPod adds a pod serving TCP and UDP echo on echoPort and altPort.
func (e *env) addPod(name string) *netpod.Pod {
	p := e.net.AddPod(e.t, name)
	p.ServeEcho(e.t, echoPort)
	p.ServeEcho(e.t, altPort)
	e.pods[name] = p
	return p
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// svcOption changes a Service under construction or update.
type svcOption func(*corev1.Service)

// port is a Service port that targets the pods' port target.
func port(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
}

func withPorts(ports ...corev1.ServicePort) svcOption {
	return func(s *corev1.Service) { s.Spec.Ports = ports }
}

func nodePort(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }

func clusterIP(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP }

// externalName makes the Service an ExternalName; the API server drops its
// cluster IPs and node ports.
func externalName(s *corev1.Service) {
	s.Spec.Type = corev1.ServiceTypeExternalName
	s.Spec.ExternalName = "example.invalid"
}

// affinity turns ClientIP session affinity on (with the API's default timeout) or off.
func affinity(on bool) svcOption {
	return func(s *corev1.Service) {
		if on {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			return
		}
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
		s.Spec.SessionAffinityConfig = nil
	}
}

// createService creates a Service (ClusterIP on port 80 -> echoPort TCP unless
// opts change it); the API server allocates its cluster IP.
func (e *env) createService(name string, opts ...svcOption) *corev1.Service {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{port("http", corev1.ProtocolTCP, 80, echoPort)},
		},
	}
	for _, o := range opts {
		o(svc)
	}
	got, err := admin.CoreV1().Services(e.ns).Create(e.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create Service %s: %v", name, err)
	}
	return got
}

// updateService applies opts to the current Service, retrying on conflicts.
func (e *env) updateService(name string, opts ...svcOption) *corev1.Service {
	e.t.Helper()
	var got *corev1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := admin.CoreV1().Services(e.ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, o := range opts {
			o(svc)
		}
		got, err = admin.CoreV1().Services(e.ns).Update(e.ctx, svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		e.t.Fatalf("update Service %s: %v", name, err)
	}
	return got
}

func (e *env) deleteService(name string) {
	e.t.Helper()
	if err := admin.CoreV1().Services(e.ns).Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("delete Service %s: %v", name, err)
	}
}

// slicePort is an EndpointSlice port; its name matches the Service port's.
func slicePort(name string, proto corev1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

// setSlice creates or replaces the IPv4 EndpointSlice name of Service svc with
// ready endpoints for the named pods on this node (no controller manager
// writes slices here).
func (e *env) setSlice(name, svc string, ports []discoveryv1.EndpointPort, pods ...string) {
	e.t.Helper()
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: e.ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "kipvs-e2e"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
	}
	for _, n := range pods {
		p := e.pods[n]
		if p == nil {
			e.t.Fatalf("no pod %q", n)
		}
		ready, serving, terminating, node := true, true, false, nodeName
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: e.ns, Name: n},
		})
	}
	client := admin.DiscoveryV1().EndpointSlices(e.ns)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(e.ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = client.Create(e.ctx, slice, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		slice.ResourceVersion = cur.ResourceVersion
		_, err = client.Update(e.ctx, slice, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		e.t.Fatalf("set EndpointSlice %s: %v", name, err)
	}
}

// vip is the Service's cluster IP with port.
func vip(t *testing.T, svc *corev1.Service, port uint16) netip.AddrPort {
	t.Helper()
	a, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		t.Fatalf("Service %s has no cluster IP (%q): %v", svc.Name, svc.Spec.ClusterIP, err)
	}
	return netip.AddrPortFrom(a, port)
}

// nodePortOf is the node port the API server allocated to the Service's port i.
func nodePortOf(t *testing.T, svc *corev1.Service, i int) uint16 {
	t.Helper()
	np := svc.Spec.Ports[i].NodePort
	if np == 0 {
		t.Fatalf("Service %s port %d has no node port", svc.Name, i)
	}
	return uint16(np)
}

// nodeAddrs are the node IPs a NodePort must answer on: eth0 and the pod
// bridge of the test's network.
func (e *env) nodeAddrs(port uint16) []netip.AddrPort {
	return []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr(nodeIP), port),
		netip.AddrPortFrom(e.net.Gateway, port),
	}
}

// waitFor polls cond every 200ms until it returns nil, and fails the test
// with cond's last error after converge.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	waitForWithin(t, converge, what, cond)
}

// waitForWithin is waitFor with another bound.
func waitForWithin(t *testing.T, bound time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %v", bound, what, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: %v (last error: %v)", what, t.Context().Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// answering sends n requests from the root netns (the node), each on a new
// connection, and returns which pods answered how often.
func answering(ctx context.Context, proto string, to netip.AddrPort, n int) (map[string]int, error) {
	return netpod.AskMany(ctx, nil, proto, to, n)
}

// waitAnswering waits until requests to to are answered by exactly the pods
// in want, then checks it once more with twice as many requests.
func waitAnswering(t *testing.T, proto string, to netip.AddrPort, want ...string) {
	t.Helper()
	slices.Sort(want)
	check := func(n int) error {
		counts, err := answering(t.Context(), proto, to, n)
		if err != nil {
			return err
		}
		if got := slices.Sorted(maps.Keys(counts)); !slices.Equal(got, want) {
			return fmt.Errorf("%s %s answered by %v, want %v", proto, to, counts, want)
		}
		return nil
	}
	waitFor(t, fmt.Sprintf("%s %s to be answered by %v", proto, to, want), func() error { return check(spread) })
	if err := check(2 * spread); err != nil {
		t.Fatalf("after converging: %v", err)
	}
}

// waitOnePod waits until all requests to to are answered by one single pod
// of want (session affinity) and returns it.
func waitOnePod(t *testing.T, proto string, to netip.AddrPort, want ...string) string {
	t.Helper()
	var pod string
	waitFor(t, fmt.Sprintf("%s %s to be answered by one pod only", proto, to), func() error {
		counts, err := answering(t.Context(), proto, to, spread)
		if err != nil {
			return err
		}
		if len(counts) != 1 {
			return fmt.Errorf("%s %s answered by %v", proto, to, counts)
		}
		for p := range counts {
			pod = p
		}
		if !slices.Contains(want, pod) {
			return fmt.Errorf("%s %s answered by %s, not one of %v", proto, to, pod, want)
		}
		return nil
	})
	return pod
}

// waitNoAnswer waits until a request to to fails.
func waitNoAnswer(t *testing.T, proto string, to netip.AddrPort) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s %s to stop answering", proto, to), func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if reply, err := netpod.Ask(ctx, nil, proto, to); err == nil {
			return fmt.Errorf("%s %s still answered: %q", proto, to, reply)
		}
		return nil
	})
}

// virtualServers reads the kernel's IPVS table.
func virtualServers(t *testing.T) []ipvs.VirtualServerStatus {
	t.Helper()
	r, err := ipvs.New()
	if err != nil {
		t.Fatalf("ipvs.New: %v", err)
	}
	defer r.Close()
	vss, err := r.Dump(t.Context())
	if err != nil {
		t.Fatalf("dump IPVS: %v", err)
	}
	return vss
}

// virtualServer returns the virtual server for key, or nil.
func virtualServer(t *testing.T, key ipvs.VirtualServerKey) *ipvs.VirtualServerStatus {
	t.Helper()
	for _, vs := range virtualServers(t) {
		if vs.VirtualServerKey == key {
			return &vs
		}
	}
	return nil
}

// vsKey is the virtual server key of proto ("TCP", "UDP") and ap.
func vsKey(proto string, ap netip.AddrPort) ipvs.VirtualServerKey {
	return ipvs.VirtualServerKey{Address: ap.Addr(), Protocol: ipvs.Protocol(strings.ToUpper(proto)), Port: ap.Port()}
}

// waitVirtualServer waits until the virtual server key exists (with check
// passing, when not nil) or, with present false, is gone.
func waitVirtualServer(t *testing.T, key ipvs.VirtualServerKey, present bool, check func(ipvs.VirtualServerStatus) error) {
	t.Helper()
	what := fmt.Sprintf("virtual server %s to exist", key)
	if !present {
		what = fmt.Sprintf("virtual server %s to be deleted", key)
	}
	waitFor(t, what, func() error {
		vs := virtualServer(t, key)
		switch {
		case vs == nil && present:
			return fmt.Errorf("no virtual server %s", key)
		case vs != nil && !present:
			return fmt.Errorf("virtual server %s still there: %+v", key, *vs)
		case vs != nil && check != nil:
			return check(*vs)
		}
		return nil
	})
}

// boundVIPs returns the addresses on kube-ipvs0.
func boundVIPs(t *testing.T) []netip.Addr {
	t.Helper()
	got, err := proxier.NewNetlinkAddresses().List(t.Context(), proxier.DefaultDummyLink)
	if err != nil {
		t.Fatalf("list addresses of %s: %v", proxier.DefaultDummyLink, err)
	}
	return got
}

// waitVIPBound waits until addr is (or, with bound false, is not) on kube-ipvs0.
func waitVIPBound(t *testing.T, addr netip.Addr, bound bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s bound=%v on %s", addr, bound, proxier.DefaultDummyLink), func() error {
		if got := slices.Contains(boundVIPs(t), addr); got != bound {
			return fmt.Errorf("%s bound=%v on %s", addr, got, proxier.DefaultDummyLink)
		}
		return nil
	})
}

// run runs a tool in the guest and returns its combined output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
