package endpoints

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
)

// wantService is the parsed form of makeService's default, then mutated.
func wantService(mutate ...func(*Service)) *Service {
	s := &Service{
		Name: nn("ns", "svc"),
		Type: v1.ServiceTypeClusterIP,
		Ports: []*ServicePort{{
			Name:       spn("ns", "svc", "http", v1.ProtocolTCP),
			Protocol:   v1.ProtocolTCP,
			Port:       80,
			ClusterIPs: []netip.Addr{addr("10.0.0.1")},
		}},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

// eachPort applies f to every expected port.
func eachPort(f func(*ServicePort)) func(*Service) {
	return func(s *Service) {
		for _, p := range s.Ports {
			f(p)
		}
	}
}

func TestParseService(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*v1.Service)
		wantSkip   bool
		want       *Service
		wantReject []string
	}{
		{name: "plain ClusterIP", mutate: func(*v1.Service) {}, want: wantService()},
		{
			name:     "ExternalName skipped",
			mutate:   func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "example.com" },
			wantSkip: true,
		},
		{
			name: "headless None skipped",
			mutate: func(s *v1.Service) {
				s.Spec.ClusterIP = v1.ClusterIPNone
				s.Spec.ClusterIPs = []string{v1.ClusterIPNone}
			},
			wantSkip: true,
		},
		{
			name:     "empty clusterIP skipped",
			mutate:   func(s *v1.Service) { s.Spec.ClusterIP = ""; s.Spec.ClusterIPs = nil },
			wantSkip: true,
		},
		{
			name:     "another proxy's Service skipped",
			mutate:   func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} },
			wantSkip: true,
		},
		{
			name: "dual-stack clusterIPs",
			mutate: func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.0.0.1", "fd00::1"}
			},
			want: wantService(eachPort(func(p *ServicePort) { p.ClusterIPs = []netip.Addr{addr("10.0.0.1"), addr("fd00::1")} })),
		},
		{
			name:   "clusterIP fallback and leading zeros",
			mutate: func(s *v1.Service) { s.Spec.ClusterIP = "010.000.000.001"; s.Spec.ClusterIPs = nil },
			want:   wantService(eachPort(func(p *ServicePort) { p.ClusterIPs = []netip.Addr{addr("10.0.0.1")} })),
		},
		{
			name:   "unparseable clusterIP makes the Service invalid",
			mutate: func(s *v1.Service) { s.Spec.ClusterIP = "bogus"; s.Spec.ClusterIPs = []string{"bogus"} },
			want: &Service{Name: nn("ns", "svc"), Type: v1.ServiceTypeClusterIP,
				Err: errors.New(`service ns/svc has no valid cluster IP ("bogus")`)},
			wantReject: []string{`clusterIPs: "bogus" is not an IP address`,
				`service ns/svc has no valid cluster IP ("bogus")`},
		},
		{
			name:       "bad external IP dropped",
			mutate:     func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.1", "nope", "2001:db8::1"} },
			want:       wantService(eachPort(func(p *ServicePort) { p.ExternalIPs = []netip.Addr{addr("192.0.2.1"), addr("2001:db8::1")} })),
			wantReject: []string{`externalIPs: "nope" is not an IP address`},
		},
		{
			name: "load balancer ingress: VIP kept, Proxy mode and hostname ignored, bad IP rejected",
			mutate: func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "198.51.100.1"},
					{IP: "198.51.100.2", IPMode: ptr(v1.LoadBalancerIPModeVIP)},
					{IP: "198.51.100.3", IPMode: ptr(v1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example.com"},
					{IP: "x.y"},
				}
			},
			want: wantService(func(s *Service) { s.Type = v1.ServiceTypeLoadBalancer }, eachPort(func(p *ServicePort) {
				p.NodePort = 30080
				p.LoadBalancerIPs = []netip.Addr{addr("198.51.100.1"), addr("198.51.100.2")}
			})),
			wantReject: []string{`status.loadBalancer.ingress: "x.y" is not an IP address`},
		},
		{
			name: "source ranges trimmed and masked, bad one rejected",
			mutate: func(s *v1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{" 10.1.2.3/8 ", "2001:db8::/32", "10.0.0.0/33"}
			},
			want: wantService(eachPort(func(p *ServicePort) {
				p.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
			})),
			wantReject: []string{`loadBalancerSourceRanges: "10.0.0.0/33" is not a CIDR`},
		},
		{
			name:   "ClientIP affinity default timeout",
			mutate: func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP },
			want:   wantService(eachPort(func(p *ServicePort) { p.StickyMaxAgeSeconds = DefaultStickyMaxAgeSeconds })),
		},
		{
			name: "ClientIP affinity explicit timeout",
			mutate: func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(60))}}
			},
			want: wantService(eachPort(func(p *ServicePort) { p.StickyMaxAgeSeconds = 60 })),
		},
		{
			name:   "externalTrafficPolicy Local ignored on ClusterIP",
			mutate: func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal },
			want:   wantService(),
		},
		{
			name: "externalTrafficPolicy Local honoured on ClusterIP with externalIPs",
			mutate: func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.0.2.7"}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			},
			want: wantService(eachPort(func(p *ServicePort) {
				p.ExternalIPs = []netip.Addr{addr("192.0.2.7")}
				p.ExternalPolicyLocal = true
			})),
		},
		{
			name: "LoadBalancer with externalTrafficPolicy Local gets a health check port",
			mutate: func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
			},
			want: wantService(func(s *Service) { s.Type = v1.ServiceTypeLoadBalancer }, eachPort(func(p *ServicePort) {
				p.ExternalPolicyLocal = true
				p.HealthCheckNodePort = 32000
			})),
		},
		{
			name: "NodePort with externalTrafficPolicy Local has no health check port",
			mutate: func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
			},
			want: wantService(func(s *Service) { s.Type = v1.ServiceTypeNodePort }, eachPort(func(p *ServicePort) {
				p.ExternalPolicyLocal = true
			})),
		},
		{
			name: "internalTrafficPolicy Local, trafficDistribution, annotations",
			mutate: func(s *v1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.TrafficDistribution = ptr(v1.ServiceTrafficDistributionPreferClose)
				s.Annotations = map[string]string{"kipvs.io/scheduler": "wrr"}
			},
			want: wantService(func(s *Service) { s.Annotations = map[string]string{"kipvs.io/scheduler": "wrr"} },
				eachPort(func(p *ServicePort) {
					p.InternalPolicyLocal = true
					p.TrafficDistribution = v1.ServiceTrafficDistributionPreferClose
				})),
		},
		{
			name: "bad ports skipped, the rest kept",
			mutate: withPorts(
				v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
				v1.ServicePort{Name: "weird", Port: 1, Protocol: "ICMP"},
				v1.ServicePort{Name: "zero", Port: 0, Protocol: v1.ProtocolTCP},
				v1.ServicePort{Name: "big", Port: 70000, Protocol: v1.ProtocolTCP},
				v1.ServicePort{Name: "dns", Port: 54, Protocol: v1.ProtocolUDP},
				v1.ServicePort{Name: "dns", Port: 53},
			),
			want: wantService(func(s *Service) {
				base := *s.Ports[0]
				udp, tcp := base, base
				udp.Name, udp.Protocol, udp.Port = spn("ns", "svc", "dns", v1.ProtocolUDP), v1.ProtocolUDP, 53
				tcp.Name, tcp.Protocol, tcp.Port = spn("ns", "svc", "dns", v1.ProtocolTCP), v1.ProtocolTCP, 53
				s.Ports = []*ServicePort{&udp, &tcp}
			}),
			wantReject: []string{
				`port "weird" (1/ICMP): protocol "ICMP" is not supported`,
				`port "zero" (0/TCP): port number out of range`,
				`port "big" (70000/TCP): port number out of range`,
				`port "dns" (54/UDP): duplicate port name and protocol`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := makeService("ns", "svc", tt.mutate)
			got, skip, rejections := ParseService(svc)
			if tt.wantSkip {
				if got != nil || skip == "" {
					t.Fatalf("ParseService = %+v, skip %q; want skipped", got, skip)
				}
				return
			}
			if skip != "" {
				t.Fatalf("unexpected skip: %s", skip)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts); diff != "" {
				t.Errorf("ParseService (-want +got):\n%s", diff)
			}
			var reasons []string
			for _, r := range rejections {
				if r.Kind != "Service" || r.Namespace != "ns" || r.Name != "svc" {
					t.Errorf("rejection names the wrong object: %+v", r)
				}
				reasons = append(reasons, r.Reason)
			}
			if diff := cmp.Diff(tt.wantReject, reasons); diff != "" {
				t.Errorf("rejections (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseServiceCopiesAnnotations(t *testing.T) {
	svc := makeService("ns", "svc", func(s *v1.Service) { s.Annotations = map[string]string{"a": "1"} })
	got, _, _ := ParseService(svc)
	svc.Annotations["a"] = "2"
	if got.Annotations["a"] != "1" {
		t.Errorf("parsed annotations alias the object's map: %v", got.Annotations)
	}
}

func TestParseIP(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" = invalid
	}{
		{"10.0.0.1", "10.0.0.1"},
		{"010.000.000.001", "10.0.0.1"},
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"2001:db8::1", "2001:db8::1"},
		{"fe80::1%eth0", ""},
		{"256.0.0.1", ""},
		{"1.2.3", ""},
		{"1.2.3.0004", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, ok := ParseIP(tt.in)
		if tt.want == "" {
			if ok {
				t.Errorf("ParseIP(%q) = %v, want invalid", tt.in, got)
			}
			continue
		}
		if !ok || got != addr(tt.want) {
			t.Errorf("ParseIP(%q) = %v, %v; want %s", tt.in, got, ok, tt.want)
		}
	}
}
