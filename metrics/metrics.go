// Package metrics defines kipvs's Prometheus metrics with
// k8s.io/component-base/metrics and registers them into a registry passed in.
//
// Metrics that mean what kube-proxy's mean keep kube-proxy's names
// (kubeproxy_*), so dashboards and alerts written for kube-proxy keep working;
// kipvs's own metrics are named kipvs_*. No metric has a per-IP label.
package metrics

import (
	"strconv"
	"time"

	"k8s.io/component-base/metrics"

	"github.com/kipvs/kipvs/proxier"
)

const (
	kubeProxySubsystem = "kubeproxy"
	kipvsNamespace     = "kipvs"
)

// Label values of kipvs_syncs_total and kipvs_kernel_operations_total.
const (
	KindFull        = "full"
	KindIncremental = "incremental"
	ResultSuccess   = "success"
	ResultError     = "error"
	OpSucceeded     = "succeeded"
	OpFailed        = "failed"
	OpSkipped       = "skipped"
)

// syncBuckets are kube-proxy's buckets for sync durations: 1 ms to ~16 s.
var syncBuckets = metrics.ExponentialBuckets(0.001, 2, 15)

// Metrics holds every metric kipvs exports. It implements proxier.SyncObserver:
// give it to Proxier.AddObserver.
type Metrics struct {
	// SyncDuration is kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds:
	// how long each sync took, full and incremental alike (failed syncs included).
	SyncDuration *metrics.Histogram
	// SyncFullDuration is kube-proxy's kubeproxy_sync_full_proxy_rules_duration_seconds:
	// the duration of full syncs only (kernel dump, every Service rebuilt).
	SyncFullDuration *metrics.Histogram
	// SyncPartialDuration is kube-proxy's kubeproxy_sync_partial_proxy_rules_duration_seconds:
	// the duration of incremental syncs only (changed Services, no dump).
	SyncPartialDuration *metrics.Histogram
	// LastSync is kube-proxy's kubeproxy_sync_proxy_rules_last_timestamp_seconds:
	// when the last sync that succeeded ended (Unix seconds).
	LastSync *metrics.Gauge
	// LastQueued is kube-proxy's kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds:
	// when a sync was last requested. Far ahead of LastSync means syncs stall.
	LastQueued *metrics.Gauge
	// NetworkProgramming is kube-proxy's kubeproxy_network_programming_duration_seconds:
	// from the endpoints.kubernetes.io/last-change-trigger-time annotation of an
	// EndpointSlice to the end of the sync that programmed it.
	NetworkProgramming *metrics.Histogram
	// ServiceChangesTotal is kube-proxy's kubeproxy_sync_proxy_rules_service_changes_total:
	// Service updates the informers delivered (counted when a sync takes them).
	ServiceChangesTotal *metrics.Counter
	// EndpointChangesTotal is kube-proxy's kubeproxy_sync_proxy_rules_endpoint_changes_total:
	// EndpointSlice updates the informers delivered (counted when a sync takes them).
	EndpointChangesTotal *metrics.Counter
	// NoLocalEndpoints is kube-proxy's kubeproxy_sync_proxy_rules_no_local_endpoints_total
	// {traffic_policy="internal"|"external"}: Service ports with a Local traffic
	// policy and no endpoint on this node (both IP families summed), whose
	// traffic of that policy has no real server.
	NoLocalEndpoints *metrics.GaugeVec
	// HealthzTotal is kube-proxy's kubeproxy_proxy_healthz_total{code}: /healthz answers by HTTP code.
	HealthzTotal *metrics.CounterVec
	// LivezTotal is kube-proxy's kubeproxy_proxy_livez_total{code}: /livez answers by HTTP code.
	LivezTotal *metrics.CounterVec

	// KernelOperations is kipvs_kernel_operations_total{operation, result}: kernel
	// writes by kind (add_virtual_server, update_real_server, add_address, ...) and
	// result (succeeded, failed, skipped because their virtual server could not be created).
	KernelOperations *metrics.CounterVec
	// SyncOperations is kipvs_sync_operations: kernel writes tried per sync. An
	// unchanged resync makes none; one endpoint change makes a few.
	SyncOperations *metrics.Histogram
	// Syncs is kipvs_syncs_total{kind="full"|"incremental", result="success"|"error"}.
	Syncs *metrics.CounterVec
	// VirtualServers is kipvs_virtual_servers: virtual servers the model wants
	// after the last sync (ClusterIP, NodePort per node IP, external and LB IPs).
	VirtualServers *metrics.Gauge
	// FailedVirtualServers is kipvs_virtual_servers_failed: virtual servers whose
	// writes failed in the last sync and are retried by the next one.
	FailedVirtualServers *metrics.Gauge
	// RealServers is kipvs_real_servers: real servers the model wants, summed
	// over every wanted virtual server.
	RealServers *metrics.Gauge
	// DrainingRealServers is kipvs_real_servers_draining: real servers at weight
	// 0 that are no longer wanted and wait for their connections to end.
	DrainingRealServers *metrics.Gauge
	// IPSetEntries is kipvs_ipset_entries: entries in the ipsets kipvs owns. It
	// stays 0 until kipvs programs ipsets.
	IPSetEntries *metrics.Gauge

	pending   *pendingCollector
	conntrack *ConntrackCollector
}

