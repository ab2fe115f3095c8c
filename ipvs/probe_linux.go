//go:build linux

package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"

	mipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// probeScheduler is the scheduler of the probe's test virtual server; ip_vs_rr
// is the one scheduler every IPVS build has.
const probeScheduler = "rr"

// Probe proves that this process can program IPVS, for the setup step: New
// succeeds without IPVS, and moby/ipvs acknowledges writes that the kernel
// ignored. Probe
//  1. looks up the IPVS generic netlink family (missing: ErrNotSupported, the
//     message names the modules to load);
//  2. deletes a test virtual server left by an earlier probe that crashed;
//  3. creates the test virtual server, a firewall-mark service with mark
//     ProbeFWMark and scheduler rr, which cannot collide with kipvs's
//     address/port services and which Dump skips;
//  4. reads the table back and checks the test virtual server is there (if it
//     is not, moby/ipvs resolved the family before ip_vs was loaded:
//     ErrNotSupported, restart the process);
//  5. deletes it.
//
// EPERM or EACCES from the kernel gives ErrPermission (CAP_NET_ADMIN needed).
// A missing rr scheduler module gives ErrNotSupported. Test with errors.Is.
func (r *Real) Probe(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("probe IPVS: %w", err)
	}
	if err := checkIPVSFamily(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handle == nil {
		return fmt.Errorf("probe IPVS: %w", net.ErrClosed)
	}
	if r.noIPVS != nil {
		return notSupportedError("ip_vs was loaded after this process opened its IPVS handle; restart the process", nil)
	}
	if err := runProbe(r.handle); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("IPVS probe succeeded", "fwmark", ProbeFWMark)
	return nil
}

// probeHandle is the part of *mipvs.Handle that the probe uses; unit tests
// drive runProbe with an in-memory handle.
type probeHandle interface {
	NewService(*mipvs.Service) error
	GetServices() ([]*mipvs.Service, error)
	DelService(*mipvs.Service) error
}

// probeService returns the probe's test virtual server.
func probeService() *mipvs.Service {
	return &mipvs.Service{
		FWMark:        ProbeFWMark,
		Protocol:      unix.IPPROTO_TCP,
		AddressFamily: unix.AF_INET,
		Netmask:       0xffffffff,
		SchedName:     probeScheduler,
	}
}

// runProbe does steps 2 to 5 of Probe on h.
func runProbe(h probeHandle) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("probe IPVS: moby/ipvs panicked: %v", p)
		}
	}()
	svc := probeService()
	what := fmt.Sprintf("test virtual server fwmark %#x", ProbeFWMark)
	if err := h.DelService(svc); err != nil && !errors.Is(err, syscall.ESRCH) {
		return probeError("delete leftover "+what, err)
	}
	if err := h.NewService(svc); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return notSupportedError("create "+what+": scheduler module ip_vs_"+probeScheduler+" missing", err)
		}
		return probeError("create "+what, err)
	}
	svcs, err := h.GetServices()
	if err != nil {
		_ = h.DelService(svc)
		return probeError("list virtual servers", err)
	}
	if !slices.ContainsFunc(svcs, func(s *mipvs.Service) bool { return s.FWMark == ProbeFWMark }) {
		return notSupportedError(what+" missing right after it was created: the kernel ignored the request "+
			"(moby/ipvs looked up the IPVS family before ip_vs was loaded; restart the process)", nil)
	}
	if err := h.DelService(svc); err != nil {
		return probeError("delete "+what, err)
	}
	return nil
}

// probeError maps a kernel error of a probe step to ErrPermission when it is
// EPERM or EACCES.
func probeError(step string, err error) error {
	if isPermission(err) {
		return permissionError("probe IPVS: "+step, err)
	}
	return fmt.Errorf("probe IPVS: %s: %w", step, err)
}
