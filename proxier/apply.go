package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"k8s.io/klog/v2"

	"github.com/kipvs/kipvs/ipvs"
)

// maxReportedErrors caps the errors Apply joins into its result; the rest are counted.
const maxReportedErrors = 10

// OpCount counts the ops of one kind by result. Skipped ops were not tried
// because the virtual server they belong to could not be created.
type OpCount struct {
	Succeeded, Failed, Skipped int
}

// ApplyResult is what running a Plan did.
type ApplyResult struct {
	// Counts holds one entry per OpKind (index OpKind).
	Counts [numOpKinds]OpCount
	// Failed are the virtual server keys and addresses whose ops failed or were
	// skipped: the next sync reconciles them again.
	FailedVirtualServers []ipvs.VirtualServerKey
	FailedAddresses      []netip.Addr
	// Drift is true when an op failed because the kernel did not hold what the
	// cache said (IsNotFound or IsExist): only a dump can repair the cache.
	Drift bool
	// Err joins the first errors (nil when every op succeeded).
	Err error
}

// Writes returns the number of ops tried (succeeded or failed).
func (r *ApplyResult) Writes() int {
	n := 0
	for _, c := range r.Counts {
		n += c.Succeeded + c.Failed
	}
	return n
}

// Apply runs plan against the kernel, going on past failed ops, and records every
// op that succeeded in observed, so that the cache keeps saying the truth: a
// failed op leaves it as it was and the next sync plans it again. The real-server
// ops of a virtual server that could not be created are skipped.
func Apply(ctx context.Context, plan Plan, ipv ipvs.Interface, addrs Addresses, link string, observed *KernelState) ApplyResult {
	logger := klog.FromContext(ctx)
	var res ApplyResult
	var errs []error
	nerr := 0
	var notCreated map[ipvs.VirtualServerKey]bool
	for _, op := range plan.Ops {
		k := op.VirtualServer.VirtualServerKey
		if notCreated[k] && (op.Kind == OpAddRealServer || op.Kind == OpUpdateRealServer || op.Kind == OpDeleteRealServer) {
			res.Counts[op.Kind].Skipped++
			continue
		}
		err := runOp(ctx, op, ipv, addrs, link)
		if err == nil {
			res.Counts[op.Kind].Succeeded++
			observed.record(op)
			if v := logger.V(4); v.Enabled() { // boxing op costs an allocation per op otherwise
				v.Info("Applied", "op", op)
			}
			continue
		}
		res.Counts[op.Kind].Failed++
		logger.V(2).Info("Op failed", "op", op, "err", err)
		if ipvs.IsNotFound(err) || ipvs.IsExist(err) {
			res.Drift = true
		}
		switch op.Kind {
		case OpAddAddress, OpDeleteAddress:
			res.FailedAddresses = append(res.FailedAddresses, op.Address)
		case OpAddVirtualServer:
			if notCreated == nil {
				notCreated = map[ipvs.VirtualServerKey]bool{}
			}
			notCreated[k] = true
			fallthrough
		default:
			res.FailedVirtualServers = append(res.FailedVirtualServers, k)
		}
		if nerr++; nerr <= maxReportedErrors {
			errs = append(errs, err)
		}
	}
	if nerr > maxReportedErrors {
		errs = append(errs, fmt.Errorf("and %d more failed operations", nerr-maxReportedErrors))
	}
	res.Err = errors.Join(errs...)
	return res
}

// runOp runs one op.
func runOp(ctx context.Context, op Op, ipv ipvs.Interface, addrs Addresses, link string) error {
	k := op.VirtualServer.VirtualServerKey
	switch op.Kind {
	case OpAddVirtualServer:
		return ipv.AddVirtualServer(ctx, op.VirtualServer)
	case OpUpdateVirtualServer:
		return ipv.UpdateVirtualServer(ctx, op.VirtualServer)
	case OpDeleteVirtualServer:
		return ipv.DeleteVirtualServer(ctx, k)
	case OpAddRealServer:
		return ipv.AddRealServer(ctx, k, op.RealServer)
	case OpUpdateRealServer:
		return ipv.UpdateRealServer(ctx, k, op.RealServer)
	case OpDeleteRealServer:
		return ipv.DeleteRealServer(ctx, k, op.RealServer.RealServerKey)
	case OpAddAddress:
		return addrs.Add(ctx, link, op.Address)
	case OpDeleteAddress:
		return addrs.Delete(ctx, link, op.Address)
	}
	return fmt.Errorf("unknown op kind %d", op.Kind)
}

// record updates the cache after op succeeded. Real-server ops on a virtual
// server missing from the cache cannot succeed in a consistent cache; they are
// ignored rather than invented.
func (s *KernelState) record(op Op) {
	k := op.VirtualServer.VirtualServerKey
	switch op.Kind {
	case OpAddVirtualServer:
		s.VirtualServers[k] = &ObservedVirtualServer{VirtualServer: op.VirtualServer, RealServers: map[ipvs.RealServerKey]ipvs.RealServerStatus{}}
		s.Owned[k] = struct{}{}
	case OpUpdateVirtualServer:
		if o := s.VirtualServers[k]; o != nil {
			o.VirtualServer = op.VirtualServer
		}
		s.Owned[k] = struct{}{}
	case OpDeleteVirtualServer:
		delete(s.VirtualServers, k)
		delete(s.Owned, k)
	case OpAddRealServer, OpUpdateRealServer:
		if o := s.VirtualServers[k]; o != nil {
			st := o.RealServers[op.RealServer.RealServerKey]
			st.RealServer = op.RealServer
			o.RealServers[op.RealServer.RealServerKey] = st
		}
	case OpDeleteRealServer:
		if o := s.VirtualServers[k]; o != nil {
			delete(o.RealServers, op.RealServer.RealServerKey)
		}
	case OpAddAddress:
		s.Addresses[op.Address] = struct{}{}
	case OpDeleteAddress:
		delete(s.Addresses, op.Address)
	}
}

// Record updates the cache as if every op of plan succeeded; benchmarks use it
// to plan without a kernel.
func (s *KernelState) Record(plan Plan) {
	for _, op := range plan.Ops {
		s.record(op)
	}
}
