package vm

import (
	"bufio"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// guestModules are loaded by /init before the test runs (see VM-NOTES:
// autoload only happens when something triggers it, so a test reading
// /proc/net/ip_vs first would see nothing). Their modules.dep closure is
// what the initramfs carries.
var guestModules = []string{
	"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
	"ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_mh",
	"nf_conntrack", "nf_conntrack_netlink", "nf_nat", "nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_nat", "nft_masq",
	"xt_comment", "xt_mark", "xt_conntrack", "xt_MASQUERADE", "xt_addrtype", "xt_multiport", "xt_nat",
	"xt_tcpudp", "xt_set", "xt_ipvs", "xt_statistic", "xt_physdev",
	"ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip", "ip_set_hash_ipportnet",
	"ip_set_hash_net", "ip_set_hash_netport", "ip_set_hash_netiface", "ip_set_bitmap_port", "ip_set_bitmap_ip",
	"veth", "dummy", "bridge", "br_netfilter",
	// SCTP: the cloud kernel has IPVS's SCTP support (CONFIG_IP_VS_PROTO_SCTP=y) and
	// conntrack's built in; the SCTP stack itself is a module (CONFIG_IP_SCTP=m).
	"sctp",
}

// netModules are loaded only when the run has a NIC.
var netModules = []string{"failover", "net_failover", "virtio_pci", "virtio_net"}

// guestPrograms are copied from the unpacked packages with their ELF
// dependency closure. iptables names are symlinks to the -nft variants
// (dpkg-deb -x does not run update-alternatives).
var guestPrograms = []string{
	"usr/bin/busybox",
	"usr/sbin/xtables-nft-multi",
	"usr/sbin/ipset", "usr/sbin/ipvsadm", "usr/sbin/nft", "usr/sbin/conntrack",
	"usr/bin/ip", "usr/sbin/bridge",
}

// guestTrees are copied whole when present (plugins loaded with dlopen and
// configuration read by the tools).
var guestTrees = []string{"usr/lib/x86_64-linux-gnu/xtables", "etc/iproute2", "usr/share/iproute2"}

// guestEtc are copied from netbase when present.
var guestEtc = []string{"etc/protocols", "etc/services", "etc/ethertypes"}

var iptablesLinks = []string{
	"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore",
}

// rootfs assembles a merged-/usr root file system from a staging tree of
// unpacked packages (which still has /bin, /sbin, /lib as real directories).
type rootfs struct {
	staging, root string
	done          map[string]bool
}

// canon maps a staging path onto the merged-/usr layout ("sbin/x" -> "usr/sbin/x").
func canon(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "usr/" + p
		}
	}
	return p
}

// lookup finds a canonical path in the staging tree.
func (r *rootfs) lookup(c string) (string, bool) {
	cands := []string{c}
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if strings.HasPrefix(c, "usr/"+d+"/") {
			cands = append(cands, strings.TrimPrefix(c, "usr/"))
		}
	}
	for _, cand := range cands {
		if _, err := os.Lstat(filepath.Join(r.staging, cand)); err == nil {
			return cand, true
		}
	}
	return "", false
}