// New builds kipvs's metrics. pending reports the Services with queued
// Service and endpoint changes (endpoints.State.Pending), read at scrape time;
// it may be nil. procRoot is where /proc is mounted ("/proc" outside tests),
// for the conntrack gauges.
func New(pending func() (services, endpoints int), procRoot string) *Metrics {
	counter := func(name, help string) *metrics.Counter {
		return metrics.NewCounter(&metrics.CounterOpts{Subsystem: kubeProxySubsystem, Name: name, Help: help, StabilityLevel: metrics.ALPHA})
	}
	kubeGauge := func(name, help string) *metrics.Gauge {
		return metrics.NewGauge(&metrics.GaugeOpts{Subsystem: kubeProxySubsystem, Name: name, Help: help, StabilityLevel: metrics.ALPHA})
	}
	gauge := func(name, help string) *metrics.Gauge {
		return metrics.NewGauge(&metrics.GaugeOpts{Namespace: kipvsNamespace, Name: name, Help: help, StabilityLevel: metrics.ALPHA})
	}
	histogram := func(name, help string) *metrics.Histogram {
		return metrics.NewHistogram(&metrics.HistogramOpts{Subsystem: kubeProxySubsystem, Name: name, Help: help,
			Buckets: syncBuckets, StabilityLevel: metrics.ALPHA})
	}
	return &Metrics{
		SyncDuration:        histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds"),
		SyncFullDuration:    histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs"),
		SyncPartialDuration: histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs"),
		LastSync:            kubeGauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		LastQueued:          kubeGauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		NetworkProgramming: metrics.NewHistogram(&metrics.HistogramOpts{
			Subsystem: kubeProxySubsystem, Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds",
			// kube-proxy's buckets: 0.25s, 0.5s, 1..59s, 60..115s, 2..5min.
			Buckets: metrics.MergeBuckets(metrics.LinearBuckets(0.25, 0.25, 2), metrics.LinearBuckets(1, 1, 59),
				metrics.LinearBuckets(60, 5, 12), metrics.LinearBuckets(120, 30, 7)),
			StabilityLevel: metrics.ALPHA,
		}),
		ServiceChangesTotal:  counter("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"),
		EndpointChangesTotal: counter("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"),
		NoLocalEndpoints: metrics.NewGaugeVec(&metrics.GaugeOpts{Subsystem: kubeProxySubsystem, Name: "sync_proxy_rules_no_local_endpoints_total",
			Help: "Number of services with a Local traffic policy and no endpoints", StabilityLevel: metrics.ALPHA}, []string{"traffic_policy"}),
		HealthzTotal: metrics.NewCounterVec(&metrics.CounterOpts{Subsystem: kubeProxySubsystem, Name: "proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status", StabilityLevel: metrics.ALPHA}, []string{"code"}),
		LivezTotal: metrics.NewCounterVec(&metrics.CounterOpts{Subsystem: kubeProxySubsystem, Name: "proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status", StabilityLevel: metrics.ALPHA}, []string{"code"}),

		KernelOperations: metrics.NewCounterVec(&metrics.CounterOpts{Namespace: kipvsNamespace, Name: "kernel_operations_total",
			Help: "Kernel writes by operation and result (succeeded, failed, skipped)", StabilityLevel: metrics.ALPHA}, []string{"operation", "result"}),
		SyncOperations: metrics.NewHistogram(&metrics.HistogramOpts{Namespace: kipvsNamespace, Name: "sync_operations",
			Help: "Kernel writes tried per sync", Buckets: metrics.ExponentialBuckets(1, 4, 10), StabilityLevel: metrics.ALPHA}),
		Syncs: metrics.NewCounterVec(&metrics.CounterOpts{Namespace: kipvsNamespace, Name: "syncs_total",
			Help: "Syncs by kind (full, incremental) and result (success, error)", StabilityLevel: metrics.ALPHA}, []string{"kind", "result"}),
		VirtualServers:       gauge("virtual_servers", "IPVS virtual servers wanted after the last sync"),
		FailedVirtualServers: gauge("virtual_servers_failed", "IPVS virtual servers whose writes failed in the last sync"),
		RealServers:          gauge("real_servers", "IPVS real servers wanted after the last sync, over all virtual servers"),
		DrainingRealServers:  gauge("real_servers_draining", "IPVS real servers draining (weight 0, no longer wanted)"),
		IPSetEntries:         gauge("ipset_entries", "Entries in the ipsets kipvs owns"),

		pending:   newPendingCollector(pending),
		conntrack: NewConntrackCollector(procRoot),
	}
}

