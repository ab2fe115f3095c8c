package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/kipvs/kipvs/test/vm"
)

// rejectModules are kernel modules kube-proxy needs and test/vm's image does
// not preload (kipvs needs none of them), in load order: the REJECT target
// (iptables) and reject statement (nftables), and nftables's numgen and fib
// expressions. Without REJECT every iptables-restore of kube-proxy's IPVS and
// iptables modes fails ("Extension REJECT revision 0 not supported") and its
// syncs never end; without numgen and fib every transaction of its nftables
// mode fails ("Could not process rule: No such file or directory"). The
// runner copies them from the image's kernel package into the guest, where
// the agent loads them before the proxy starts.
var rejectModules = []string{"nf_reject_ipv4", "nf_reject_ipv6", "nft_reject", "nft_reject_ipv4", "nft_reject_ipv6",
	"nft_reject_inet", "ipt_REJECT", "ip6t_REJECT", "nft_numgen", "nft_fib", "nft_fib_ipv4", "nft_fib_ipv6", "nft_fib_inet"}

// extractRejectModules unpacks rejectModules of img's kernel from the cached
// kernel package into dst (flat: dst/<name>.ko).
func extractRejectModules(ctx context.Context, img vm.Image, dst string) error {
	cache, err := vm.CacheDir()
	if err != nil {
		return err
	}
	debs, err := filepath.Glob(filepath.Join(cache, "debs", "linux-image-"+img.KernelRelease+"_*.deb"))
	if err != nil || len(debs) == 0 {
		return fmt.Errorf("no kernel package for %s in %s/debs", img.KernelRelease, cache)
	}
	tmp, err := os.MkdirTemp("", "kipvs-bench-modules-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	script := `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards '*reject*' '*REJECT*' '*nft_numgen*' '*nft_fib*'`
	if out, err := exec.CommandContext(ctx, "sh", "-c", script, "sh", debs[0], tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("unpack reject modules from %s: %w: %s", debs[0], err, out)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, m := range rejectModules {
		found, _ := filepath.Glob(filepath.Join(tmp, "lib", "modules", img.KernelRelease, "kernel", "net", "*", "netfilter", m+".ko"))
		if len(found) == 0 {
			found, _ = filepath.Glob(filepath.Join(tmp, "lib", "modules", img.KernelRelease, "kernel", "net", "netfilter", m+".ko"))
		}
		if len(found) == 0 {
			return fmt.Errorf("module %s not in %s", m, debs[0])
		}
		b, err := os.ReadFile(found[0])
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, fmt.Sprintf("%02d-%s.ko", indexOf(m), m)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func indexOf(m string) int {
	for i, x := range rejectModules {
		if x == m {
			return i
		}
	}
	return -1
}
