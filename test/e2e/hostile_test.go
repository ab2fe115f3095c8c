//go:build e2etest

package e2e

// The hostile and malformed input catalogue of endpoints/hostile_test.go
// (fake kernels, objects handed straight to endpoints.State), this time
// through the real API server and a real kernel.
//
// TestHostileAccepted has the cases the API server accepts: each must reach
// kipvs, be handled (ignored, deduplicated, partly programmed) with a Warning
// Event naming the object and the reason where it is rejected, and leave a
// healthy control Service answering with exactly its virtual server and real
// servers. TestHostileRefused has the cases the API server refuses (a
// server-side dry run of each must fail validation): they never reach kipvs,
// so the unit catalogue is their only test.
//
// Where each of the 26 unit cases is here:
//
//	cluster IP that is not an IP                      refused: clusterIP 10.96.0.300
//	IPv6 endpoint in an IPv4 slice                    refused: slice address fd00::1 in IPv4
//	IPv6 Service on an IPv4-only node                 accepted: "IPv6 Service, node loses IPv6" (skipped,
//	                                                  shown in /status, no Event)
//	dual-stack Service on an IPv4-only node           not here: needs a node without IPv6 from the start
//	                                                  (the same family check as the IPv6 case)
//	Service port 0 / above 65535                      refused
//	unknown Service protocol                          refused: ICMP
//	unknown slice port protocol and port 0            protocol refused; port 0 accepted: "slice port 0"
//	slice without the service-name label              accepted
//	FQDN slice                                        accepted
//	duplicate endpoints across slices                 accepted
//	endpoints with no address, a non-IP address       refused
//	conflicting port names                            refused
//	affinity timeout 0, huge                          refused (0, 86401, MaxInt32)
//	unknown scheduler annotation                      accepted: TestEvents (events_test.go)
//	LoadBalancer ingress with only a hostname         accepted
//	invalid externalIPs                               refused: 300.1.1.1
//	NodePort above 65535, negative                    refused (and one outside --service-node-port-range)
//	two Services claim the same VIP:port              refused for cluster IPs (the allocator);
//	                                                  accepted for externalIPs: "same externalIP:port"
//	a Service claims the control Service's VIP:port   accepted as an externalIP: "externalIP = the control's cluster IP"
//	invalid loadBalancerSourceRanges                  refused: 10.0.0.0/33
//	zoned IPv6 endpoint address                       refused
//	slice with 1,000 endpoints                        accepted (1,001 refused)
//	20,000 Services arriving at once                  accepted: bulk, KIPVS_E2E_BULK (default 2,000)

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// Bulk case parameters: KIPVS_E2E_BULK Services (default defaultBulk) are
// created at once by bulkWorkers clients and must all be programmed within
// bulkBound(n) of the first create.
const (
	bulkEnv     = "KIPVS_E2E_BULK"
	defaultBulk = 2000
	bulkWorkers = 8
)

// bulkBound bounds the programming (and the removal) of n Services: the
// creates took 53 s for 2,000 under TCG on 2 shared cores (8 clients; the
// admin client's limit is 100 requests/s) and all were programmed 75 s after
// the first; deleting them and seeing them gone took 44 s.
func bulkBound(n int) time.Duration { return time.Minute + time.Duration(n)*45*time.Millisecond }

// wantEvent is a Warning Event kipvs must write on an object of the case.
type wantEvent struct {
	kind, name, reason string
	note               []string // substrings of the Event's note; "NS" is replaced by the namespace
}

// hostileEnv is the namespace of TestHostileAccepted with its control
// Service, and the objects of the running case.
type hostileEnv struct {
	*env
	control      *corev1.Service
	controlKey   ipvs.VirtualServerKey
	controlShape string
	// services and slices are the current case's objects, deleted after it.
	services, slices []string
}

// controlPods serve the control Service; podA and podB serve the cases.
var controlPods = []string{"ctl-1", "ctl-2"}

const podA, podB = "pod-a", "pod-b"

