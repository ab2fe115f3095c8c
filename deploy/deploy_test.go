// Package deploy_test checks the kustomize base in deploy/base: that the
// ConfigMap's KubeProxyConfiguration loads in kipvs's strict loader without a
// warning, and that the DaemonSet agrees with the ConfigMap and the RBAC
// objects it names. The API server validates the same files in test/e2e
// (kubectl apply --dry-run=server).
package deploy_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kipvs/kipvs/proxier/config"
)

// configKey is the ConfigMap key kipvs reads, as in kube-proxy's ConfigMap.
const configKey = "config.conf"

// readObjects strictly decodes the YAML documents of file (in base/) whose kind
// is kind into new(T) each; an unknown or misspelt field fails the test.
func readObjects[T any](t *testing.T, file, kind string) []*T {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("base", file))
	if err != nil {
		t.Fatal(err)
	}
	var out []*T
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if meta.Kind != kind {
			continue
		}
		obj := new(T)
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %s: %v", file, kind, err)
		}
		out = append(out, obj)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no %s", file, kind)
	}
	return out
}

func readConfigMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	return readObjects[corev1.ConfigMap](t, "config.yaml", "ConfigMap")[0]
}

func readDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	return readObjects[appsv1.DaemonSet](t, "daemonset.yaml", "DaemonSet")[0]
}

// TestConfigLoads runs the ConfigMap's config.conf through kipvs's loader
// (config.Options.Complete with --config), as the DaemonSet does: no error and
// no warning, so every setting in it is one kipvs applies.
func TestConfigLoads(t *testing.T) {
	cm := readConfigMap(t)
	conf, ok := cm.Data[configKey]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", cm.Name, configKey)
	}
	path := filepath.Join(t.TempDir(), configKey)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "node-a")
	opts := config.NewOptions()
	opts.ConfigFile = path
	cfg, warnings, err := opts.Complete()
	if err != nil {
		t.Fatalf("config.conf does not load: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("config.conf: warning: %s", w)
	}
	if opts.Mode != "ipvs" {
		t.Errorf("mode = %q, want ipvs", opts.Mode)
	}
	if cfg.NodeName != "node-a" {
		t.Errorf("node name = %q, want node-a from NODE_NAME", cfg.NodeName)
	}
}

// TestKustomizationListsEveryFile fails when a YAML file in base/ is not a
// resource of base/kustomization.yaml (kubectl apply -k would skip it).
func TestKustomizationListsEveryFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("base", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("base/kustomization.yaml: %v", err)
	}
	files, err := filepath.Glob(filepath.Join("base", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name != "kustomization.yaml" && !slices.Contains(k.Resources, name) {
			t.Errorf("base/%s is not listed in base/kustomization.yaml resources %v", name, k.Resources)
		}
	}
}

// TestDaemonSetMatchesConfigAndRBAC checks what ties the DaemonSet to the
// other objects and to kipvs: the --config path, the probes' port, the
// ServiceAccount, the node name, and what kipvs needs from the node.
func TestDaemonSetMatchesConfigAndRBAC(t *testing.T) {
	ds := readDaemonSet(t)
	cm := readConfigMap(t)
	sa := readObjects[corev1.ServiceAccount](t, "rbac.yaml", "ServiceAccount")[0]
	healthz := healthzPort(t, cm.Data[configKey])

	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}

	for _, tc := range []struct {
		what string
		ok   bool
	}{
		{"namespace is the ServiceAccount's", ds.Namespace == sa.Namespace},
		{"serviceAccountName is deploy's ServiceAccount", pod.ServiceAccountName == sa.Name},
		{"--config reads config.conf of the mounted ConfigMap", configMounted(c.Args, mounts, volumes, cm.Name)},
		{"liveness probe is /livez on the healthz port", probeIs(c.LivenessProbe, "/livez", healthz)},
		{"readiness probe is /healthz on the healthz port", probeIs(c.ReadinessProbe, "/healthz", healthz)},
		{"NODE_NAME comes from spec.nodeName", envFromField(c.Env, "NODE_NAME", "spec.nodeName")},
		{"hostNetwork with dnsPolicy ClusterFirstWithHostNet",
			pod.HostNetwork && pod.DNSPolicy == corev1.DNSClusterFirstWithHostNet},
		{"priorityClassName system-node-critical", pod.PriorityClassName == "system-node-critical"},
		{"tolerates every taint", slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
		})},
		{"privileged (writable /proc/sys)", c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged},
		{"/lib/modules from the host, read-only", hostPathMount(mounts, volumes, "/lib/modules", "/lib/modules", true)},
		{"/run/xtables.lock from the host, FileOrCreate", hostPathMount(mounts, volumes, "/run/xtables.lock", "/run/xtables.lock", false) &&
			*volumes[mounts["/run/xtables.lock"].Name].HostPath.Type == corev1.HostPathFileOrCreate},
		{"memory limit set", !c.Resources.Limits.Memory().IsZero()},
		{"RollingUpdate one node at a time", ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType &&
			ds.Spec.UpdateStrategy.RollingUpdate != nil && ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() == 1},
	} {
		if !tc.ok {
			t.Errorf("DaemonSet %s: want %s", ds.Name, tc.what)
		}
	}
}

// healthzPort is the port of healthzBindAddress in the KubeProxyConfiguration conf.
func healthzPort(t *testing.T, conf string) int {
	t.Helper()
	cfg, err := config.Decode([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	_, port, err := net.SplitHostPort(cfg.HealthzBindAddress)
	if err != nil {
		t.Fatalf("healthzBindAddress %q: %v", cfg.HealthzBindAddress, err)
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// configMounted reports whether args hold --config=DIR/config.conf and DIR is
// a mount of a volume of ConfigMap cmName.
func configMounted(args []string, mounts map[string]corev1.VolumeMount, volumes map[string]corev1.Volume, cmName string) bool {
	for _, a := range args {
		path, ok := strings.CutPrefix(a, "--config=")
		if !ok || filepath.Base(path) != configKey {
			continue
		}
		m, ok := mounts[filepath.Dir(path)]
		if !ok {
			return false
		}
		v := volumes[m.Name]
		return v.ConfigMap != nil && v.ConfigMap.Name == cmName
	}
	return false
}

func probeIs(p *corev1.Probe, path string, port int) bool {
	return p != nil && p.HTTPGet != nil && p.HTTPGet.Path == path && p.HTTPGet.Port.IntValue() == port
}

func envFromField(env []corev1.EnvVar, name, fieldPath string) bool {
	return slices.ContainsFunc(env, func(e corev1.EnvVar) bool {
		return e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == fieldPath
	})
}

func hostPathMount(mounts map[string]corev1.VolumeMount, volumes map[string]corev1.Volume, mountPath, hostPath string, readOnly bool) bool {
	m, ok := mounts[mountPath]
	if !ok || m.ReadOnly != readOnly {
		return false
	}
	v := volumes[m.Name]
	return v.HostPath != nil && v.HostPath.Path == hostPath && v.HostPath.Type != nil
}
