package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/ipvs"
)

// The drain set keeps the start of each drain in the kernel, so that a drain's
// deadline (Config.DrainTimeout) survives a restart of kipvs: issue 8. Which
// real servers drain is recomputed from the IPVS table (weight 0 and not
// wanted); when each one started is not in the IPVS table, so kipvs keeps it
// in an ipset of its own, KIPVS-DRAINING (KIPVS6-DRAINING for IPv6), of type
// hash:ip,port,ip: VIP,proto:port,real-server IP. No iptables rule uses it.
//
// Each entry counts down from DrainSetHorizon: it is added with the time left
// of the horizon since its drain started, and the kernel reports how much is
// left, so start = now - (DrainSetHorizon - left). The horizon is a constant,
// not DrainTimeout plus a margin, so that entries read after a restart decode
// to the same start even when --drain-timeout or --sync-period changed; and it
// is long, so that a kipvs that was down past a deadline still finds the entry
// and deletes the overdue real server at its first sync. The kernel's expiry
// only collects entries that no kipvs removed (kipvs removes them when the
// drain ends and at a full sync when their real server no longer drains).
//
// What the set cannot tell: it has no real-server port, so two draining real
// servers of one virtual server on the same IP with different ports share an
// entry, and after a restart both get the start of the earlier one. A drain
// longer than DrainSetHorizon outlives its entry and restarts its clock when
// kipvs restarts after that. The kernel reports whole seconds rounded down: a
// start read back is up to 2 s later than the real one (never earlier, so a
// real server is never deleted before its deadline).

// DrainSetHorizon is the timeout KIPVS-DRAINING is created with and each entry
// counts down from.
const DrainSetHorizon = 24 * time.Hour

// DrainSetName is the kernel name of the drain set of a family.
func DrainSetName(ipv6 bool) string {
	if ipv6 {
		return "KIPVS6-DRAINING"
	}
	return "KIPVS-DRAINING"
}

// DrainSetSpec is the spec of the drain set of a family.
func DrainSetSpec(ipv6 bool) IPSetSpec {
	return IPSetSpec{Name: DrainSetName(ipv6), Type: SetTypeHashIPPortIP, IPv6: ipv6, Timeout: DrainSetHorizon}
}

// DrainEntry is the drain set entry of a draining real server.
func DrainEntry(dk DrainKey) IPSetEntry {
	vs := dk.VirtualServer
	return IPSetEntry{IP: vs.Address, Protocol: vs.Protocol, Port: vs.Port, IP2: dk.RealServer.Address}
}

// drainSet mirrors the drain sets: which entries the kernel has.
// Only the sync goroutine uses it. A nil *drainSet does nothing.
type drainSet struct {
	ipset Ipset
	// loaded is true once a full sync has listed both sets; until then
	// nothing is written (the next full sync lists again).
	loaded bool
	exists map[bool]bool
	have   map[IPSetEntry]struct{}
}

func newDrainSet(s Ipset) *drainSet {
	return &drainSet{ipset: s, exists: map[bool]bool{}, have: map[IPSetEntry]struct{}{}}
}

// load lists both drain sets and returns the drain start each entry encodes.
func (d *drainSet) load(ctx context.Context, now time.Time) (map[IPSetEntry]time.Time, error) {
	d.loaded = false
	clear(d.have)
	starts := map[IPSetEntry]time.Time{}
	for _, v6 := range []bool{false, true} {
		name := DrainSetName(v6)
		typ, entries, err := d.ipset.List(ctx, name)
		switch {
		case IsSetNotFound(err):
			d.exists[v6] = false
			continue
		case err != nil:
			return nil, err
		case typ != SetTypeHashIPPortIP:
			return nil, fmt.Errorf("ipset %s has type %s, want %s: delete it (ipset destroy %s)", name, typ, SetTypeHashIPPortIP, name)
		}
		d.exists[v6] = true
		for _, e := range entries {
			// The kernel rounds the time left down: add a second so that
			// the start read back is never earlier than the real one.
			starts[e.Key()] = now.Add(e.Timeout + time.Second - DrainSetHorizon)
			d.have[e.Key()] = struct{}{}
		}
	}
	d.loaded = true
	return starts, nil
}

