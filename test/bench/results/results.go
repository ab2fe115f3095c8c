// Package results is the file format between the benchmark runner
// (test/bench) and the report generator: one JSON file per `make bench` run,
// from which BENCHMARKS.md and the plots are drawn.
package results

import (
	"encoding/json"
	"fmt"
	"os"
)

// Proxy names used in Measurement.Proxy.
const (
	Kipvs             = "kipvs"
	KubeProxyIPVS     = "kube-proxy-ipvs"
	KubeProxyNFTables = "kube-proxy-nftables"
	KubeProxyIPTables = "kube-proxy-iptables"
	Direct            = "direct" // no proxy: straight to the pod (throughput baseline)
	NetlinkFloor      = "netlink-floor"
)

// Scenario IDs (issue 7's numbering).
const (
	ColdStart  = "cold-start"  // 1
	OneChange  = "one-change"  // 2
	Restart    = "restart"     // 3
	Churn      = "churn"       // 4
	PacketCost = "packet-cost" // 5
	Throughput = "throughput"  // 6
	Floor      = "floor"       // 7
)

// Metric names used in Measurement.Metric. Units are in the name.
const (
	Seconds       = "seconds"         // time until the kernel holds the table / shows the change / is ready
	KernelOps     = "kernel_ops"      // kernel operations issued (netlink IPVS ops, ipset/iptables changes)
	KernelWrites  = "kernel_writes"   // writes only (restart scenario)
	PeakRSSBytes  = "peak_rss_bytes"  // peak resident set size of the proxy process
	CPUSeconds    = "cpu_seconds"     // user+system CPU of the proxy process
	P50Seconds    = "p50_seconds"     // median latency
	P99Seconds    = "p99_seconds"     // 99th percentile latency
	BitsPerSecond = "bits_per_second" // throughput
	SecondsPerOp  = "seconds_per_op"  // netlink floor: time per IPVS operation
)

// File is one benchmark run.
type File struct {
	Date             string     `json:"date"`    // RFC 3339, when the run started
	Command          string     `json:"command"` // the exact command that produced the file
	Kernel           string     `json:"kernel"`  // uname -r in the VM
	GoVersion        string     `json:"goVersion"`
	KipvsVersion     string     `json:"kipvsVersion"` // git describe
	KubeProxyVersion string     `json:"kubeProxyVersion"`
	Machine          string     `json:"machine"` // CPU model, cores, "qemu TCG"
	Runs             int        `json:"runs"`    // repetitions per measurement
	CapSeconds       float64    `json:"capSeconds"`
	WallSeconds      float64    `json:"wallSeconds"` // the whole run
	Scenarios        []Scenario `json:"scenarios"`
}

// Scenario groups the measurements of one scenario.
type Scenario struct {
	ID           string        `json:"id"`
	Title        string        `json:"title"`
	Description  string        `json:"description"` // what is measured and how, one paragraph
	Measurements []Measurement `json:"measurements"`
}

// Measurement is one metric for one proxy at one scale, over Runs runs.
type Measurement struct {
	Proxy               string    `json:"proxy"`
	Services            int       `json:"services"`
	EndpointsPerService int       `json:"endpointsPerService"`
	Metric              string    `json:"metric"`
	Values              []float64 `json:"values"` // one per run (may be fewer when capped)
	Capped              bool      `json:"capped"` // a run hit CapSeconds: report "> cap"
	Note                string    `json:"note,omitempty"`
}

// Write stores f as indented JSON at path.
func Write(path string, f *File) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Read loads a File from path.
func Read(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}
