package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/kipvs/kipvs/test/bench/layout"
)

// api changes the benchmark's EndpointSlices. It keeps the last version of
// each slice it wrote, so a change is one Update.
type api struct {
	cs kubernetes.Interface

	mu     sync.Mutex
	slices map[int]*discoveryv1.EndpointSlice
	vips   map[int]netip.Addr
}

func newAPI(kubeconfig string) (*api, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &api{cs: cs, slices: map[int]*discoveryv1.EndpointSlice{}, vips: map[int]netip.Addr{}}, nil
}

// vip returns Service i's ClusterIP.
func (a *api) vip(ctx context.Context, i int) (netip.Addr, error) {
	a.mu.Lock()
	v, ok := a.vips[i]
	a.mu.Unlock()
	if ok {
		return v, nil
	}
	svc, err := a.cs.CoreV1().Services(layout.Namespace).Get(ctx, layout.ServiceName(i), metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, err
	}
	v, err = netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("Service %s: %w", svc.Name, err)
	}
	a.mu.Lock()
	a.vips[i] = v
	a.mu.Unlock()
	return v, nil
}

// prepare fetches Service i's slice, so that setEndpoints is one API call.
func (a *api) prepare(ctx context.Context, i int) error {
	a.mu.Lock()
	_, ok := a.slices[i]
	a.mu.Unlock()
	if ok {
		return nil
	}
	s, err := a.cs.DiscoveryV1().EndpointSlices(layout.Namespace).Get(ctx, layout.SliceName(i), metav1.GetOptions{})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.slices[i] = s
	a.mu.Unlock()
	return nil
}

// setEndpoints writes Service i's slice with endpoints 0..n-1 (one Update).
func (a *api) setEndpoints(ctx context.Context, i, n int) error {
	if err := a.prepare(ctx, i); err != nil {
		return err
	}
	a.mu.Lock()
	prev := a.slices[i]
	a.mu.Unlock()
	want := layout.Slice(i, n)
	want.ResourceVersion = prev.ResourceVersion
	got, err := a.cs.DiscoveryV1().EndpointSlices(layout.Namespace).Update(ctx, want, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update slice of %s: %w", layout.ServiceName(i), err)
	}
	a.mu.Lock()
	a.slices[i] = got
	a.mu.Unlock()
	return nil
}

// Ports of the probe Service: an echo server and a sink for throughput.
const (
	probeEchoPort = 8080
	probeSinkPort = 9000
	probeSinkName = "sink"
)

// createProbe creates the probe Service (or reuses the one an earlier VM
// created) and points its EndpointSlice at pod; it returns the ClusterIP.
func (a *api) createProbe(ctx context.Context, pod netip.Addr) (netip.Addr, error) {
	svcs := a.cs.CoreV1().Services(layout.Namespace)
	slices := a.cs.DiscoveryV1().EndpointSlices(layout.Namespace)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: layout.Namespace, Name: layout.ProbeService},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: layout.PortName, Protocol: corev1.ProtocolTCP, Port: layout.Port, TargetPort: intstr.FromInt32(probeEchoPort)},
			{Name: probeSinkName, Protocol: corev1.ProtocolTCP, Port: probeSinkPort, TargetPort: intstr.FromInt32(probeSinkPort)},
		}},
	}
	got, err := svcs.Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		got, err = svcs.Get(ctx, layout.ProbeService, metav1.GetOptions{})
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("probe Service: %w", err)
	}
	slice := layout.SliceFor(layout.ProbeService, layout.ProbeService+"-1", probeEchoPort, pod)
	slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(probeSinkName), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](probeSinkPort)})
	_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *discoveryv1.EndpointSlice
		if cur, err = slices.Get(ctx, slice.Name, metav1.GetOptions{}); err == nil {
			slice.ResourceVersion = cur.ResourceVersion
			_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("probe slice: %w", err)
	}
	return netip.ParseAddr(got.Spec.ClusterIP)
}
