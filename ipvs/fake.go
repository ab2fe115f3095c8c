package ipvs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"syscall"
	"time"
)

var _ Interface = (*Fake)(nil)

// Names of the Fake's write operations, as passed to Fault and FailNext: the
// names of the Interface methods that write to the kernel.
var fakeWriteOps = []string{
	"AddVirtualServer", "UpdateVirtualServer", "DeleteVirtualServer",
	"AddRealServer", "UpdateRealServer", "DeleteRealServer", "SetTimeouts",
}

// DefaultTimeouts are the kernel's default IPVS connection timeouts
// (ip_vs_proto_tcp.c, ip_vs_proto_udp.c); a new Fake starts with them.
var DefaultTimeouts = Timeouts{TCP: 15 * time.Minute, TCPFin: 2 * time.Minute, UDP: 5 * time.Minute}

// Fake is an in-memory IPVS table for unit tests. It answers like the kernel:
//   - adding a virtual server or real server that exists: EEXIST (IsExist);
//   - updating or deleting a missing virtual server, or touching the real
//     servers of one: ESRCH (IsNotFound);
//   - updating or deleting a missing real server: ENOENT (IsNotFound);
//   - a scheduler outside Schedulers (including ""): ENOENT, as when the kernel
//     cannot load ip_vs_<name>;
//   - a malformed key or mixed address families: EINVAL; a weight outside
//     0..MaxWeight: ERANGE.
//
// Errors carry the same messages as Real's, e.g.
// "add virtual server TCP/10.0.0.1:80: file exists". Deleting a virtual
// server deletes its real servers. The kernel's hashed flag is never stored.
//
// The Fake counts operations: every call to a write method (including failed
// and fault-injected ones, excluding calls whose ctx was already done) counts
// in Writes; Dump, RealServers and Timeouts count in Reads. DumpText and the
// test helpers count in neither. A Fake is safe for concurrent use.
type Fake struct {
	// Fault, when not nil, is called before every write with the operation
	// name (the method name, e.g. "AddRealServer"). A non-nil result fails the
	// write without changing state; the error is wrapped like a kernel error,
	// so returning syscall.ESRCH makes IsNotFound true. Fault runs with the
	// Fake locked and must not call the Fake. Set it before sharing the Fake.
	Fault func(op string) error

	mu       sync.Mutex
	vss      map[VirtualServerKey]*fakeVirtualServer
	timeouts Timeouts
	writes   int
	reads    int
	failNext map[string][]error
}

// fakeVirtualServer is one virtual server of a Fake with its real servers.
type fakeVirtualServer struct {
	vs  VirtualServer
	rss map[RealServerKey]RealServerStatus
}

// NewFake returns an empty Fake with DefaultTimeouts.
func NewFake() *Fake {
	return &Fake{
		vss:      map[VirtualServerKey]*fakeVirtualServer{},
		timeouts: DefaultTimeouts,
		failNext: map[string][]error{},
	}
}

// NewFakeFromText returns a Fake holding the state that text describes, in the
// format of FormatDump (active and inactive counters included). Every virtual
// and real server must be one the Fake would accept from Add*; the operation
// counters start at zero.
func NewFakeFromText(text string) (*Fake, error) {
	vss, err := ParseDump(text)
	if err != nil {
		return nil, err
	}
	f := NewFake()
	for _, vs := range vss {
		if err := f.addVirtualServer(vs.VirtualServer); err != nil {
			return nil, vsError(opAddVS, vs.VirtualServerKey, err)
		}
		for _, rs := range vs.RealServers {
			if err := f.addRealServer(vs.VirtualServerKey, rs.RealServer); err != nil {
				return nil, rsError(opAddRS, vs.VirtualServerKey, rs.RealServerKey, err)
			}
			f.vss[vs.VirtualServerKey].rss[rs.RealServerKey] = rs
		}
	}
	return f, nil
}

// FailNext makes the next write named op (a method name such as
// "AddVirtualServer") fail with err, once; calls queue up. It panics on an
// unknown op name, to catch typos in tests.
func (f *Fake) FailNext(op string, err error) {
	if !slices.Contains(fakeWriteOps, op) {
		panic(fmt.Sprintf("ipvs.Fake.FailNext: unknown write operation %q, want one of %v", op, fakeWriteOps))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext[op] = append(f.failNext[op], err)
}

// Writes returns the number of write calls since NewFake or ResetCounts.
func (f *Fake) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Reads returns the number of read calls since NewFake or ResetCounts.
func (f *Fake) Reads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

// ResetCounts sets Writes and Reads back to zero.
func (f *Fake) ResetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes, f.reads = 0, 0
}

