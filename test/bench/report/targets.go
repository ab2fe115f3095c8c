package report

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kipvs/kipvs/test/bench/results"
)

// Status is the verdict on one target.
type Status string

// The verdicts. Inconclusive is a target whose figures exist but cannot
// decide it, because a run hit the cap on the side that matters.
const (
	Met          Status = "met"
	Missed       Status = "missed"
	NotMeasured  Status = "not measured"
	Inconclusive Status = "inconclusive"
)

// statusRank orders verdicts from best to worst, to combine a target's parts.
var statusRank = []Status{Met, Inconclusive, NotMeasured, Missed}

// worse returns the worse of two verdicts.
func worse(a, b Status) Status {
	if slices.Index(statusRank, b) > slices.Index(statusRank, a) {
		return b
	}
	return a
}

// Target is issue 7's target, evaluated from a File.
type Target struct {
	// Goal is the target as issue 7 states it.
	Goal string
	// Status is the worst verdict of the target's parts.
	Status Status
	// Figures says what was compared, with the figures, one clause per part.
	Figures []string
}

// TargetScale is the scale of the targets: 10,000 Services with 10 endpoints each.
const TargetScale = 10000

// MiB is a mebibyte.
const MiB = 1 << 20

// Targets evaluates issue 7's five targets from f's measurements.
func Targets(f *results.File) []Target {
	return []Target{
		coldStartTarget(f),
		oneChangeTarget(f),
		restartTarget(f),
		rssTarget(f),
		packetCostTarget(f),
	}
}

// part is one condition of a target: its verdict and the sentence with its figures.
type part struct {
	status Status
	text   string
}

// target combines parts into a Target.
func target(goal string, parts ...part) Target {
	t := Target{Goal: goal, Status: Met}
	for _, p := range parts {
		t.Status = worse(t.Status, p.status)
		t.Figures = append(t.Figures, p.text)
	}
	return t
}

// operand is one side of a ratio condition.
type operand struct {
	name string
	m    *results.Measurement
	// value overrides the measurement's median when m is nil and ok is true.
	value float64
	ok    bool
}

// median returns the operand's value and whether it has one and is capped.
func (o operand) median() (v float64, has, capped bool) {
	if o.m == nil {
		return o.value, o.ok, false
	}
	s := Summarize(*o.m)
	return s.Median, s.N > 0, s.Capped
}

// format prints the operand's value.
func (o operand) format(metric string, capSeconds float64) string {
	if o.m != nil {
		return formatCell(o.m, capSeconds)
	}
	return info(metric).Format(o.value)
}

// ratioPart decides a.median / b.median <= limit. A capped duration is a
// lower bound (> cap): it decides the condition when the bound is enough,
// and makes it inconclusive otherwise.
func ratioPart(what, metric string, a, b operand, limit, capSeconds float64) part {
	va, hasA, capA := a.median()
	vb, hasB, capB := b.median()
	switch {
	case a.m == nil && !a.ok || b.m == nil && !b.ok:
		var missing []string
		if a.m == nil && !a.ok {
			missing = append(missing, a.name)
		}
		if b.m == nil && !b.ok {
			missing = append(missing, b.name)
		}
		return part{NotMeasured, fmt.Sprintf("%s: no figure for %s", what, strings.Join(missing, " or "))}
	case !capA && (!hasA || va < 0) || !capB && (!hasB || vb <= 0):
		return part{NotMeasured, fmt.Sprintf("%s: %s %s, %s %s: no usable value", what,
			a.name, a.format(metric, capSeconds), b.name, b.format(metric, capSeconds))}
	}
	figures := fmt.Sprintf("%s %s, %s %s; goal ≤ %s", a.name, a.format(metric, capSeconds),
		b.name, b.format(metric, capSeconds), FormatRatio(limit))
	switch {
	case capA && capB:
		return part{Inconclusive, fmt.Sprintf("%s: both hit the cap (%s)", what, figures)}
	case capA: // a > cap: ratio > cap/vb
		lo := capSeconds / vb
		if lo > limit {
			return part{Missed, fmt.Sprintf("%s > %s (%s)", what, FormatRatio(lo), figures)}
		}
		return part{Inconclusive, fmt.Sprintf("%s > %s (%s)", what, FormatRatio(lo), figures)}
	case capB: // b > cap: ratio < va/cap
		hi := va / capSeconds
		if hi <= limit {
			return part{Met, fmt.Sprintf("%s < %s (%s)", what, FormatRatio(hi), figures)}
		}
		return part{Inconclusive, fmt.Sprintf("%s < %s (%s)", what, FormatRatio(hi), figures)}
	}
	r := va / vb
	st := Met
	if r > limit {
		st = Missed
	}
	return part{st, fmt.Sprintf("%s = %s (%s)", what, FormatRatio(r), figures)}
}

