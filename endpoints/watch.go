package endpoints

import (
	"context"
	"errors"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
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
func Watch(ctx context.Context, client kubernetes.Interface, state *State, resync time.Duration, onChange func()) error {
	logger := klog.FromContext(ctx)
	if onChange == nil {
		onChange = func() {}
	}
	selector := ProxyLabelSelector()
	factory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	nodeSelector := fields.OneTermEqualSelector("metadata.name", state.NodeName()).String()
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = nodeSelector }))

	handlers := []struct {
		informer cache.SharedIndexInformer
		funcs    cache.ResourceEventHandler
	}{
		{factory.Core().V1().Services().Informer(), handlerFor(logger, "Service", state.OnServiceUpdate, onChange)},
		{factory.Discovery().V1().EndpointSlices().Informer(), handlerFor(logger, "EndpointSlice", state.OnEndpointSliceUpdate, onChange)},
		{nodeFactory.Core().V1().Nodes().Informer(), handlerFor(logger, "Node", state.OnNodeUpdate, onChange)},
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
	nodeFactory.Start(ctx.Done())
	defer nodeFactory.Shutdown()
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
