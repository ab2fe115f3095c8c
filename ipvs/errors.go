package ipvs

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// ErrNotSupported means the running kernel has no IPVS: the generic netlink
// family "IPVS" does not exist because the ip_vs module is not loaded (or not
// built). Errors returned by Real.Probe wrap it; the message names the modules
// to load (see KernelModules).
var ErrNotSupported = errors.New("IPVS is not supported by the kernel")

// ErrPermission means the kernel refused an IPVS write with EPERM or EACCES:
// the process needs CAP_NET_ADMIN in the network namespace. Errors returned by
// Real.Probe wrap it together with the errno.
var ErrPermission = errors.New("IPVS needs CAP_NET_ADMIN")

// IsNotFound reports whether err means that the object does not exist. The
// kernel answers ESRCH for a missing virtual server and ENOENT for a missing
// real server; the Fake returns the same errnos. Note that the kernel also
// answers ENOENT when adding or updating a virtual server whose scheduler
// module (ip_vs_<name>) cannot be found, so check the scheduler first if the
// distinction matters.
func IsNotFound(err error) bool {
	return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT)
}

// IsExist reports whether err means that the object already exists (EEXIST):
// adding a virtual server or a real server twice.
func IsExist(err error) bool {
	return errors.Is(err, syscall.EEXIST)
}

// KernelModules lists the modules kipvs needs: ip_vs, one ip_vs_<scheduler>
// module per entry of Schedulers, and nf_conntrack (IPVS masquerading uses
// conntrack). Setup code and error messages use it.
func KernelModules() []string {
	mods := make([]string, 0, len(Schedulers)+2)
	mods = append(mods, "ip_vs")
	for _, s := range Schedulers {
		mods = append(mods, "ip_vs_"+s)
	}
	return append(mods, "nf_conntrack")
}

// notSupportedError wraps ErrNotSupported (and cause, when not nil) with the
// modprobe command line that fixes it.
func notSupportedError(reason string, cause error) error {
	hint := "load the modules: modprobe -a " + strings.Join(KernelModules(), " ")
	if cause == nil {
		return fmt.Errorf("%w: %s; %s", ErrNotSupported, reason, hint)
	}
	return fmt.Errorf("%w: %s: %w; %s", ErrNotSupported, reason, cause, hint)
}

// permissionError wraps ErrPermission and the kernel's errno for op.
func permissionError(op string, cause error) error {
	return fmt.Errorf("%w: %s: %w", ErrPermission, op, cause)
}

// isPermission reports whether err is EPERM or EACCES.
func isPermission(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES)
}

// Operation descriptions shared by Real and Fake, so both produce the same
// messages, e.g. "add virtual server TCP/10.0.0.1:80: file exists".
const (
	opAddVS    = "add virtual server"
	opUpdateVS = "update virtual server"
	opDeleteVS = "delete virtual server"
	opAddRS    = "add real server"
	opUpdateRS = "update real server"
	opDeleteRS = "delete real server"
	opListRS   = "list real servers of"
	opDump     = "dump virtual servers"
	opGetTO    = "get timeouts"
	opSetTO    = "set timeouts"
)

// vsError wraps err with the operation and the virtual server key; nil stays nil.
func vsError(op string, vs VirtualServerKey, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w", op, vs, err)
}

// rsError wraps err with the operation and both keys, in ipvsadm's arrow
// notation: "add real server TCP/10.0.0.1:80 -> 10.1.0.1:8080: ..."; nil stays nil.
func rsError(op string, vs VirtualServerKey, rs RealServerKey, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s -> %s: %w", op, vs, rs, err)
}
