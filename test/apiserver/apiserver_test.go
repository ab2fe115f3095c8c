package apiserver_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/kipvs/kipvs/test/apiserver"
)

const wantVersion = "v1.37.2"

// TestAPIServer drives a real kube-apiserver: objects kipvs watches round-trip,
// dual-stack ClusterIPs are allocated, ServiceAccount tokens authenticate and
// RBAC decides, and a restarted API server keeps etcd's state.
func TestAPIServer(t *testing.T) {
	s := apiserver.ForTest(t, apiserver.Options{})
	ctx := t.Context()
	admin := mustClient(t, s)
	ns := "kipvs-apiserver-test"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	svc := makeService(ns, "web", 80)
	svc, err := admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkDualStack(t, svc.Spec.ClusterIPs)
	slice := makeSlice(ns, "web", "web-abc", 8080, "10.244.1.5", "10.244.2.7")
	if _, err := admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkListed(t, admin, ns, "web", []string{"10.244.1.5", "10.244.2.7"})

	t.Run("service account token and RBAC", func(t *testing.T) {
		token, err := s.ServiceAccountToken(ctx, ns, "kipvs", 0)
		if err != nil {
			t.Fatal(err)
		}
		path, err := s.TokenKubeconfig(token, "")
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatal(err)
		}
		sa := kubernetes.NewForConfigOrDie(cfg)
		_, err = sa.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "system:serviceaccount:"+ns+":kipvs") {
			t.Fatalf("list Services as the ServiceAccount without RBAC: got %v, want Forbidden for system:serviceaccount:%s:kipvs", err, ns)
		}
		grantListServices(t, admin, ns, "kipvs")
		if err := poll(ctx, func() error {
			_, err := sa.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
			return err
		}); err != nil {
			t.Fatalf("list Services after the RoleBinding: %v", err)
		}
	})

	t.Run("kubectl version", func(t *testing.T) {
		out, err := s.Kubectl("version", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			Client struct{ GitVersion string } `json:"clientVersion"`
			Server struct{ GitVersion string } `json:"serverVersion"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if v.Client.GitVersion != wantVersion || v.Server.GitVersion != wantVersion {
			t.Errorf("kubectl version: client %q server %q, want %s", v.Client.GitVersion, v.Server.GitVersion, wantVersion)
		}
	})

	for _, tc := range []struct {
		name string
		down func() error
	}{
		{"graceful stop", s.StopAPIServer},
		{"kill", func() error { s.KillAPIServer(); return nil }},
	} {
		t.Run("restart after "+tc.name+" keeps state", func(t *testing.T) {
			start := time.Now()
			if err := tc.down(); err != nil {
				t.Fatal(err)
			}
			stopped := time.Since(start)
			if s.APIServerRunning() {
				t.Fatal("APIServerRunning after stopping it")
			}
			if _, err := admin.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}); err == nil {
				t.Fatal("Get succeeded while the API server was down")
			}
			start = time.Now()
			if err := s.RestartAPIServer(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("API server down in %v, back in %v", stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			checkListed(t, admin, ns, "web", []string{"10.244.1.5", "10.244.2.7"})
		})
	}
}

// TestBinaryVersions checks that every built binary reports its release, not
// v0.0.0-master.
func TestBinaryVersions(t *testing.T) {
	apiserver.RequireBinaries(t)
	for _, tc := range []struct{ bin, flag, want string }{
		{apiserver.APIServerBinary, "--version", "Kubernetes " + wantVersion},
		{apiserver.KubeProxyBinary, "--version", "Kubernetes " + wantVersion},
		{apiserver.KubectlBinary, "version --client", "Client Version: " + wantVersion},
		{apiserver.EtcdBinary, "--version", "etcd Version: 3.7."},
	} {
		out, err := exec.Command(filepath.Join(apiserver.BinDir(), tc.bin), strings.Fields(tc.flag)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%s %s: %v: %q, want %q", tc.bin, tc.flag, err, out, tc.want)
		}
	}
}

func makeService(ns, name string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack),
			Ports:          []corev1.ServicePort{{Name: "http", Port: port, Protocol: corev1.ProtocolTCP}},
		},
	}
}

func makeSlice(ns, service, name string, port int32, ips ...string) *discoveryv1.EndpointSlice {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	return slice
}

// checkDualStack wants one ClusterIP from each family of the default range.
func checkDualStack(t *testing.T, ips []string) {
	t.Helper()
	v4, v6 := netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("fd00:10:96::/112")
	if len(ips) != 2 {
		t.Fatalf("ClusterIPs %v: want one IPv4 and one IPv6", ips)
	}
	a, err1 := netip.ParseAddr(ips[0])
	b, err2 := netip.ParseAddr(ips[1])
	if err1 != nil || err2 != nil || !v4.Contains(a) || !v6.Contains(b) {
		t.Fatalf("ClusterIPs %v: want [%v, %v] addresses", ips, v4, v6)
	}
}

// checkListed lists Services and EndpointSlices back and wants exactly the
// Service and one slice for it with the given addresses.
func checkListed(t *testing.T, cs kubernetes.Interface, ns, service string, wantIPs []string) {
	t.Helper()
	ctx := t.Context()
	svcs, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs.Items) != 1 || svcs.Items[0].Name != service || svcs.Items[0].Spec.Ports[0].Port != 80 {
		t.Fatalf("Services in %s: %+v", ns, svcs.Items)
	}
	slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			got = append(got, ep.Addresses...)
		}
	}
	if len(slices.Items) != 1 || strings.Join(got, ",") != strings.Join(wantIPs, ",") {
		t.Fatalf("EndpointSlices for %s: %d slices, addresses %v, want 1 slice with %v", service, len(slices.Items), got, wantIPs)
	}
}

func grantListServices(t *testing.T, cs kubernetes.Interface, ns, sa string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "list-services"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "list-services"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func mustClient(t *testing.T, s *apiserver.Server) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(s.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// poll retries f for up to 10 s: RBAC changes reach the authorizer through an
// informer, a moment after the write returns.
func poll(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
