package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kipvs/kipvs/ipvs"
)

// FuzzLoad feeds random bytes as a --config file through LoadFile, Decode
// and Complete. Nothing may panic; each step either fails with an error or
// yields a value, and a Config that Complete returns is valid: a known
// scheduler, a positive sync period not below the minimum, a node name, a
// valid dummy link name, at most one cluster CIDR per family, no negative
// timeout.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		header,
		header + "mode: ipvs\nipvs:\n  scheduler: wrr\n  syncPeriod: 10s\n  minSyncPeriod: 20s\n",
		header + "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nnodePortAddresses: [primary]\n",
		header + "ipvs:\n  excludeCIDRs: [\"10.0.0.0/8\", \"nonsense\"]\n  tcpTimeout: -1s\n",
		header + "conntrack:\n  maxPerCore: -1\n  min: 0\n",
		header + "mode: iptables\nbogusField: 1\n",
		header + "ipvs: {scheduler: rr, scheduler: lc}\n",
		"apiVersion: v1\nkind: ConfigMap\ndata:\n  config.conf: |\n    x\n",
		"{\"apiVersion\":\"kubeproxy.config.k8s.io/v1alpha1\",\"kind\":\"KubeProxyConfiguration\",\"hostnameOverride\":\"Node-A \"}",
		"- a\n- b\n",
		"\t\x00:",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		decoded, derr := Decode(data)
		if (decoded == nil) == (derr == nil) {
			t.Fatalf("Decode = %v, %v: want exactly one of a value and an error", decoded, derr)
		}
		path := filepath.Join(t.TempDir(), "config.conf")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		loaded, lerr := LoadFile(path)
		if (loaded == nil) != (decoded == nil) || (lerr == nil) != (derr == nil) {
			t.Fatalf("LoadFile = %v, %v but Decode = %v, %v", loaded, lerr, decoded, derr)
		}
		o := parsed(t, "--config="+path)
		cfg, _, err := o.Complete()
		if derr != nil {
			if err == nil {
				t.Fatalf("Complete accepted a file that Decode refused (%v)", derr)
			}
			return
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid configuration:") {
				t.Fatalf("Complete error %q does not say the configuration is invalid", err)
			}
			return
		}
		if !ipvs.ValidScheduler(cfg.Scheduler) {
			t.Errorf("Config.Scheduler = %q", cfg.Scheduler)
		}
		if cfg.SyncPeriod <= 0 || cfg.MinSyncPeriod < 0 || cfg.MinSyncPeriod > cfg.SyncPeriod {
			t.Errorf("Config sync periods: sync %v, min %v", cfg.SyncPeriod, cfg.MinSyncPeriod)
		}
		if cfg.NodeName == "" || cfg.NodeName != strings.ToLower(strings.TrimSpace(cfg.NodeName)) {
			t.Errorf("Config.NodeName = %q", cfg.NodeName)
		}
		if checkLinkName(cfg.DummyLink) != nil {
			t.Errorf("Config.DummyLink = %q", cfg.DummyLink)
		}
		var v4, v6 int
		for _, c := range cfg.ClusterCIDRs {
			if c.Addr().Is4() {
				v4++
			} else {
				v6++
			}
		}
		if v4 > 1 || v6 > 1 {
			t.Errorf("Config.ClusterCIDRs = %v: more than one per family", cfg.ClusterCIDRs)
		}
		for _, p := range append(append([]netip.Prefix{}, cfg.ExcludeCIDRs...), cfg.NodePortAddresses...) {
			if !p.IsValid() {
				t.Errorf("invalid prefix %v in Config", p)
			}
		}
		for _, d := range []int64{int64(cfg.Timeouts.TCP), int64(cfg.Timeouts.TCPFin), int64(cfg.Timeouts.UDP), int64(cfg.DrainTimeout),
			int64(cfg.Conntrack.TCPEstablishedTimeout), int64(cfg.Conntrack.TCPCloseWaitTimeout), int64(cfg.Conntrack.MaxPerCore), int64(cfg.Conntrack.Min)} {
			if d < 0 {
				t.Errorf("negative duration or count in Config: %+v", cfg)
				break
			}
		}
	})
}