// TestHostileAccepted: hostile input the API server accepts, each case in its
// own Services and slices next to a control Service that must keep answering
// from both its pods with an unchanged virtual server; kipvs must not crash.
// The unknown kipvs.io/scheduler annotation is TestEvents (events_test.go).
func TestHostileAccepted(t *testing.T) {
	h := &hostileEnv{env: newEnv(t, append([]string{podA, podB}, controlPods...)...)}
	h.control = h.createService("control")
	h.setSlice("control-1", "control", httpPorts, controlPods...)
	h.controlKey = vsKey(tcp, vip(t, h.control, 80))
	waitAnswering(t, tcp, vip(t, h.control, 80), controlPods...)
	waitVirtualServer(t, h.controlKey, true, func(vs ipvs.VirtualServerStatus) error {
		if len(vs.RealServers) != len(controlPods) {
			return fmt.Errorf("control %s has %d real servers", vs.VirtualServerKey, len(vs.RealServers))
		}
		return nil
	})
	h.controlShape = vsShape(*virtualServer(t, h.controlKey))
	t.Logf("control Service: %s", h.controlShape)

	for _, c := range hostileAcceptedCases() {
		t.Run(c.name, func(t *testing.T) {
			h.services, h.slices = nil, nil
			defer h.deleteCase(t)
			c.run(t, h)
			for _, w := range c.events {
				h.waitWarning(t, w)
			}
			if c.check != nil {
				c.check(t, h)
			}
			h.checkControl(t)
		})
	}
}

// hostileAcceptedCase creates its objects in run, waits for the Events, then
// checks the kernel.
type hostileAcceptedCase struct {
	name   string
	run    func(t *testing.T, h *hostileEnv)
	events []wantEvent
	check  func(t *testing.T, h *hostileEnv)
}

