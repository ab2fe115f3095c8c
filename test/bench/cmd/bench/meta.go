package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/kipvs/kipvs/test/bench/results"
)

// gitDescribe returns `git describe --tags --always --dirty`, or "dev".
func gitDescribe(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}

// kubeProxyVersion asks the kube-proxy binary (static Linux, runs on the host).
func kubeProxyVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "Kubernetes "))
}

// machine describes the host and the guest.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%s, %d host cores; guest: qemu TCG, no KVM, 1 vCPU, 2-3 GiB; host shared with other jobs (load average %s at the start)",
		model, runtime.NumCPU(), load)
}

// describe returns each scenario's title and how it is measured.
func describe(id string) (title, description string) {
	switch id {
	case results.ColdStart:
		return "Cold start with every object present",
			"The proxy starts in a fresh VM with N Services x 10 endpoints already in the API server. Seconds: from the proxy's start until the kernel holds the full table, polled every max(0.5 s, time of one read): IPVS modes by an IPVS netlink dump (N ClusterIP virtual servers with 10 real servers each), nftables mode by `nft list map ip kube-proxy service-ips` (kube-proxy writes each sync as one transaction). Peak RSS (VmHWM) and CPU (utime+stime) of the proxy when its first full sync has ended. Kernel operations: kipvs's own counter (kipvs_kernel_operations_total); kube-proxy does not count them."
	case results.OneChange:
		return "One endpoint added to one Service",
			"With the table in place, one endpoint is added to one Service's EndpointSlice (one Update from the VM) and the kernel is polled for that Service alone (IPVS: its real servers over netlink every 20 ms; nftables: `nft list chain` of its service chain every 100 ms) until it shows 11 endpoints; the endpoint is then removed again (not timed). 20 changes on 20 Services: median and p99 from the API write to the kernel. kipvs's kernel writes per change from its metrics. Every proxy runs with the same minimum sync period (kube-proxy's default 1 s), which bounds how soon a change after a sync can be programmed."
	case results.Restart:
		return "Restart with the table present",
			"After the other scenarios, the proxy gets SIGTERM (kipvs and kube-proxy both leave the kernel state in place) and is started again. Seconds: from the new process's start until it reports a finished sync (kubeproxy_sync_proxy_rules_last_timestamp_seconds) and /healthz answers 200. Kernel writes: kipvs's counter of the new process at that point (goal 0); kube-proxy does not count them."
	case results.Churn:
		return "Endpoint churn",
			"One endpoint of Services 0..99 is toggled in turn at a fixed rate (a Service whose previous change is not yet in the kernel is skipped that tick) for the churn duration; a poller times each change from its API write until the kernel shows it. p50/p99 latency and the proxy's CPU seconds over the window."
	case results.PacketCost:
		return "Packet cost through one VIP",
			"From a client pod (network namespace on its own bridge) a new TCP connection to the probe Service's ClusterIP, one request and its reply, to an echo server in a pod on another bridge, repeated 200 times in sequence; p50 and p99 of connect+request+reply. Compared between 100 and 10,000 Services present. Traffic never leaves the VM."
	case results.Throughput:
		return "Throughput of one TCP stream",
			"One TCP stream from the client pod to a sink in the server pod for the stream duration, first straight to the pod IP (direct), then through the probe Service's ClusterIP, in the same VM. Under TCG the path is CPU bound; the ratio VIP/direct is the figure of interest."
	case results.Floor:
		return "The netlink floor",
			"In the kipvs VM before kipvs starts: up to 1,000 IPVS virtual servers are created with our ipvs package (one netlink request each), 10 real servers added to each, then deleted, and as many /32 addresses added to a dummy link; the time per operation times the operations a cold start at N needs (N virtual servers + 10N real servers + N addresses; NodePort virtual servers and ipset entries left out) is the floor. seconds_per_op is that floor divided by the operations."
	}
	return id, ""
}
