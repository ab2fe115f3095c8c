package proxier

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ConntrackConfig sizes and times the kernel's connection tracking table, as
// kube-proxy's conntrack section does (--conntrack-max-per-core,
// --conntrack-min, --conntrack-tcp-timeout-established,
// --conntrack-tcp-timeout-close-wait, ...). Zero fields leave the kernel's value.
type ConntrackConfig struct {
	// MaxPerCore times the number of CPUs, at least Min, is nf_conntrack_max;
	// 0 leaves nf_conntrack_max (and Min is then ignored, like kube-proxy).
	MaxPerCore int32
	Min        int32
	// TCPEstablishedTimeout and TCPCloseWaitTimeout set
	// nf_conntrack_tcp_timeout_established and _close_wait.
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal=1.
	TCPBeLiberal bool
	// UDPTimeout and UDPStreamTimeout set nf_conntrack_udp_timeout and _stream.
	UDPTimeout       time.Duration
	UDPStreamTimeout time.Duration
}

// KernelSetting is one kernel setting that kipvs needs at startup.
type KernelSetting struct {
	// Key is a Sysctl key, Value the wanted value.
	Key, Value string
	// Why explains the setting in logs and errors.
	Why string
	// RaiseOnly writes the value only when the current one is a smaller number.
	RaiseOnly bool
	// Optional settings that cannot be written are reported as warnings.
	Optional bool
}

// Sysctl keys kipvs sets.
const (
	SysctlIPForward            = "net/ipv4/ip_forward"
	SysctlVSConntrack          = "net/ipv4/vs/conntrack"
	SysctlVSExpireNodestConn   = "net/ipv4/vs/expire_nodest_conn"
	SysctlVSExpireQuiescent    = "net/ipv4/vs/expire_quiescent_template"
	SysctlVSConnReuseMode      = "net/ipv4/vs/conn_reuse_mode"
	SysctlARPIgnore            = "net/ipv4/conf/all/arp_ignore"
	SysctlARPAnnounce          = "net/ipv4/conf/all/arp_announce"
	SysctlConntrackMax         = "net/netfilter/nf_conntrack_max"
	SysctlConntrackEstablished = "net/netfilter/nf_conntrack_tcp_timeout_established"
	SysctlConntrackCloseWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	SysctlConntrackBeLiberal   = "net/netfilter/nf_conntrack_tcp_be_liberal"
	SysctlConntrackUDPTimeout  = "net/netfilter/nf_conntrack_udp_timeout"
	SysctlConntrackUDPStream   = "net/netfilter/nf_conntrack_udp_timeout_stream"
	SysctlBridgeNFCallIptables = "net/bridge/bridge-nf-call-iptables"
	ConntrackHashsizeParam     = "/sys/module/nf_conntrack/parameters/hashsize"
)

