//go:build linux

package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	mipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

var _ Interface = (*Real)(nil)

// ProbeFWMark is the firewall mark of the throw-away virtual server that Probe
// creates and deletes. A firewall-mark service cannot collide with the
// address/port services kipvs manages, and Dump skips firewall-mark services,
// so a leftover from a crashed probe is never mistaken for kipvs state; the
// next Probe deletes it. The value spells "kips" in ASCII.
const ProbeFWMark uint32 = 0x6b697073

// Real is the kernel's IPVS table in the current network namespace, reached
// over generic netlink with github.com/moby/ipvs v1.1.0.
//
// Behaviour, for callers and for the real-kernel tests in test/:
//   - Every virtual server is sent with its address family and a host netmask
//     (0xffffffff for IPv4, 128 for IPv6); protocols are sent as IP protocol
//     numbers (TCP 6, UDP 17, SCTP 132); real servers always use masquerading.
//   - Flags are written as given, except FlagHashed, which is never written and
//     is stripped from every flag set read back. Timeout is written as given;
//     the kernel keeps and reports it even without FlagPersistent.
//   - Weights must be in 0..MaxWeight, and a real server must have its virtual
//     server's address family; otherwise the call fails with ERANGE or EINVAL
//     before reaching the kernel.
//   - Kernel errors come back as errnos wrapped with the operation and keys,
//     e.g. "add virtual server TCP/10.0.0.1:80: file exists": EEXIST (IsExist)
//     for an existing object, ESRCH for a missing virtual server and ENOENT for
//     a missing real server (IsNotFound), ENOENT also for a scheduler whose
//     module cannot be loaded, EPERM without CAP_NET_ADMIN.
//   - Dump lists every address/port virtual server with its real servers,
//     sorted by key, including ones kipvs does not own; firewall-mark services
//     are skipped. RealServers fails with ESRCH for a missing virtual server
//     (it asks for the service first: the kernel's destination dump alone
//     returns an empty list for a missing service).
//   - Timeouts/SetTimeouts read and write the global tcp/tcpfin/udp timeouts;
//     zero fields are left unchanged; values must be whole seconds.
//   - Calls are serialised: moby's handle is not safe for concurrent use. moby
//     calls cannot be cancelled; ctx is checked before each call.
//
// moby/ipvs resolves the IPVS generic netlink family once per process, in the
// first New, and remembers family 0 if IPVS was missing then. With family 0 the
// kernel acknowledges every request without doing anything, so writes would
// "succeed" silently and GetConfig would panic. Real therefore checks the
// family itself in New and fails every call with ErrNotSupported when it was
// missing; Probe proves by a real write that the table works.
type Real struct {
	mu     sync.Mutex
	handle mobyHandle // nil after Close
	// noIPVS is the error every call returns when the IPVS family was missing at New.
	noIPVS error
}

// mobyHandle is the part of *mipvs.Handle that Real uses; unit tests give
// Real an in-memory table instead of the kernel.
type mobyHandle interface {
	probeHandle
	UpdateService(*mipvs.Service) error
	GetService(*mipvs.Service) (*mipvs.Service, error)
	GetDestinations(*mipvs.Service) ([]*mipvs.Destination, error)
	NewDestination(*mipvs.Service, *mipvs.Destination) error
	UpdateDestination(*mipvs.Service, *mipvs.Destination) error
	DelDestination(*mipvs.Service, *mipvs.Destination) error
	GetConfig() (*mipvs.Config, error)
	SetConfig(*mipvs.Config) error
	Close()
}

// New opens a netlink handle to IPVS in the current network namespace. It
// succeeds even when the kernel has no IPVS (calls then fail with
// ErrNotSupported); run Probe during setup to find out. New lets moby/ipvs run
// "modprobe -va ip_vs" once per process, which logs through logrus if it fails.
func New() (*Real, error) {
	h, err := mipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink handle: %w", err)
	}
	return &Real{handle: h, noIPVS: checkIPVSFamily()}, nil
}

