package endpoints

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// waitFor applies s every 10 ms until ok holds for the snapshot, failing the
// test after 10 s. It returns the union of Changed over the Applies it made.
func waitFor(t *testing.T, s *State, what string, ok func(Snapshot) bool) map[string]bool {
	t.Helper()
	changed := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap := s.Apply()
		for n := range snap.Changed {
			changed[n.String()] = true
		}
		if ok(snap) {
			return changed
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other := makeService("ns", "other", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "x"} })
	node1 := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}}}
	node2 := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2", Labels: map[string]string{v1.LabelTopologyZone: "z9"}}}
	client := fake.NewClientset(makeService("ns", "a"), other, node1, node2,
		makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1")))
	// The fake clientset keeps resourceVersions as given; the builders' fixed
	// "1" would make every update look like a periodic resync.
	noRV := func(o metav1.Object) metav1.Object { o.SetResourceVersion(""); return o }

	s := NewState("node1")
	var changes atomic.Int32
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, client, s, 0, func() { changes.Add(1) }) }()

	waitFor(t, s, "initial sync", func(snap Snapshot) bool {
		return s.Synced() && len(snap.Services) == 1 && len(snap.Endpoints) == 1 && snap.Node.Zone == "z1"
	})
	if changes.Load() == 0 {
		t.Error("onChange never called")
	}
	checkSelectors(t, client.Actions())

	// A second slice, a Service update and the Node's zone change all arrive.
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx,
		noRV(makeSlice("ns", "a-2", "a", httpPort, ep("10.1.0.2"))).(*discoveryv1.EndpointSlice), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services("ns").Update(ctx, noRV(makeService("ns", "a",
		withPorts(v1.ServicePort{Name: "http", Port: 81, Protocol: v1.ProtocolTCP}))).(*v1.Service), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	node1.Labels[v1.LabelTopologyZone] = "z2"
	if _, err := client.CoreV1().Nodes().Update(ctx, node1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	key := spn("ns", "a", "http", v1.ProtocolTCP)
	changed := waitFor(t, s, "updates", func(snap Snapshot) bool {
		svc := snap.Services[nn("ns", "a")]
		return len(snap.Endpoints[key]) == 2 && svc != nil && svc.Ports[0].Port == 81 && snap.Node.Zone == "z2"
	})
	if !changed["ns/a"] {
		t.Errorf("ns/a not reported changed: %v", changed)
	}

	// Deletes remove the Service and its endpoints.
	if err := client.CoreV1().Services("ns").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a-1", "a-2"} {
		if err := client.DiscoveryV1().EndpointSlices("ns").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, s, "deletes", func(snap Snapshot) bool { return len(snap.Services) == 0 && len(snap.Endpoints) == 0 })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch after sync returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}

// checkSelectors asserts the list requests kipvs made carry kube-proxy's
// selectors, so the API server filters other proxies' objects and other Nodes.
func checkSelectors(t *testing.T, actions []k8stesting.Action) {
	t.Helper()
	seen := map[string]bool{}
	for _, a := range actions {
		l, ok := a.(k8stesting.ListAction)
		if !ok {
			continue
		}
		res := l.GetResource().Resource
		seen[res] = true
		r := l.GetListRestrictions()
		switch res {
		case "services", "endpointslices":
			if got, want := r.Labels.String(), ProxyLabelSelector(); got != want {
				t.Errorf("%s listed with label selector %q, want %q", res, got, want)
			}
		case "nodes":
			if got := r.Fields.String(); got != "metadata.name=node1" {
				t.Errorf("nodes listed with field selector %q", got)
			}
		}
	}
	for _, res := range []string{"services", "endpointslices", "nodes"} {
		if !seen[res] {
			t.Errorf("no list of %s", res)
		}
	}
	if want := "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"; ProxyLabelSelector() != want {
		t.Errorf("ProxyLabelSelector = %q, want %q", ProxyLabelSelector(), want)
	}
}

func TestWatchCancelledBeforeSync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	client := fake.NewClientset()
	// Services never list, so the caches never sync.
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-ctx.Done()
		return true, nil, ctx.Err()
	})
	s := NewState("node1")
	err := Watch(ctx, client, s, 0, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Watch = %v, want context.DeadlineExceeded", err)
	}
	if s.Synced() {
		t.Error("State marked synced")
	}
}

func TestHandlerTombstonesAndResyncs(t *testing.T) {
	s := NewState("node1")
	var changes int
	h := handlerFor(klog.Background(), "Service", s.OnServiceUpdate, func() { changes++ })
	svc := makeService("ns", "a")

	h.OnAdd(svc, true)
	s.Apply()
	h.OnUpdate(svc, svc) // periodic resync: same resourceVersion
	if changes != 1 {
		t.Errorf("onChange called %d times, want 1 (resync must be dropped)", changes)
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: svc})
	snap := s.Apply()
	if _, ok := snap.Services[nn("ns", "a")]; ok || !snap.Changed.Has(nn("ns", "a")) {
		t.Errorf("tombstone delete not applied: services %v, changed %v", snap.Services, snap.Changed)
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/x", Obj: &discoveryv1.EndpointSlice{}}) // wrong type: ignored
	if changes != 2 {
		t.Errorf("onChange called %d times, want 2", changes)
	}
}

// apiServerState is a state fake of an APIServerObserver: each resource's
// latest request error.
type apiServerState struct {
	mu     sync.Mutex
	latest map[string]error
}

func (a *apiServerState) ObserveAPIServer(resource string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.latest == nil {
		a.latest = map[string]error{}
	}
	a.latest[resource] = err
}

// get returns the latest error of resource and whether any request was seen.
func (a *apiServerState) get(resource string) (error, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	err, ok := a.latest[resource]
	return err, ok
}

// TestWatchReportsAPIServer: a list that fails is reported with its error,
// the informer's retry that succeeds clears it, and the caches sync only then.
func TestWatchReportsAPIServer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset(makeService("ns", "a"))
	var down atomic.Bool
	down.Store(true)
	refused := errors.New("dial tcp 10.0.0.1:6443: connect: connection refused")
	client.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			return true, nil, refused
		}
		return false, nil, nil
	})
	obs := &apiServerState{}
	s := NewState("node1")
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, client, s, 0, nil, WithAPIServerObserver(obs)) }()

	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("the failed list of endpointslices to be reported", func() bool {
		err, seen := obs.get("endpointslices")
		return seen && errors.Is(err, refused)
	})
	wait("services to be listed", func() bool {
		err, seen := obs.get("services")
		return seen && err == nil
	})
	if s.Synced() {
		t.Fatal("caches synced although endpointslices never listed")
	}
	down.Store(false)
	wait("the retried list of endpointslices to clear the error", func() bool {
		err, seen := obs.get("endpointslices")
		return seen && err == nil
	})
	wait("the caches to sync", s.Synced)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch = %v after its context ended, want nil", err)
	}
	// Requests ended by the cancelled context are not reported as failures.
	for _, res := range []string{"services", "endpointslices", "nodes"} {
		if err, _ := obs.get(res); err != nil {
			t.Errorf("%s reported %v after kipvs stopped, want nil", res, err)
		}
	}
}