// coldStartTarget: at 10,000 x 10, at least 10x faster than kube-proxy ipvs
// mode and within 2x of the netlink floor.
func coldStartTarget(f *results.File) Target {
	kipvs := operand{name: results.Kipvs, m: find(f, []string{results.ColdStart}, results.Kipvs, results.Seconds, TargetScale)}
	kp := operand{name: results.KubeProxyIPVS, m: find(f, []string{results.ColdStart}, results.KubeProxyIPVS, results.Seconds, TargetScale)}
	return target("Cold start at 10,000 × 10: at least 10× faster than kube-proxy ipvs mode and within 2× of the netlink floor",
		ratioPart("kipvs/kube-proxy-ipvs", results.Seconds, kipvs, kp, 0.1, f.CapSeconds),
		ratioPart("kipvs/floor", results.Seconds, kipvs, floorOperand(f), 2, f.CapSeconds))
}

// floorOperand is the netlink floor of a cold start at 10,000 x 10: a
// netlink-floor "seconds" measurement at that scale when the runner wrote one,
// else the floor's time per operation times the kernel operations kipvs issued.
func floorOperand(f *results.File) operand {
	scs := []string{results.ColdStart, results.Floor}
	if m := find(f, scs, results.NetlinkFloor, results.Seconds, TargetScale); m != nil {
		return operand{name: "floor", m: m}
	}
	perOp := find(f, scs, results.NetlinkFloor, results.SecondsPerOp, TargetScale)
	if perOp == nil {
		perOp = anyMeasurement(f, results.Floor, results.NetlinkFloor, results.SecondsPerOp)
	}
	ops := find(f, []string{results.ColdStart}, results.Kipvs, results.KernelOps, TargetScale)
	if perOp == nil || ops == nil {
		return operand{name: "the netlink floor (seconds/op × kipvs's kernel ops)"}
	}
	sp, so := Summarize(*perOp), Summarize(*ops)
	if sp.N == 0 || so.N == 0 {
		return operand{name: "the netlink floor (seconds/op × kipvs's kernel ops)"}
	}
	return operand{name: fmt.Sprintf("floor (%s/op × %s ops)", FormatSeconds(sp.Median), FormatCount(so.Median)),
		value: sp.Median * so.Median, ok: true}
}

// anyMeasurement returns the first measurement of proxy and metric in scenario id.
func anyMeasurement(f *results.File, id, proxy, metric string) *results.Measurement {
	sc := scenario(f, id)
	if sc == nil {
		return nil
	}
	for i := range sc.Measurements {
		if m := &sc.Measurements[i]; m.Proxy == proxy && m.Metric == metric {
			return m
		}
	}
	return nil
}

// latencyMetric returns the first of P50Seconds and Seconds for which
// scenario id has a kipvs measurement at every one of the given scales.
func latencyMetric(f *results.File, id string, services ...int) string {
	for _, metric := range []string{results.P50Seconds, results.Seconds} {
		all := true
		for _, n := range services {
			all = all && find(f, []string{id}, results.Kipvs, metric, n) != nil
		}
		if all {
			return metric
		}
	}
	return results.P50Seconds
}

// oneChangeTarget: one change at 10,000 Services takes at most 5 kernel
// operations and under a tenth of kube-proxy ipvs mode's time.
func oneChangeTarget(f *results.File) Target {
	ids := []string{results.OneChange}
	ops := part{NotMeasured, "kernel operations per change: no kipvs figure at 10,000 Services"}
	if m := find(f, ids, results.Kipvs, results.KernelOps, TargetScale); m != nil && len(m.Values) > 0 {
		s := Summarize(*m)
		ops = part{Met, fmt.Sprintf("kernel operations per change: at most %s over the runs (median %s); goal ≤ 5",
			FormatCount(s.Max), FormatCount(s.Median))}
		if s.Max > 5 {
			ops.status = Missed
		}
	}
	metric := latencyMetric(f, results.OneChange, TargetScale)
	kipvs := operand{name: results.Kipvs, m: find(f, ids, results.Kipvs, metric, TargetScale)}
	kp := operand{name: results.KubeProxyIPVS, m: find(f, ids, results.KubeProxyIPVS, metric, TargetScale)}
	return target("One change at 10,000 Services: at most 5 kernel operations, and under a tenth of kube-proxy ipvs mode's time",
		ops, ratioPart("time kipvs/kube-proxy-ipvs ("+info(metric).Label+")", metric, kipvs, kp, 0.1, f.CapSeconds))
}

