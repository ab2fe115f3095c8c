package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kipvs/kipvs/test/apiserver"
	"github.com/kipvs/kipvs/test/bench/layout"
)

// populate creates the namespace, the Node and n Services with one
// EndpointSlice of eps endpoints each, from the host, with parallel creates.
func populate(ctx context.Context, s *apiserver.Server, n, eps int) error {
	cfg := s.ClientConfig()
	cfg.QPS, cfg.Burst = 5000, 5000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: layout.Namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: layout.NodeName}}
	got, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Node: %w", err)
	}
	got.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: layout.NodeIP}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("Node status: %w", err)
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := createOne(ctx, cs, i, eps); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	logf("created %d Services with %d endpoints each in %s", n, eps, time.Since(start).Round(time.Millisecond))
	return nil
}

func createOne(ctx context.Context, cs kubernetes.Interface, i, eps int) error {
	if _, err := cs.CoreV1().Services(layout.Namespace).Create(ctx, layout.Service(i), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s: %w", layout.ServiceName(i), err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(layout.Namespace).Create(ctx, layout.Slice(i, eps), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create slice of %s: %w", layout.ServiceName(i), err)
	}
	return nil
}

// restore writes back the slices of the Services the agent may change, in
// case a VM ended before it put them back.
func restore(ctx context.Context, s *apiserver.Server, n, eps int) error {
	cs, err := kubernetes.NewForConfig(s.ClientConfig())
	if err != nil {
		return err
	}
	for i := range min(n, layout.MutableServices) {
		cur, err := cs.DiscoveryV1().EndpointSlices(layout.Namespace).Get(ctx, layout.SliceName(i), metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(cur.Endpoints) == eps {
			continue
		}
		want := layout.Slice(i, eps)
		want.ResourceVersion = cur.ResourceVersion
		if _, err := cs.DiscoveryV1().EndpointSlices(layout.Namespace).Update(ctx, want, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}
