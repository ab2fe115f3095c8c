package main

import (
	"strings"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    float64
		wantErr bool
	}{
		{name: "plain", stat: "42 (kipvs) S 1 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 9 0 100 1000 50", want: 3.8},
		{name: "name with spaces and parens", stat: "7 (kube (proxy) x) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 10 2", want: 0.03},
		{name: "truncated", stat: "7 (x) R 1 7", wantErr: true},
		{name: "no name", stat: "garbage", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU(tt.stat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && (got < tt.want-1e-9 || got > tt.want+1e-9) {
				t.Errorf("parseStatCPU = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP kipvs_kernel_operations_total Kernel writes
# TYPE kipvs_kernel_operations_total counter
kipvs_kernel_operations_total{operation="add_real_server",result="succeeded"} 1000
kipvs_kernel_operations_total{operation="add_virtual_server",result="succeeded"} 100
kipvs_kernel_operations_total{operation="add_virtual_server",result="skipped"} 2
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7639e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.7640e+09
broken line
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := sumPrefix(m, kernelOpsPrefix); got != 1102 {
		t.Errorf("sum of kernel ops = %v, want 1102", got)
	}
	if got := sumSkipped(m); got != 2 {
		t.Errorf("skipped = %v, want 2", got)
	}
	if got := lastSync(m); got != 1.7640e9 {
		t.Errorf("last sync = %v", got)
	}
	if got := opsNote(m); got != "add_real_server=1000 add_virtual_server=100; full sync 0.00s" {
		t.Errorf("opsNote = %q", got)
	}
}

func TestSupports(t *testing.T) {
	tests := []struct {
		proxy, scenario string
		want            bool
	}{
		{"kipvs", "floor", true},
		{"kube-proxy-ipvs", "floor", false},
		{"kube-proxy-iptables", "packet-cost", true},
		{"kube-proxy-iptables", "cold-start", false},
		{"kube-proxy-nftables", "one-change", true},
	}
	for _, tt := range tests {
		if got := supports(tt.proxy, tt.scenario); got != tt.want {
			t.Errorf("supports(%s, %s) = %v, want %v", tt.proxy, tt.scenario, got, tt.want)
		}
	}
}

func TestCountNFTEndpoints(t *testing.T) {
	tests := []struct {
		chain string
		want  int
	}{
		{"meta l4proto tcp dnat ip addr . port to numgen random mod 11 map { 0 : 10.128.0.0 . 8080 }", 11},
		{"numgen random mod 2 vmap { 0 : goto endpoint-AAA-x, 1 : goto endpoint-BBB-y }", 2},
		{"jump mark-for-masquerade", 0},
	}
	for _, tt := range tests {
		if got := countNFTEndpoints(tt.chain); got != tt.want {
			t.Errorf("countNFTEndpoints(%q) = %d, want %d", tt.chain, got, tt.want)
		}
	}
}