// Register registers every metric into reg and sets the series that must exist
// from the start (every operation/result and sync kind/result at 0).
func (m *Metrics) Register(reg metrics.KubeRegistry) {
	reg.MustRegister(m.SyncDuration, m.SyncFullDuration, m.SyncPartialDuration, m.LastSync, m.LastQueued,
		m.NetworkProgramming, m.ServiceChangesTotal, m.EndpointChangesTotal, m.NoLocalEndpoints,
		m.HealthzTotal, m.LivezTotal, m.KernelOperations, m.SyncOperations, m.Syncs,
		m.VirtualServers, m.FailedVirtualServers, m.RealServers, m.DrainingRealServers, m.IPSetEntries)
	reg.CustomMustRegister(m.pending, m.conntrack)
	for _, k := range proxier.OpKinds() {
		for _, r := range []string{OpSucceeded, OpFailed, OpSkipped} {
			m.KernelOperations.WithLabelValues(k.String(), r).Add(0)
		}
	}
	for _, k := range []string{KindFull, KindIncremental} {
		for _, r := range []string{ResultSuccess, ResultError} {
			m.Syncs.WithLabelValues(k, r).Add(0)
		}
	}
	for _, p := range []string{"internal", "external"} {
		m.NoLocalEndpoints.WithLabelValues(p).Set(0)
	}
	m.IPSetEntries.Set(0)
}

// SyncQueued records that a sync was requested at t (proxier.SyncObserver).
func (m *Metrics) SyncQueued(t time.Time) {
	m.LastQueued.Set(unixSeconds(t))
}

