package proxier

import (
	"context"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// settingsText renders settings as "key=value" for comparison.
func settingsText(ss []KernelSetting) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, s.Key+"="+s.Value)
	}
	return out
}

func TestKernelSettingsConnReuseMode(t *testing.T) {
	base := []string{SysctlIPForward + "=1", SysctlVSConntrack + "=1", SysctlVSExpireNodestConn + "=1", SysctlVSExpireQuiescent + "=1"}
	for _, tc := range []struct {
		release string
		reuse   bool // conn_reuse_mode=0 is set
		note    string
	}{
		{"3.10.0-1160.el7.x86_64", false, "older than 4.1"},
		{"4.1.0", true, ""},
		{"4.19.0-26-amd64", true, ""},
		{"5.8.18", true, ""},
		{"5.9.0", false, "5.9 or newer"},
		{"6.1.0-56-cloud-amd64", false, "5.9 or newer"},
		{"garbage", false, "cannot read the kernel version"},
	} {
		t.Run(tc.release, func(t *testing.T) {
			got, notes := KernelSettings(Config{}, tc.release, 2)
			want := append([]string{}, base...)
			if tc.reuse {
				want = append(want, SysctlVSConnReuseMode+"=0")
			}
			if diff := cmp.Diff(want, settingsText(got)); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
			if tc.note != "" && (len(notes) != 1 || !strings.Contains(notes[0], tc.note)) {
				t.Errorf("notes %q, want one containing %q", notes, tc.note)
			}
		})
	}
}