func hostileAcceptedCases() []hostileAcceptedCase {
	return []hostileAcceptedCase{{
		// kipvs cannot tell which Service such a slice belongs to.
		name: "slice without the service-name label",
		run: func(t *testing.T, h *hostileEnv) {
			h.service("orphan")
			h.slice(hostileSlice(h.ns, "orphan-1", "", discoveryv1.AddressTypeIPv4, h.pods[podA].IP.String()))
		},
		events: []wantEvent{{"EndpointSlice", "orphan-1", proxier.ReasonRejected, []string{"no kubernetes.io/service-name label"}}},
		check: func(t *testing.T, h *hostileEnv) {
			h.wantRealServers(t, h.key("orphan", 80))
		},
	}, {
		// An FQDN slice is left out; the Service's IPv4 slice still serves it.
		name: "FQDN slice",
		run: func(t *testing.T, h *hostileEnv) {
			h.service("fqdn")
			h.slice(hostileSlice(h.ns, "fqdn-1", "fqdn", discoveryv1.AddressTypeFQDN, "example.com"))
			h.slice(hostileSlice(h.ns, "fqdn-2", "fqdn", discoveryv1.AddressTypeIPv4, h.pods[podA].IP.String()))
		},
		events: []wantEvent{{"EndpointSlice", "fqdn-1", proxier.ReasonRejected, []string{`addressType "FQDN" is not proxied`}}},
		check: func(t *testing.T, h *hostileEnv) {
			h.wantRealServers(t, h.key("fqdn", 80), podA)
			waitAnswering(t, tcp, h.addr("fqdn", 80), podA)
		},
	}, {
		name: "same endpoint in two slices",
		run: func(t *testing.T, h *hostileEnv) {
			h.service("dup")
			h.slice(hostileSlice(h.ns, "dup-1", "dup", discoveryv1.AddressTypeIPv4, h.pods[podA].IP.String(), h.pods[podB].IP.String()))
			h.slice(hostileSlice(h.ns, "dup-2", "dup", discoveryv1.AddressTypeIPv4, h.pods[podB].IP.String()))
		},
		check: func(t *testing.T, h *hostileEnv) {
			h.wantRealServers(t, h.key("dup", 80), podA, podB)
			waitAnswering(t, tcp, h.addr("dup", 80), podA, podB)
			h.wantNoWarnings(t, "Service", "dup")
			h.wantNoWarnings(t, "EndpointSlice", "dup-1")
			h.wantNoWarnings(t, "EndpointSlice", "dup-2")
		},
	}, {
		// The API server accepts an EndpointSlice port 0 (not a Service port 0):
		// kipvs leaves that port out and programs the others.
		name: "slice port 0",
		run: func(t *testing.T, h *hostileEnv) {
			h.service("port0")
			s := hostileSlice(h.ns, "port0-1", "port0", discoveryv1.AddressTypeIPv4, h.pods[podA].IP.String())
			s.Ports = append(s.Ports, slicePort("y", corev1.ProtocolTCP, 0))
			h.slice(s)
		},
		events: []wantEvent{{"EndpointSlice", "port0-1", proxier.ReasonRejected, []string{`port "y": port number 0 out of range`}}},
		check: func(t *testing.T, h *hostileEnv) {
			h.wantRealServers(t, h.key("port0", 80), podA)
			waitAnswering(t, tcp, h.addr("port0", 80), podA)
		},
	}, {
		name: "LoadBalancer ingress with only a hostname",
		run:  runLBHostname,
	}, {
		// The first by namespace/name wins a virtual server two Services want.
		name: "same externalIP:port in two Services",
		run: func(t *testing.T, h *hostileEnv) {
			for _, s := range []struct{ name, pod string }{{"ext-a", podA}, {"ext-b", podB}} {
				h.service(s.name, func(svc *corev1.Service) { svc.Spec.ExternalIPs = []string{"198.51.100.10"} })
				h.slice(hostileSlice(h.ns, s.name+"-1", s.name, discoveryv1.AddressTypeIPv4, h.pods[s.pod].IP.String()))
			}
		},
		events: []wantEvent{{"Service", "ext-b", proxier.ReasonServiceError,
			[]string{"virtual server TCP/198.51.100.10:80 is already claimed by service NS/ext-a"}}},
		check: func(t *testing.T, h *hostileEnv) {
			h.wantRealServers(t, vsKey(tcp, netip.MustParseAddrPort("198.51.100.10:80")), podA)
			waitAnswering(t, tcp, h.addr("ext-b", 80), podB) // the rest of ext-b is programmed
			h.wantNoWarnings(t, "Service", "ext-a")
		},
	}, {
		// The API server accepts any externalIP, also another Service's
		// cluster IP (CVE-2020-8554 is about this; the DenyServiceExternalIPs
		// admission plugin is off by default). Neither claimant may take the
		// control's virtual server, whether its name sorts before "control" or
		// after it.
		name: "externalIP = the control's cluster IP",
		run: func(t *testing.T, h *hostileEnv) {
			for _, name := range []string{"a-thief", "z-thief"} {
				h.service(name, func(svc *corev1.Service) { svc.Spec.ExternalIPs = []string{h.control.Spec.ClusterIP} })
				h.slice(hostileSlice(h.ns, name+"-1", name, discoveryv1.AddressTypeIPv4, h.pods[podB].IP.String()))
			}
		},
		events: func() []wantEvent {
			var out []wantEvent
			for _, name := range []string{"a-thief", "z-thief"} {
				out = append(out, wantEvent{"Service", name, proxier.ReasonServiceError,
					[]string{"is already claimed by service NS/control"}})
			}
			return out
		}(),
		check: func(t *testing.T, h *hostileEnv) {
			waitAnswering(t, tcp, h.addr("a-thief", 80), podB)
			waitAnswering(t, tcp, h.addr("z-thief", 80), podB)
		},
	}, {
		name: "slice with 1,000 endpoints",
		run: func(t *testing.T, h *hostileEnv) {
			h.service("big")
			h.slice(hostileSlice(h.ns, "big-1", "big", discoveryv1.AddressTypeIPv4, manyAddrs(1000)...))
		},
		check: func(t *testing.T, h *hostileEnv) {
			key := h.key("big", 80)
			waitForWithin(t, time.Minute, "1,000 real servers on "+key.String(), func() error {
				vs := virtualServer(t, key)
				if vs == nil {
					return fmt.Errorf("no virtual server %s", key)
				}
				got := map[netip.AddrPort]int{}
				for _, rs := range vs.RealServers {
					got[netip.AddrPortFrom(rs.Address, rs.Port)] = rs.Weight
				}
				for _, a := range manyAddrs(1000) {
					if w, ok := got[netip.AddrPortFrom(netip.MustParseAddr(a), echoPort)]; !ok || w != 1 {
						return fmt.Errorf("%s has %d real servers; %s:%d missing or not weight 1 (%d)", key, len(got), a, echoPort, w)
					}
				}
				if len(got) != 1000 {
					return fmt.Errorf("%s has %d real servers, want 1000", key, len(got))
				}
				return nil
			})
			h.wantNoWarnings(t, "EndpointSlice", "big-1")
		},
	}, {
		name: "bulk Services at once",
		run:  runBulk,
	}, {
		name: "IPv6 Service, node loses IPv6",
		run:  runIPv6,
	}}
}

