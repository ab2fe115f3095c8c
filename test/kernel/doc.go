// Package kernel holds kipvs's real-kernel tests: ipvs.Real, the dummy-link
// addresses and the whole proxier, proven with real packets between network
// namespaces. The host kernel has no IPVS, so the tests run inside a qemu VM
// that boots Debian's kernel (package test/vm).
//
// A plain `go test ./test/kernel` runs TestKernel on the host (vm_test.go),
// which compiles this package's in-guest tests (build tag kerneltest), boots
// one VM and runs them there. The VM has no NIC: every packet stays inside it.
//
//	KIPVS_REQUIRE_VM=1   fail instead of skipping when VMs cannot run here
//	KIPVS_KERNEL_RUN=re  run only the in-guest tests matching re (-test.run)
//	KIPVS_KERNEL_V=n     klog verbosity of the proxier inside the guest (default 2)
//
// The in-guest tests refuse to run outside the VM: they flush the IPVS table
// and create links named like kube-proxy's.
package kernel
