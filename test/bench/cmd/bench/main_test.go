package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(*options) string
		wantErr bool
	}{
		{name: "defaults", args: nil, check: func(o *options) string {
			return cmp.Diff([]int{100, 1000, 5000, 10000}, o.scales) + cmp.Diff(allProxies, o.proxies) +
				cmp.Diff(allScenarios, o.scenarios) + cmp.Diff(15*time.Minute, o.capDur) + cmp.Diff(3, o.runs)
		}},
		{name: "subset", args: []string{"-scales", "100, 10000", "-proxies", "kipvs", "-scenarios", "cold-start,floor", "-cap", "1m"},
			check: func(o *options) string {
				return cmp.Diff([]int{100, 10000}, o.scales) + cmp.Diff([]string{"kipvs"}, o.proxies) +
					cmp.Diff([]string{"cold-start", "floor"}, o.scenarios) + cmp.Diff(time.Minute, o.capDur)
			}},
		{name: "unknown proxy", args: []string{"-proxies", "cilium"}, wantErr: true},
		{name: "bad scale", args: []string{"-scales", "100,x"}, wantErr: true},
		{name: "zero runs", args: []string{"-runs", "0"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil {
				if d := tt.check(o); d != "" {
					t.Error(d)
				}
			}
		})
	}
}

func TestScenariosFor(t *testing.T) {
	r := &runner{o: &options{scenarios: allScenarios}}
	tests := []struct {
		proxy string
		want  []string
	}{
		{"kipvs", allScenarios},
		{"kube-proxy-ipvs", []string{"cold-start", "one-change", "restart", "churn", "packet-cost", "throughput"}},
		{"kube-proxy-iptables", []string{"packet-cost", "throughput"}},
	}
	for _, tt := range tests {
		if d := cmp.Diff(tt.want, r.scenariosFor(tt.proxy)); d != "" {
			t.Errorf("scenariosFor(%s) (-want +got):\n%s", tt.proxy, d)
		}
	}
}

func TestLineWriter(t *testing.T) {
	var got []string
	w := &lineWriter{fn: func(l string) { got = append(got, l) }}
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n\nd"))
	if d := cmp.Diff([]string{"a", "bc", ""}, got); d != "" {
		t.Error(d)
	}
}
