// Command guestcheck runs inside the test VM (built static by the vm tests)
// and checks that the guest is the environment kipvs tests expect. Modes:
//
//	guestcheck kernel             root, IPVS, ipset, iptables-nft, veth, dummy, netns
//	guestcheck exit N             exit with status N
//	guestcheck sleep              never return
//	guestcheck panic              crash the kernel (sysrq c)
//	guestcheck net ADDR DENY...   dial ADDR and expect "pong"; every DENY must fail
//
// Everything it needs must be present: a missing IPVS is a failure, not a skip.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: guestcheck kernel|exit N|sleep|net ADDR DENY...")
	}
	switch os.Args[1] {
	case "kernel":
		checkKernel()
	case "exit":
		n, err := strconv.Atoi(os.Args[2])
		if err != nil {
			fail("bad exit code %q", os.Args[2])
		}
		fmt.Println("guestcheck: exiting with", n)
		os.Exit(n)
	case "sleep":
		fmt.Println("guestcheck: sleeping")
		time.Sleep(time.Hour)
	case "panic":
		fmt.Println("guestcheck: crashing the kernel")
		if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0); err != nil {
			fail("sysrq: %v", err)
		}
		time.Sleep(time.Minute)
	case "net":
		checkNet(os.Args[2], os.Args[3:])
	default:
		fail("unknown mode %q", os.Args[1])
	}
	fmt.Println("guestcheck: OK")
}

func fail(format string, args ...any) {
	fmt.Printf("guestcheck: FAIL: "+format+"\n", args...)
	os.Exit(1)
}

// sh runs a command and fails the check on error; it returns the output.
func sh(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		fail("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func checkKernel() {
	if os.Geteuid() != 0 {
		fail("not root: euid %d", os.Geteuid())
	}
	ipvs, err := os.ReadFile("/proc/net/ip_vs")
	if err != nil {
		fail("IPVS missing: %v", err)
	}
	if !strings.Contains(string(ipvs), "IP Virtual Server version") {
		fail("unexpected /proc/net/ip_vs:\n%s", ipvs)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/vs/conntrack"); err != nil || strings.TrimSpace(string(b)) != "1" {
		fail("net.ipv4.vs.conntrack is %q (%v), want 1", b, err)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(b)) != "1" {
		fail("net.ipv4.ip_forward is %q (%v), want 1", b, err)
	}
	sh("ipvsadm", "-A", "-t", "10.96.0.1:80", "-s", "rr")
	sh("ipvsadm", "-a", "-t", "10.96.0.1:80", "-r", "10.0.0.7:8080", "-m", "-w", "3")
	list := sh("ipvsadm", "-Ln")
	if !strings.Contains(list, "TCP  10.96.0.1:80 rr") || !strings.Contains(list, "10.0.0.7:8080") {
		fail("virtual server not listed:\n%s", list)
	}
	for _, sched := range []string{"wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"} {
		sh("ipvsadm", "-E", "-t", "10.96.0.1:80", "-s", sched)
	}
	sh("ipset", "create", "x", "hash:ip,port")
	sh("ipset", "add", "x", "10.96.0.1,tcp:80")
	if l := sh("ipset", "list", "x"); !strings.Contains(l, "10.96.0.1,tcp:80") {
		fail("ipset entry missing:\n%s", l)
	}
	if l := sh("iptables", "-t", "nat", "-L", "-n"); !strings.Contains(l, "Chain POSTROUTING") {
		fail("iptables -t nat -L:\n%s", l)
	}
	sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "kipvs", "-m", "set", "--match-set", "x", "dst,dst", "-j", "MASQUERADE")
	if l := sh("iptables-save", "-t", "nat"); !strings.Contains(l, "--match-set x dst,dst") {
		fail("iptables-save lacks the rule:\n%s", l)
	}
	if l := sh("iptables", "-V"); !strings.Contains(l, "nf_tables") {
		fail("iptables is not the nft variant: %s", l)
	}
	sh("ip", "link", "add", "kube-ipvs0", "type", "dummy")
	sh("ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0")
	sh("ip", "netns", "add", "pod1")
	sh("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", "pod1")
	sh("ip", "-n", "pod1", "addr", "add", "10.0.0.7/24", "dev", "eth0")
	sh("ip", "-n", "pod1", "link", "set", "eth0", "up")
	if l := sh("ip", "-n", "pod1", "-o", "addr"); !strings.Contains(l, "10.0.0.7/24") {
		fail("pod address missing:\n%s", l)
	}
	sh("conntrack", "-L")
	sh("nft", "list", "ruleset")
	fmt.Print(list)
}

// checkNet dials the forward and expects the host listener to answer, then
// makes sure every other destination is unreachable.
func checkNet(addr string, deny []string) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fail("dial %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "ping\n")
	reply, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || reply != "pong\n" {
		fail("reply from %s: %q, %v", addr, reply, err)
	}
	fmt.Println("guestcheck: reached", addr)
	for _, d := range deny {
		start := time.Now()
		c, err := net.DialTimeout("tcp", d, 3*time.Second)
		if err == nil {
			c.Close()
			fail("reached %s, which must be unreachable", d)
		}
		fmt.Printf("guestcheck: %s unreachable after %s: %v\n", d, time.Since(start).Round(time.Millisecond), err)
	}
}
