// Package config turns kipvs's command line and an optional kube-proxy
// KubeProxyConfiguration file into a validated proxier.Config.
//
// Flags keep kube-proxy's names, and --config reads the config.conf of a
// kube-proxy ConfigMap (kubeproxy.config.k8s.io/v1alpha1) unchanged, so kipvs
// can replace kube-proxy's IPVS mode without rewriting its configuration.
//
// Precedence: defaults < --config file < flags given on the command line. This
// differs from kube-proxy, where a --config file wins and most flags are
// silently ignored (only --hostname-override and the logging flags override
// it). Operators expect an explicit flag to take effect, as with the kubelet;
// when a flag overrides a different value from the file, Complete says so in a
// warning. Fields of the file that kipvs does not implement are never ignored
// silently: each one that is set is named in a warning.
package config

import (
	"os"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/kipvs/kipvs/proxier"
)

// Defaults for the flags. They match kube-proxy's where kube-proxy has the same
// setting, except MinSyncPeriod: kube-proxy's ipvs.minSyncPeriod defaults to 0
// (sync on every change), kipvs merges bursts for 1s by default.
const (
	DefaultScheduler          = "rr"
	DefaultSyncPeriod         = 30 * time.Second
	DefaultMinSyncPeriod      = time.Second
	DefaultConfigSyncPeriod   = 15 * time.Minute
	DefaultDrainTimeout       = 60 * time.Second
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultContentType        = "application/vnd.kubernetes.protobuf"
	DefaultQPS                = 5
	DefaultBurst              = 10
)