// KernelSettings returns the settings kipvs applies in Setup for cfg on a
// kernel of the given release (uname -r) with numCPU CPUs, and notes about
// settings it deliberately leaves alone. It is pure: Setup reads the release
// and the CPU count and applies the result with ApplyKernelSettings.
func KernelSettings(cfg Config, release string, numCPU int) ([]KernelSetting, []string) {
	s := []KernelSetting{
		{Key: SysctlIPForward, Value: "1", Why: "forward traffic that IPVS sends to pods"},
		{Key: SysctlVSConntrack, Value: "1", Why: "let IPVS connections use conntrack, which masquerading needs"},
		{Key: SysctlVSExpireNodestConn, Value: "1", Why: "drop connections whose real server was deleted"},
		{Key: SysctlVSExpireQuiescent, Value: "1", Why: "expire persistence templates of weight-0 real servers"},
	}
	var notes []string
	// kube-proxy (pkg/proxy/ipvs/proxier.go NewProxier): conn_reuse_mode exists
	// from 4.1; 0 avoids the 1 s SYN delay on port reuse (#81775), but on 5.9+
	// the kernel fixed that, and 0 would keep sending reused ports to deleted
	// real servers (#93297), so it is left as is.
	major, minor, err := parseKernelRelease(release)
	switch {
	case err != nil:
		notes = append(notes, fmt.Sprintf("%s left as is: %v", SysctlVSConnReuseMode, err))
	case major < 4 || major == 4 && minor < 1:
		notes = append(notes, fmt.Sprintf("%s left as is: kernel %s is older than 4.1, which added it", SysctlVSConnReuseMode, release))
	case major > 5 || major == 5 && minor >= 9:
		notes = append(notes, fmt.Sprintf("%s left as is: kernel %s is 5.9 or newer (kubernetes #93297)", SysctlVSConnReuseMode, release))
	default:
		s = append(s, KernelSetting{Key: SysctlVSConnReuseMode, Value: "0",
			Why: "kernels before 5.9 delay reused source ports by 1 s with conn_reuse_mode=1 (kubernetes #81775)"})
	}
	if cfg.StrictARP {
		s = append(s,
			KernelSetting{Key: SysctlARPIgnore, Value: "1", Why: "--ipvs-strict-arp: answer ARP only for addresses on the receiving interface"},
			KernelSetting{Key: SysctlARPAnnounce, Value: "2", Why: "--ipvs-strict-arp: never announce VIPs from the dummy link"})
	}
	ct := cfg.Conntrack
	if max := conntrackMax(ct, numCPU); max > 0 {
		s = append(s,
			KernelSetting{Key: SysctlConntrackMax, Value: strconv.Itoa(max),
				Why: fmt.Sprintf("conntrack max per core %d x %d CPUs, at least conntrack min %d", ct.MaxPerCore, numCPU, ct.Min)},
			// kube-proxy sets the hash size to max/4, only upwards; /sys is
			// read-only in many containers (moby #24000), so it is optional.
			KernelSetting{Key: ConntrackHashsizeParam, Value: strconv.Itoa(max / 4), RaiseOnly: true, Optional: true,
				Why: "conntrack hash size max/4"})
	}
	for _, t := range []struct {
		key string
		d   time.Duration
		why string
	}{
		{SysctlConntrackEstablished, ct.TCPEstablishedTimeout, "conntrack TCP established timeout"},
		{SysctlConntrackCloseWait, ct.TCPCloseWaitTimeout, "conntrack TCP close-wait timeout"},
		{SysctlConntrackUDPTimeout, ct.UDPTimeout, "conntrack UDP timeout"},
		{SysctlConntrackUDPStream, ct.UDPStreamTimeout, "conntrack UDP stream timeout"},
	} {
		if t.d > 0 {
			s = append(s, KernelSetting{Key: t.key, Value: strconv.Itoa(int(t.d / time.Second)), Why: t.why})
		}
	}
	if ct.TCPBeLiberal {
		s = append(s, KernelSetting{Key: SysctlConntrackBeLiberal, Value: "1", Why: "conntrack tcpBeLiberal"})
	}
	return s, notes
}

// conntrackMax is kube-proxy's getConntrackMax: MaxPerCore x CPUs, at least Min;
// 0 when MaxPerCore is 0.
func conntrackMax(ct ConntrackConfig, numCPU int) int {
	if ct.MaxPerCore <= 0 {
		return 0
	}
	return max(int(ct.MaxPerCore)*numCPU, int(ct.Min))
}

// parseKernelRelease reads major.minor from a release such as "6.1.0-56-cloud-amd64".
func parseKernelRelease(release string) (int, int, error) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("cannot read the kernel version from %q", release)
	}
	major, err1 := strconv.Atoi(parts[0])
	minorDigits := parts[1]
	if i := strings.IndexFunc(minorDigits, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorDigits = minorDigits[:i]
	}
	minor, err2 := strconv.Atoi(minorDigits)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("cannot read the kernel version from %q: %w", release, err)
	}
	return major, minor, nil
}

// ApplyKernelSettings writes every setting that does not have its value yet
// and returns the keys it changed. A required setting that cannot be read or
// written fails with an error naming the key, the value and the reason;
// optional ones become warnings.
func ApplyKernelSettings(ctx context.Context, s Sysctl, settings []KernelSetting) (changed, warnings []string, err error) {
	var errs []error
	for _, k := range settings {
		var did bool
		var e error
		if k.RaiseOnly {
			did, e = raiseSysctl(ctx, s, k.Key, k.Value)
		} else {
			did, e = ensureSysctl(ctx, s, k.Key, k.Value)
		}
		switch {
		case e != nil && k.Optional:
			warnings = append(warnings, fmt.Sprintf("could not set %s=%s (%s): %v", k.Key, k.Value, k.Why, e))
		case e != nil:
			errs = append(errs, fmt.Errorf("setting %s=%s (%s): %w", k.Key, k.Value, k.Why, e))
		case did:
			changed = append(changed, k.Key+"="+k.Value)
		}
	}
	return changed, warnings, errors.Join(errs...)
}

// raiseSysctl writes a numeric setting only when its value is lower.
func raiseSysctl(ctx context.Context, s Sysctl, key, value string) (bool, error) {
	cur, err := s.Get(ctx, key)
	if err != nil {
		return false, err
	}
	have, err1 := strconv.Atoi(cur)
	want, err2 := strconv.Atoi(value)
	if err := errors.Join(err1, err2); err != nil {
		return false, fmt.Errorf("%s is not a number: %w", key, err)
	}
	if have >= want {
		return false, nil
	}
	return true, s.Set(ctx, key, value)
}