// write brings the drain sets in line with the drain clock: an entry for each
// (virtual server, real-server IP) that drains, added with the time left of
// the horizon since its earliest start; no other entry.
func (d *drainSet) write(ctx context.Context, clock DrainClock, now time.Time) error {
	if !d.loaded {
		return nil
	}
	want := map[IPSetEntry]time.Time{}
	for vk, m := range clock {
		for rk, since := range m {
			e := DrainEntry(DrainKey{VirtualServer: vk, RealServer: rk})
			if cur, ok := want[e]; !ok || since.Before(cur) {
				want[e] = since
			}
		}
	}
	var errs []error
	for _, e := range slices.SortedFunc(maps.Keys(want), compareEntries) {
		if _, ok := d.have[e]; ok {
			continue
		}
		left := DrainSetHorizon - now.Sub(want[e])
		if left < time.Second {
			continue // older than the horizon: nothing to encode
		}
		if err := d.add(ctx, e, left); err != nil {
			errs = append(errs, err)
			continue
		}
		d.have[e] = struct{}{}
	}
	for _, e := range slices.SortedFunc(maps.Keys(d.have), compareEntries) {
		if _, ok := want[e]; ok {
			continue
		}
		if err := d.ipset.Del(ctx, DrainSetName(e.IP.Is6()), e); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(d.have, e)
	}
	if len(errs) > 0 {
		d.loaded = false // list again at the next full sync
	}
	return errors.Join(errs...)
}

// add adds e with timeout left, creating its family's set when needed.
func (d *drainSet) add(ctx context.Context, e IPSetEntry, left time.Duration) error {
	v6 := e.IP.Is6()
	if !d.exists[v6] {
		if err := d.ipset.Create(ctx, DrainSetSpec(v6)); err != nil && !errors.Is(err, syscall.EEXIST) {
			return err
		}
		d.exists[v6] = true
	}
	e.Timeout = left
	return d.ipset.Add(ctx, DrainSetName(v6), e)
}

// Seed gives each real server of observed that may be draining (weight 0) and
// has no start yet the start of its drain set entry in starts, if any.
// Reconcile then decides with it; Update keeps it only for real servers that
// do drain.
func (c DrainClock) Seed(observed *KernelState, starts map[IPSetEntry]time.Time) {
	if len(starts) == 0 {
		return
	}
	for vk, o := range observed.VirtualServers {
		if vk.Protocol != ipvs.TCP {
			continue
		}
		for rk, rs := range o.RealServers {
			if rs.Weight != 0 {
				continue
			}
			since, ok := starts[DrainEntry(DrainKey{VirtualServer: vk, RealServer: rk})]
			if !ok {
				continue
			}
			if _, ok := c[vk][rk]; ok {
				continue
			}
			if c[vk] == nil {
				c[vk] = map[ipvs.RealServerKey]time.Time{}
			}
			c[vk][rk] = since
		}
	}
}

// loadDrainSet reads the drain sets at a full sync and seeds the drain clock
// from them. A failure is logged: without the sets drains start their clock
// when first seen, as they did before the sets existed.
func (p *Proxier) loadDrainSet(ctx context.Context, now time.Time) {
	if p.drainSet == nil {
		return
	}
	starts, err := p.drainSet.load(ctx, now)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Reading kipvs's drain set; drains found without a known start start their deadline now")
		return
	}
	p.drains.Seed(p.observed, starts)
}

// writeDrainSet writes the drain clock to the drain sets after a sync. A
// failure is logged, not returned: it only loses drain starts if kipvs
// restarts before the next full sync repairs the sets.
func (p *Proxier) writeDrainSet(ctx context.Context) {
	if p.drainSet == nil {
		return
	}
	if err := p.drainSet.write(ctx, p.drains, p.clock.Now()); err != nil {
		klog.FromContext(ctx).Error(err, "Writing kipvs's drain set")
	}
}