// runLBHostname: a LoadBalancer Service whose ingress has only a hostname
// gets no load balancer virtual server and no error; its cluster IP and node
// port work. An IP in the ingress then does get one (so the check could fail).
func runLBHostname(t *testing.T, h *hostileEnv) {
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, echoPort), slicePort("alt", corev1.ProtocolTCP, altPort)}
	svc := h.service("lbhost", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer })
	h.setSlice("lbhost-1", "lbhost", ports, podA)
	h.slices = append(h.slices, "lbhost-1")
	h.setIngress(t, "lbhost", corev1.LoadBalancerIngress{Hostname: "lb.example.com"})
	// A spec change after the status: once its virtual server is there, kipvs
	// has seen the status too (one object's updates arrive in order).
	h.updateService("lbhost", func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, port("alt", corev1.ProtocolTCP, 81, altPort))
	})
	waitVirtualServer(t, vsKey(tcp, vip(t, svc, 81)), true, nil)
	for _, vs := range virtualServers(t) {
		if !vs.Address.IsValid() || vs.Address.IsUnspecified() {
			t.Errorf("virtual server with no address: %s", vs.VirtualServerKey)
		}
	}
	waitAnswering(t, tcp, vip(t, svc, 80), podA)
	waitAnswering(t, tcp, vip(t, svc, 81), podA)
	cur, err := admin.CoreV1().Services(h.ns).Get(t.Context(), "lbhost", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitAnswering(t, tcp, netip.AddrPortFrom(netip.MustParseAddr(nodeIP), nodePortOf(t, cur, 0)), podA)
	h.wantNoWarnings(t, "Service", "lbhost")

	h.setIngress(t, "lbhost", corev1.LoadBalancerIngress{Hostname: "lb.example.com"}, corev1.LoadBalancerIngress{IP: "198.51.100.60"})
	h.wantRealServers(t, vsKey(tcp, netip.MustParseAddrPort("198.51.100.60:80")), podA)
}

// runBulk creates n Services at once and waits until kipvs programs all, then
// deletes them and waits until their virtual servers are gone.
func runBulk(t *testing.T, h *hostileEnv) {
	n := defaultBulk
	if s := os.Getenv(bulkEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number of Services", bulkEnv, s)
		}
		n = v
	}
	bound := bulkBound(n)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("bulk-%05d", i)
	}
	t.Cleanup(func() { h.deleteServices(t, names) }) // also when the case fails midway
	var mu sync.Mutex
	want := map[ipvs.VirtualServerKey]bool{}
	start := time.Now()
	parallel(t, names, func(ctx context.Context, name string) error {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
				Ports: []corev1.ServicePort{port("http", corev1.ProtocolTCP, 80, echoPort)}},
		}
		got, err := admin.CoreV1().Services(h.ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		mu.Lock()
		want[vsKey(tcp, netip.AddrPortFrom(netip.MustParseAddr(got.Spec.ClusterIP), 80))] = true
		mu.Unlock()
		return nil
	})
	created := time.Since(start)
	waitForWithin(t, bound, fmt.Sprintf("%d Services to be programmed", n), func() error {
		if missing := missingKeys(t, want, true); missing > 0 {
			return fmt.Errorf("%d of %d virtual servers missing", missing, n)
		}
		return nil
	})
	t.Logf("bulk: %d Services created in %s, all programmed %s after the first create (bound %s)",
		n, created.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), bound)
	h.checkControl(t)

	start = time.Now()
	h.deleteServices(t, names)
	waitForWithin(t, bound, fmt.Sprintf("%d Services to be removed", n), func() error {
		if left := missingKeys(t, want, false); left > 0 {
			return fmt.Errorf("%d of %d virtual servers still there", left, n)
		}
		return nil
	})
	t.Logf("bulk: %d Services deleted and removed from IPVS in %s", n, time.Since(start).Round(time.Millisecond))
}

// missingKeys counts the keys of want that are not in the kernel (present
// true) or still are (present false).
func missingKeys(t *testing.T, want map[ipvs.VirtualServerKey]bool, present bool) int {
	have := map[ipvs.VirtualServerKey]bool{}
	for _, vs := range virtualServers(t) {
		have[vs.VirtualServerKey] = true
	}
	n := 0
	for k := range want {
		if have[k] != present {
			n++
		}
	}
	return n
}