// DumpText returns the state in the canonical text of FormatDump.
func (f *Fake) DumpText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return FormatDump(f.snapshot())
}

// String returns DumpText, so a Fake prints usefully in test failures.
func (f *Fake) String() string { return f.DumpText() }

// SetConnections sets the active and inactive connection counters of a real
// server, as traffic would. It fails like UpdateRealServer when either server
// is missing.
func (f *Fake) SetConnections(vs VirtualServerKey, rs RealServerKey, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vss[vs]
	if !ok {
		return rsError(opUpdateRS, vs, rs, syscall.ESRCH)
	}
	st, ok := v.rss[rs]
	if !ok {
		return rsError(opUpdateRS, vs, rs, syscall.ENOENT)
	}
	st.ActiveConns, st.InactiveConns = active, inactive
	v.rss[rs] = st
	return nil
}

// beginWrite counts a write and consults FailNext and Fault. The caller holds f.mu.
func (f *Fake) beginWrite(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.writes++
	if q := f.failNext[op]; len(q) > 0 {
		f.failNext[op] = q[1:]
		return q[0]
	}
	if f.Fault != nil {
		return f.Fault(op)
	}
	return nil
}

// beginRead counts a read. The caller holds f.mu.
func (f *Fake) beginRead(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.reads++
	return nil
}

// snapshot returns a sorted deep copy of the state. The caller holds f.mu.
func (f *Fake) snapshot() []VirtualServerStatus {
	out := make([]VirtualServerStatus, 0, len(f.vss))
	for _, v := range f.vss {
		out = append(out, VirtualServerStatus{VirtualServer: v.vs, RealServers: v.realServers()})
	}
	sortStatuses(out)
	return out
}

// realServers returns the real servers, sorted, or nil when there are none.
func (v *fakeVirtualServer) realServers() []RealServerStatus {
	if len(v.rss) == 0 {
		return nil
	}
	return slices.SortedFunc(maps.Values(v.rss), func(a, b RealServerStatus) int {
		return a.RealServerKey.Compare(b.RealServerKey)
	})
}

// Dump returns every virtual server with its real servers, sorted by key.
func (f *Fake) Dump(ctx context.Context) ([]VirtualServerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginRead(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", opDump, err)
	}
	return f.snapshot(), nil
}

// RealServers returns the real servers of vs, sorted; ESRCH if vs is missing.
func (f *Fake) RealServers(ctx context.Context, vs VirtualServerKey) ([]RealServerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginRead(ctx); err != nil {
		return nil, vsError(opListRS, vs, err)
	}
	v, ok := f.vss[vs]
	if !ok {
		return nil, vsError(opListRS, vs, syscall.ESRCH)
	}
	return v.realServers(), nil
}

// AddVirtualServer adds vs without real servers.
func (f *Fake) AddVirtualServer(ctx context.Context, vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "AddVirtualServer"); err != nil {
		return vsError(opAddVS, vs.VirtualServerKey, err)
	}
	return vsError(opAddVS, vs.VirtualServerKey, f.addVirtualServer(vs))
}

// addVirtualServer checks in the kernel's order: request, existence, scheduler.
func (f *Fake) addVirtualServer(vs VirtualServer) error {
	if err := validateVirtualServerKey(vs.VirtualServerKey); err != nil {
		return err
	}
	if _, ok := f.vss[vs.VirtualServerKey]; ok {
		return syscall.EEXIST
	}
	if err := checkScheduler(vs.Scheduler); err != nil {
		return err
	}
	vs.Flags &^= FlagHashed
	f.vss[vs.VirtualServerKey] = &fakeVirtualServer{vs: vs, rss: map[RealServerKey]RealServerStatus{}}
	return nil
}

// checkScheduler answers ENOENT for a scheduler the kernel could not load.
func checkScheduler(name string) error {
	if !ValidScheduler(name) {
		return fmt.Errorf("scheduler module ip_vs_%s not found: %w", name, syscall.ENOENT)
	}
	return nil
}

// UpdateVirtualServer replaces the scheduler, flags and timeout of vs, keeping
// its real servers.
func (f *Fake) UpdateVirtualServer(ctx context.Context, vs VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "UpdateVirtualServer"); err != nil {
		return vsError(opUpdateVS, vs.VirtualServerKey, err)
	}
	if err := validateVirtualServerKey(vs.VirtualServerKey); err != nil {
		return vsError(opUpdateVS, vs.VirtualServerKey, err)
	}
	v, ok := f.vss[vs.VirtualServerKey]
	if !ok {
		return vsError(opUpdateVS, vs.VirtualServerKey, syscall.ESRCH)
	}
	if err := checkScheduler(vs.Scheduler); err != nil {
		return vsError(opUpdateVS, vs.VirtualServerKey, err)
	}
	vs.Flags &^= FlagHashed
	v.vs = vs
	return nil
}