// Options are kipvs's settings as given on the command line and in the --config
// file. Complete resolves them in place (file values fill what the command line
// did not set) and derives the proxier.Config; the fields that are not part of
// proxier.Config (client connection, servers, conntrack) are read from Options
// by the command after Complete.
type Options struct {
	// ConfigFile is the KubeProxyConfiguration file (--config), empty for none.
	ConfigFile string
	// Mode is the proxy mode (--proxy-mode, mode): only "ipvs" or empty is accepted.
	Mode string

	// Kubeconfig is the kubeconfig file (--kubeconfig, clientConnection.kubeconfig).
	Kubeconfig string
	// Master overrides the API server address of the kubeconfig (--master).
	Master string
	// ContentType is the client's content type (--kube-api-content-type, clientConnection.contentType).
	ContentType string
	// AcceptContentTypes is the client's Accept header (clientConnection.acceptContentTypes).
	AcceptContentTypes string
	// QPS limits the client's request rate (--kube-api-qps, clientConnection.qps).
	QPS float32
	// Burst is the client's request burst (--kube-api-burst, clientConnection.burst).
	Burst int32
	// ConfigSyncPeriod is the informers' resync period (--config-sync-period, configSyncPeriod).
	ConfigSyncPeriod time.Duration

	// HostnameOverride names this node (--hostname-override, hostnameOverride).
	HostnameOverride string
	// ClusterCIDRs are the pod CIDRs, at most one per IP family (--cluster-cidr, clusterCIDR).
	ClusterCIDRs []string
	// NodePortAddresses are CIDRs or the keywords primary, all, localhost
	// (--nodeport-addresses, nodePortAddresses).
	NodePortAddresses []string
	// MasqueradeAll masquerades all traffic to Service IPs (--masquerade-all, iptables.masqueradeAll).
	MasqueradeAll bool

	// Scheduler is the default IPVS scheduler (--ipvs-scheduler, ipvs.scheduler).
	Scheduler string
	// StrictARP enables strict ARP on the node (--ipvs-strict-arp, ipvs.strictARP).
	StrictARP bool
	// ExcludeCIDRs are CIDRs whose virtual servers kipvs never touches (--ipvs-exclude-cidrs, ipvs.excludeCIDRs).
	ExcludeCIDRs []string
	// TCPTimeout is IPVS's idle TCP timeout, 0 to leave as is (--ipvs-tcp-timeout, ipvs.tcpTimeout).
	TCPTimeout time.Duration
	// TCPFinTimeout is IPVS's TCP FIN_WAIT timeout, 0 to leave as is (--ipvs-tcpfin-timeout, ipvs.tcpFinTimeout).
	TCPFinTimeout time.Duration
	// UDPTimeout is IPVS's UDP timeout, 0 to leave as is (--ipvs-udp-timeout, ipvs.udpTimeout).
	UDPTimeout time.Duration
	// SyncPeriod is the full resync interval (--sync-period or --ipvs-sync-period, ipvs.syncPeriod).
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between syncs (--min-sync-period or
	// --ipvs-min-sync-period, ipvs.minSyncPeriod).
	MinSyncPeriod time.Duration

	// HealthzBindAddress is host:port of the health server, empty to disable
	// (--healthz-bind-address, healthzBindAddress).
	HealthzBindAddress string
	// MetricsBindAddress is host:port of the metrics server, empty to disable
	// (--metrics-bind-address, metricsBindAddress).
	MetricsBindAddress string

	// DummyLink is the dummy link holding Service VIPs (--dummy-link; kipvs only).
	DummyLink string
	// DrainTimeout bounds how long a removed real server drains (--drain-timeout; kipvs only).
	DrainTimeout time.Duration

	// Conntrack sizes and times the connection tracking table (--conntrack-*,
	// the file's conntrack section); Complete puts it into proxier.Config and
	// the proxier's Setup applies it.
	Conntrack ConntrackOptions

	// Logging is the logging configuration (-v, --vmodule, --logging-format and
	// the file's logging section); the command applies it with logsapi.ValidateAndApply.
	Logging *logsapi.LoggingConfiguration

	// fs is the flag set AddFlags registered on: it tells which flags the command line set.
	fs *pflag.FlagSet
	// getenv and hostname find the node name; tests replace them.
	getenv   func(string) string
	hostname func() (string, error)
}

// ConntrackOptions mirror KubeProxyConfiguration's conntrack section. Nil or zero means unset.
type ConntrackOptions struct {
	MaxPerCore            *int32
	Min                   *int32
	TCPEstablishedTimeout *time.Duration
	TCPCloseWaitTimeout   *time.Duration
	TCPBeLiberal          bool
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration
}

// kube-proxy's conntrack defaults (KubeProxyConfiguration SetDefaults).
const (
	DefaultConntrackMaxPerCore            = 32768
	DefaultConntrackMin                   = 131072
	DefaultConntrackTCPEstablishedTimeout = 24 * time.Hour
	DefaultConntrackTCPCloseWaitTimeout   = time.Hour
)

// NewOptions returns Options holding kipvs's defaults.
func NewOptions() *Options {
	maxPerCore, minimum := int32(DefaultConntrackMaxPerCore), int32(DefaultConntrackMin)
	established, closeWait := DefaultConntrackTCPEstablishedTimeout, DefaultConntrackTCPCloseWaitTimeout
	return &Options{
		Conntrack: ConntrackOptions{MaxPerCore: &maxPerCore, Min: &minimum,
			TCPEstablishedTimeout: &established, TCPCloseWaitTimeout: &closeWait},
		ContentType:        DefaultContentType,
		QPS:                DefaultQPS,
		Burst:              DefaultBurst,
		ConfigSyncPeriod:   DefaultConfigSyncPeriod,
		Scheduler:          DefaultScheduler,
		SyncPeriod:         DefaultSyncPeriod,
		MinSyncPeriod:      DefaultMinSyncPeriod,
		HealthzBindAddress: DefaultHealthzBindAddress,
		MetricsBindAddress: DefaultMetricsBindAddress,
		DummyLink:          proxier.DefaultDummyLink,
		DrainTimeout:       DefaultDrainTimeout,
		Logging:            logsapi.NewLoggingConfiguration(),
		getenv:             os.Getenv,
		hostname:           os.Hostname,
	}
}

// AddFlags registers kipvs's flags on fs, bound to o, with kube-proxy's names.
// Complete later asks fs which flags were set, so call it at most once per Options.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.fs = fs
	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "Path to a kube-proxy KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1), e.g. the config.conf of the kube-proxy ConfigMap. Flags given on the command line override its values.")
	fs.StringVar(&o.Mode, "proxy-mode", o.Mode, "Accepted for kube-proxy compatibility: must be 'ipvs' or empty.")

	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig file with authorization information (the API server address can be overridden by --master). Without it and --master, kipvs uses the in-cluster service account.")
	fs.StringVar(&o.Master, "master", o.Master, "The address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&o.ContentType, "kube-api-content-type", o.ContentType, "Content type of requests sent to the API server.")
	fs.Float32Var(&o.QPS, "kube-api-qps", o.QPS, "QPS to use while talking with the API server.")
	fs.Int32Var(&o.Burst, "kube-api-burst", o.Burst, "Burst to use while talking with the API server.")
	fs.DurationVar(&o.ConfigSyncPeriod, "config-sync-period", o.ConfigSyncPeriod, "How often the informers resync their caches (resync period). Must be greater than 0.")

	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride, "The name of the Node kipvs runs on. If unset: the NODE_NAME environment variable, else the hostname.")
	fs.StringSliceVar(&o.ClusterCIDRs, "cluster-cidr", o.ClusterCIDRs, "The pod CIDR range(s) of the cluster, comma-separated, at most one per IP family. Traffic from outside them to Service IPs is masqueraded.")
	fs.StringSliceVar(&o.NodePortAddresses, "nodeport-addresses", o.NodePortAddresses, "CIDR ranges of the node IPs that accept NodePort connections, or 'primary' for the Node's primary IPs. Empty: all local IPs.")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", o.MasqueradeAll, "Masquerade (SNAT) all traffic sent to Service IPs.")

	fs.StringVar(&o.Scheduler, "ipvs-scheduler", o.Scheduler, "The default IPVS scheduler.")
	fs.BoolVar(&o.StrictARP, "ipvs-strict-arp", o.StrictARP, "Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2.")
	fs.StringSliceVar(&o.ExcludeCIDRs, "ipvs-exclude-cidrs", o.ExcludeCIDRs, "Comma-separated CIDRs whose IPVS virtual servers kipvs never touches.")
	fs.DurationVar(&o.TCPTimeout, "ipvs-tcp-timeout", o.TCPTimeout, "The timeout for idle IPVS TCP connections, 0 to leave as is.")
	fs.DurationVar(&o.TCPFinTimeout, "ipvs-tcpfin-timeout", o.TCPFinTimeout, "The timeout for IPVS TCP connections after a FIN, 0 to leave as is.")
	fs.DurationVar(&o.UDPTimeout, "ipvs-udp-timeout", o.UDPTimeout, "The timeout for IPVS UDP packets, 0 to leave as is.")
	fs.DurationVar(&o.SyncPeriod, "sync-period", o.SyncPeriod, "How often a full resync re-reads the kernel and repairs drift. Must be greater than 0.")
	fs.DurationVar(&o.SyncPeriod, "ipvs-sync-period", o.SyncPeriod, "kube-proxy's name for --sync-period.")
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", o.MinSyncPeriod, "The minimum interval between syncs; bursts of changes within it are merged. 0 syncs on every change.")
	fs.DurationVar(&o.MinSyncPeriod, "ipvs-min-sync-period", o.MinSyncPeriod, "kube-proxy's name for --min-sync-period.")

	fs.StringVar(&o.HealthzBindAddress, "healthz-bind-address", o.HealthzBindAddress, "IP:port of the health check server; empty to disable.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "IP:port of the metrics server; empty to disable.")

	fs.StringVar(&o.DummyLink, "dummy-link", o.DummyLink, "The dummy link that Service IPs are bound to (kube-proxy uses kube-ipvs0).")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "How long a removed real server keeps draining (weight 0) before it is deleted; 0 deletes at once.")

	ct := &o.Conntrack
	fs.Int32Var(ct.MaxPerCore, "conntrack-max-per-core", *ct.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(ct.Min, "conntrack-min", *ct.Min, "Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core.")
	fs.DurationVar(ct.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", *ct.TCPEstablishedTimeout, "Idle timeout for established TCP connections (0 to leave as-is).")
	fs.DurationVar(ct.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", *ct.TCPCloseWaitTimeout, "NAT timeout for TCP connections in the CLOSE_WAIT state (0 to leave as-is).")
	fs.BoolVar(&ct.TCPBeLiberal, "conntrack-tcp-be-liberal", ct.TCPBeLiberal, "Mark only out-of-window TCP packets as INVALID.")
	fs.DurationVar(&ct.UDPTimeout, "conntrack-udp-timeout", ct.UDPTimeout, "Idle timeout for UNREPLIED UDP connections (0 to leave as-is).")
	fs.DurationVar(&ct.UDPStreamTimeout, "conntrack-udp-timeout-stream", ct.UDPStreamTimeout, "Idle timeout for ASSURED UDP connections (0 to leave as-is).")

	logsapi.AddFlags(o.Logging, fs)
}

// changed reports whether the command line set any of the named flags.
func (o *Options) changed(names ...string) bool {
	if o.fs == nil {
		return false
	}
	for _, n := range names {
		if o.fs.Changed(n) {
			return true
		}
	}
	return false
}
