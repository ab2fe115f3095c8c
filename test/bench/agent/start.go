package main

import (
	"fmt"
	"os"
	"time"

	"github.com/kipvs/kipvs/test/bench/layout"
	"github.com/kipvs/kipvs/test/bench/results"
)

// kubeProxyConfig is kube-proxy's configuration: its defaults except the
// node, the cluster CIDR and conntrack sysctls left alone; the same sync
// periods for every mode and for kipvs.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
clusterCIDR: %s
hostnameOverride: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
ipvs:
  scheduler: rr
  syncPeriod: 30s
  minSyncPeriod: %s
iptables:
  syncPeriod: 30s
  minSyncPeriod: %s
nftables:
  syncPeriod: 30s
  minSyncPeriod: %s
conntrack:
  maxPerCore: 0
`

// start starts the proxy under test and returns the kernel view for it.
func (b *bench) start() (*proxyProcess, error) {
	c := b.c
	var mode string
	switch c.proxy {
	case results.Kipvs:
		return startProxy(c.proxy, c.kipvs, logPath(c.proxy),
			"--kubeconfig", c.kubeconfig, "--hostname-override", layout.NodeName, "--cluster-cidr", layout.ClusterCIDR,
			"--min-sync-period", c.minSync.String(), "--sync-period", "30s", "-v=2")
	case results.KubeProxyIPVS:
		mode = "ipvs"
	case results.KubeProxyNFTables:
		mode = "nftables"
	case results.KubeProxyIPTables:
		mode = "iptables"
	default:
		return nil, fmt.Errorf("unknown proxy %q", c.proxy)
	}
	ms := c.minSync.String()
	cfg := fmt.Sprintf(kubeProxyConfig, mode, layout.ClusterCIDR, layout.NodeName, c.kubeconfig, ms, ms, ms)
	if err := os.WriteFile("/tmp/kube-proxy.yaml", []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	return startProxy(c.proxy, c.kubeProxy, logPath(c.proxy), "--config", "/tmp/kube-proxy.yaml", "--v=2")
}

// newView returns how to read the proxy's programming from the kernel.
func (b *bench) newView(started time.Time) (kernelView, error) {
	switch b.c.proxy {
	case results.Kipvs, results.KubeProxyIPVS:
		return newIPVSView()
	case results.KubeProxyNFTables:
		return &nftView{}, nil
	default:
		return &syncView{since: started}, nil
	}
}