// DeleteVirtualServer deletes vs and its real servers.
func (f *Fake) DeleteVirtualServer(ctx context.Context, vs VirtualServerKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "DeleteVirtualServer"); err != nil {
		return vsError(opDeleteVS, vs, err)
	}
	if err := validateVirtualServerKey(vs); err != nil {
		return vsError(opDeleteVS, vs, err)
	}
	if _, ok := f.vss[vs]; !ok {
		return vsError(opDeleteVS, vs, syscall.ESRCH)
	}
	delete(f.vss, vs)
	return nil
}

// AddRealServer adds rs to vs with zero counters.
func (f *Fake) AddRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "AddRealServer"); err != nil {
		return rsError(opAddRS, vs, rs.RealServerKey, err)
	}
	return rsError(opAddRS, vs, rs.RealServerKey, f.addRealServer(vs, rs))
}

// addRealServer checks in the kernel's order: virtual server, request, existence.
func (f *Fake) addRealServer(vs VirtualServerKey, rs RealServer) error {
	v, err := f.lookupForRealServer(vs, rs)
	if err != nil {
		return err
	}
	if _, ok := v.rss[rs.RealServerKey]; ok {
		return syscall.EEXIST
	}
	v.rss[rs.RealServerKey] = RealServerStatus{RealServer: rs}
	return nil
}

// lookupForRealServer finds vs and validates rs against it.
func (f *Fake) lookupForRealServer(vs VirtualServerKey, rs RealServer) (*fakeVirtualServer, error) {
	if err := validateVirtualServerKey(vs); err != nil {
		return nil, err
	}
	v, ok := f.vss[vs]
	if !ok {
		return nil, syscall.ESRCH
	}
	if err := validateRealServer(vs, rs); err != nil {
		return nil, err
	}
	return v, nil
}

// UpdateRealServer sets the weight of rs in vs, keeping its counters.
func (f *Fake) UpdateRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "UpdateRealServer"); err != nil {
		return rsError(opUpdateRS, vs, rs.RealServerKey, err)
	}
	v, err := f.lookupForRealServer(vs, rs)
	if err != nil {
		return rsError(opUpdateRS, vs, rs.RealServerKey, err)
	}
	st, ok := v.rss[rs.RealServerKey]
	if !ok {
		return rsError(opUpdateRS, vs, rs.RealServerKey, syscall.ENOENT)
	}
	st.Weight = rs.Weight
	v.rss[rs.RealServerKey] = st
	return nil
}

// DeleteRealServer deletes rs from vs.
func (f *Fake) DeleteRealServer(ctx context.Context, vs VirtualServerKey, rs RealServerKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "DeleteRealServer"); err != nil {
		return rsError(opDeleteRS, vs, rs, err)
	}
	v, err := f.lookupForRealServer(vs, RealServer{RealServerKey: rs})
	if err != nil {
		return rsError(opDeleteRS, vs, rs, err)
	}
	if _, ok := v.rss[rs]; !ok {
		return rsError(opDeleteRS, vs, rs, syscall.ENOENT)
	}
	delete(v.rss, rs)
	return nil
}

// Timeouts returns the global timeouts.
func (f *Fake) Timeouts(ctx context.Context) (Timeouts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginRead(ctx); err != nil {
		return Timeouts{}, fmt.Errorf("%s: %w", opGetTO, err)
	}
	return f.timeouts, nil
}

// SetTimeouts sets the non-zero fields of t, like the kernel; validation
// matches Real's (whole, non-negative seconds that fit in 32 bits).
func (f *Fake) SetTimeouts(ctx context.Context, t Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.beginWrite(ctx, "SetTimeouts"); err != nil {
		return fmt.Errorf("%s: %w", opSetTO, err)
	}
	if err := validateTimeouts(t); err != nil {
		return fmt.Errorf("%s: %w", opSetTO, err)
	}
	for _, p := range []struct {
		dst *time.Duration
		v   time.Duration
	}{
		{&f.timeouts.TCP, t.TCP}, {&f.timeouts.TCPFin, t.TCPFin}, {&f.timeouts.UDP, t.UDP},
	} {
		if p.v != 0 {
			*p.dst = p.v
		}
	}
	return nil
}