// runIPv6: the test API server is dual-stack (test/apiserver's
// DefaultServiceClusterIPRange), so it accepts an IPv6-only Service. The VM
// has IPv6 on loopback (::1), which kipvs counts as an IPv6 node: the Service
// is programmed. With IPv6 disabled the node is IPv4-only: at its next full
// sync kipvs removes the virtual server and skips the Service quietly (one log
// line for the family, /status says why; no Event per Service, as decided in
// 30eaf5e); with IPv6 back it programs it again.
func runIPv6(t *testing.T, h *hostileEnv) {
	const disable = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
	if b, err := os.ReadFile(disable); err != nil || strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("%s: %q, %v; want IPv6 enabled in the VM", disable, b, err)
	}
	svc := h.service("v6", func(s *corev1.Service) {
		single := corev1.IPFamilyPolicySingleStack
		s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &single, []corev1.IPFamily{corev1.IPv6Protocol}
	})
	h.slice(hostileSlice(h.ns, "v6-1", "v6", discoveryv1.AddressTypeIPv6, "fd00:10:244::5"))
	key := vsKey(tcp, vip(t, svc, 80))
	if !key.Address.Is6() {
		t.Fatalf("IPv6 Service got cluster IP %s", key.Address)
	}
	backend := netip.MustParseAddrPort("[fd00:10:244::5]:8080")
	h.wantRealServersAt(t, key, backend)

	setIPv6 := func(on bool) {
		v := "1"
		if on {
			v = "0"
		}
		if err := os.WriteFile(disable, []byte(v), 0o644); err != nil {
			t.Fatalf("write %s: %v", disable, err)
		}
	}
	t.Cleanup(func() { setIPv6(true) })
	setIPv6(false)
	waitVirtualServer(t, key, false, nil)
	name := h.ns + "/v6"
	waitFor(t, "/status to show "+name+" skipped", func() error {
		st, err := serviceStatus(name)
		if err != nil {
			return err
		}
		for _, sp := range st {
			if strings.Contains(sp.Skipped, "this node has no IPv6 address") && len(sp.VirtualServers) == 0 {
				return nil
			}
		}
		return fmt.Errorf("/status of %s: %+v", name, st)
	})
	h.wantNoWarnings(t, "Service", "v6")
	h.checkControl(t)
	setIPv6(true)
	h.wantRealServersAt(t, key, backend)
}

// serviceStatus reads the ports of Service name ("namespace/name") from /status.
func serviceStatus(name string) ([]proxier.ServicePortStatus, error) {
	resp, err := localClient.Get(statusURL + "?service=" + name)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st proxier.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /status: %s: %w", resp.Status, err)
	}
	return st.Services, nil
}

// service creates a case's Service (ClusterIP port 80 -> echoPort).
func (h *hostileEnv) service(name string, opts ...svcOption) *corev1.Service {
	h.t.Helper()
	h.services = append(h.services, name)
	return h.createService(name, opts...)
}

// slice creates a case's EndpointSlice.
func (h *hostileEnv) slice(s *discoveryv1.EndpointSlice) {
	h.t.Helper()
	h.slices = append(h.slices, s.Name)
	if _, err := admin.DiscoveryV1().EndpointSlices(h.ns).Create(h.ctx, s, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("create EndpointSlice %s: %v", s.Name, err)
	}
}

// deleteCase deletes the case's Services and slices.
func (h *hostileEnv) deleteCase(t *testing.T) {
	for _, name := range h.slices {
		if err := admin.DiscoveryV1().EndpointSlices(h.ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete EndpointSlice %s: %v", name, err)
		}
	}
	h.deleteServices(t, h.services)
}

// deleteServices deletes the named Services of the namespace, in parallel.
func (h *hostileEnv) deleteServices(t *testing.T, names []string) {
	parallel(t, names, func(ctx context.Context, name string) error {
		if err := admin.CoreV1().Services(h.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	})
}

// parallel runs f for every name on bulkWorkers goroutines and fails t with
// the first error.
func parallel(t *testing.T, names []string, f func(ctx context.Context, name string) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bulkBound(len(names)))
	defer cancel()
	work := make(chan string)
	errs := make(chan error, len(names))
	var wg sync.WaitGroup
	for range bulkWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if err := f(ctx, name); err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
				}
			}
		}()
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	close(errs)
	if err, ok := <-errs; ok {
		t.Fatalf("%v (and %d more errors)", err, len(errs))
	}
}

