//go:build linux

package ipvs

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	mipvs "github.com/moby/ipvs"
)

// fakeHandle is an in-memory kernel table of firewall-mark services for
// runProbe. With ignoreWrites it behaves like moby/ipvs using family 0: the
// kernel acknowledges every request and does nothing. fail holds an errno per
// method name.
type fakeHandle struct {
	services     map[uint32]*mipvs.Service
	ignoreWrites bool
	fail         map[string]error
}

func newFakeHandle(marks ...uint32) *fakeHandle {
	h := &fakeHandle{services: map[uint32]*mipvs.Service{}, fail: map[string]error{}}
	for _, m := range marks {
		h.services[m] = &mipvs.Service{FWMark: m}
	}
	return h
}

func (h *fakeHandle) NewService(s *mipvs.Service) error {
	if err := h.fail["NewService"]; err != nil {
		return err
	}
	if h.ignoreWrites {
		return nil
	}
	if _, ok := h.services[s.FWMark]; ok {
		return syscall.EEXIST
	}
	h.services[s.FWMark] = s
	return nil
}

func (h *fakeHandle) GetServices() ([]*mipvs.Service, error) {
	if err := h.fail["GetServices"]; err != nil {
		return nil, err
	}
	var out []*mipvs.Service
	for _, s := range h.services {
		out = append(out, s)
	}
	return out, nil
}

func (h *fakeHandle) DelService(s *mipvs.Service) error {
	if err := h.fail["DelService"]; err != nil {
		return err
	}
	if h.ignoreWrites {
		return nil
	}
	if _, ok := h.services[s.FWMark]; !ok {
		return syscall.ESRCH
	}
	delete(h.services, s.FWMark)
	return nil
}

func TestRunProbe(t *testing.T) {
	const other = 0x10
	tests := []struct {
		name    string
		handle  *fakeHandle
		wantIs  []error // nil: success
		wantMsg string
	}{
		{name: "empty table", handle: newFakeHandle(other)},
		{name: "leftover from a crashed probe", handle: newFakeHandle(ProbeFWMark, other)},
		{name: "no CAP_NET_ADMIN", handle: &fakeHandle{services: map[uint32]*mipvs.Service{}, fail: map[string]error{"DelService": syscall.EPERM}},
			wantIs: []error{ErrPermission, syscall.EPERM}, wantMsg: "needs CAP_NET_ADMIN: probe IPVS: delete leftover test virtual server fwmark 0x6b697073"},
		{name: "access denied on create", handle: &fakeHandle{services: map[uint32]*mipvs.Service{}, fail: map[string]error{"NewService": syscall.EACCES}},
			wantIs: []error{ErrPermission, syscall.EACCES}, wantMsg: "create test virtual server"},
		{name: "no rr scheduler", handle: &fakeHandle{services: map[uint32]*mipvs.Service{}, fail: map[string]error{"NewService": syscall.ENOENT}},
			wantIs: []error{ErrNotSupported, syscall.ENOENT}, wantMsg: "ip_vs_rr missing"},
		{name: "kernel ignores requests", handle: &fakeHandle{services: map[uint32]*mipvs.Service{}, ignoreWrites: true},
			wantIs: []error{ErrNotSupported}, wantMsg: "restart the process"},
		{name: "list fails", handle: &fakeHandle{services: map[uint32]*mipvs.Service{}, fail: map[string]error{"GetServices": syscall.EIO}},
			wantIs: []error{syscall.EIO}, wantMsg: "probe IPVS: list virtual servers: input/output error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := runProbe(tc.handle)
			if tc.wantIs == nil {
				if err != nil {
					t.Fatalf("runProbe() = %v, want nil", err)
				}
			}
			for _, target := range tc.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("runProbe() = %v, want errors.Is %v", err, target)
				}
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("runProbe() = %q, want it to contain %q", err, tc.wantMsg)
			}
			if _, ok := tc.handle.services[ProbeFWMark]; ok && tc.handle.fail["DelService"] == nil {
				t.Errorf("test virtual server left behind")
			}
			if len(tc.handle.fail) == 0 && !tc.handle.ignoreWrites {
				if _, ok := tc.handle.services[other]; !ok {
					t.Errorf("probe deleted a foreign virtual server")
				}
			}
		})
	}
}

func TestNotSupportedMessage(t *testing.T) {
	err := notSupportedError("generic netlink family IPVS missing", nil)
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("%v does not wrap ErrNotSupported", err)
	}
	for _, mod := range append([]string{"modprobe -a ip_vs ", "nf_conntrack"}, schedulerModules()...) {
		if !strings.Contains(err.Error(), mod) {
			t.Errorf("message %q does not name %q", err, mod)
		}
	}
}

// schedulerModules returns "ip_vs_<s>" for every scheduler.
func schedulerModules() []string {
	var out []string
	for _, s := range Schedulers {
		out = append(out, "ip_vs_"+s+" ")
	}
	return out
}

// TestRealWithoutIPVS runs Real against the host kernel when that kernel has
// no IPVS: Probe must report ErrNotSupported, and calls must fail with it
// instead of silently "succeeding" (moby/ipvs with family 0) or panicking.
// The behaviour on a kernel with IPVS is tested in test/.
func TestRealWithoutIPVS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to exercise the host kernel's IPVS; run as root (the probe result is only meaningful with CAP_NET_ADMIN)")
	}
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		t.Skip("this kernel has IPVS (/proc/net/ip_vs exists); real-kernel behaviour is tested in test/")
	}
	ctx := context.Background()
	r, err := New()
	if err != nil {
		t.Fatalf("New() = %v; moby/ipvs opens its handle even without IPVS", err)
	}
	err = r.Probe(ctx)
	if !errors.Is(err, ErrNotSupported) || errors.Is(err, ErrPermission) {
		t.Fatalf("Probe() = %v, want ErrNotSupported", err)
	}
	if !strings.Contains(err.Error(), "modprobe -a ip_vs") {
		t.Errorf("Probe() = %q, want the modprobe hint", err)
	}
	t.Logf("Probe() on this kernel: %v", err)

	vs := makeVS(t, "TCP 203.0.113.1:1", "rr").VirtualServer
	checks := map[string]error{
		"AddVirtualServer": r.AddVirtualServer(ctx, vs),
		"AddRealServer":    r.AddRealServer(ctx, vs.VirtualServerKey, makeRS("203.0.113.2:1", 1).RealServer),
		"SetTimeouts":      r.SetTimeouts(ctx, Timeouts{TCP: 900 * time.Second}),
	}
	_, checks["Dump"] = r.Dump(ctx)
	_, checks["Timeouts"] = r.Timeouts(ctx)
	_, checks["RealServers"] = r.RealServers(ctx, vs.VirtualServerKey)
	for op, err := range checks {
		if !errors.Is(err, ErrNotSupported) {
			t.Errorf("%s() = %v, want ErrNotSupported", op, err)
		}
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Dump(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dump() after Close = %v, want net.ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
}
