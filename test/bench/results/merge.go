package results

import (
	"fmt"
)

// Merge folds the measurements of a new run into base, an earlier results
// file, for re-running some proxies or scales (say, kipvs after a change)
// without re-running the rest. A measurement of the new run replaces base's
// one of the same scenario, proxy, scale and metric; base's others are kept.
// The direct (no proxy) throughput baseline is a sample per VM, so the new
// run's values are added to base's. The header says both commands and both
// kipvs versions, so the file never hides that it comes from two runs.
func Merge(base, run *File) *File {
	out := *run
	out.Date = base.Date
	out.Command = base.Command + " && " + run.Command
	if base.KipvsVersion != run.KipvsVersion {
		out.KipvsVersion = fmt.Sprintf("%s (figures of the merged run; the others: %s)", run.KipvsVersion, base.KipvsVersion)
	}
	out.Machine = base.Machine
	if run.Machine != base.Machine {
		out.Machine = base.Machine + "; merged run: " + run.Machine
	}
	out.WallSeconds = base.WallSeconds + run.WallSeconds
	if base.Kernel != "" {
		out.Kernel = base.Kernel
	}
	if run.Kernel != "" && base.Kernel != "" && run.Kernel != base.Kernel {
		out.Kernel = base.Kernel + ", " + run.Kernel
	}
	type key struct {
		proxy, metric string
		services      int
	}
	newer := map[string]map[key]Measurement{}
	for _, s := range run.Scenarios {
		newer[s.ID] = map[key]Measurement{}
		for _, m := range s.Measurements {
			newer[s.ID][key{m.Proxy, m.Metric, m.Services}] = m
		}
	}
	out.Scenarios = nil
	seen := map[string]bool{}
	for _, bs := range base.Scenarios {
		s := bs
		s.Measurements = nil
		used := map[key]bool{}
		for _, m := range bs.Measurements {
			k := key{m.Proxy, m.Metric, m.Services}
			nm, ok := newer[bs.ID][k]
			switch {
			case !ok:
				s.Measurements = append(s.Measurements, m)
			case m.Proxy == Direct:
				m.Values = append(append([]float64{}, m.Values...), nm.Values...)
				s.Measurements = append(s.Measurements, m)
			default:
				s.Measurements = append(s.Measurements, nm)
			}
			used[k] = ok
		}
		for _, ns := range run.Scenarios {
			if ns.ID != bs.ID {
				continue
			}
			for _, m := range ns.Measurements {
				if !used[key{m.Proxy, m.Metric, m.Services}] {
					s.Measurements = append(s.Measurements, m)
				}
			}
		}
		seen[bs.ID] = true
		out.Scenarios = append(out.Scenarios, s)
	}
	for _, ns := range run.Scenarios {
		if !seen[ns.ID] {
			out.Scenarios = append(out.Scenarios, ns)
		}
	}
	return &out
}