// setIngress sets the Service's status.loadBalancer.ingress.
func (h *hostileEnv) setIngress(t *testing.T, name string, ingress ...corev1.LoadBalancerIngress) {
	t.Helper()
	svc, err := admin.CoreV1().Services(h.ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Status.LoadBalancer.Ingress = ingress
	if _, err := admin.CoreV1().Services(h.ns).UpdateStatus(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set the ingress of %s: %v", name, err)
	}
}

// key is the virtual server of the case Service's cluster IP on port.
func (h *hostileEnv) key(name string, port uint16) ipvs.VirtualServerKey {
	return vsKey(tcp, h.addr(name, port))
}

// addr is the case Service's cluster IP with port.
func (h *hostileEnv) addr(name string, port uint16) netip.AddrPort {
	h.t.Helper()
	svc, err := admin.CoreV1().Services(h.ns).Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return vip(h.t, svc, port)
}

// wantRealServers waits until key has exactly the pods' echoPort as real
// servers, each weight 1.
func (h *hostileEnv) wantRealServers(t *testing.T, key ipvs.VirtualServerKey, pods ...string) {
	t.Helper()
	var want []netip.AddrPort
	for _, p := range pods {
		want = append(want, netip.AddrPortFrom(h.pods[p].IP, echoPort))
	}
	h.wantRealServersAt(t, key, want...)
}

// wantRealServersAt waits until key has exactly want as real servers, each weight 1.
func (h *hostileEnv) wantRealServersAt(t *testing.T, key ipvs.VirtualServerKey, want ...netip.AddrPort) {
	t.Helper()
	slices.SortFunc(want, netip.AddrPort.Compare)
	waitVirtualServer(t, key, true, func(vs ipvs.VirtualServerStatus) error {
		var got []netip.AddrPort
		for _, rs := range vs.RealServers {
			if rs.Weight != 1 {
				return fmt.Errorf("%s: real server %s has weight %d", key, rs.RealServerKey, rs.Weight)
			}
			got = append(got, netip.AddrPortFrom(rs.Address, rs.Port))
		}
		slices.SortFunc(got, netip.AddrPort.Compare)
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s has real servers %v, want %v", key, got, want)
		}
		return nil
	})
}

// checkControl fails t unless kipvs runs, the control Service has exactly its
// first virtual server and real servers, both pods answer at once, and no
// Warning names the control Service or its slice.
func (h *hostileEnv) checkControl(t *testing.T) {
	t.Helper()
	requireKipvs(t)
	if vs := virtualServer(t, h.controlKey); vs == nil {
		t.Errorf("control virtual server %s is gone", h.controlKey)
	} else if got := vsShape(*vs); got != h.controlShape {
		t.Errorf("control virtual server changed:\n got %s\nwant %s", got, h.controlShape)
	}
	counts, err := answering(t.Context(), tcp, netip.AddrPortFrom(h.controlKey.Address, h.controlKey.Port), spread)
	if got := slices.Sorted(maps.Keys(counts)); err != nil || !slices.Equal(got, controlPods) {
		t.Errorf("control Service answered by %v (err %v), want %v", counts, err, controlPods)
	}
	h.wantNoWarnings(t, "Service", "control")
	h.wantNoWarnings(t, "EndpointSlice", "control-1")
}

// vsShape renders what must not change of a virtual server: its settings and
// real servers with their weights (not the connection counters).
func vsShape(vs ipvs.VirtualServerStatus) string {
	rss := make([]string, 0, len(vs.RealServers))
	for _, rs := range vs.RealServers {
		rss = append(rss, fmt.Sprintf("%s w%d", rs.RealServerKey, rs.Weight))
	}
	slices.Sort(rss)
	return fmt.Sprintf("%s %s flags=%#x timeout=%d [%s]", vs.VirtualServerKey, vs.Scheduler, vs.Flags, vs.Timeout, strings.Join(rss, ", "))
}

