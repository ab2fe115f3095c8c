package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"
)

// faultyKey is the virtual server the Faulty tests write.
var faultyKey = VirtualServerKey{Address: netip.MustParseAddr("10.0.0.1"), Protocol: TCP, Port: 80}

// writeRealServers adds n real servers 10.1.0.1..n to faultyKey through f and
// returns the indexes (1-based) of the calls that failed.
func writeRealServers(ctx context.Context, t *testing.T, f *Faulty, n int) []int {
	t.Helper()
	var failed []int
	for i := 1; i <= n; i++ {
		rs := RealServer{RealServerKey: RealServerKey{Address: netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), Port: 8080}, Weight: 1}
		if err := f.AddRealServer(ctx, faultyKey, rs); err != nil {
			if !errors.Is(err, ErrInjected) {
				t.Fatalf("call %d: %v is not an injected fault", i, err)
			}
			failed = append(failed, i)
		}
	}
	return failed
}

func TestFaultyFailsEveryNthWrite(t *testing.T) {
	for _, tc := range []struct {
		name       string
		every      int
		err        error
		wantFailed []int
		wantRS     int
		notFound   bool
	}{
		{name: "no faults", every: 0, wantRS: 6},
		{name: "every write", every: 1, wantFailed: []int{1, 2, 3, 4, 5, 6}, wantRS: 0},
		{name: "every third write", every: 3, wantFailed: []int{3, 6}, wantRS: 4},
		{name: "ESRCH reads as not found", every: 2, err: syscall.ESRCH, wantFailed: []int{2, 4, 6}, wantRS: 3, notFound: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := NewFake()
			if err := inner.AddVirtualServer(ctx, VirtualServer{VirtualServerKey: faultyKey, Scheduler: "rr"}); err != nil {
				t.Fatal(err)
			}
			inner.ResetCounts()
			f := NewFaulty(inner, tc.every)
			f.Err = tc.err
			failed := writeRealServers(ctx, t, f, 6)
			if !slices.Equal(failed, tc.wantFailed) {
				t.Errorf("failed calls %v, want %v", failed, tc.wantFailed)
			}
			if got := f.Faults(); got != len(tc.wantFailed) {
				t.Errorf("Faults() = %d, want %d", got, len(tc.wantFailed))
			}
			if got := f.Operations(); got != 6 {
				t.Errorf("Operations() = %d, want 6", got)
			}
			// Failed writes never reach the wrapped table.
			if got := inner.Writes(); got != tc.wantRS {
				t.Errorf("inner Writes() = %d, want %d", got, tc.wantRS)
			}
			rss, err := f.RealServers(ctx, faultyKey)
			if err != nil {
				t.Fatalf("reads are not faulted by default: %v", err)
			}
			if len(rss) != tc.wantRS {
				t.Errorf("%d real servers, want %d", len(rss), tc.wantRS)
			}
			if tc.notFound {
				err := f.DeleteVirtualServer(ctx, faultyKey) // 7th: passes; 8th would fail
				err2 := f.DeleteVirtualServer(ctx, faultyKey)
				if err != nil || !IsNotFound(err2) || !errors.Is(err2, ErrInjected) {
					t.Errorf("delete: %v, then %v; want success, then an injected not-found", err, err2)
				}
			}
		})
	}
}

func TestFaultyReadsAndSchedule(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewFake(), 1)
	if _, err := f.Dump(ctx); err != nil {
		t.Fatalf("Dump faulted without Reads: %v", err)
	}
	f.Reads = true
	if _, err := f.Dump(ctx); !errors.Is(err, syscall.EIO) || !errors.Is(err, ErrInjected) {
		t.Fatalf("Dump = %v, want an injected EIO", err)
	}
	if _, err := f.Timeouts(ctx); err == nil {
		t.Fatal("Timeouts not faulted with Reads")
	}
	f.SetFailEvery(0)
	if err := f.AddVirtualServer(ctx, VirtualServer{VirtualServerKey: faultyKey, Scheduler: "rr"}); err != nil {
		t.Fatalf("write after SetFailEvery(0): %v", err)
	}
	if got := f.Faults(); got != 2 {
		t.Errorf("Faults() = %d, want 2", got)
	}
	f.ResetCounts()
	if f.Faults() != 0 || f.Operations() != 0 {
		t.Errorf("ResetCounts left %d faults, %d operations", f.Faults(), f.Operations())
	}
}

func TestFaultyTimeout(t *testing.T) {
	for _, tc := range []struct {
		name     string
		delay    time.Duration
		deadline time.Duration
		want     error
	}{
		{name: "blocks until the context deadline", deadline: 20 * time.Millisecond, want: context.DeadlineExceeded},
		{name: "delay shorter than the deadline", delay: 10 * time.Millisecond, deadline: time.Minute, want: syscall.ETIMEDOUT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := NewFake()
			f := NewFaulty(inner, 1)
			f.Mode, f.Delay = FaultTimeout, tc.delay
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			start := time.Now()
			err := f.AddVirtualServer(ctx, VirtualServer{VirtualServerKey: faultyKey, Scheduler: "rr"})
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrInjected) {
				t.Fatalf("AddVirtualServer = %v, want an injected %v", err, tc.want)
			}
			if waited := time.Since(start); waited < min(tc.delay+tc.deadline, 10*time.Millisecond) {
				t.Errorf("returned after %s without blocking", waited)
			}
			if inner.Writes() != 0 || inner.DumpText() != "" {
				t.Errorf("timed-out write reached the table: %d writes, state %q", inner.Writes(), inner.DumpText())
			}
		})
	}
}
