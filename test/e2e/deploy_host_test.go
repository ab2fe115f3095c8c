//go:build !e2etest

package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kipvs/kipvs/test/apiserver"
)

// reuseOverlay is the overlay that runs kipvs on kube-proxy's ConfigMap.
const reuseOverlay = "deploy/overlays/reuse-kube-proxy-config"

// kubeadmKubeProxyConfigMap is kube-system/kube-proxy as kubeadm makes it for
// IPVS mode: config.conf names kubeconfig.conf, which the overlay mounts at
// /var/lib/kube-proxy like kube-proxy's DaemonSet.
var kubeadmKubeProxyConfigMap = &corev1.ConfigMap{
	ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-proxy", Labels: map[string]string{"app": "kube-proxy"}},
	Data: map[string]string{
		"config.conf": `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
mode: ipvs
ipvs:
  strictARP: true
`,
		"kubeconfig.conf": `apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    server: https://control-plane.example:6443
  name: default
contexts:
- context:
    cluster: default
    namespace: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
`,
	},
}

// renderedObject is what the render checks read of each rendered object.
type renderedObject struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name, Namespace string
	} `json:"metadata"`
	Spec struct {
		Template struct {
			Spec corev1.PodSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// TestDeployKustomize renders deploy/ and the reuse-kube-proxy-config overlay
// with kubectl kustomize and checks which objects each yields and which
// ConfigMap kipvs's config volume names.
func TestDeployKustomize(t *testing.T) {
	apiserver.RequireBinaries(t)
	root, err := moduleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(apiserver.BinDir(), apiserver.KubectlBinary)
	for _, tc := range []struct {
		dir         string
		kinds       []string
		configMapOf string // the config volume's ConfigMap
	}{
		{"deploy", []string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"}, "kipvs"},
		{reuseOverlay, []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"}, "kube-proxy"},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", filepath.Join(root, tc.dir)).CombinedOutput()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v\n%s", tc.dir, err, out)
			}
			var kinds []string
			var ds *renderedObject
			for doc := range strings.SplitSeq(string(out), "\n---\n") {
				obj := &renderedObject{}
				if err := yaml.Unmarshal([]byte(doc), obj); err != nil {
					t.Fatalf("rendered %s: %v", tc.dir, err)
				}
				kinds = append(kinds, obj.Kind)
				if obj.Kind == "DaemonSet" {
					ds = obj
				}
			}
			slices.Sort(kinds)
			if !slices.Equal(kinds, tc.kinds) {
				t.Errorf("kinds %v, want %v", kinds, tc.kinds)
			}
			if ds == nil {
				t.Fatal("no DaemonSet")
			}
			var got string
			for _, v := range ds.Spec.Template.Spec.Volumes {
				if v.Name == "config" && v.ConfigMap != nil {
					got = v.ConfigMap.Name
				}
			}
			if got != tc.configMapOf {
				t.Errorf("config volume is ConfigMap %q, want %q", got, tc.configMapOf)
			}
		})
	}
}

// TestDeployServerSideDryRun has a real API server validate deploy/ and the
// reuse-kube-proxy-config overlay (kubectl apply --dry-run=server), the
// overlay with kubeadm's kube-proxy ConfigMap in place. (TestE2E applies
// deploy/ for real.) The DaemonSet is privileged, which kube-apiserver refuses
// unless it runs with --allow-privileged=true, as kubeadm and managed clusters
// run it.
func TestDeployServerSideDryRun(t *testing.T) {
	s := apiserver.ForTest(t, apiserver.Options{ExtraArgs: []string{"--allow-privileged=true"}})
	root, err := moduleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(s.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps("kube-system").Create(ctx, kubeadmKubeProxyConfigMap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir  string
		want []string // objects the dry run must name
	}{
		{"deploy", []string{"serviceaccount/kipvs", "clusterrole.rbac.authorization.k8s.io/kipvs",
			"clusterrolebinding.rbac.authorization.k8s.io/kipvs", "configmap/kipvs", "daemonset.apps/kipvs"}},
		{reuseOverlay, []string{"serviceaccount/kipvs", "clusterrole.rbac.authorization.k8s.io/kipvs",
			"clusterrolebinding.rbac.authorization.k8s.io/kipvs", "daemonset.apps/kipvs"}},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			out, err := s.Kubectl("apply", "-k", filepath.Join(root, tc.dir), "--dry-run=server")
			if err != nil {
				t.Fatal(err)
			}
			for _, obj := range tc.want {
				if !strings.Contains(out, obj+" created (server dry run)") {
					t.Errorf("dry run did not create %s:\n%s", obj, out)
				}
			}
			if strings.Contains(out, "configmap/kipvs") && tc.dir == reuseOverlay {
				t.Errorf("the overlay still creates kipvs's ConfigMap:\n%s", out)
			}
		})
	}
	// The dry runs changed nothing.
	if _, err := cs.AppsV1().DaemonSets("kube-system").Get(ctx, "kipvs", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet kube-system/kipvs after dry runs: err %v, want NotFound", err)
	}
}