// warnings returns the Warning Events of the namespace about kind/name.
func (h *hostileEnv) warnings(t *testing.T, kind, name string) []eventsv1.Event {
	t.Helper()
	list, err := admin.EventsV1().Events(h.ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list Events: %v", err)
	}
	var out []eventsv1.Event
	for _, ev := range list.Items {
		if ev.Type == corev1.EventTypeWarning && ev.Regarding.Kind == kind && ev.Regarding.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

// waitWarning waits for the Event w.
func (h *hostileEnv) waitWarning(t *testing.T, w wantEvent) {
	t.Helper()
	var note []string
	for _, n := range w.note {
		note = append(note, strings.ReplaceAll(n, "NS", h.ns))
	}
	waitFor(t, fmt.Sprintf("a Warning %s on %s %s naming %q", w.reason, w.kind, w.name, note), func() error {
		evs := h.warnings(t, w.kind, w.name)
		for _, ev := range evs {
			if ev.Reason == w.reason && containsAll(ev.Note, note) {
				t.Logf("Event on %s %s: %s %q", w.kind, w.name, ev.Reason, ev.Note)
				return nil
			}
		}
		var seen []string
		for _, ev := range evs {
			seen = append(seen, ev.Reason+": "+ev.Note)
		}
		return fmt.Errorf("Warnings on %s %s: %q", w.kind, w.name, seen)
	})
}

// wantNoWarnings fails t if kind/name has a Warning Event.
func (h *hostileEnv) wantNoWarnings(t *testing.T, kind, name string) {
	t.Helper()
	for _, ev := range h.warnings(t, kind, name) {
		t.Errorf("unexpected Warning on %s %s: %s %q", kind, name, ev.Reason, ev.Note)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// hostileSlice builds an EndpointSlice of Service svc ("" for no
// kubernetes.io/service-name label) with port "http" TCP echoPort and a ready
// endpoint on this node for each address.
func hostileSlice(ns, name, svc string, at discoveryv1.AddressType, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelManagedBy: "kipvs-e2e"}},
		AddressType: at,
		Ports:       []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, echoPort)},
	}
	if svc != "" {
		s.Labels[discoveryv1.LabelServiceName] = svc
	}
	for _, a := range addrs {
		ready, node := true, nodeName
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node,
		})
	}
	return s
}

// manyAddrs returns n IPv4 addresses in 10.245.0.0/16, where no pod is.
func manyAddrs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.245.%d.%d", i/250, i%250+1)
	}
	return out
}

// refusedCase is hostile input the API server must refuse; field is a
// substring of its validation error (the field path or the value).
type refusedCase struct {
	name  string
	svc   func(*corev1.Service)            // changes the valid Service, or
	slice func(*discoveryv1.EndpointSlice) // changes the valid slice
	field string
	// dryRunPasses: a server-side dry run accepts it; only the real create,
	// which runs the cluster IP and node port allocators, refuses it
	// (kube-apiserver v1.37.2 does not allocate in a dry run).
	dryRunPasses bool
}

