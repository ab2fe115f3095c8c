package endpoints

import (
	"context"
	"errors"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// ProxyLabelSelector is the label selector kipvs lists and watches Services and
// EndpointSlices with, the same as kube-proxy's (cmd/kube-proxy/app/server.go):
// objects another proxy owns and the slices of headless Services are filtered
// out by the API server.
func ProxyLabelSelector() string {
	noProxyName, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // constant input
	}
	noHeadless, err := labels.NewRequirement(LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*noProxyName, *noHeadless).String()
}

// Watch runs informers for Services, EndpointSlices and this node's Node (the
// node name given to NewState) and feeds every event into state, calling
// onChange (which may be nil) after each one. Once every handler has seen its
// informer's initial list it calls state.SetSynced and onChange. It returns
// ctx's error if ctx ends before the caches sync, and nil when ctx ends after.
func Watch(ctx context.Context, client kubernetes.Interface, state *State, resync time.Duration, onChange func(), opts ...WatchOption) error {
	logger := klog.FromContext(ctx)
	if onChange == nil {
		onChange = func() {}
	}
	var o watchOptions
	for _, opt := range opts {
		opt(&o)
	}
	tracker := newAPIServerTracker(logger, o.observer)
	selector := ProxyLabelSelector()
	nodeSelector := fields.OneTermEqualSelector("metadata.name", state.NodeName()).String()
	proxied := func(lo *metav1.ListOptions) { lo.LabelSelector = selector }
	thisNode := func(lo *metav1.ListOptions) { lo.FieldSelector = nodeSelector }
	factory := informers.NewSharedInformerFactory(client, resync)
	services := trackedInformer(factory, client, tracker, "services", &v1.Service{}, proxied,
		client.CoreV1().Services(metav1.NamespaceAll).List, client.CoreV1().Services(metav1.NamespaceAll).Watch)
	slices := trackedInformer(factory, client, tracker, "endpointslices", &discoveryv1.EndpointSlice{}, proxied,
		client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List, client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch)
	nodes := trackedInformer(factory, client, tracker, "nodes", &v1.Node{}, thisNode,
		client.CoreV1().Nodes().List, client.CoreV1().Nodes().Watch)

	handlers := []struct {
		informer cache.SharedIndexInformer
		funcs    cache.ResourceEventHandler
	}{
		{services, handlerFor(logger, "Service", state.OnServiceUpdate, onChange)},
		{slices, handlerFor(logger, "EndpointSlice", state.OnEndpointSliceUpdate, onChange)},
		{nodes, handlerFor(logger, "Node", state.OnNodeUpdate, onChange)},
	}
	var synced []cache.InformerSynced
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandlerWithOptions(h.funcs, cache.HandlerOptions{Logger: &logger})
		if err != nil {
			return err
		}
		synced = append(synced, reg.HasSynced)
	}

	factory.Start(ctx.Done())
	defer factory.Shutdown()

	logger.V(2).Info("Waiting for Service, EndpointSlice and Node caches", "node", state.NodeName())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if err := ctx.Err(); err != nil {
			return err
		}
		return errors.New("informer caches did not sync")
	}
	state.SetSynced()
	logger.V(2).Info("Service, EndpointSlice and Node caches synced")
	onChange()
	<-ctx.Done()
	return nil
}

// apiObject is the set of types Watch hands to State.
type apiObject interface {
	*v1.Service | *discoveryv1.EndpointSlice | *v1.Node
	GetResourceVersion() string
	klog.KMetadata
}

// handlerFor adapts a State method to informer callbacks. Periodic resyncs
// (same resourceVersion) are dropped: they cannot change anything. Deletes may
// deliver a cache.DeletedFinalStateUnknown tombstone holding the last known object.
func handlerFor[T apiObject](logger klog.Logger, kind string, update func(prev, cur T), onChange func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(T); ok {
				logger.V(4).Info("Object added", "kind", kind, "object", klog.KObj(o))
				update(nil, o)
				onChange()
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			prev, ok1 := oldObj.(T)
			cur, ok2 := newObj.(T)
			if !ok1 || !ok2 || prev.GetResourceVersion() == cur.GetResourceVersion() && cur.GetResourceVersion() != "" {
				return
			}
			logger.V(4).Info("Object updated", "kind", kind, "object", klog.KObj(cur))
			update(prev, cur)
			onChange()
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if o, ok := obj.(T); ok {
				logger.V(4).Info("Object deleted", "kind", kind, "object", klog.KObj(o))
				update(o, nil)
				onChange()
			}
		},
	}
}

