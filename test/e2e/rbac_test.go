//go:build e2etest

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRBAC proves that deploy/'s ClusterRole is what kipvs needs: without
// list/watch on any one of its resources kipvs logs the API server's refusal
// and programs nothing (it waits for all its caches), and once the rule is
// back the same process programs the Service. The shared kipvs is stopped
// meanwhile, so only the restricted one could program the kernel.
func TestRBAC(t *testing.T) {
	requireKipvs(t)
	shared := proxy
	proxy = nil
	t.Cleanup(func() {
		p, err := startKipvs("kipvs", GuestKipvsKubeconfig)
		if err != nil {
			t.Fatalf("restart the shared kipvs: %v", err)
		}
		proxy = p
		ctx, cancel := context.WithTimeout(context.Background(), converge)
		defer cancel()
		if err := waitKipvsReady(ctx, p); err != nil {
			t.Fatal(err)
		}
	})
	if err := shared.Stop(); err != nil {
		t.Fatalf("stop the shared kipvs: %v", err)
	}
	for _, tc := range []struct {
		group, resource string
	}{{"", "services"}, {"discovery.k8s.io", "endpointslices"}, {"", "nodes"}} {
		t.Run("without "+tc.resource, func(t *testing.T) {
			restore := restrictClusterRole(t, tc.group, tc.resource)
			e := newEnvNoKipvs(t, "pod-a")
			svc := e.createService("guarded")
			e.setSlice("guarded-1", "guarded", httpPorts, "pod-a")
			to := vip(t, svc, 80)

			k, err := startKipvs("kipvs-no-"+tc.resource, GuestKipvsKubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := k.Stop(); err != nil {
					t.Errorf("stop restricted kipvs: %v", err)
				}
			}()
			// klog quotes the error: cannot list resource \"services\" ...
			refused := regexp.MustCompile(`forbidden: .*cannot list resource \\?"` + tc.resource + `\\?"`)
			waitFor(t, "kipvs to log that listing "+tc.resource+" is forbidden", func() error {
				if done, err := k.Exited(); done {
					return fmt.Errorf("kipvs exited: %v", err)
				}
				if !refused.MatchString(k.Log()) {
					return fmt.Errorf("no %q in kipvs's log yet", refused)
				}
				return nil
			})
			// Several list attempts fail meanwhile; a sync would take 200ms.
			time.Sleep(3 * time.Second)
			if vs := virtualServer(t, vsKey(tcp, to)); vs != nil {
				t.Errorf("kipvs without %s programmed %+v", tc.resource, *vs)
			}
			if slices.Contains(boundVIPs(t), to.Addr()) {
				t.Errorf("kipvs without %s bound %s", tc.resource, to.Addr())
			}

			restore()
			// The reflector retries with backoff (0.8s doubling, jitter 1.0).
			waitForWithin(t, 45*time.Second, "the restricted kipvs to recover", func() error {
				if vs := virtualServer(t, vsKey(tcp, to)); vs == nil || len(vs.RealServers) != 1 {
					return fmt.Errorf("virtual server %s: %+v", vsKey(tcp, to), vs)
				}
				return nil
			})
			waitAnswering(t, tcp, to, "pod-a")
		})
	}
}

// restrictClusterRole removes resource of group from ClusterRole kipvs and
// returns a function that restores the original rules (also run at cleanup).
func restrictClusterRole(t *testing.T, group, resource string) (restore func()) {
	t.Helper()
	roles := admin.RbacV1().ClusterRoles()
	orig, err := roles.Get(t.Context(), ServiceAccountName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ClusterRole %s: %v", ServiceAccountName, err)
	}
	restricted := orig.DeepCopy()
	restricted.Rules = nil
	removed := false
	for _, r := range orig.Rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) {
			r = *r.DeepCopy()
			r.Resources = slices.DeleteFunc(r.Resources, func(s string) bool { return s == resource })
			removed = true
			if len(r.Resources) == 0 {
				continue
			}
		}
		restricted.Rules = append(restricted.Rules, r)
	}
	if !removed {
		t.Fatalf("ClusterRole %s has no rule for %q in group %q: %+v", ServiceAccountName, resource, group, orig.Rules)
	}
	if _, err := roles.Update(t.Context(), restricted, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("restrict ClusterRole %s: %v", ServiceAccountName, err)
	}
	done := false
	restore = func() {
		if done {
			return
		}
		done = true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cur, err := roles.Get(ctx, ServiceAccountName, metav1.GetOptions{})
		if err == nil {
			cur.Rules = orig.Rules
			_, err = roles.Update(ctx, cur, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Errorf("restore ClusterRole %s: %v", ServiceAccountName, err)
		}
	}
	t.Cleanup(restore)
	return restore
}