// TestHostileRefused: the catalogue's cases that never reach kipvs because
// the API server refuses them. Each must fail a plain create with an Invalid
// error naming the field, and a server-side dry run must refuse it too except
// for the allocator's checks (dryRunPasses), which a dry run skips; the valid
// objects they start from must pass both.
func TestHostileRefused(t *testing.T) {
	e := newEnvNoKipvs(t)
	taken := e.createService("taken") // for the duplicate cluster IP
	aff := func(seconds int32) func(*corev1.Service) {
		return func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &seconds}}
		}
	}
	nodePortSvc := func(n int32) func(*corev1.Service) {
		return func(s *corev1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = corev1.ServiceTypeNodePort, n }
	}
	addr := func(addrs ...string) func(*discoveryv1.EndpointSlice) {
		return func(s *discoveryv1.EndpointSlice) { s.Endpoints[0].Addresses = addrs }
	}
	cases := []refusedCase{
		{name: "valid Service (control)", svc: func(*corev1.Service) {}},
		{name: "valid slice (control)", slice: func(*discoveryv1.EndpointSlice) {}},
		{name: "Service port 0", svc: func(s *corev1.Service) { s.Spec.Ports[0].Port = 0 }, field: "spec.ports[0].port"},
		{name: "Service port 70000", svc: func(s *corev1.Service) { s.Spec.Ports[0].Port = 70000 }, field: "spec.ports[0].port"},
		{name: "protocol ICMP", svc: func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }, field: "spec.ports[0].protocol"},
		{name: "cluster IP that is not an IP", svc: func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.300", []string{"10.96.0.300"}
		}, field: "spec.clusterIPs[0]"},
		{name: "cluster IP outside the range", svc: func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "192.0.2.1", []string{"192.0.2.1"}
		}, field: "failed to allocate IP 192.0.2.1"},
		{name: "cluster IP of another Service", svc: func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = taken.Spec.ClusterIP, []string{taken.Spec.ClusterIP}
		}, field: "already allocated", dryRunPasses: true},
		{name: "externalIPs not an IP", svc: func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"300.1.1.1", "198.51.100.22"} }, field: "spec.externalIPs[0]"},
		{name: "affinity timeout 0", svc: aff(0), field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
		{name: "affinity timeout 86401", svc: aff(86401), field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
		{name: "affinity timeout MaxInt32", svc: aff(math.MaxInt32), field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds"},
		{name: "nodePort 70000", svc: nodePortSvc(70000), field: "spec.ports[0].nodePort", dryRunPasses: true},
		{name: "nodePort -1", svc: nodePortSvc(-1), field: "spec.ports[0].nodePort", dryRunPasses: true},
		{name: "nodePort outside --service-node-port-range", svc: nodePortSvc(29999), field: "spec.ports[0].nodePort", dryRunPasses: true},
		{name: "duplicate port names", svc: func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, port("http", corev1.ProtocolTCP, 81, echoPort))
		}, field: "spec.ports[1].name"},
		{name: "loadBalancerSourceRanges /33", svc: func(s *corev1.Service) {
			s.Spec.Type, s.Spec.LoadBalancerSourceRanges = corev1.ServiceTypeLoadBalancer, []string{"10.0.0.0/33"}
		}, field: "spec.LoadBalancerSourceRanges[0]"},
		{name: "endpoint without addresses", slice: addr(), field: "endpoints[0].addresses"},
		{name: "empty endpoint address", slice: addr(""), field: "endpoints[0].addresses[0]"},
		{name: "endpoint address not an IP", slice: addr("not-an-ip"), field: "endpoints[0].addresses[0]"},
		{name: "IPv6 endpoint in an IPv4 slice", slice: addr("fd00::1"), field: "must be an IPv4 address"},
		{name: "zoned IPv6 endpoint address", slice: func(s *discoveryv1.EndpointSlice) {
			s.AddressType, s.Endpoints[0].Addresses = discoveryv1.AddressTypeIPv6, []string{"fe80::1%eth0"}
		}, field: "endpoints[0].addresses[0]"},
		{name: "slice port protocol ICMP", slice: func(s *discoveryv1.EndpointSlice) {
			icmp := corev1.Protocol("ICMP")
			s.Ports[0].Protocol = &icmp
		}, field: "ports[0].protocol"},
		{name: "slice with 1,001 endpoints", slice: func(s *discoveryv1.EndpointSlice) {
			*s = *hostileSlice(s.Namespace, s.Name, "refused", discoveryv1.AddressTypeIPv4, manyAddrs(1001)...)
		}, field: "endpoints"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dryErr := c.create(t, e.ns, true)
			switch {
			case c.field == "" || c.dryRunPasses:
				if dryErr != nil {
					t.Errorf("server-side dry run refused it: %v", dryErr)
				}
			case dryErr == nil:
				t.Errorf("server-side dry run accepted it")
			}
			err := c.create(t, e.ns, false)
			switch {
			case c.field == "" && err != nil:
				t.Fatalf("the valid object was refused: %v", err)
			case c.field == "":
				c.delete(t, e.ns)
			case err == nil:
				c.delete(t, e.ns)
				t.Fatalf("the API server accepted it: this case reaches kipvs and belongs in TestHostileAccepted")
			case !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.field):
				t.Fatalf("refused with %v (Invalid %v), want an Invalid error naming %q", err, apierrors.IsInvalid(err), c.field)
			default:
				t.Logf("refused: %v", err)
			}
		})
	}
}

// create creates the case's object, as a server-side dry run or for real.
func (c refusedCase) create(t *testing.T, ns string, dryRun bool) error {
	t.Helper()
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if c.svc != nil {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "refused"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
				Ports: []corev1.ServicePort{port("http", corev1.ProtocolTCP, 80, echoPort)}},
		}
		c.svc(svc)
		_, err := admin.CoreV1().Services(ns).Create(t.Context(), svc, opts)
		return err
	}
	s := hostileSlice(ns, "refused-1", "refused", discoveryv1.AddressTypeIPv4, "10.244.0.9")
	c.slice(s)
	_, err := admin.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), s, opts)
	return err
}

// delete deletes what create made for real.
func (c refusedCase) delete(t *testing.T, ns string) {
	t.Helper()
	var err error
	if c.svc != nil {
		err = admin.CoreV1().Services(ns).Delete(t.Context(), "refused", metav1.DeleteOptions{})
	} else {
		err = admin.DiscoveryV1().EndpointSlices(ns).Delete(t.Context(), "refused-1", metav1.DeleteOptions{})
	}
	if err != nil {
		t.Errorf("delete the created object: %v", err)
	}
}
