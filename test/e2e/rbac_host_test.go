//go:build !e2etest

package e2e

import (
	"context"
	"fmt"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kipvs/kipvs/test/apiserver"
)

// checkServiceAccountAccess asks the API server (SubjectAccessReview) what
// kipvs's ServiceAccount may do once deploy/ is applied: exactly what kipvs
// needs, nothing more.
func checkServiceAccountAccess(t *testing.T, s *apiserver.Server) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(s.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("system:serviceaccount:%s:%s", ServiceAccountNamespace, ServiceAccountName)
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ServiceAccountNamespace, "system:authenticated"}
	for _, tc := range []struct {
		verb, group, resource string
		allowed               bool
	}{
		{"list", "", "services", true},
		{"watch", "", "services", true},
		{"get", "discovery.k8s.io", "endpointslices", true},
		{"list", "discovery.k8s.io", "endpointslices", true},
		{"watch", "", "nodes", true},
		{"create", "", "events", true},
		{"patch", "events.k8s.io", "events", true},
		{"create", "", "services", false},
		{"update", "", "services", false},
		{"delete", "discovery.k8s.io", "endpointslices", false},
		{"patch", "", "nodes", false},
		{"list", "", "endpoints", false},
		{"list", "", "pods", false},
		{"get", "", "secrets", false},
		{"delete", "", "events", false},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: tc.verb, Group: tc.group, Resource: tc.resource},
		}}
		got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview: %v", err)
		}
		if got.Status.Allowed != tc.allowed {
			t.Errorf("%s may %s %s (group %q): %v, want %v (%s)", user, tc.verb, tc.resource, tc.group,
				got.Status.Allowed, tc.allowed, got.Status.Reason)
		}
	}
}
