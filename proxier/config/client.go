package config

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// RESTConfig builds the API client configuration: from --kubeconfig and/or
// --master when either is set (like kube-proxy), else from the pod's service
// account (in-cluster). QPS, burst and content types come from the options.
func (o *Options) RESTConfig() (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if o.Kubeconfig != "" || o.Master != "" {
		rc, err = clientcmd.BuildConfigFromFlags(o.Master, o.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("API client from --kubeconfig=%q --master=%q: %w", o.Kubeconfig, o.Master, err)
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no API server configured: pass --kubeconfig or --master (or clientConnection.kubeconfig in --config), or run kipvs in a pod with a service account (in-cluster config: %w)", err)
		}
	}
	rc.QPS = o.QPS
	rc.Burst = int(o.Burst)
	if o.ContentType != "" {
		rc.ContentType = o.ContentType
	}
	if o.AcceptContentTypes != "" {
		rc.AcceptContentTypes = o.AcceptContentTypes
	}
	return rc, nil
}

// NewClient builds a Kubernetes client from the options; see RESTConfig.
func NewClient(o *Options) (kubernetes.Interface, error) {
	rc, err := o.RESTConfig()
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("API client for %s: %w", rc.Host, err)
	}
	return client, nil
}

// DefaultAPIServerBackoff is the retry schedule of WaitForAPIServer: 1s,
// doubling, at most 30s between attempts.
var DefaultAPIServerBackoff = wait.Backoff{Duration: time.Second, Factor: 2, Jitter: 0.1, Steps: 6, Cap: 30 * time.Second}

// WaitForAPIServer asks the API server for its version until it answers, so
// that kipvs starts its informers against a reachable server and says clearly
// why it cannot. It logs one line per failed attempt and waits backoff.Step()
// between attempts; once the backoff's steps are used up it keeps retrying at
// the last interval. It gives up only when ctx is done, returning the last
// error.
func WaitForAPIServer(ctx context.Context, client discovery.ServerVersionInterface, backoff wait.Backoff) error {
	logger := klog.FromContext(ctx)
	for attempt := 1; ; attempt++ {
		v, err := client.ServerVersion()
		if err == nil {
			logger.Info("Connected to the API server", "version", v.GitVersion, "attempts", attempt)
			return nil
		}
		delay := backoff.Step()
		logger.Info("Waiting for the API server", "attempt", attempt, "err", err, "retryIn", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("API server not reachable after %d attempts: %w", attempt, errors.Join(err, context.Cause(ctx)))
		case <-t.C:
		}
	}
}