// Synced records one sync (proxier.SyncObserver): its duration, kind, result
// and kernel writes, the changes it took, and the model's gauges from st.
func (m *Metrics) Synced(res proxier.SyncResult, st *proxier.StatusSnapshot) {
	secs := res.Duration.Seconds()
	m.SyncDuration.Observe(secs)
	kind := KindIncremental
	if res.Full {
		kind = KindFull
		m.SyncFullDuration.Observe(secs)
	} else {
		m.SyncPartialDuration.Observe(secs)
	}
	result := ResultSuccess
	if res.Err != nil {
		result = ResultError
	} else {
		m.LastSync.Set(unixSeconds(res.Time.Add(res.Duration)))
		m.ObserveNetworkProgramming(res.TriggerTimes, res.Time.Add(res.Duration))
	}
	m.Syncs.WithLabelValues(kind, result).Inc()
	writes := 0
	for i, c := range res.Ops {
		op := proxier.OpKind(i).String()
		addCount(m.KernelOperations, op, OpSucceeded, c.Succeeded)
		addCount(m.KernelOperations, op, OpFailed, c.Failed)
		addCount(m.KernelOperations, op, OpSkipped, c.Skipped)
		writes += c.Succeeded + c.Failed
	}
	m.SyncOperations.Observe(float64(writes))
	m.ServiceChangesTotal.Add(float64(res.ServiceChanges))
	m.EndpointChangesTotal.Add(float64(res.EndpointChanges))
	if st == nil {
		return
	}
	c := st.Counts
	m.VirtualServers.Set(float64(c.VirtualServers))
	m.FailedVirtualServers.Set(float64(c.FailedVirtualServers))
	m.RealServers.Set(float64(c.RealServers))
	m.DrainingRealServers.Set(float64(c.DrainingRealServers))
	nl := c.NoLocalEndpoints
	m.NoLocalEndpoints.WithLabelValues("internal").Set(float64(nl.Internal.IPv4 + nl.Internal.IPv6))
	m.NoLocalEndpoints.WithLabelValues("external").Set(float64(nl.External.IPv4 + nl.External.IPv6))
}

// ObserveNetworkProgramming records, for each last-change-trigger-time of the
// EndpointSlices a sync programmed, the time from the trigger to syncedAt.
// Triggers in the future (clock skew) are dropped, as kube-proxy does.
func (m *Metrics) ObserveNetworkProgramming(triggers []time.Time, syncedAt time.Time) {
	for _, t := range triggers {
		if d := syncedAt.Sub(t); d >= 0 {
			m.NetworkProgramming.Observe(d.Seconds())
		}
	}
}

// ObserveHealthCheck counts one answer of the health server: path is
// "/healthz" or "/livez" (others are ignored), code the HTTP status code.
func (m *Metrics) ObserveHealthCheck(path string, code int) {
	switch path {
	case "/healthz":
		m.HealthzTotal.WithLabelValues(strconv.Itoa(code)).Inc()
	case "/livez":
		m.LivezTotal.WithLabelValues(strconv.Itoa(code)).Inc()
	}
}

// addCount adds n to one child of a counter vector when n is positive.
func addCount(v *metrics.CounterVec, op, result string, n int) {
	if n > 0 {
		v.WithLabelValues(op, result).Add(float64(n))
	}
}

// unixSeconds converts t to Unix seconds with sub-second precision.
func unixSeconds(t time.Time) float64 {
	return float64(t.UnixNano()) / 1e9
}

// pendingCollector exports the queued changes at scrape time.
type pendingCollector struct {
	metrics.BaseStableCollector
	pending func() (services, endpoints int)
}

// serviceChangesPending is kube-proxy's kubeproxy_sync_proxy_rules_service_changes_pending:
// Services whose Service object changed since the last sync (kube-proxy counts
// the same: one per Service with a pending change).
var serviceChangesPending = metrics.NewDesc("kubeproxy_sync_proxy_rules_service_changes_pending",
	"Pending proxy rules Service changes", nil, nil, metrics.ALPHA, "")

// endpointChangesPending is kube-proxy's kubeproxy_sync_proxy_rules_endpoint_changes_pending:
// Services whose EndpointSlices changed since the last sync.
var endpointChangesPending = metrics.NewDesc("kubeproxy_sync_proxy_rules_endpoint_changes_pending",
	"Pending proxy rules Endpoint changes", nil, nil, metrics.ALPHA, "")

func newPendingCollector(pending func() (int, int)) *pendingCollector {
	return &pendingCollector{pending: pending}
}

// DescribeWithStability implements metrics.StableCollector.
func (c *pendingCollector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- serviceChangesPending
	ch <- endpointChangesPending
}

// CollectWithStability implements metrics.StableCollector; without a pending
// function it exports nothing.
func (c *pendingCollector) CollectWithStability(ch chan<- metrics.Metric) {
	if c.pending == nil {
		return
	}
	svcs, eps := c.pending()
	ch <- metrics.NewLazyConstMetric(serviceChangesPending, metrics.GaugeValue, float64(svcs))
	ch <- metrics.NewLazyConstMetric(endpointChangesPending, metrics.GaugeValue, float64(eps))
}
