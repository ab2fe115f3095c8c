// Package e2e holds kipvs's end-to-end tests: the kipvs binary, with only the
// permissions of deploy/, against a real kube-apiserver, programming a real
// kernel's IPVS table for Services and EndpointSlices that the tests create,
// and proven with packets.
//
// A plain `go test ./test/e2e` runs TestE2E on the host (e2e_test.go): it
// starts etcd + kube-apiserver (test/apiserver), applies deploy/, gets a
// ServiceAccount token for kipvs, builds kipvs and this package's in-guest
// tests (build tag e2etest) and runs them in one qemu VM (test/vm). The VM's
// only NIC is qemu's restricted user network with a single forward to the API
// server; all Service traffic stays inside the VM, between the root network
// namespace and pods in network namespaces (test/netpod).
//
//	KIPVS_REQUIRE_VM=1         fail instead of skipping when VMs cannot run here
//	KIPVS_REQUIRE_APISERVER=1  fail instead of skipping without API server binaries
//	KIPVS_E2E_RUN=re           run only the in-guest tests matching re (-test.run)
//
// Harness (harness.go) is shared with the demo (test/demo).
package e2e