// APIServerObserver is told how each list and watch request of Watch's
// informers went, so that health and status can report an API server that
// kipvs cannot reach (proxier.Health implements it).
type APIServerObserver interface {
	// ObserveAPIServer is called after every list and watch request with the
	// resource ("services", "endpointslices", "nodes") and the request's
	// error, nil when it succeeded. It may be called from any goroutine.
	ObserveAPIServer(resource string, err error)
}

// WatchOption changes what Watch does besides feeding State.
type WatchOption func(*watchOptions)

type watchOptions struct {
	observer APIServerObserver
}

// WithAPIServerObserver makes Watch tell o about every list and watch request.
func WithAPIServerObserver(o APIServerObserver) WatchOption {
	return func(w *watchOptions) { w.observer = o }
}

// apiServerTracker logs when a resource's lists and watches start failing and
// when they succeed again, and forwards every result to the observer. The
// reflectors retry with backoff (0.8 s doubling to 30 s, jittered) on their own;
// meanwhile the kernel keeps what the last sync programmed.
type apiServerTracker struct {
	logger   klog.Logger
	observer APIServerObserver

	mu      sync.Mutex
	failing map[string]time.Time // resource -> when its requests started failing
}

func newAPIServerTracker(logger klog.Logger, o APIServerObserver) *apiServerTracker {
	return &apiServerTracker{logger: logger, observer: o, failing: map[string]time.Time{}}
}

// observe records one request's result. Errors caused by ctx ending (kipvs
// stopping) are not failures of the API server.
func (t *apiServerTracker) observe(ctx context.Context, resource string, err error) {
	if err != nil && ctx.Err() != nil {
		return
	}
	t.mu.Lock()
	since, wasFailing := t.failing[resource]
	switch {
	case err != nil && !wasFailing:
		t.failing[resource] = time.Now()
		t.logger.Error(err, "API server unreachable: cannot list or watch; the programmed rules stay in place", "resource", resource)
	case err == nil && wasFailing:
		delete(t.failing, resource)
		t.logger.Info("API server reachable again", "resource", resource, "unreachableFor", time.Since(since).Round(time.Millisecond))
	}
	t.mu.Unlock()
	if t.observer != nil {
		t.observer.ObserveAPIServer(resource, err)
	}
}

// trackedInformer registers with factory the informer for obj's type whose
// lists and watches (narrowed by tweak) report to tracker. It is the informer
// client-go generates (same watch-list handling, namespace index) plus tracking:
// a SharedInformer's watch error handler alone would miss the recovery, and a
// watch refused with ECONNREFUSED is retried inside the reflector without it.
func trackedInformer[L runtime.Object](factory informers.SharedInformerFactory, client kubernetes.Interface,
	tracker *apiServerTracker, resource string, obj runtime.Object, tweak func(*metav1.ListOptions),
	list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	listCtx := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		tweak(&o)
		l, err := list(ctx, o)
		tracker.observe(ctx, resource, err)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	watchCtx := func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		tweak(&o)
		w, err := watchFn(ctx, o)
		tracker.observe(ctx, resource, err)
		return w, err
	}
	return factory.InformerFor(obj, func(_ kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		lw := &cache.ListWatch{
			ListFunc:             func(o metav1.ListOptions) (runtime.Object, error) { return listCtx(context.Background(), o) },
			WatchFunc:            func(o metav1.ListOptions) (watch.Interface, error) { return watchCtx(context.Background(), o) },
			ListWithContextFunc:  listCtx,
			WatchFuncWithContext: watchCtx,
		}
		return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), obj,
			cache.SharedIndexInformerOptions{ResyncPeriod: resync, Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}})
	})
}
