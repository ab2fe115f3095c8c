package metrics

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/component-base/metrics"
)

// ConntrackFill is how full the kernel's connection tracking table is. When
// Entries reaches Limit the kernel drops packets of new connections ("nf_conntrack:
// table full, dropping packet"), Services included.
type ConntrackFill struct {
	Entries int64 `json:"entries"`
	Limit   int64 `json:"limit"`
}

// Ratio returns Entries/Limit, 0 when Limit is 0.
func (f ConntrackFill) Ratio() float64 {
	if f.Limit <= 0 {
		return 0
	}
	return float64(f.Entries) / float64(f.Limit)
}

// ReadConntrack reads nf_conntrack_count and nf_conntrack_max under
// procRoot/sys/net/netfilter. ok is false without error when either file is
// absent (nf_conntrack not loaded, or not visible in this network namespace).
func ReadConntrack(procRoot string) (fill ConntrackFill, ok bool, err error) {
	dir := filepath.Join(procRoot, "sys", "net", "netfilter")
	count, err := readInt(filepath.Join(dir, "nf_conntrack_count"))
	if errors.Is(err, fs.ErrNotExist) {
		return ConntrackFill{}, false, nil
	}
	if err != nil {
		return ConntrackFill{}, false, err
	}
	limit, err := readInt(filepath.Join(dir, "nf_conntrack_max"))
	if errors.Is(err, fs.ErrNotExist) {
		return ConntrackFill{}, false, nil
	}
	if err != nil {
		return ConntrackFill{}, false, err
	}
	return ConntrackFill{Entries: count, Limit: limit}, true, nil
}

// readInt reads a file holding one decimal integer.
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return n, nil
}

// conntrackEntries is kipvs_conntrack_entries: connections in the kernel's
// conntrack table (nf_conntrack_count), read at scrape time.
var conntrackEntries = metrics.NewDesc("kipvs_conntrack_entries",
	"Entries in the kernel's connection tracking table (nf_conntrack_count)", nil, nil, metrics.ALPHA, "")

// conntrackLimit is kipvs_conntrack_limit: the size of the kernel's conntrack
// table (nf_conntrack_max); new connections are dropped when entries reach it.
var conntrackLimit = metrics.NewDesc("kipvs_conntrack_limit",
	"Size of the kernel's connection tracking table (nf_conntrack_max)", nil, nil, metrics.ALPHA, "")

// ConntrackCollector exports the conntrack table's fill, read at every scrape,
// so that exhaustion shows before packets drop. It exports no sample when the
// files are absent or unreadable.
type ConntrackCollector struct {
	metrics.BaseStableCollector
	procRoot string
}

// NewConntrackCollector returns a collector reading under procRoot ("/proc").
func NewConntrackCollector(procRoot string) *ConntrackCollector {
	return &ConntrackCollector{procRoot: procRoot}
}

// DescribeWithStability implements metrics.StableCollector.
func (c *ConntrackCollector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- conntrackEntries
	ch <- conntrackLimit
}

// CollectWithStability implements metrics.StableCollector.
func (c *ConntrackCollector) CollectWithStability(ch chan<- metrics.Metric) {
	fill, ok, err := ReadConntrack(c.procRoot)
	if !ok || err != nil {
		return
	}
	ch <- metrics.NewLazyConstMetric(conntrackEntries, metrics.GaugeValue, float64(fill.Entries))
	ch <- metrics.NewLazyConstMetric(conntrackLimit, metrics.GaugeValue, float64(fill.Limit))
}
