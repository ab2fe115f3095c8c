package proxier

import (
	"net/netip"
	"time"

	"github.com/kipvs/kipvs/ipvs"
)

// DefaultDummyLink is the dummy link that holds Service VIPs; kube-proxy's IPVS mode
// uses the same name, which lets kipvs adopt its table on takeover.
const DefaultDummyLink = "kube-ipvs0"

// Config is the proxier's runtime configuration, already validated and defaulted
// (by package proxier/config, from flags and a KubeProxyConfiguration file).
type Config struct {
	// NodeName is this node's name, used for Local traffic policies and topology.
	NodeName string
	// Scheduler is the default IPVS scheduler (--ipvs-scheduler, default rr); a
	// Service may override it with the kipvs.io/scheduler annotation.
	Scheduler string
	// ExcludeCIDRs are never touched: virtual servers on these addresses are left alone.
	ExcludeCIDRs []netip.Prefix
	// NodePortAddresses filters the node IPs that get NodePort virtual servers;
	// empty means every local address except those on DummyLink and loopback.
	NodePortAddresses []netip.Prefix
	// NodePortPrimaryOnly is nodePortAddresses: ["primary"]: only the node's primary IPs.
	NodePortPrimaryOnly bool
	// DummyLink is the dummy link that VIPs are bound to (default kube-ipvs0).
	DummyLink string
	// SyncPeriod is the full resync interval (--sync-period, default 30s).
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between syncs (--min-sync-period, default 1s).
	MinSyncPeriod time.Duration
	// ClusterCIDRs are the pod CIDRs (--cluster-cidr); traffic from outside them is masqueraded.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to VIPs (--masquerade-all).
	MasqueradeAll bool
	// StrictARP sets arp_ignore=1 and arp_announce=2 (--ipvs-strict-arp).
	StrictARP bool
	// Timeouts are the IPVS connection timeouts (--ipvs-tcp-timeout etc.); zero fields are left as is.
	Timeouts ipvs.Timeouts
	// DrainTimeout bounds how long a removed real server drains (weight 0) before it is deleted.
	DrainTimeout time.Duration
	// Conntrack sizes and times the kernel's connection tracking table; Setup applies it.
	Conntrack ConntrackConfig
}
