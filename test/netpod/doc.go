// Package netpod builds a small "node network" for real-kernel tests: a Linux
// bridge in the test's network namespace that acts as the node's pod gateway,
// and "pods" (network namespaces joined to the bridge by veth pairs) that run
// echo servers and clients.
//
// The tests of kipvs run as root, either inside a qemu VM or directly on a
// host that has network namespaces, veth and bridge support. Everything is
// removed through t.Cleanup, and pod namespaces are unnamed (held only by
// file descriptors), so even a crashed test process leaves at most the bridge
// behind, never a namespace.
//
// What a Net expects from the kernel and what it does not set up:
//
//   - Root netns -> pod IP and pod -> pod on the same bridge need nothing else.
//   - Pod -> ClusterIP -> other pod needs net.ipv4.ip_forward=1 (and
//     net.ipv6.conf.all.forwarding=1 for IPv6) in the root netns: the packet
//     enters on the bridge, IPVS rewrites it and the root netns routes it back
//     out. The tests set these sysctls themselves; a Net never changes sysctls.
//   - Pod -> ClusterIP -> the same pod (hairpin) needs masquerading: without
//     it the pod sees a packet whose source is its own address and drops it
//     as martian. kube-proxy masquerades that case with iptables.
//   - br_netfilter is not needed. When it is loaded with
//     bridge-nf-call-iptables=1, pod -> pod traffic on the bridge also passes
//     the iptables FORWARD chain, so a FORWARD policy of DROP breaks it.
//
// The replies of the echo servers name the pod that answered and the client
// address it saw ("<pod> <ip:port>"), which is what Service tests assert on:
// which backend was chosen and whether the source was masqueraded.
package netpod
