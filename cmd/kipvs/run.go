package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	logsapi "k8s.io/component-base/logs/api/v1"
	basemetrics "k8s.io/component-base/metrics"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/metrics"
	"github.com/kipvs/kipvs/proxier"
	"github.com/kipvs/kipvs/proxier/config"
)

// run starts the proxy. Everything that can fail on this node (configuration,
// IPVS support, permissions) is checked before kipvs contacts the API server.
func run(ctx context.Context, opts *config.Options) error {
	cfg, warnings, err := opts.Complete()
	if err != nil {
		return err
	}
	if err := logsapi.ValidateAndApply(opts.Logging, nil); err != nil {
		return fmt.Errorf("logging configuration: %w", err)
	}
	defer klog.Flush()
	logger := klog.Background().WithName("kipvs")
	ctx = klog.NewContext(ctx, logger)
	for _, w := range warnings {
		logger.Info("Configuration warning", "warning", w)
	}
	logger.Info("Starting kipvs", "version", version, "node", cfg.NodeName, "scheduler", cfg.Scheduler,
		"syncPeriod", cfg.SyncPeriod, "minSyncPeriod", cfg.MinSyncPeriod, "dummyLink", cfg.DummyLink)

	ipv, err := ipvs.New()
	if err != nil {
		return err
	}
	defer func() { _ = ipv.Close() }()
	if err := ipv.Probe(ctx); err != nil {
		return probeError(err)
	}

	client, err := config.NewClient(opts)
	if err != nil {
		return err
	}
	if err := config.WaitForAPIServer(ctx, client.Discovery(), config.DefaultAPIServerBackoff); err != nil {
		return err
	}

	nfk, backend, err := proxier.NewNetfilterKernel(ctx)
	if err != nil {
		return fmt.Errorf("setting up iptables: %w", err)
	}
	logger.Info("Netfilter", "backend", backend)
	defer func() { _ = nfk.Close() }()

	state := endpoints.NewState(cfg.NodeName)
	// kube-proxy's bound: an update not synced within 2 x syncPeriod is unhealthy.
	health := proxier.NewHealth(clock.RealClock{}, 2*cfg.SyncPeriod)
	// healthCheckNodePort servers listen on every address, as kube-proxy's do
	// without nodePortAddresses, and report the proxy's health with the Service's.
	hcs := proxier.NewHealthCheckServer(proxier.NetListener{}, nil, func() bool { return health.Report(false).Healthy })
	defer hcs.Close()
	addrs, err := proxier.OpenNetlinkAddresses()
	if err != nil {
		return err
	}
	defer func() { _ = addrs.Close() }()
	p := proxier.New(cfg, state, ipv, addrs, clock.RealClock{},
		proxier.WithNetfilter(nfk), proxier.WithConntrack(proxier.NewNetlinkConntrack()), proxier.WithHealthCheckServer(hcs))
	if err := p.Setup(ctx); err != nil {
		return err
	}
	// Taking over from kube-proxy: its IPVS-mode rules and sets go once kipvs's are in place.
	p.AddObserver(proxier.NewTakeover(ctx, proxier.NetfilterCleaner(nfk)))

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if err := observe(runCtx, opts, p, state, health, client, logger); err != nil {
		return err
	}
	watchErr := make(chan error, 1)
	go func() {
		defer close(watchErr)
		if err := endpoints.Watch(runCtx, client, state, opts.ConfigSyncPeriod, p.QueueSync, endpoints.WithAPIServerObserver(health)); err != nil && runCtx.Err() == nil {
			watchErr <- err
			stop()
		}
	}()
	p.Run(runCtx)
	stop()
	if err := <-watchErr; err != nil {
		return fmt.Errorf("watching the API server: %w", err)
	}
	logger.Info("Stopped; the IPVS table and the addresses on the dummy link stay in place", "dummyLink", cfg.DummyLink)
	return nil
}

// probeError turns a failed IPVS probe into the message an operator acts on.
func probeError(err error) error {
	switch {
	case errors.Is(err, ipvs.ErrNotSupported):
		return fmt.Errorf("IPVS is not available in this kernel: load the modules with `modprobe -a %s` (%w)",
			strings.Join(ipvs.KernelModules(), " "), err)
	case errors.Is(err, ipvs.ErrPermission):
		return fmt.Errorf("kipvs needs CAP_NET_ADMIN (run as root or grant the capability): %w", err)
	}
	return fmt.Errorf("IPVS probe failed: %w", err)
}

// observe wires metrics, the health server, the status endpoint and Events to
// the proxier, and starts the HTTP servers (stopped when ctx ends). A busy
// address fails here, before the first sync.
func observe(ctx context.Context, opts *config.Options, p *proxier.Proxier, state *endpoints.State, health *proxier.Health,
	client kubernetes.Interface, logger klog.Logger) error {
	reg := basemetrics.NewKubeRegistry()
	reg.RawMustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(state.Pending, "/proc")
	m.Register(reg)
	p.AddObserver(m)
	health.SetObserver(m.ObserveHealthCheck)
	p.AddObserver(health)

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		return fmt.Errorf("starting the event broadcaster: %w", err)
	}
	go func() { <-ctx.Done(); broadcaster.Shutdown() }()
	recorder := broadcaster.NewRecorder(scheme.Scheme, "kipvs")
	p.AddObserver(proxier.NewEventReporter(recorder, state.Rejected, clock.RealClock{}, logger))

	status := p.StatusHandler(proxier.StatusOptions{
		Rejected: state.Rejected,
		Conntrack: func() (int64, int64, bool) {
			fill, ok, err := metrics.ReadConntrack("/proc")
			return fill.Entries, fill.Limit, ok && err == nil
		},
		APIServer: health.APIServer,
	})
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	mux.Handle("/status", status)
	servers := []struct {
		what, addr string
		handler    http.Handler
	}{{"healthz", opts.HealthzBindAddress, health.Handler()}, {"metrics", opts.MetricsBindAddress, mux}}
	for _, s := range servers {
		if s.addr == "" {
			continue
		}
		l, err := metrics.Listen(s.what, s.addr)
		if err != nil {
			return err
		}
		logger.Info("Serving", "server", s.what, "address", l.Addr().String())
		go func() {
			if err := metrics.Serve(ctx, l, s.handler); err != nil {
				logger.Error(err, "HTTP server failed", "server", s.what, "address", s.addr)
			}
		}()
	}
	return nil
}