func TestKernelSettingsConntrack(t *testing.T) {
	for _, tc := range []struct {
		name string
		ct   ConntrackConfig
		cpus int
		want []string
	}{
		{"per core wins", ConntrackConfig{MaxPerCore: 32768, Min: 131072}, 8,
			[]string{SysctlConntrackMax + "=262144", ConntrackHashsizeParam + "=65536"}},
		{"min wins", ConntrackConfig{MaxPerCore: 32768, Min: 131072}, 2,
			[]string{SysctlConntrackMax + "=131072", ConntrackHashsizeParam + "=32768"}},
		{"max per core 0 leaves the table, even with a min", ConntrackConfig{Min: 131072}, 8, nil},
		{"timeouts in seconds", ConntrackConfig{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour,
			UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute, TCPBeLiberal: true}, 1,
			[]string{SysctlConntrackEstablished + "=86400", SysctlConntrackCloseWait + "=3600", SysctlConntrackUDPTimeout + "=30",
				SysctlConntrackUDPStream + "=120", SysctlConntrackBeLiberal + "=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := KernelSettings(Config{Conntrack: tc.ct}, "6.1.0", tc.cpus)
			want := append([]string{SysctlIPForward + "=1", SysctlVSConntrack + "=1", SysctlVSExpireNodestConn + "=1",
				SysctlVSExpireQuiescent + "=1"}, tc.want...)
			if diff := cmp.Diff(want, settingsText(got)); diff != "" {
				t.Errorf("settings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyKernelSettings(t *testing.T) {
	ctx := context.Background()
	sc, err := NewFakeSysctlFromText("a = 0\nb = 1\n/sys/h = 100\n")
	if err != nil {
		t.Fatal(err)
	}
	sc.SetError("b", syscall.EROFS)
	changed, warnings, err := ApplyKernelSettings(ctx, sc, []KernelSetting{
		{Key: "a", Value: "1", Why: "why a"},
		{Key: "b", Value: "1", Why: "already right"},
		{Key: "/sys/h", Value: "50", RaiseOnly: true, Optional: true, Why: "never lowered"},
		{Key: "missing", Value: "1", Why: "why missing"},
	})
	if diff := cmp.Diff([]string{"a=1"}, changed); diff != "" {
		t.Errorf("changed (-want +got):\n%s", diff)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings %q, want none", warnings)
	}
	if err == nil || !strings.Contains(err.Error(), "missing=1 (why missing)") || !strings.Contains(err.Error(), "is the module that provides it loaded") {
		t.Errorf("error %v, want one naming the missing key, its value and reason", err)
	}
	if got := sc.DumpText(); got != "/sys/h = 100\na = 1\nb = 1\n" {
		t.Errorf("sysctls after apply:\n%s", got)
	}
	// An optional setting that cannot be written is a warning.
	sc.SetError("/sys/h", syscall.EROFS)
	_, warnings, err = ApplyKernelSettings(ctx, sc, []KernelSetting{{Key: "/sys/h", Value: "500", RaiseOnly: true, Optional: true}})
	if err != nil || len(warnings) != 1 || !strings.Contains(warnings[0], "read-only file system") {
		t.Errorf("optional failure: warnings %q, err %v; want one warning and no error", warnings, err)
	}
}

func TestProcSysctl(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"proc/sys/net/ipv4/ip_forward", "sys/module/nf_conntrack/parameters/hashsize"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	s := &ProcSysctl{Root: root}
	for _, key := range []string{SysctlIPForward, ConntrackHashsizeParam} {
		if err := s.Set(ctx, key, "1"); err != nil {
			t.Fatal(err)
		}
		if v, err := s.Get(ctx, key); err != nil || v != "1" {
			t.Errorf("Get(%s) = %q, %v; want 1", key, v, err)
		}
	}
	if err := s.Set(ctx, "net/ipv4/vs/conntrack", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set of a missing setting: %v, want ErrNotExist (never create files)", err)
	}
}

func TestDetectIptablesMode(t *testing.T) {
	save := func(rules int, hint bool) string {
		var b strings.Builder
		b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
		if hint {
			b.WriteString(":KUBE-IPTABLES-HINT - [0:0]\n")
		}
		for range rules {
			b.WriteString("-A INPUT -j ACCEPT\n")
		}
		return b.String() + "COMMIT\n"
	}
	type out struct {
		text string
		ok   bool
	}
	for _, tc := range []struct {
		name        string
		legacy, nft out
		version     string
		want        string
	}{
		{"kubelet hint in legacy wins over more nft rules", out{save(1, true), true}, out{save(9, false), true}, "", IptablesLegacy},
		{"kubelet hint in nft", out{save(9, false), true}, out{save(0, true), true}, "", IptablesNFT},
		{"more legacy rules", out{save(5, false), true}, out{save(2, false), true}, "", IptablesLegacy},
		{"equal counts: iptables --version decides", out{save(0, false), true}, out{save(0, false), true}, "iptables v1.8.7 (legacy)", IptablesLegacy},
		{"equal counts, nft default", out{save(0, false), true}, out{save(0, false), true}, "iptables v1.8.9 (nf_tables)", IptablesNFT},
		{"only nft installed", out{}, out{save(0, false), true}, "", IptablesNFT},
		{"only plain iptables", out{}, out{}, "iptables v1.8.9 (nf_tables)", IptablesNFT},
		{"only plain old iptables", out{}, out{}, "iptables v1.6.1", IptablesLegacy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(_ context.Context, name string, args ...string) (string, error) {
				var o out
				switch {
				case strings.Contains(name, "-legacy-save"):
					o = tc.legacy
				case strings.Contains(name, "-nft-save"):
					o = tc.nft
				case name == "iptables" && tc.version != "":
					o = out{tc.version, true}
				}
				if !o.ok {
					return "", errors.New("not found")
				}
				return o.text, nil
			}
			got, reason, err := DetectIptablesMode(context.Background(), run)
			if err != nil || got != tc.want {
				t.Errorf("mode %q (%s), %v; want %q", got, reason, err, tc.want)
			}
		})
	}
	if _, _, err := DetectIptablesMode(context.Background(), func(context.Context, string, ...string) (string, error) {
		return "", errors.New("not found")
	}); err == nil {
		t.Error("no iptables at all: want an error")
	}
}

func TestParseIptablesSave(t *testing.T) {
	text := `# Generated by iptables-nft-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:KIPVS-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment kipvs-services -j KIPVS-SERVICES
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j DROP
COMMIT
`
	got, err := ParseIptablesSave(text, "nat")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"PREROUTING": {
			"-m comment --comment kubernetes service portals -j KUBE-SERVICES",
			"-m comment --comment kipvs-services -j KIPVS-SERVICES",
		},
		"KIPVS-SERVICES": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nat (-want +got):\n%s", diff)
	}
}

func TestIPSetEntryRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		text, typ string
	}{
		{"10.96.0.10", SetTypeHashIP},
		{"10.96.0.10,tcp:80", SetTypeHashIPPort},
		{"fd00::10,sctp:80", SetTypeHashIPPort},
		{"10.244.0.5,udp:53,10.244.0.5", SetTypeHashIPPortIP},
		{"198.51.100.1,tcp:80,192.0.2.0/24", SetTypeHashIPPortNet},
		{"30080", SetTypeBitmapPort},
	} {
		e, err := ParseIPSetEntry(tc.text)
		if err != nil {
			t.Fatalf("%s: %v", tc.text, err)
		}
		if got := e.String(); got != tc.text {
			t.Errorf("ParseIPSetEntry(%q).String() = %q", tc.text, got)
		}
		// Through the netlink representation and back.
		ne := entryToNetlink(e)
		back, err := entryFromNetlink(tc.typ, ne)
		if err != nil || back != e {
			t.Errorf("%s via netlink: %+v, %v; want %+v", tc.text, back, err, e)
		}
	}
	if _, err := ParseIPSetEntry("10.0.0.1,icmp:0"); err == nil {
		t.Error("unknown protocol parsed")
	}
	marked := "198.51.100.1,tcp:80 skbmark 0x12342000"
	if e, err := ParseIPSetEntry(marked); err != nil || e.String() != marked || e.Mark != 0x12342000 || e.Key().Mark != 0 {
		t.Errorf("ParseIPSetEntry(%q) = %+v, %v", marked, e, err)
	}
}

// TestFakeIpsetSkbinfo: in a set with skbinfo the mark is data, as in the
// kernel: adding the key with another mark replaces the entry, deleting the
// key removes it whatever its mark; sets without skbinfo refuse marks.
func TestFakeIpsetSkbinfo(t *testing.T) {
	f, err := NewFakeIpsetFromText("KIPVS-SHORT-CIRCUIT hash:ip,port skbinfo\n  198.51.100.1,tcp:80 skbmark 0x2000\nKIPVS-EXTERNAL hash:ip,port\n")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e, _ := ParseIPSetEntry("198.51.100.1,tcp:80 skbmark 0x12342000")
	if err := f.Add(ctx, "KIPVS-SHORT-CIRCUIT", e); err != nil {
		t.Fatal(err)
	}
	if got := f.Entries("KIPVS-SHORT-CIRCUIT"); len(got) != 1 || got[0] != e.String() {
		t.Errorf("after replacing the mark: %v, want [%s]", got, e)
	}
	if err := f.Del(ctx, "KIPVS-SHORT-CIRCUIT", e.Key()); err != nil || len(f.Entries("KIPVS-SHORT-CIRCUIT")) != 0 {
		t.Errorf("delete by key: %v, left %v", err, f.Entries("KIPVS-SHORT-CIRCUIT"))
	}
	if err := f.Add(ctx, "KIPVS-EXTERNAL", e); err == nil {
		t.Errorf("a marked entry was added to a set without skbinfo")
	}
	if want := "KIPVS-EXTERNAL hash:ip,port\nKIPVS-SHORT-CIRCUIT hash:ip,port skbinfo\n"; f.DumpText() != want {
		t.Errorf("DumpText:\n%s\nwant\n%s", f.DumpText(), want)
	}
}

func TestFakeIpset(t *testing.T) {
	text := "KIPVS-CLUSTER-IP hash:ip,port\n  10.96.0.10,tcp:80\nKIPVS6-VIPS hash:ip inet6\n  fd00::10\nKIPVS-NODE-PORT-TCP bitmap:port\n"
	f, err := NewFakeIpsetFromText(text)
	if err != nil {
		t.Fatal(err)
	}
	want := "KIPVS-CLUSTER-IP hash:ip,port\n  10.96.0.10,tcp:80\nKIPVS-NODE-PORT-TCP bitmap:port\nKIPVS6-VIPS hash:ip inet6\n  fd00::10\n"
	if got := f.DumpText(); got != want {
		t.Errorf("DumpText:\n%s\nwant\n%s", got, want)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		set   string
		entry string
		ok    bool
	}{
		{"KIPVS-CLUSTER-IP", "10.96.0.11,udp:53", true},
		{"KIPVS-CLUSTER-IP", "fd00::1,udp:53", false}, // wrong family
		{"KIPVS-CLUSTER-IP", "10.96.0.11", false},     // wrong type
		{"KIPVS-NODE-PORT-TCP", "30080", true},
		{"KIPVS6-VIPS", "fd00::11", true},
		{"KIPVS-MISSING", "10.0.0.1", false},
	} {
		e, _ := ParseIPSetEntry(tc.entry)
		if err := f.Add(ctx, tc.set, e); (err == nil) != tc.ok {
			t.Errorf("Add(%s, %s) = %v, want ok %v", tc.set, tc.entry, err, tc.ok)
		}
	}
	if _, _, err := f.List(ctx, "KIPVS-MISSING"); !IsSetNotFound(err) {
		t.Errorf("List of a missing set: %v, want IsSetNotFound", err)
	}
	w := f.Writes()
	if err := f.Del(ctx, "KIPVS-CLUSTER-IP", IPSetEntry{IP: netip.MustParseAddr("10.9.9.9"), Protocol: "TCP", Port: 1}); err != nil || f.Writes() != w {
		t.Errorf("deleting an absent entry: %v, %d writes; want no error and no write", err, f.Writes()-w)
	}
}
