package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
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

	state := endpoints.NewState(cfg.NodeName)
	p := proxier.New(cfg, state, ipv, proxier.NewNetlinkAddresses(), clock.RealClock{})
	if err := p.Setup(ctx); err != nil {
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	watchErr := make(chan error, 1)
	go func() {
		defer close(watchErr)
		if err := endpoints.Watch(runCtx, client, state, opts.ConfigSyncPeriod, p.QueueSync); err != nil && runCtx.Err() == nil {
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
