//go:build e2etest

package e2e

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// TestEvents: a Service kipvs cannot program (unknown scheduler in its
// annotation) gets no virtual server and a Warning Event that kipvs writes
// with deploy/'s events permissions; fixing the annotation programs it with
// that scheduler.
func TestEvents(t *testing.T) {
	e := newEnv(t, "pod-a", "pod-b")
	svc := e.createService("odd", func(s *corev1.Service) {
		s.Annotations = map[string]string{proxier.SchedulerAnnotation: "bogus"}
	})
	e.setSlice("odd-1", "odd", httpPorts, "pod-a", "pod-b")
	to := vip(t, svc, 80)
	waitFor(t, "a Warning Event on Service odd", func() error {
		list, err := admin.EventsV1().Events(e.ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ev := range list.Items {
			if ev.Regarding.Kind == "Service" && ev.Regarding.Name == "odd" && ev.Reason == proxier.ReasonServiceError &&
				ev.Type == corev1.EventTypeWarning && strings.Contains(ev.Note, "bogus") {
				return nil
			}
		}
		return fmt.Errorf("no %s Event for Service odd among %d", proxier.ReasonServiceError, len(list.Items))
	})
	if vs := virtualServer(t, vsKey(tcp, to)); vs != nil {
		t.Errorf("Service with an unknown scheduler was programmed: %+v", *vs)
	}

	e.updateService("odd", func(s *corev1.Service) { s.Annotations[proxier.SchedulerAnnotation] = "wrr" })
	waitVirtualServer(t, vsKey(tcp, to), true, func(vs ipvs.VirtualServerStatus) error {
		if vs.Scheduler != "wrr" {
			return fmt.Errorf("%s scheduler %q, want wrr", vs.VirtualServerKey, vs.Scheduler)
		}
		return nil
	})
	waitAnswering(t, tcp, to, "pod-a", "pod-b")
}