// install copies a canonical path (following symlinks, which are recreated
// with absolute targets) and, for ELF files, their interpreter and libraries.
func (r *rootfs) install(c string) error {
	c = canon(c)
	if r.done[c] {
		return nil
	}
	r.done[c] = true
	sp, ok := r.lookup(c)
	if !ok {
		return fmt.Errorf("%s not found in the unpacked packages", c)
	}
	src := filepath.Join(r.staging, sp)
	dst := filepath.Join(r.root, c)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	switch {
	case st.Mode()&os.ModeSymlink != 0:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if !path.IsAbs(t) {
			t = path.Join("/", path.Dir(sp), t)
		}
		t = "/" + canon(t)
		if err := os.Symlink(t, dst); err != nil {
			return err
		}
		return r.install(t)
	case st.IsDir():
		ents, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := r.install(path.Join(c, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	if err := copyFile(src, dst, st.Mode().Perm()); err != nil {
		return err
	}
	return r.installELFDeps(dst)
}

// installELFDeps installs the interpreter and DT_NEEDED libraries of an ELF file.
func (r *rootfs) installELFDeps(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return nil // not ELF
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return err
			}
			if err := r.install(strings.TrimRight(string(b), "\x00")); err != nil {
				return fmt.Errorf("interpreter of %s: %w", file, err)
			}
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil // static
	}
	for _, lib := range libs {
		found := false
		for _, dir := range []string{"usr/lib/x86_64-linux-gnu", "usr/lib"} {
			if _, ok := r.lookup(path.Join(dir, lib)); ok {
				if err := r.install(path.Join(dir, lib)); err != nil {
					return err
				}
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%s needs %s, which no downloaded package provides (add its package to guestRoots)", strings.TrimPrefix(file, r.root), lib)
		}
	}
	return nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// buildRootfs fills root from the unpacked staging tree: programs, libraries,
// busybox applet links, the module closure and /etc files.
func buildRootfs(ctx context.Context, staging, root, kver string, initScript []byte) error {
	r := &rootfs{staging: staging, root: root, done: map[string]bool{}}
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var", "kipvs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}, {"lib64", "usr/lib64"}, {"var/run", "/run"}, {"var/tmp", "/tmp"}} {
		if err := os.Symlink(l[1], filepath.Join(root, l[0])); err != nil {
			return err
		}
	}
	for _, p := range guestPrograms {
		if err := r.install(p); err != nil {
			return err
		}
	}
	for _, p := range append(append([]string(nil), guestTrees...), guestEtc...) {
		if _, ok := r.lookup(p); ok {
			if err := r.install(p); err != nil {
				return err
			}
		}
	}
	for _, name := range iptablesLinks {
		if err := os.Symlink("xtables-nft-multi", filepath.Join(root, "usr/sbin", name+"-nft")); err != nil {
			return err
		}
		if err := os.Symlink(name+"-nft", filepath.Join(root, "usr/sbin", name)); err != nil {
			return err
		}
	}
	if err := busyboxLinks(ctx, root); err != nil {
		return err
	}
	if err := installModules(ctx, staging, root, kver); err != nil {
		return err
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/hostname": "kipvs-vm\n",
	}
	if _, err := os.Stat(filepath.Join(root, "etc/protocols")); err != nil {
		files["etc/protocols"] = "ip 0 IP\nicmp 1 ICMP\ntcp 6 TCP\nudp 17 UDP\nipv6 41 IPv6\nipv6-icmp 58 IPv6-ICMP\nsctp 132 SCTP\n"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, "init"), initScript, 0o755)
}

// busyboxLinks adds applet links for tools no real package provides. Real
// tools are copied first: an applet link copied over later would write
// through into busybox (VM-NOTES).
func busyboxLinks(ctx context.Context, root string) error {
	bb := filepath.Join(root, "usr/bin/busybox")
	ld := filepath.Join(root, "usr/lib64/ld-linux-x86-64.so.2")
	out, err := run(ctx, "", nil, ld, "--library-path", filepath.Join(root, "usr/lib/x86_64-linux-gnu"), bb, "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(out) {
		name := path.Base(applet)
		exists := false
		for _, d := range []string{"usr/bin", "usr/sbin"} {
			if _, err := os.Lstat(filepath.Join(root, d, name)); err == nil {
				exists = true
			}
		}
		if exists || name == "busybox" {
			continue
		}
		dst := filepath.Join(root, canon(applet))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/usr/bin/busybox", dst); err != nil {
			return err
		}
	}
	return nil
}

// installModules copies the closure of guestModules and netModules (per the
// full tree's modules.dep) and regenerates modules.dep for the subset.
func installModules(ctx context.Context, staging, root, kver string) error {
	modDir := filepath.Join(staging, "lib/modules", kver)
	if _, err := run(ctx, "", nil, "busybox", "depmod", "-b", staging, kver); err != nil {
		return err
	}
	deps, err := readModulesDep(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return err
	}
	byName := map[string]string{}
	for file := range deps {
		byName[moduleName(file)] = file
	}
	need := map[string]bool{}
	var add func(file string)
	add = func(file string) {
		if need[file] {
			return
		}
		need[file] = true
		for _, d := range deps[file] {
			add(d)
		}
	}
	for _, m := range append(append([]string(nil), guestModules...), netModules...) {
		file, ok := byName[strings.ReplaceAll(m, "-", "_")]
		if !ok {
			return fmt.Errorf("module %s not in %s/modules.dep (built in? renamed?)", m, kver)
		}
		add(file)
	}
	dstDir := filepath.Join(root, "usr/lib/modules", kver)
	for file := range need {
		dst := filepath.Join(dstDir, file)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(modDir, file), dst, 0o644); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if _, err := os.Stat(filepath.Join(modDir, f)); err == nil {
			if err := copyFile(filepath.Join(modDir, f), filepath.Join(dstDir, f), 0o644); err != nil {
				return err
			}
		}
	}
	_, err = run(ctx, "", nil, "busybox", "depmod", "-b", root, kver)
	return err
}

// readModulesDep parses modules.dep ("kernel/a.ko: kernel/b.ko kernel/c.ko").
func readModulesDep(file string) (map[string][]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[strings.TrimSpace(mod)] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// moduleName turns "kernel/net/netfilter/ipvs/ip_vs_rr.ko" into "ip_vs_rr".
func moduleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}