// restartTarget: restart with the table present issues zero kernel writes, at every scale measured.
func restartTarget(f *results.File) Target {
	const goal = "Restart with the table present: zero kernel writes"
	sc := scenario(f, results.Restart)
	var p part
	if sc != nil {
		t := newTable(sc, results.KernelWrites)
		p = part{Met, ""}
		var per []string
		for _, s := range t.Scales {
			m := t.cell(results.Kipvs, s)
			if m == nil {
				continue
			}
			st := Summarize(*m)
			switch {
			case st.N == 0:
				p.status = worse(p.status, Inconclusive)
			case st.Max > 0:
				p.status = worse(p.status, Missed)
			case st.Capped:
				p.status = worse(p.status, Inconclusive)
			}
			per = append(per, fmt.Sprintf("%s at %s", formatCell(m, f.CapSeconds), FormatCount(float64(s.Services))))
		}
		p.text = "kipvs kernel writes on restart: " + strings.Join(per, ", ")
		if len(per) == 0 {
			p = part{}
		}
	}
	if p.text == "" {
		p = part{NotMeasured, "no kipvs kernel-writes figure in the restart scenario"}
	}
	return target(goal, p)
}

// rssTarget: kipvs's peak RSS at 10,000 x 10 stays under 100 MiB, in every
// scenario that measured it at that scale (the highest run counts).
func rssTarget(f *results.File) Target {
	const goal = "Peak RSS at 10,000 × 10 under 100 MiB"
	var worst *results.Measurement
	var where string
	capped := false
	for i := range f.Scenarios {
		sc := &f.Scenarios[i]
		m := find(f, []string{sc.ID}, results.Kipvs, results.PeakRSSBytes, TargetScale)
		if m == nil || len(m.Values) == 0 {
			continue
		}
		capped = capped || m.Capped
		if worst == nil || Summarize(*m).Max > Summarize(*worst).Max {
			worst, where = m, sc.ID
		}
	}
	if worst == nil {
		return target(goal, part{NotMeasured, "no kipvs peak-RSS figure at 10,000 Services"})
	}
	peak := Summarize(*worst).Max
	p := part{Met, fmt.Sprintf("highest kipvs peak RSS %s (%s, %d run(s)); goal < %s",
		FormatBytes(peak), where, len(worst.Values), FormatBytes(100*MiB))}
	switch {
	case peak >= 100*MiB:
		p.status = Missed
	case capped:
		p.status = Inconclusive
		p.text += "; a capped run may have grown further"
	}
	return target(goal, p)
}

// packetCostTarget: kipvs's packet cost at 10,000 Services is within 10% of
// its cost at 100. The peers' growth is shown beside it.
func packetCostTarget(f *results.File) Target {
	const small = 100
	ids := []string{results.PacketCost}
	metric := latencyMetric(f, results.PacketCost, small, TargetScale)
	var parts []part
	for _, proxy := range []string{results.Kipvs, results.KubeProxyIPTables, results.KubeProxyNFTables} {
		a := operand{name: proxy + " at 10,000", m: find(f, ids, proxy, metric, TargetScale)}
		b := operand{name: "at 100", m: find(f, ids, proxy, metric, small)}
		p := ratioPart(proxy+" cost 10,000/100 ("+info(metric).Label+")", metric, a, b, 1.1, f.CapSeconds)
		if proxy != results.Kipvs {
			if a.m == nil && b.m == nil {
				continue
			}
			p.status = Met // shown for comparison, not part of the verdict
			p.text = "for comparison, " + strings.Replace(p.text, "; goal ≤ "+FormatRatio(1.1), "", 1)
		}
		parts = append(parts, p)
	}
	return target("Packet cost flat (within 10%) from 100 to 10,000 Services", parts...)
}
