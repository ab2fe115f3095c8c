package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/component-base/metrics"
)

// Handler serves the metrics of reg in the Prometheus text format.
func Handler(reg metrics.KubeRegistry) http.Handler {
	return metrics.HandlerFor(reg, metrics.HandlerOpts{})
}

// Listen opens addr (host:port) for one of kipvs's HTTP servers; what names
// the server in errors. Listening before serving lets a busy port fail at startup.
func Listen(what, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s server on %s: %w", what, addr, err)
	}
	return l, nil
}

// Serve serves h on l until ctx ends, then shuts down within a few seconds.
// It returns nil after ctx ended, else the server's error.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	return err
}
