package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spf13/pflag"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// header starts every inline config file.
const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// parsed returns Options with the command line args parsed, $NODE_NAME unset
// and hostname "Host-1".
func parsed(t *testing.T, args ...string) *Options {
	t.Helper()
	o := NewOptions()
	o.getenv = func(string) string { return "" }
	o.hostname = func() (string, error) { return "Host-1", nil }
	fs := pflag.NewFlagSet("kipvs", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return o
}

// writeFile writes content to a temporary config file and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// config is the proxier.Config of NewOptions on host "host-1", changed by mods.
func config(mods ...func(*proxier.Config)) proxier.Config {
	c := proxier.Config{
		NodeName:      "host-1",
		Scheduler:     "rr",
		DummyLink:     "kube-ipvs0",
		SyncPeriod:    30 * time.Second,
		MinSyncPeriod: time.Second,
		DrainTimeout:  60 * time.Second,
		Conntrack: proxier.ConntrackConfig{MaxPerCore: 32768, Min: 131072,
			TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour},
	}
	for _, m := range mods {
		m(&c)
	}
	return c
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func TestComplete(t *testing.T) {
	full := filepath.Join("testdata", "full.yaml")
	fullConfig := config(func(c *proxier.Config) {
		c.NodeName = "node-a"
		c.Scheduler = "wlc"
		c.StrictARP = true
		c.MasqueradeAll = true
		c.ClusterCIDRs = prefixes("10.244.0.0/16")
		c.NodePortAddresses = prefixes("192.168.0.0/16", "fd00::/64")
		c.ExcludeCIDRs = prefixes("10.96.100.0/24")
		c.SyncPeriod = 45 * time.Second
		c.MinSyncPeriod = 2 * time.Second
		c.Timeouts = ipvs.Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}
	})
	// The file's conntrack section is applied now: no warning (full.yaml holds kube-proxy's defaults).
	var conntrackWarnings []string
	tests := []struct {
		name         string
		args         []string
		env          string // $NODE_NAME
		want         proxier.Config
		wantWarnings []string
	}{
		{
			name: "defaults",
			want: config(),
		},
		{
			name: "node name from NODE_NAME",
			env:  " Worker-7 ",
			want: config(func(c *proxier.Config) { c.NodeName = "worker-7" }),
		},
		{
			name: "flags only",
			args: []string{
				"--hostname-override= Node-1", "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
				"--ipvs-scheduler=mh", "--ipvs-strict-arp", "--ipvs-exclude-cidrs=10.96.100.0/24,10.96.101.7/24",
				"--ipvs-tcp-timeout=15m", "--ipvs-tcpfin-timeout=2m", "--ipvs-udp-timeout=5m", "--masquerade-all",
				"--nodeport-addresses=primary", "--sync-period=1m", "--min-sync-period=0s",
				"--dummy-link=kipvs0", "--drain-timeout=2m",
			},
			want: config(func(c *proxier.Config) {
				c.NodeName = "node-1"
				c.ClusterCIDRs = prefixes("10.244.0.0/16", "fd00:10:244::/56")
				c.Scheduler = "mh"
				c.StrictARP = true
				c.ExcludeCIDRs = prefixes("10.96.100.0/24", "10.96.101.0/24")
				c.Timeouts = ipvs.Timeouts{TCP: 15 * time.Minute, TCPFin: 2 * time.Minute, UDP: 5 * time.Minute}
				c.MasqueradeAll = true
				c.NodePortPrimaryOnly = true
				c.SyncPeriod = time.Minute
				c.MinSyncPeriod = 0
				c.DummyLink = "kipvs0"
				c.DrainTimeout = 2 * time.Minute
			}),
		},
		{
			name: "kube-proxy's sync period flag names",
			args: []string{"--ipvs-sync-period=10s", "--ipvs-min-sync-period=3s", "--proxy-mode=ipvs"},
			want: config(func(c *proxier.Config) { c.SyncPeriod = 10 * time.Second; c.MinSyncPeriod = 3 * time.Second }),
		},
		{
			name: "nodePortAddresses all means every local IP",
			args: []string{"--nodeport-addresses=all,10.0.0.0/8"},
			want: config(),
		},
		{
			name:         "nodePortAddresses localhost",
			args:         []string{"--nodeport-addresses=localhost"},
			want:         config(func(c *proxier.Config) { c.NodePortAddresses = prefixes("127.0.0.0/8", "::1/128") }),
			wantWarnings: []string{"nodePortAddresses 'localhost': IPVS does not serve NodePorts on loopback addresses (as in kube-proxy's IPVS mode)"},
		},
		{
			name: "conntrack flags",
			args: []string{"--conntrack-max-per-core=100", "--conntrack-min=7", "--conntrack-tcp-timeout-established=3h",
				"--conntrack-tcp-timeout-close-wait=0", "--conntrack-udp-timeout=10s"},
			want: config(func(c *proxier.Config) {
				c.Conntrack = proxier.ConntrackConfig{MaxPerCore: 100, Min: 7, TCPEstablishedTimeout: 3 * time.Hour, UDPTimeout: 10 * time.Second}
			}),
		},
		{
			name: "conntrack file: explicit zeros count, flags win",
			args: []string{"--config=" + filepath.Join("testdata", "conntrack.yaml"), "--conntrack-min=9"},
			want: config(func(c *proxier.Config) {
				c.Conntrack = proxier.ConntrackConfig{MaxPerCore: 0, Min: 9, TCPEstablishedTimeout: 2 * time.Hour,
					TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}
			}),
			wantWarnings: []string{"--conntrack-min=9 overrides conntrack.min=1000 from the config file"},
		},
		{
			name:         "file only",
			args:         []string{"--config=" + full},
			want:         fullConfig,
			wantWarnings: conntrackWarnings,
		},
		{
			name: "flags override the file",
			args: []string{"--config=" + full, "--ipvs-scheduler=rr", "--ipvs-sync-period=1m", "--hostname-override=mine", "--ipvs-strict-arp=true"},
			want: config(func(c *proxier.Config) {
				*c = fullConfig
				c.Scheduler = "rr"
				c.SyncPeriod = time.Minute
				c.NodeName = "mine"
			}),
			wantWarnings: append(conntrackWarnings[:len(conntrackWarnings):len(conntrackWarnings)],
				"--hostname-override=mine overrides hostnameOverride=Node-A from the config file",
				"--ipvs-scheduler=rr overrides ipvs.scheduler=wlc from the config file",
				"--sync-period=1m0s overrides ipvs.syncPeriod=45s from the config file",
			),
		},
		{
			name: "kubeadm's kube-proxy ConfigMap config.conf",
			args: []string{"--config=" + filepath.Join("testdata", "kubeadm-ipvs.conf")},
			want: config(func(c *proxier.Config) {
				c.StrictARP = true
				c.ClusterCIDRs = prefixes("10.244.0.0/16", "fd00:10:244::/56")
			}),
		},
		{
			name: "unsupported fields are named",
			args: []string{"--config=" + filepath.Join("testdata", "unsupported.yaml")},
			want: config(),
			wantWarnings: []string{
				"config file testdata/unsupported.yaml: featureGates={SomeGate: true} is not supported by kipvs and is ignored (kipvs has no kube-proxy feature gates)",
				"config file testdata/unsupported.yaml: bindAddress=192.168.1.10 is not supported by kipvs and is ignored (kipvs takes the node's primary IPs from the Node object)",
				"config file testdata/unsupported.yaml: enableProfiling=true is not supported by kipvs and is ignored",
				"config file testdata/unsupported.yaml: iptables.masqueradeBit=7 is not supported by kipvs and is ignored",
				"config file testdata/unsupported.yaml: nftables.masqueradeAll=true is not supported by kipvs and is ignored (nftables mode only; use iptables.masqueradeAll)",
				"config file testdata/unsupported.yaml: winkernel.enableDSR=true is not supported by kipvs and is ignored (Windows only)",
				"config file testdata/unsupported.yaml: detectLocalMode=InterfaceNamePrefix is not supported by kipvs and is ignored (kipvs detects local traffic by clusterCIDR only)",
				"config file testdata/unsupported.yaml: detectLocal.interfaceNamePrefix=veth is not supported by kipvs and is ignored (kipvs detects local traffic by clusterCIDR only)",
				"config file testdata/unsupported.yaml: portRange=30000-32767 is not supported by kipvs and is ignored (unused since kube-proxy's userspace mode was removed)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := parsed(t, tt.args...)
			o.getenv = func(k string) string {
				if k == "NODE_NAME" {
					return tt.env
				}
				return ""
			}
			got, warnings, err := o.Complete()
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
				t.Errorf("Config (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantWarnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCompleteFileOptions checks the file fields that land in Options rather
// than proxier.Config, and that a flag-less run takes them from the file.
func TestCompleteFileOptions(t *testing.T) {
	o := parsed(t, "--config="+filepath.Join("testdata", "full.yaml"), "--kube-api-qps=50", "-v=5")
	if _, _, err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	i32 := func(v int32) *int32 { return &v }
	dur := func(d time.Duration) *time.Duration { return &d }
	got := struct {
		Kubeconfig, ContentType, Accept, Healthz, Metrics string
		QPS                                               float32
		Burst                                             int32
		ConfigSync                                        time.Duration
		Conntrack                                         ConntrackOptions
		Verbosity                                         uint32
	}{o.Kubeconfig, o.ContentType, o.AcceptContentTypes, o.HealthzBindAddress, o.MetricsBindAddress,
		o.QPS, o.Burst, o.ConfigSyncPeriod, o.Conntrack, uint32(o.Logging.Verbosity)}
	want := got
	want.Kubeconfig, want.ContentType, want.Accept = "/etc/kipvs/kubeconfig", "application/json", "application/json"
	want.Healthz, want.Metrics = "127.0.0.1:20256", "0.0.0.0:20249"
	want.QPS, want.Burst, want.ConfigSync = 50, 40, 5*time.Minute // --kube-api-qps wins over qps: 20
	want.Conntrack = ConntrackOptions{MaxPerCore: i32(32768), Min: i32(131072),
		TCPEstablishedTimeout: dur(24 * time.Hour), TCPCloseWaitTimeout: dur(time.Hour)}
	want.Verbosity = 5 // -v wins over logging.verbosity: 3
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}

	o = parsed(t, "--config="+filepath.Join("testdata", "full.yaml"))
	if _, _, err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if o.Logging.Verbosity != 3 || o.QPS != 20 {
		t.Errorf("without flags: verbosity %d, qps %v; want the file's 3 and 20", o.Logging.Verbosity, o.QPS)
	}
}

func TestCompleteErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		file    string // inline config file content, written to a temp file
		hostErr bool
		wantErr []string // each must appear in the error
	}{
		{
			name:    "mode iptables in the file",
			file:    header + "mode: iptables\n",
			wantErr: []string{`proxy mode "iptables" is not supported`, "set mode: ipvs"},
		},
		{
			name:    "proxy-mode nftables flag",
			args:    []string{"--proxy-mode=nftables"},
			wantErr: []string{`proxy mode "nftables" is not supported`},
		},
		{
			name:    "unknown field",
			file:    header + "mode: ipvs\nipvs:\n  schedular: wlc\n",
			wantErr: []string{`unknown field "ipvs.schedular"`},
		},
		{
			name:    "misspelt case is unknown",
			file:    header + "ClusterCIDR: 10.0.0.0/8\n",
			wantErr: []string{`unknown field "ClusterCIDR"`},
		},
		{
			name:    "duplicate field",
			file:    header + "mode: ipvs\nmode: ipvs\n",
			wantErr: []string{`"mode"`, "already set"},
		},
		{
			name:    "a whole ConfigMap",
			file:    "apiVersion: v1\nkind: ConfigMap\ndata:\n  config.conf: x\n",
			wantErr: []string{`kind "ConfigMap"`, "pass the ConfigMap's config.conf key"},
		},
		{
			name:    "wrong apiVersion",
			file:    "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n",
			wantErr: []string{`apiVersion "kubeproxy.config.k8s.io/v1beta9"`},
		},
		{
			name:    "wrong type",
			file:    header + "ipvs:\n  syncPeriod: often\n",
			wantErr: []string{"decode:", "often"},
		},
		{
			name:    "missing file",
			args:    []string{"--config=/nonexistent/kipvs.conf"},
			wantErr: []string{"/nonexistent/kipvs.conf"},
		},
		{
			name:    "bad scheduler from the file",
			file:    header + "ipvs:\n  scheduler: fastest\n",
			wantErr: []string{`unknown IPVS scheduler "fastest"`, "rr, wrr"},
		},
		{
			name: "bad CIDRs name the value and the flag",
			args: []string{"--cluster-cidr=10.0.0.0/33", "--ipvs-exclude-cidrs=banana", "--nodeport-addresses=10.1.2.3"},
			wantErr: []string{
				`--cluster-cidr (clusterCIDR): "10.0.0.0/33" is not a CIDR`,
				`--ipvs-exclude-cidrs (ipvs.excludeCIDRs): "banana" is not a CIDR`,
				`--nodeport-addresses (nodePortAddresses): "10.1.2.3" is not a CIDR`,
			},
		},
		{
			name:    "bad CIDR in the file",
			file:    header + "clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n",
			wantErr: []string{"--cluster-cidr (clusterCIDR): [10.244.0.0/16 10.245.0.0/16]: at most one IPv4 and one IPv6 CIDR"},
		},
		{
			name:    "primary with CIDRs",
			args:    []string{"--nodeport-addresses=primary,10.0.0.0/8"},
			wantErr: []string{"'primary' only on its own"},
		},
		{
			name: "durations",
			args: []string{"--sync-period=0", "--ipvs-udp-timeout=-1s", "--drain-timeout=-5s", "--config-sync-period=0"},
			wantErr: []string{
				"--sync-period (ipvs.syncPeriod)=0s: must be greater than 0",
				"--ipvs-udp-timeout (ipvs.udpTimeout)=-1s: must not be negative",
				"--drain-timeout=-5s: must not be negative",
				"--config-sync-period (configSyncPeriod)=0s: must be greater than 0",
			},
		},
		{
			name:    "min sync above sync",
			file:    header + "ipvs:\n  syncPeriod: 10s\n  minSyncPeriod: 20s\n",
			wantErr: []string{"--min-sync-period=20s must not exceed --sync-period=10s"},
		},
		{
			name: "bind addresses",
			args: []string{"--healthz-bind-address=0.0.0.0", "--metrics-bind-address=localhost:10249"},
			wantErr: []string{
				`--healthz-bind-address (healthzBindAddress): "0.0.0.0" is not IP:port`,
				`--metrics-bind-address (metricsBindAddress): "localhost:10249": "localhost" is not an IP address`,
			},
		},
		{
			name:    "bind port out of range",
			file:    header + "healthzBindAddress: 0.0.0.0:70000\n",
			wantErr: []string{`port "70000" is not a number in 0-65535`},
		},
		{
			name:    "dummy link name",
			args:    []string{"--dummy-link=a-very-long-link-name"},
			wantErr: []string{`--dummy-link: "a-very-long-link-name" is longer than 15 bytes`},
		},
		{
			name:    "blank hostname override",
			args:    []string{"--hostname-override=  "},
			wantErr: []string{"--hostname-override (hostnameOverride) is blank"},
		},
		{
			name:    "no node name",
			hostErr: true,
			wantErr: []string{"cannot determine the node name (set --hostname-override or NODE_NAME): no hostname"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config=" + writeFile(t, tt.file)}, args...)
			}
			o := parsed(t, args...)
			if tt.hostErr {
				o.hostname = func() (string, error) { return "", errors.New("no hostname") }
			}
			_, _, err := o.Complete()
			if err == nil {
				t.Fatalf("Complete succeeded, want an error containing %q", tt.wantErr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\ndoes not contain %q", err, want)
				}
			}
		})
	}
}

// TestEveryFieldClassified fails when KubeProxyConfiguration gains a field that
// fileFields does not classify, so that a new kube-proxy setting is a conscious
// decision rather than a silent warning at run time.
func TestEveryFieldClassified(t *testing.T) {
	seen := map[string]bool{}
	walkFields(reflect.ValueOf(v1alpha1.KubeProxyConfiguration{}), "", func(path string, _ reflect.Value) {
		seen[path] = true
		if _, ok := fileFields[path]; !ok {
			t.Errorf("field %s of KubeProxyConfiguration is not classified in fileFields", path)
		}
	})
	for path := range fileFields {
		if !seen[path] {
			t.Errorf("fileFields lists %s, which KubeProxyConfiguration does not have", path)
		}
	}
}