// checkIPVSFamily looks up the IPVS generic netlink family, which exists
// exactly when the ip_vs module is loaded. The kernel answers ENOENT for an
// unknown family.
func checkIPVSFamily() error {
	_, err := netlink.GenlFamilyGet("IPVS")
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOENT):
		return notSupportedError("generic netlink family IPVS missing", nil)
	}
	return fmt.Errorf("look up generic netlink family IPVS: %w", err)
}

// Close releases the netlink handle; later calls fail with net.ErrClosed.
// It always returns nil and may be called more than once.
func (r *Real) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handle != nil {
		r.handle.Close()
		r.handle = nil
	}
	return nil
}

// do runs fn with the handle, serialised, after checking ctx, Close and the
// IPVS family. A panic inside moby/ipvs (it indexes replies without checking
// their length) becomes an error.
func (r *Real) do(ctx context.Context, fn func(h mobyHandle) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handle == nil {
		return net.ErrClosed
	}
	if r.noIPVS != nil {
		return r.noIPVS
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("moby/ipvs panicked: %v", p)
		}
	}()
	return fn(r.handle)
}

// Dump lists every address/port virtual server with its real servers and
// counters, sorted by key. Firewall-mark services are skipped (logged at V(5)).
func (r *Real) Dump(ctx context.Context) ([]VirtualServerStatus, error) {
	logger := klog.FromContext(ctx)
	var out []VirtualServerStatus
	err := r.do(ctx, func(h mobyHandle) error {
		svcs, err := h.GetServices()
		if err != nil {
			return fmt.Errorf("%s: %w", opDump, err)
		}
		for _, s := range svcs {
			if isFWMarkService(s) {
				logger.V(5).Info("Skipping firewall-mark virtual server", "fwmark", s.FWMark)
				continue
			}
			vs, err := fromMobyService(s)
			if err != nil {
				return fmt.Errorf("%s: %w", opDump, err)
			}
			dests, err := h.GetDestinations(s)
			if err != nil {
				return vsError(opListRS, vs.VirtualServerKey, err)
			}
			rss, err := fromMobyDestinations(dests)
			if err != nil {
				return vsError(opListRS, vs.VirtualServerKey, err)
			}
			out = append(out, VirtualServerStatus{VirtualServer: vs, RealServers: rss})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sortStatuses(out)
	logger.V(5).Info("Dumped IPVS table", "virtualServers", len(out))
	return out, nil
}

// fromMobyDestinations converts destinations; none gives nil.
func fromMobyDestinations(dests []*mipvs.Destination) ([]RealServerStatus, error) {
	var out []RealServerStatus
	for _, d := range dests {
		rs, err := fromMobyDestination(d)
		if err != nil {
			return nil, err
		}
		out = append(out, rs)
	}
	return out, nil
}

// RealServers lists the real servers of vs with counters, sorted by key; it
// fails with ESRCH (IsNotFound) when vs does not exist.
func (r *Real) RealServers(ctx context.Context, vs VirtualServerKey) ([]RealServerStatus, error) {
	svc, err := toMobyServiceKey(vs)
	if err != nil {
		return nil, vsError(opListRS, vs, err)
	}
	var out []RealServerStatus
	err = r.do(ctx, func(h mobyHandle) error {
		if _, err := h.GetService(svc); err != nil {
			return err
		}
		dests, err := h.GetDestinations(svc)
		if err != nil {
			return err
		}
		out, err = fromMobyDestinations(dests)
		return err
	})
	if err != nil {
		return nil, vsError(opListRS, vs, err)
	}
	sortRealServers(out)
	return out, nil
}

// AddVirtualServer creates vs without real servers; EEXIST if it exists.
func (r *Real) AddVirtualServer(ctx context.Context, vs VirtualServer) error {
	return r.writeService(ctx, opAddVS, vs, mobyHandle.NewService)
}

// UpdateVirtualServer changes the scheduler, flags and timeout of vs, keeping
// its real servers; ESRCH if it does not exist.
func (r *Real) UpdateVirtualServer(ctx context.Context, vs VirtualServer) error {
	return r.writeService(ctx, opUpdateVS, vs, mobyHandle.UpdateService)
}

// writeService converts vs and runs one service write.
func (r *Real) writeService(ctx context.Context, op string, vs VirtualServer, fn func(mobyHandle, *mipvs.Service) error) error {
	svc, err := toMobyService(vs)
	if err != nil {
		return vsError(op, vs.VirtualServerKey, err)
	}
	if v := klog.FromContext(ctx).V(4); v.Enabled() {
		v.Info("IPVS write", "op", op, "virtualServer", vs.VirtualServerKey.String(),
			"scheduler", vs.Scheduler, "flags", uint32(vs.Flags), "timeout", vs.Timeout)
	}
	return vsError(op, vs.VirtualServerKey, r.do(ctx, func(h mobyHandle) error { return fn(h, svc) }))
}

// DeleteVirtualServer deletes vs and its real servers; ESRCH if it does not exist.
func (r *Real) DeleteVirtualServer(ctx context.Context, vs VirtualServerKey) error {
	svc, err := toMobyServiceKey(vs)
	if err != nil {
		return vsError(opDeleteVS, vs, err)
	}
	klog.FromContext(ctx).V(4).Info("IPVS write", "op", opDeleteVS, "virtualServer", vs.String())
	return vsError(opDeleteVS, vs, r.do(ctx, func(h mobyHandle) error { return h.DelService(svc) }))
}

// AddRealServer adds rs to vs; ESRCH if vs is missing, EEXIST if rs exists.
func (r *Real) AddRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	return r.writeDestination(ctx, opAddRS, vs, rs, mobyHandle.NewDestination)
}

// UpdateRealServer sets the weight of rs in vs; ESRCH if vs is missing,
// ENOENT if rs is.
func (r *Real) UpdateRealServer(ctx context.Context, vs VirtualServerKey, rs RealServer) error {
	return r.writeDestination(ctx, opUpdateRS, vs, rs, mobyHandle.UpdateDestination)
}

// DeleteRealServer removes rs from vs; ESRCH if vs is missing, ENOENT if rs is.
// The kernel keeps a removed real server with live connections in its trash
// list until they end; that is invisible here.
func (r *Real) DeleteRealServer(ctx context.Context, vs VirtualServerKey, rs RealServerKey) error {
	return r.writeDestination(ctx, opDeleteRS, vs, RealServer{RealServerKey: rs}, mobyHandle.DelDestination)
}

// writeDestination converts both keys and runs one destination write.
func (r *Real) writeDestination(ctx context.Context, op string, vs VirtualServerKey, rs RealServer,
	fn func(mobyHandle, *mipvs.Service, *mipvs.Destination) error) error {
	svc, err := toMobyServiceKey(vs)
	if err != nil {
		return rsError(op, vs, rs.RealServerKey, err)
	}
	dst, err := toMobyDestination(vs, rs)
	if err != nil {
		return rsError(op, vs, rs.RealServerKey, err)
	}
	if v := klog.FromContext(ctx).V(4); v.Enabled() {
		v.Info("IPVS write", "op", op, "virtualServer", vs.String(), "realServer", rs.RealServerKey.String(), "weight", rs.Weight)
	}
	return rsError(op, vs, rs.RealServerKey, r.do(ctx, func(h mobyHandle) error { return fn(h, svc, dst) }))
}

// Timeouts reads the global tcp, tcpfin and udp timeouts.
func (r *Real) Timeouts(ctx context.Context) (Timeouts, error) {
	var t Timeouts
	err := r.do(ctx, func(h mobyHandle) error {
		c, err := h.GetConfig()
		if err != nil {
			return err
		}
		t = fromMobyConfig(c)
		return nil
	})
	if err != nil {
		return Timeouts{}, fmt.Errorf("%s: %w", opGetTO, err)
	}
	return t, nil
}

// SetTimeouts sets the non-zero fields of t (whole seconds) as global timeouts.
func (r *Real) SetTimeouts(ctx context.Context, t Timeouts) error {
	c, err := toMobyConfig(t)
	if err != nil {
		return fmt.Errorf("%s: %w", opSetTO, err)
	}
	klog.FromContext(ctx).V(4).Info("IPVS write", "op", opSetTO, "tcp", t.TCP, "tcpfin", t.TCPFin, "udp", t.UDP)
	if err := r.do(ctx, func(h mobyHandle) error { return h.SetConfig(c) }); err != nil {
		return fmt.Errorf("%s: %w", opSetTO, err)
	}
	return nil
}
