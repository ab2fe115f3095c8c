package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// flagName pairs a flag bit with its name in the dump text.
type flagName struct {
	flag Flags
	name string
}

// flagNames names the virtual server flags in the dump text, in bit order.
// FlagPersistent is not here: it is written as "persistent <timeout>".
var flagNames = []flagName{
	{FlagHashed, "hashed"},
	{FlagOnePacket, "one-packet"},
	{FlagSHFallback, "sh-fallback"},
	{FlagSHPort, "sh-port"},
}

// FormatDump renders virtual servers as kipvs's canonical dump text, the text
// that Fake.DumpText returns and ParseDump reads. Tests compare IPVS state with
// it, whether the state came from the Fake or from a real kernel (Real.Dump).
//
// One virtual server per line, sorted by VirtualServerKey.Compare, its real
// servers on the following lines, indented by two spaces and sorted by
// RealServerKey.Compare:
//
//	TCP 10.0.0.1:80 rr
//	  -> 10.1.0.1:8080 weight 1
//	  -> 10.1.0.2:8080 weight 0 active 3 inactive 1
//	UDP [fd00::1]:53 sh persistent 10800 flags sh-port
//
// A virtual server line is "<protocol> <address:port> <scheduler>" followed by
// optional fields in this order:
//   - "persistent <seconds>" when FlagPersistent is set (with its Timeout, even 0);
//   - "timeout <seconds>" when FlagPersistent is not set but Timeout is not 0
//     (the kernel keeps and reports such a timeout);
//   - "flags <f>[,<f>...]" for the remaining flags: hashed, one-packet,
//     sh-fallback, sh-port, and any unnamed bits as one hex number ("0x20").
//
// An empty scheduler is written "-". A real server line is
// "-> <address:port> weight <w>" followed by "active <n>" and "inactive <n>"
// when those counters are not zero. The other counters (Connections, packets,
// bytes) are not rendered, so ParseDump(FormatDump(x)) gives back x exactly
// when those counters are zero. Every line ends with "\n"; no virtual servers
// render as "".
func FormatDump(vss []VirtualServerStatus) string {
	sorted := slices.Clone(vss)
	slices.SortStableFunc(sorted, func(a, b VirtualServerStatus) int {
		return a.VirtualServerKey.Compare(b.VirtualServerKey)
	})
	var b strings.Builder
	for _, vs := range sorted {
		writeVirtualServer(&b, vs.VirtualServer)
		rss := slices.Clone(vs.RealServers)
		slices.SortStableFunc(rss, func(x, y RealServerStatus) int {
			return x.RealServerKey.Compare(y.RealServerKey)
		})
		for _, rs := range rss {
			fmt.Fprintf(&b, "  -> %s weight %d", rs.RealServerKey, rs.Weight)
			if rs.ActiveConns != 0 {
				fmt.Fprintf(&b, " active %d", rs.ActiveConns)
			}
			if rs.InactiveConns != 0 {
				fmt.Fprintf(&b, " inactive %d", rs.InactiveConns)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// writeVirtualServer writes one virtual server line.
func writeVirtualServer(b *strings.Builder, vs VirtualServer) {
	sched := vs.Scheduler
	if sched == "" {
		sched = "-"
	}
	fmt.Fprintf(b, "%s %s %s", vs.Protocol, netip.AddrPortFrom(vs.Address, vs.Port), sched)
	switch {
	case vs.Flags&FlagPersistent != 0:
		fmt.Fprintf(b, " persistent %d", vs.Timeout)
	case vs.Timeout != 0:
		fmt.Fprintf(b, " timeout %d", vs.Timeout)
	}
	if names := formatFlags(vs.Flags &^ FlagPersistent); names != "" {
		b.WriteString(" flags " + names)
	}
	b.WriteByte('\n')
}

// formatFlags renders flags (without FlagPersistent) as a comma-separated list.
func formatFlags(f Flags) string {
	var names []string
	for _, fn := range flagNames {
		if f&fn.flag != 0 {
			names = append(names, fn.name)
			f &^= fn.flag
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(names, ",")
}

// parseFlags is the inverse of formatFlags.
func parseFlags(s string) (Flags, error) {
	var f Flags
	for name := range strings.SplitSeq(s, ",") {
		i := slices.IndexFunc(flagNames, func(fn flagName) bool { return fn.name == name })
		if i >= 0 {
			f |= flagNames[i].flag
			continue
		}
		if !strings.HasPrefix(name, "0x") {
			return 0, fmt.Errorf("unknown flag %q", name)
		}
		v, err := strconv.ParseUint(name[2:], 16, 32)
		if err != nil {
			return 0, fmt.Errorf("bad flag bits %q: %w", name, err)
		}
		f |= Flags(v)
	}
	return f, nil
}

// ParseDump reads the text that FormatDump writes (see there for the format)
// and returns the virtual servers sorted like Dump. Blank lines and lines
// starting with "#" are ignored, and indentation is optional, so tests can
// write expected states inline. Duplicate virtual servers, duplicate real
// servers within one virtual server, and real servers before any virtual
// server are errors. ParseDump does not check that the state is one the
// kernel would accept; NewFakeFromText does.
func ParseDump(text string) ([]VirtualServerStatus, error) {
	var out []VirtualServerStatus
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "->"); ok {
			if len(out) == 0 {
				return nil, fmt.Errorf("line %d: real server before any virtual server", n+1)
			}
			rs, err := parseRealServerLine(strings.Fields(rest))
			if err != nil {
				return nil, fmt.Errorf("line %d: %q: %w", n+1, line, err)
			}
			vs := &out[len(out)-1]
			if slices.ContainsFunc(vs.RealServers, func(o RealServerStatus) bool { return o.RealServerKey == rs.RealServerKey }) {
				return nil, fmt.Errorf("line %d: duplicate real server %s in %s", n+1, rs.RealServerKey, vs.VirtualServerKey)
			}
			vs.RealServers = append(vs.RealServers, rs)
			continue
		}
		vs, err := parseVirtualServerLine(strings.Fields(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: %w", n+1, line, err)
		}
		if slices.ContainsFunc(out, func(o VirtualServerStatus) bool { return o.VirtualServerKey == vs.VirtualServerKey }) {
			return nil, fmt.Errorf("line %d: duplicate virtual server %s", n+1, vs.VirtualServerKey)
		}
		out = append(out, VirtualServerStatus{VirtualServer: vs})
	}
	sortStatuses(out)
	return out, nil
}

// sortStatuses sorts virtual servers and their real servers by key, in place.
func sortStatuses(vss []VirtualServerStatus) {
	slices.SortFunc(vss, func(a, b VirtualServerStatus) int { return a.VirtualServerKey.Compare(b.VirtualServerKey) })
	for _, vs := range vss {
		sortRealServers(vs.RealServers)
	}
}

// sortRealServers sorts real servers by key, in place.
func sortRealServers(rss []RealServerStatus) {
	slices.SortFunc(rss, func(a, b RealServerStatus) int { return a.RealServerKey.Compare(b.RealServerKey) })
}

// parseVirtualServerLine parses the fields of a virtual server line.
func parseVirtualServerLine(fields []string) (VirtualServer, error) {
	var vs VirtualServer
	if len(fields) < 3 {
		return vs, fmt.Errorf("want <protocol> <address:port> <scheduler> [options]")
	}
	proto, err := ParseProtocol(fields[0])
	if err != nil {
		return vs, err
	}
	ap, err := netip.ParseAddrPort(fields[1])
	if err != nil {
		return vs, err
	}
	vs.VirtualServerKey = VirtualServerKey{Address: ap.Addr(), Protocol: proto, Port: ap.Port()}
	if vs.Scheduler = fields[2]; vs.Scheduler == "-" {
		vs.Scheduler = ""
	}
	opts, err := pairs(fields[3:], "persistent", "timeout", "flags")
	if err != nil {
		return vs, err
	}
	if _, ok := opts["persistent"]; ok {
		if _, ok := opts["timeout"]; ok {
			return vs, fmt.Errorf("persistent and timeout are exclusive")
		}
		vs.Flags |= FlagPersistent
		opts["timeout"] = opts["persistent"]
	}
	if t, ok := opts["timeout"]; ok {
		v, err := strconv.ParseUint(t, 10, 32)
		if err != nil {
			return vs, fmt.Errorf("bad timeout: %w", err)
		}
		vs.Timeout = uint32(v)
	}
	if f, ok := opts["flags"]; ok {
		flags, err := parseFlags(f)
		if err != nil {
			return vs, err
		}
		vs.Flags |= flags
	}
	return vs, nil
}

// parseRealServerLine parses the fields of a real server line after "->".
func parseRealServerLine(fields []string) (RealServerStatus, error) {
	var rs RealServerStatus
	if len(fields) < 1 {
		return rs, fmt.Errorf("want -> <address:port> weight <w> [active <n>] [inactive <n>]")
	}
	ap, err := netip.ParseAddrPort(fields[0])
	if err != nil {
		return rs, err
	}
	rs.RealServerKey = RealServerKey{Address: ap.Addr(), Port: ap.Port()}
	opts, err := pairs(fields[1:], "weight", "active", "inactive")
	if err != nil {
		return rs, err
	}
	if _, ok := opts["weight"]; !ok {
		return rs, fmt.Errorf("missing weight")
	}
	for name, dst := range map[string]*int{"weight": &rs.Weight, "active": &rs.ActiveConns, "inactive": &rs.InactiveConns} {
		if s, ok := opts[name]; ok {
			if *dst, err = strconv.Atoi(s); err != nil {
				return rs, fmt.Errorf("bad %s: %w", name, err)
			}
		}
	}
	return rs, nil
}

// pairs reads "name value" pairs whose names must appear in allowed order,
// each at most once.
func pairs(fields []string, allowed ...string) (map[string]string, error) {
	if len(fields)%2 != 0 {
		return nil, fmt.Errorf("option %q has no value", fields[len(fields)-1])
	}
	out := map[string]string{}
	next := 0
	for i := 0; i < len(fields); i += 2 {
		j := slices.Index(allowed, fields[i])
		if j < 0 {
			return nil, fmt.Errorf("unknown option %q", fields[i])
		}
		if j < next {
			return nil, fmt.Errorf("option %q repeated or out of order", fields[i])
		}
		next = j + 1
		out[fields[i]] = fields[i+1]
	}
	return out, nil
}
