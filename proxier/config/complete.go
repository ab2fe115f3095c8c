package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// Complete loads the --config file (if any) into o, letting flags given on the
// command line win, then validates everything and returns the proxier's
// Config. The warnings name every setting that kipvs accepted but does not
// apply, and every flag that overrode a different file value; the caller logs
// them. All validation errors are returned at once, each naming the flag, the
// config field and the offending value.
func (o *Options) Complete() (proxier.Config, []string, error) {
	var warnings []string
	if o.ConfigFile != "" {
		file, err := LoadFile(o.ConfigFile)
		if err != nil {
			return proxier.Config{}, nil, err
		}
		for _, w := range fileWarnings(file) {
			warnings = append(warnings, "config file "+o.ConfigFile+": "+w)
		}
		warnings = append(warnings, o.applyFile(file)...)
	}
	cfg, more, err := o.validate()
	warnings = append(warnings, more...)
	if err != nil {
		return proxier.Config{}, warnings, err
	}
	return cfg, warnings, nil
}

// validate checks the resolved options and builds the proxier.Config.
func (o *Options) validate() (proxier.Config, []string, error) {
	var errs, warnings []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	if o.Mode != "" && o.Mode != "ipvs" {
		fail("proxy mode %q is not supported (--proxy-mode, mode): kipvs implements only IPVS mode; set mode: ipvs or leave it empty", o.Mode)
	}
	cfg := proxier.Config{
		Scheduler:     o.Scheduler,
		DummyLink:     o.DummyLink,
		SyncPeriod:    o.SyncPeriod,
		MinSyncPeriod: o.MinSyncPeriod,
		MasqueradeAll: o.MasqueradeAll,
		StrictARP:     o.StrictARP,
		Timeouts:      ipvs.Timeouts{TCP: o.TCPTimeout, TCPFin: o.TCPFinTimeout, UDP: o.UDPTimeout},
		DrainTimeout:  o.DrainTimeout,
		Conntrack:     o.Conntrack.config(),
	}
	if !ipvs.ValidScheduler(o.Scheduler) {
		fail("unknown IPVS scheduler %q (--ipvs-scheduler, ipvs.scheduler): want one of %s", o.Scheduler, strings.Join(ipvs.Schedulers, ", "))
	}

	var err error
	if cfg.ExcludeCIDRs, err = parsePrefixes(o.ExcludeCIDRs); err != nil {
		fail("--ipvs-exclude-cidrs (ipvs.excludeCIDRs): %v", err)
	}
	if cfg.ClusterCIDRs, err = parsePrefixes(o.ClusterCIDRs); err != nil {
		fail("--cluster-cidr (clusterCIDR): %v", err)
	} else if err := onePerFamily(cfg.ClusterCIDRs); err != nil {
		fail("--cluster-cidr (clusterCIDR): %v", err)
	}
	var w string
	if cfg.NodePortAddresses, cfg.NodePortPrimaryOnly, w, err = parseNodePortAddresses(o.NodePortAddresses); err != nil {
		fail("--nodeport-addresses (nodePortAddresses): %v", err)
	} else if w != "" {
		warnings = append(warnings, w)
	}

	for _, d := range []struct {
		name  string
		value any
		ok    bool
		want  string
	}{
		{"--sync-period (ipvs.syncPeriod)", o.SyncPeriod, o.SyncPeriod > 0, "must be greater than 0"},
		{"--min-sync-period (ipvs.minSyncPeriod)", o.MinSyncPeriod, o.MinSyncPeriod >= 0, "must not be negative"},
		{"--ipvs-tcp-timeout (ipvs.tcpTimeout)", o.TCPTimeout, o.TCPTimeout >= 0, "must not be negative"},
		{"--ipvs-tcpfin-timeout (ipvs.tcpFinTimeout)", o.TCPFinTimeout, o.TCPFinTimeout >= 0, "must not be negative"},
		{"--ipvs-udp-timeout (ipvs.udpTimeout)", o.UDPTimeout, o.UDPTimeout >= 0, "must not be negative"},
		{"--drain-timeout", o.DrainTimeout, o.DrainTimeout >= 0, "must not be negative"},
		{"--config-sync-period (configSyncPeriod)", o.ConfigSyncPeriod, o.ConfigSyncPeriod > 0, "must be greater than 0"},
		{"--conntrack-max-per-core (conntrack.maxPerCore)", cfg.Conntrack.MaxPerCore, cfg.Conntrack.MaxPerCore >= 0, "must not be negative"},
		{"--conntrack-min (conntrack.min)", cfg.Conntrack.Min, cfg.Conntrack.Min >= 0, "must not be negative"},
		{"--conntrack-tcp-timeout-established (conntrack.tcpEstablishedTimeout)", cfg.Conntrack.TCPEstablishedTimeout, cfg.Conntrack.TCPEstablishedTimeout >= 0, "must not be negative"},
		{"--conntrack-tcp-timeout-close-wait (conntrack.tcpCloseWaitTimeout)", cfg.Conntrack.TCPCloseWaitTimeout, cfg.Conntrack.TCPCloseWaitTimeout >= 0, "must not be negative"},
		{"--conntrack-udp-timeout (conntrack.udpTimeout)", cfg.Conntrack.UDPTimeout, cfg.Conntrack.UDPTimeout >= 0, "must not be negative"},
		{"--conntrack-udp-timeout-stream (conntrack.udpStreamTimeout)", cfg.Conntrack.UDPStreamTimeout, cfg.Conntrack.UDPStreamTimeout >= 0, "must not be negative"},
		{"--kube-api-qps (clientConnection.qps)", o.QPS, o.QPS >= 0, "must not be negative"},
		{"--kube-api-burst (clientConnection.burst)", o.Burst, o.Burst >= 0, "must not be negative"},
	} {
		if !d.ok {
			fail("%s=%v: %s", d.name, d.value, d.want)
		}
	}
	if o.SyncPeriod > 0 && o.MinSyncPeriod > o.SyncPeriod {
		fail("--min-sync-period=%v must not exceed --sync-period=%v", o.MinSyncPeriod, o.SyncPeriod)
	}
	if err := checkHostPort(o.HealthzBindAddress); err != nil {
		fail("--healthz-bind-address (healthzBindAddress): %v", err)
	}
	if err := checkHostPort(o.MetricsBindAddress); err != nil {
		fail("--metrics-bind-address (metricsBindAddress): %v", err)
	}
	if err := checkLinkName(o.DummyLink); err != nil {
		fail("--dummy-link: %v", err)
	}
	if cfg.NodeName, err = o.nodeName(); err != nil {
		fail("%v", err)
	}
	if len(errs) > 0 {
		return proxier.Config{}, warnings, fmt.Errorf("invalid configuration:\n  %s", strings.Join(errs, "\n  "))
	}
	return cfg, warnings, nil
}

