//go:build kerneltest

package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/test/netpod"
)

// podHTTPClient is an HTTP client whose connections are made in pod p's netns.
func podHTTPClient(p *netpod.Pod) *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := p.Do(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// getFrom fetches url from pod p and returns the status code and body.
func getFrom(p *netpod.Pod, url string) (int, string, error) {
	resp, err := podHTTPClient(p).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// TestLBIPHealthCheck (kube-proxy #79783, #117723): a cloud load balancer
// probes LB-IP:healthCheckNodePort. With the LB IP on kube-ipvs0 the VIP
// filter (#72236) must let the probe reach kipvs's health check server, while
// the LB IP on another port that a host process listens on stays dropped.
func TestLBIPHealthCheck(t *testing.T) {
	c := newCluster(t, "a")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	prober := outside.AddPod(t, "prober")
	lbIP := netip.AddrFrom4([4]byte{192, 0, 2, 100 + c.n})
	const hcPort, otherPort = 32110, 9997
	c.setService(makeService("lb", c.vip(40).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30190)}, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = hcPort
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP.String()}}
	}))
	c.setSlice(httpSlice("lb-1", "lb", c.endpointsOf("a")...))
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", otherPort))
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
	// Listening on every address, as kube-proxy does without nodePortAddresses.
	hs := proxier.NewHealthCheckServer(proxier.NetListener{}, nil, nil)
	t.Cleanup(hs.Close)
	c.startNF(c.nfConfig(), proxier.WithHealthCheckServer(hs))
	defer func() {
		if t.Failed() {
			logNetfilterState(t)
		}
	}()

	if pod, src := seenAs(t, prober, netip.AddrPortFrom(lbIP, 80)); pod != "a" || src != prober.IP {
		t.Errorf("LB IP from outside: answered by %s seen from %s, want a seeing %s", pod, src, prober.IP)
	}
	url := fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(lbIP, hcPort))
	waitFor(t, converge, url+" from the prober", func() error {
		code, body, err := getFrom(prober, url)
		switch {
		case err != nil:
			return err
		case code != http.StatusOK || !strings.Contains(body, `"localEndpoints": 1`):
			return fmt.Errorf("status %d body %s", code, body)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	conn, err := netpod.Dial(ctx, prober, tcp, netip.AddrPortFrom(lbIP, otherPort))
	if err == nil {
		conn.Close()
		t.Fatalf("%s:%d reached the host listener through the LB IP", lbIP, otherPort)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("the LB IP on a port that is neither a Service port nor the health check port: %v, want a timeout (dropped)", err)
	}
	// The node's own address still reaches the host listener: only the VIP is filtered.
	if conn, err := netpod.Dial(t.Context(), prober, tcp, netip.AddrPortFrom(outside.Gateway, otherPort)); err != nil {
		t.Errorf("the host listener on the node's address: %v", err)
	} else {
		conn.Close()
	}
}

// TestLBIPShortCircuit (kube-proxy #115931): with externalTrafficPolicy
// Local, traffic from a pod in --cluster-cidr and from the node itself to the
// LB IP or the NodePort goes to every endpoint of the cluster (kipvs marks it
// for the Service port's fwmark virtual server), while traffic from outside
// gets only this node's endpoints, and is dropped while there are none.
func TestLBIPShortCircuit(t *testing.T) {
	c := newCluster(t, "remote", "local", "client")
	outside := netpod.NewNet(t, netpod.NetOptions{})
	ext := outside.AddPod(t, "ext")
	lbIP := netip.AddrFrom4([4]byte{192, 0, 2, 150 + c.n})
	c.setService(makeService("lb", c.vip(41).String(), []v1.ServicePort{svcPort("http", v1.ProtocolTCP, 80, 30191)}, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP.String()}}
	}))
	c.setSlice(httpSlice("lb-1", "lb", remoteEndpoint(c.pods["remote"])))
	p := c.startNF(c.nfConfig())
	defer func() {
		if t.Failed() {
			logNetfilterState(t)
			t.Logf("ipvsadm -Ln:\n%s", ipvsadm(t, "-Ln"))
		}
	}()
	lb := netip.AddrPortFrom(lbIP, 80)
	nodePort := netip.AddrPortFrom(c.net.Gateway, 30191)

	t.Log("no local endpoint: pods and the node reach the remote one, outside traffic is dropped")
	waitAnswering(t, c.pods["client"], tcp, lb, "remote")
	waitAnswering(t, nil, tcp, lb, "remote")
	waitAnswering(t, c.pods["client"], tcp, nodePort, "remote")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	reply, err := netpod.Ask(ctx, ext, tcp, lb)
	cancel()
	switch {
	case err == nil:
		t.Errorf("from outside: answered %q with no local endpoint", reply)
	case refused(err):
		t.Errorf("from outside: refused (%v); want dropped", err)
	}

	t.Log("a local endpoint too: outside traffic gets only it, pods and the node get both")
	c.setSlice(httpSlice("lb-1", "lb", remoteEndpoint(c.pods["remote"]), endpoint(c.pods["local"], true)))
	p.QueueSync()
	waitAnswering(t, ext, tcp, lb, "local")
	if pod, src := seenAs(t, ext, lb); pod != "local" || src != ext.IP {
		t.Errorf("from outside: answered by %s seen from %s, want local seeing the client's %s", pod, src, ext.IP)
	}
	waitAnswering(t, c.pods["client"], tcp, lb, "local", "remote")
	waitAnswering(t, nil, tcp, lb, "local", "remote")
	if pod, src := seenAs(t, c.pods["client"], lb); src != c.pods["client"].IP {
		t.Errorf("from a pod: answered by %s seen from %s, want the pod's own %s (not masqueraded)", pod, src, c.pods["client"].IP)
	}
}
