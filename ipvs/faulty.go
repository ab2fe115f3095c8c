package ipvs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

var _ Interface = (*Faulty)(nil)

// FaultMode says how a Faulty fails an operation it picked.
type FaultMode uint8

// The ways a Faulty fails an operation.
const (
	// FaultError fails the operation at once with Faulty.Err (EIO when nil),
	// without calling the wrapped Interface: the kernel state is unchanged.
	FaultError FaultMode = iota
	// FaultTimeout blocks the operation until its ctx is done or Faulty.Delay
	// has passed (whichever comes first; with no Delay, until ctx is done) and
	// fails it without calling the wrapped Interface: with ctx's error when ctx
	// ended, else with ETIMEDOUT. It stands for a netlink request that the
	// kernel never answers.
	FaultTimeout
)

// ErrInjected is wrapped by every error a Faulty makes up, so tests can tell
// injected failures from the wrapped Interface's own.
var ErrInjected = errors.New("injected fault")

// Faulty wraps any Interface (Real or Fake) and fails every Nth operation, for
// reliability tests: does the caller retry, count the failures and converge
// once the faults stop? Only writes are faulted unless Reads is set. A failed
// write never reaches the wrapped Interface.
//
// Set the fields before sharing the Faulty; change the schedule later with
// SetFailEvery (for example 0 to stop the faults). A Faulty is safe for
// concurrent use when the wrapped Interface is.
type Faulty struct {
	Interface
	// Mode says how picked operations fail.
	Mode FaultMode
	// Err is the error of FaultError (EIO when nil). Wrapped like a kernel
	// error, syscall.ESRCH makes IsNotFound true.
	Err error
	// Delay bounds how long FaultTimeout blocks; 0 blocks until ctx is done.
	Delay time.Duration
	// Reads makes Dump, RealServers and Timeouts count (and fail) too.
	Reads bool

	mu        sync.Mutex
	failEvery int
	ops       int
	faults    int
}

// NewFaulty wraps inner and fails every nth operation (1: every one; 0: none).
func NewFaulty(inner Interface, n int) *Faulty {
	return &Faulty{Interface: inner, failEvery: n}
}

// SetFailEvery changes the schedule: every nth operation from now on fails
// (1: every one, 0: none). The operation counter restarts.
func (f *Faulty) SetFailEvery(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failEvery, f.ops = n, 0
}

// Operations returns how many operations the Faulty counted (faulted ones
// included) since NewFaulty, ResetCounts or SetFailEvery.
func (f *Faulty) Operations() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// Faults returns how many operations the Faulty failed since NewFaulty or
// ResetCounts.
func (f *Faulty) Faults() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults
}

// ResetCounts sets Operations and Faults back to zero.
func (f *Faulty) ResetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops, f.faults = 0, 0
}

// pick counts one operation and reports whether it is to fail.
func (f *Faulty) pick() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops++
	if f.failEvery <= 0 || f.ops%f.failEvery != 0 {
		return false
	}
	f.faults++
	return true
}

// fault counts one operation and returns the error it fails with, nil when it
// is to go through. read says that the operation is a read.
func (f *Faulty) fault(ctx context.Context, read bool) error {
	if read && !f.Reads {
		return nil
	}
	if !f.pick() {
		return nil
	}
	if f.Mode == FaultTimeout {
		var timer <-chan time.Time
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrInjected, ctx.Err())
		case <-timer:
			return fmt.Errorf("%w: %w", ErrInjected, syscall.ETIMEDOUT)
		}
	}
	err := f.Err
	if err == nil {
		err = syscall.EIO
	}
	return fmt.Errorf("%w: %w", ErrInjected, err)
}

// Dump implements Interface.
func (f *Faulty) Dump(ctx context.Context) ([]VirtualServerStatus, error) {
	if err := f.fault(ctx, true); err != nil {
		return nil, fmt.Errorf("%s: %w", opDump, err)
	}
	return f.Interface.Dump(ctx)
}

// RealServers implements Interface.
func (f *Faulty) RealServers(ctx context.Context, vs VirtualServerKey) ([]RealServerStatus, error) {
	if err := f.fault(ctx, true); err != nil {
		return nil, vsError(opListRS, vs, err)
	}
	return f.Interface.RealServers(ctx, vs)
}

// AddVirtualServer implements Interface.
func (f *Faulty) AddVirtualServer(ctx context.Context, vs VirtualServer) error {
	if err := f.fault(ctx, false); err != nil {
		return vsError(opAddVS, vs.VirtualServerKey, err)
	}
	return f.Interface.AddVirtualServer(ctx, vs)
}

// UpdateVirtualServer implements Interface.
func (f *Faulty) UpdateVirtualServer(ctx context.Context, vs VirtualServer) error {
	if err := f.fault(ctx, false); err != nil {
		return vsError(opUpdateVS, vs.VirtualServerKey, err)
	}
	return f.Interface.UpdateVirtualServer(ctx, vs)
}

// DeleteVirtualServer implements Interface.
func (f *Faulty) DeleteVirtualServer(ctx context.Context, vs VirtualServerKey) error {
	if err := f.fault(ctx, false); err != nil {
		return vsError(opDeleteVS, vs, err)
	}
	return f.Interface.DeleteVirtualServer(ctx, vs)
}

// AddRealServer implements Interface.
func (f *Faulty) AddRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	if err := f.fault(ctx, false); err != nil {
		return rsError(opAddRS, vs, rs.RealServerKey, err)
	}
	return f.Interface.AddRealServer(ctx, vs, rs)
}

// UpdateRealServer implements Interface.
func (f *Faulty) UpdateRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	if err := f.fault(ctx, false); err != nil {
		return rsError(opUpdateRS, vs, rs.RealServerKey, err)
	}
	return f.Interface.UpdateRealServer(ctx, vs, rs)
}

// DeleteRealServer implements Interface.
func (f *Faulty) DeleteRealServer(ctx context.Context, vs VirtualServerKey, rs RealServerKey) error {
	if err := f.fault(ctx, false); err != nil {
		return rsError(opDeleteRS, vs, rs, err)
	}
	return f.Interface.DeleteRealServer(ctx, vs, rs)
}

// Timeouts implements Interface.
func (f *Faulty) Timeouts(ctx context.Context) (Timeouts, error) {
	if err := f.fault(ctx, true); err != nil {
		return Timeouts{}, fmt.Errorf("%s: %w", opGetTO, err)
	}
	return f.Interface.Timeouts(ctx)
}

// SetTimeouts implements Interface.
func (f *Faulty) SetTimeouts(ctx context.Context, t Timeouts) error {
	if err := f.fault(ctx, false); err != nil {
		return fmt.Errorf("%s: %w", opSetTO, err)
	}
	return f.Interface.SetTimeouts(ctx, t)
}