// nodeName is --hostname-override, else $NODE_NAME, else the hostname, trimmed
// and lowercased like kube-proxy does.
func (o *Options) nodeName() (string, error) {
	if o.HostnameOverride != "" {
		name := strings.TrimSpace(o.HostnameOverride)
		if name == "" {
			return "", errors.New("--hostname-override (hostnameOverride) is blank")
		}
		return strings.ToLower(name), nil
	}
	if name := strings.TrimSpace(o.getenv("NODE_NAME")); name != "" {
		return strings.ToLower(name), nil
	}
	host, err := o.hostname()
	if err != nil {
		return "", fmt.Errorf("cannot determine the node name (set --hostname-override or NODE_NAME): %w", err)
	}
	if host = strings.TrimSpace(host); host == "" {
		return "", errors.New("cannot determine the node name: the hostname is empty (set --hostname-override or NODE_NAME)")
	}
	return strings.ToLower(host), nil
}

// parsePrefixes parses CIDRs, masking host bits; blank items are skipped.
func parsePrefixes(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (want e.g. 10.0.0.0/8 or fd00::/64)", v)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// onePerFamily rejects more than one IPv4 or more than one IPv6 prefix.
func onePerFamily(prefixes []netip.Prefix) error {
	var v4, v6 int
	for _, p := range prefixes {
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return fmt.Errorf("%v: at most one IPv4 and one IPv6 CIDR", prefixes)
	}
	return nil
}

// parseNodePortAddresses understands CIDRs and kube-proxy's keywords: "primary"
// (the Node's primary IPs), "all" (every local IP, the default) and "localhost".
func parseNodePortAddresses(values []string) (prefixes []netip.Prefix, primary bool, warning string, err error) {
	var cidrs []string
	all, localhost := false, false
	for _, v := range values {
		switch v = strings.TrimSpace(v); v {
		case "":
		case "primary":
			primary = true
		case "all":
			all = true
		case "localhost":
			localhost = true
			cidrs = append(cidrs, "127.0.0.0/8", "::1/128")
		default:
			cidrs = append(cidrs, v)
		}
	}
	if primary && (all || len(cidrs) > 0) {
		return nil, false, "", fmt.Errorf("%q: kipvs supports 'primary' only on its own, not combined with CIDRs or other keywords", values)
	}
	if prefixes, err = parsePrefixes(cidrs); err != nil {
		return nil, false, "", err
	}
	if localhost {
		warning = "nodePortAddresses 'localhost': IPVS does not serve NodePorts on loopback addresses (as in kube-proxy's IPVS mode)"
	}
	if all {
		// 'all' covers every local IP, which is what an empty list means.
		prefixes = nil
	}
	return prefixes, primary, warning, nil
}

// checkHostPort accepts "" (server disabled) or IP:port with a numeric port.
func checkHostPort(s string) error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not IP:port: %v", s, err)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: %q is not an IP address", s, host)
		}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number in 0-65535", s, port)
	}
	return nil
}

// checkLinkName applies the kernel's rules for interface names (dev_valid_name).
func checkLinkName(name string) error {
	switch {
	case name == "":
		return errors.New("the link name is empty")
	case len(name) > 15:
		return fmt.Errorf("%q is longer than 15 bytes (IFNAMSIZ)", name)
	case name == "." || name == "..", strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

// config turns the conntrack options into the proxier's settings; unset is 0
// (leave the kernel's value).
func (c ConntrackOptions) config() proxier.ConntrackConfig {
	out := proxier.ConntrackConfig{TCPBeLiberal: c.TCPBeLiberal, UDPTimeout: c.UDPTimeout, UDPStreamTimeout: c.UDPStreamTimeout}
	if c.MaxPerCore != nil {
		out.MaxPerCore = *c.MaxPerCore
	}
	if c.Min != nil {
		out.Min = *c.Min
	}
	if c.TCPEstablishedTimeout != nil {
		out.TCPEstablishedTimeout = *c.TCPEstablishedTimeout
	}
	if c.TCPCloseWaitTimeout != nil {
		out.TCPCloseWaitTimeout = *c.TCPCloseWaitTimeout
	}
	return out
}
