package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/test/bench/layout"
)

// kernelView reads what the proxy under test has programmed into the kernel.
type kernelView interface {
	// fullTable reports whether the kernel holds n benchmark Services with
	// eps endpoints each; detail says how far it got.
	fullTable(ctx context.Context, n, eps int) (done bool, detail string, err error)
	// endpoints returns how many endpoints the kernel has for the Service
	// at vip:layout.Port (0 when it has none or not the Service).
	endpoints(ctx context.Context, vip netip.Addr) (int, error)
	// pollInterval is how often callers may poll endpoints: reading the
	// kernel competes with the proxy for the guest's one CPU.
	pollInterval() time.Duration
	close()
}

// serviceCIDR is the API server's IPv4 Service range (test/apiserver).
var serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")

// ipvsView reads the IPVS table over netlink (our ipvs package).
type ipvsView struct{ r *ipvs.Real }

func newIPVSView() (*ipvsView, error) {
	r, err := ipvs.New()
	if err != nil {
		return nil, err
	}
	return &ipvsView{r: r}, nil
}

func (v *ipvsView) fullTable(ctx context.Context, n, eps int) (bool, string, error) {
	vss, err := v.r.Dump(ctx)
	if err != nil {
		return false, "", err
	}
	full, rs := 0, 0
	for _, vs := range vss {
		if !serviceCIDR.Contains(vs.Address) || vs.Port != layout.Port || vs.Protocol != ipvs.TCP {
			continue
		}
		rs += len(vs.RealServers)
		if len(vs.RealServers) == eps {
			full++
		}
	}
	return full >= n, fmt.Sprintf("%d virtual servers, %d with %d real servers, %d real servers", len(vss), full, eps, rs), nil
}

func (v *ipvsView) endpoints(ctx context.Context, vip netip.Addr) (int, error) {
	rss, err := v.r.RealServers(ctx, ipvs.VirtualServerKey{Address: vip, Protocol: ipvs.TCP, Port: layout.Port})
	if ipvs.IsNotFound(err) {
		return 0, nil
	}
	return len(rss), err
}

func (v *ipvsView) pollInterval() time.Duration { return 20 * time.Millisecond }
func (v *ipvsView) close()                      { v.r.Close() }

// nftView reads kube-proxy's nftables table with the nft tool. kube-proxy
// writes each sync as one transaction, so the service-ips map holding every
// Service means the whole table is there.
type nftView struct {
	chains map[netip.Addr]string // VIP -> service chain, from the map
}

// serviceIPsElement matches one element of kube-proxy's service-ips map.
var serviceIPsElement = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+) \. tcp \. (\d+) : goto (service-[^\s,}]+)`)

func (v *nftView) listMap(ctx context.Context) (map[netip.Addr]string, error) {
	out, err := run(ctx, "nft", "list", "map", "ip", "kube-proxy", "service-ips")
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]string{}
	for _, e := range serviceIPsElement.FindAllStringSubmatch(out, -1) {
		if e[2] != fmt.Sprint(layout.Port) {
			continue
		}
		if a, err := netip.ParseAddr(e[1]); err == nil {
			m[a] = e[3]
		}
	}
	return m, nil
}

func (v *nftView) fullTable(ctx context.Context, n, eps int) (bool, string, error) {
	m, err := v.listMap(ctx)
	if err != nil {
		return false, "no kube-proxy table yet", nil
	}
	count := 0
	for a := range m {
		if serviceCIDR.Contains(a) {
			count++
		}
	}
	v.chains = m
	return count >= n, fmt.Sprintf("%d Services in the service-ips map", count), nil
}

func (v *nftView) endpoints(ctx context.Context, vip netip.Addr) (int, error) {
	chain, ok := v.chains[vip]
	if !ok {
		m, err := v.listMap(ctx)
		if err != nil {
			return 0, err
		}
		v.chains = m
		if chain, ok = m[vip]; !ok {
			return 0, nil
		}
	}
	out, err := run(ctx, "nft", "list", "chain", "ip", "kube-proxy", chain)
	if err != nil {
		return 0, err
	}
	return countNFTEndpoints(out), nil
}

// numgenMod matches kube-proxy's endpoint choice in a service chain.
var numgenMod = regexp.MustCompile(`numgen random mod (\d+)`)

// countNFTEndpoints returns the endpoints of a kube-proxy service chain: one
// "goto endpoint-" per endpoint chain, or, where v1.37 DNATs straight from a
// "numgen random mod N map { ... }", N.
func countNFTEndpoints(chain string) int {
	if n := strings.Count(chain, "goto endpoint-"); n > 0 {
		return n
	}
	if m := numgenMod.FindStringSubmatch(chain); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

func (v *nftView) pollInterval() time.Duration { return 100 * time.Millisecond }
func (v *nftView) close()                      {}

// syncView is for kube-proxy's iptables mode, used only for packet cost: the
// table is complete when kube-proxy reports a finished sync (iptables-restore
// returned), which is polled through its metrics instead of the kernel.
type syncView struct{ since time.Time }

func (v *syncView) fullTable(ctx context.Context, n, eps int) (bool, string, error) {
	if syncedSince(ctx, v.since) {
		return true, "first sync done", nil
	}
	return false, "no sync yet", nil
}

func (v *syncView) endpoints(ctx context.Context, vip netip.Addr) (int, error) {
	return 0, fmt.Errorf("the iptables view cannot count endpoints")
}

func (v *syncView) pollInterval() time.Duration { return 200 * time.Millisecond }
func (v *syncView) close()                      {}

// run runs a tool and returns its output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %.300s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
