package proxier

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/kipvs/kipvs/ipvs"
)

// The ipset types kipvs uses. All of them are supported by
// github.com/vishvananda/netlink v1.3.1 (IpsetCreate picks a revision for the
// hash types and sends the port range for bitmap:port; revision 0 of
// bitmap:port exists in every kernel with ipset).
const (
	SetTypeHashIP                = "hash:ip"
	SetTypeHashIPPort            = "hash:ip,port"
	SetTypeHashIPPortIP          = "hash:ip,port,ip"
	SetTypeHashIPPortNet         = "hash:ip,port,net"
	SetTypeBitmapPort            = "bitmap:port"
	ipsetNameMax                 = 31 // IPSET_MAXNAMELEN - 1
	bitmapPortFrom, bitmapPortTo = 0, 65535
)

// ErrSetNotFound is wrapped by Ipset errors about a set that does not exist.
var ErrSetNotFound = errors.New("ipset does not exist")

// IsSetNotFound reports whether err says that an ipset does not exist.
func IsSetNotFound(err error) bool { return errors.Is(err, ErrSetNotFound) }

// IPSetSpec describes one ipset: its name, type and (for the hash types) family.
type IPSetSpec struct {
	Name string
	Type string
	// IPv6 selects family inet6 for the hash types; bitmap:port has no family.
	IPv6 bool
	// Skbinfo creates the set with the skbinfo extension: its entries carry
	// a packet mark (IPSetEntry.Mark) that `-j SET --map-set S dst,dst
	// --map-mark` copies to the packets they match.
	Skbinfo bool
	// Timeout creates the set with the timeout extension and this default
	// timeout (whole seconds); its entries expire unless IPSetEntry.Timeout
	// says otherwise. 0: no timeout support.
	Timeout time.Duration
}

// IPSetEntry is one member of an ipset. Which fields matter depends on the
// set's type: IP (hash:ip); IP, Protocol and Port (hash:ip,port); plus IP2
// (hash:ip,port,ip) or Net (hash:ip,port,net); only Port (bitmap:port).
// Unused fields are zero, so entries compare with ==.
type IPSetEntry struct {
	IP       netip.Addr
	Protocol ipvs.Protocol
	Port     uint16
	IP2      netip.Addr
	Net      netip.Prefix
	// Mark is the skbinfo mark of an entry in a set with Skbinfo (mask
	// 0xffffffff: the packet's whole mark is replaced); 0 elsewhere. It is
	// data, not key: adding an entry with another mark replaces it.
	Mark uint32
	// Timeout is data too, of a set with IPSetSpec.Timeout only: given to Add,
	// how long the entry lives (0: the set's default); from List, how long it
	// has left, in whole seconds rounded down (at least 1 s: the kernel
	// reports 0 only for a permanent entry, ip_set_timeout_get).
	Timeout time.Duration
}

// Key returns the entry without its Mark and Timeout: what the kernel looks it up by.
func (e IPSetEntry) Key() IPSetEntry {
	e.Mark, e.Timeout = 0, 0
	return e
}

// String renders the entry as the ipset tool does: "10.0.0.1",
// "10.0.0.1,tcp:80", "10.0.0.1,tcp:80,10.0.0.2", "10.0.0.1,tcp:80,10.0.0.0/8", "30080",
// "10.0.0.1,tcp:80 skbmark 0x12342000", "10.0.0.1,tcp:80,10.0.0.2 timeout 300".
func (e IPSetEntry) String() string {
	if e.Timeout != 0 {
		t := e
		t.Timeout = 0
		return t.String() + fmt.Sprintf(" timeout %d", timeoutSeconds(e.Timeout))
	}
	if e.Mark != 0 {
		return e.Key().String() + fmt.Sprintf(" skbmark %#x", e.Mark)
	}
	if !e.IP.IsValid() {
		return strconv.Itoa(int(e.Port))
	}
	if e.Protocol == "" {
		return e.IP.String()
	}
	s := fmt.Sprintf("%s,%s:%d", e.IP, strings.ToLower(string(e.Protocol)), e.Port)
	switch {
	case e.IP2.IsValid():
		s += "," + e.IP2.String()
	case e.Net.IsValid():
		s += "," + e.Net.String()
	}
	return s
}

// ParseIPSetEntry parses String's format.
func ParseIPSetEntry(s string) (IPSetEntry, error) {
	var e IPSetEntry
	if k, t, ok := strings.Cut(s, " timeout "); ok {
		secs, err := strconv.ParseUint(t, 10, 32)
		if err != nil || secs == 0 {
			return e, fmt.Errorf("ipset entry %q: bad timeout", s)
		}
		if e, err = ParseIPSetEntry(k); err != nil {
			return e, err
		}
		e.Timeout = time.Duration(secs) * time.Second
		return e, nil
	}
	if k, m, ok := strings.Cut(s, " skbmark "); ok {
		mark, err := strconv.ParseUint(m, 0, 32)
		if err != nil {
			return e, fmt.Errorf("ipset entry %q: bad skbmark", s)
		}
		if e, err = ParseIPSetEntry(k); err != nil {
			return e, err
		}
		e.Mark = uint32(mark)
		return e, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) == 1 && !strings.ContainsAny(s, ".:") {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return e, fmt.Errorf("ipset entry %q: bad port", s)
		}
		e.Port = uint16(p)
		return e, nil
	}
	a, err := netip.ParseAddr(parts[0])
	if err != nil {
		return e, fmt.Errorf("ipset entry %q: %w", s, err)
	}
	e.IP = a.Unmap()
	if len(parts) == 1 {
		return e, nil
	}
	proto, port, ok := strings.Cut(parts[1], ":")
	if e.Protocol, err = ipvs.ParseProtocol(proto); !ok || err != nil {
		return e, fmt.Errorf("ipset entry %q: want proto:port after the address", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return e, fmt.Errorf("ipset entry %q: bad port", s)
	}
	e.Port = uint16(p)
	switch {
	case len(parts) == 2:
	case len(parts) == 3 && strings.Contains(parts[2], "/"):
		if e.Net, err = netip.ParsePrefix(parts[2]); err != nil {
			return e, fmt.Errorf("ipset entry %q: %w", s, err)
		}
	case len(parts) == 3:
		if e.IP2, err = netip.ParseAddr(parts[2]); err != nil {
			return e, fmt.Errorf("ipset entry %q: %w", s, err)
		}
	default:
		return e, fmt.Errorf("ipset entry %q: too many parts", s)
	}
	return e, nil
}

// compareEntries orders entries for canonical dumps.
func compareEntries(a, b IPSetEntry) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := a.IP2.Compare(b.IP2); c != 0 {
		return c
	}
	if c := a.Net.Addr().Compare(b.Net.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Net.Bits(), b.Net.Bits()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Mark, b.Mark); c != 0 {
		return c
	}
	return cmp.Compare(a.Timeout, b.Timeout)
}

// timeoutSeconds converts an ipset timeout to the kernel's whole seconds,
// rounding up and capping at IPSET_MAX_TIMEOUT (the kernel caps it too).
func timeoutSeconds(d time.Duration) uint32 {
	secs := (d + time.Second - 1) / time.Second
	return uint32(min(max(secs, 0), ipsetMaxTimeout))
}

// ipsetMaxElements is the maxelem of kipvs's hash sets. The kernel's default,
// 65536, is less than KIPVS-LOOP-BACK needs with 10,000 Services of 10
// endpoints on one node: its adds then fail with IPSET_ERR_HASH_FULL (errno
// 4352, "Hash is full"). A hash set's memory follows its entries, not
// maxelem. Sets created before keep their maxelem.
const ipsetMaxElements = 1 << 20

// ipsetMaxTimeout is IPSET_MAX_TIMEOUT, in seconds: (UINT_MAX >> 1) / 1000.
const ipsetMaxTimeout = 2147483

// Ipset is kipvs's boundary to the kernel's ipsets. Every call is one netlink
// request: no `ipset` process per entry (kube-proxy #93445).
type Ipset interface {
	// Create creates a set; it fails with an error for which IsExist-style
	// checks are not needed: callers List first.
	Create(ctx context.Context, spec IPSetSpec) error
	// List returns a set's type and entries; an error wrapping ErrSetNotFound
	// when the set does not exist.
	List(ctx context.Context, name string) (string, []IPSetEntry, error)
	// Add adds an entry; adding an entry that is there succeeds.
	Add(ctx context.Context, set string, e IPSetEntry) error
	// Del deletes an entry; deleting an absent entry succeeds.
	Del(ctx context.Context, set string, e IPSetEntry) error
}

var _ Ipset = (*NetlinkIpset)(nil)

// Create implements Ipset.
func (s *NetlinkIpset) Create(ctx context.Context, spec IPSetSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	opts := netlink.IpsetCreateOptions{Family: unix.AF_INET}
	if spec.IPv6 {
		opts.Family = unix.AF_INET6
	}
	if spec.Type == SetTypeBitmapPort {
		opts = netlink.IpsetCreateOptions{PortFrom: bitmapPortFrom, PortTo: bitmapPortTo}
	} else {
		opts.MaxElements = ipsetMaxElements
	}
	opts.Skbinfo = spec.Skbinfo
	if spec.Timeout > 0 {
		secs := timeoutSeconds(spec.Timeout)
		opts.Timeout = &secs
	}
	if err := s.handle().IpsetCreate(spec.Name, spec.Type, opts); err != nil {
		return fmt.Errorf("creating ipset %s (%s): %w", spec.Name, spec.Type, ipsetError(err))
	}
	return nil
}

// List implements Ipset.
func (s *NetlinkIpset) List(ctx context.Context, name string) (string, []IPSetEntry, error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	if skbinfoSet(name) {
		return s.listSkbinfo(name)
	}
	res, err := s.handle().IpsetList(name)
	if err != nil {
		return "", nil, fmt.Errorf("listing ipset %s: %w", name, ipsetError(err))
	}
	out := make([]IPSetEntry, 0, len(res.Entries))
	for i := range res.Entries {
		e, err := entryFromNetlink(res.TypeName, &res.Entries[i])
		if err != nil {
			return "", nil, fmt.Errorf("listing ipset %s: %w", name, err)
		}
		out = append(out, e)
	}
	return res.TypeName, out, nil
}

// Add implements Ipset.
func (s *NetlinkIpset) Add(ctx context.Context, set string, e IPSetEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var err error
	switch {
	case e.Mark != 0:
		err = s.addSkbmark(set, e)
	case !e.IP.IsValid():
		err = s.bitmapPortAddDel(nl.IPSET_CMD_ADD, set, e.Port)
	default:
		ne := entryToNetlink(e)
		ne.Replace = true // no NLM_F_EXCL: an existing entry is not an error
		err = s.handle().IpsetAdd(set, ne)
	}
	if err != nil {
		return fmt.Errorf("adding %s to ipset %s: %w", e, set, ipsetError(err))
	}
	return nil
}

// Del implements Ipset.
func (s *NetlinkIpset) Del(ctx context.Context, set string, e IPSetEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var err error
	if !e.IP.IsValid() {
		err = s.bitmapPortAddDel(nl.IPSET_CMD_DEL, set, e.Port)
	} else {
		ne := entryToNetlink(e)
		ne.Replace = true // no NLM_F_EXCL: an absent entry is not an error
		err = s.handle().IpsetDel(set, ne)
	}
	if err != nil {
		return fmt.Errorf("deleting %s from ipset %s: %w", e, set, ipsetError(err))
	}
	return nil
}

// ipsetError maps the kernel's "set does not exist" answer to ErrSetNotFound.
// The kernel answers ENOENT for an unknown set name (ip_set_core.c find_set).
func ipsetError(err error) error {
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%w (%w)", ErrSetNotFound, err)
	}
	return err
}

// protoNumbers maps protocols to IP protocol numbers and back.
var protoNumbers = map[ipvs.Protocol]uint8{ipvs.TCP: unix.IPPROTO_TCP, ipvs.UDP: unix.IPPROTO_UDP, ipvs.SCTP: unix.IPPROTO_SCTP}

func entryToNetlink(e IPSetEntry) *netlink.IPSetEntry {
	ne := &netlink.IPSetEntry{}
	if e.Timeout > 0 {
		secs := timeoutSeconds(e.Timeout)
		ne.Timeout = &secs
	}
	port := e.Port
	ne.Port = &port
	if !e.IP.IsValid() { // bitmap:port
		return ne
	}
	ne.IP = net.IP(e.IP.AsSlice())
	if e.Protocol == "" { // hash:ip
		ne.Port = nil
		return ne
	}
	p := protoNumbers[e.Protocol]
	ne.Protocol = &p
	switch {
	case e.IP2.IsValid():
		ne.IP2 = net.IP(e.IP2.AsSlice())
	case e.Net.IsValid():
		ne.IP2 = net.IP(e.Net.Addr().AsSlice())
		ne.CIDR2 = uint8(e.Net.Bits())
	}
	return ne
}

func entryFromNetlink(typ string, ne *netlink.IPSetEntry) (IPSetEntry, error) {
	var e IPSetEntry
	if ne.Port != nil {
		e.Port = *ne.Port
	}
	if ne.Timeout != nil {
		e.Timeout = time.Duration(*ne.Timeout) * time.Second
	}
	if typ == SetTypeBitmapPort {
		return e, nil
	}
	a, ok := netip.AddrFromSlice(ne.IP)
	if !ok {
		return e, fmt.Errorf("entry without address in %s set", typ)
	}
	e.IP = a.Unmap()
	if typ == SetTypeHashIP {
		e.Port = 0
		return e, nil
	}
	if ne.Protocol != nil {
		for p, n := range protoNumbers {
			if n == *ne.Protocol {
				e.Protocol = p
			}
		}
	}
	if e.Protocol == "" {
		return e, fmt.Errorf("entry %s with unknown protocol in %s set", e.IP, typ)
	}
	if a2, ok := netip.AddrFromSlice(ne.IP2); ok {
		switch typ {
		case SetTypeHashIPPortIP:
			e.IP2 = a2.Unmap()
		case SetTypeHashIPPortNet:
			e.Net = netip.PrefixFrom(a2.Unmap(), int(ne.CIDR2)).Masked()
		}
	}
	return e, nil
}

// bitmapPortAddDel adds or deletes a port of a bitmap:port set (without
// NLM_F_EXCL, so existing or absent entries are no error).
//
// vishvananda/netlink v1.3.1 always sends IPSET_ATTR_PROTO with a port, and
// kernels since 5.2 parse ipset attributes strictly: bitmap:port has no
// protocol in its policy, so its IpsetAdd fails with IPSET_ERR_PROTOCOL
// ("invalid protocol"; seen on 6.1). This request carries only the port.
func (s *NetlinkIpset) bitmapPortAddDel(cmd int, set string, port uint16) error {
	req := ipsetRequest(cmd, nl.GetIpsetFlags(cmd), set)
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	buf := make([]byte, 2)
	binary.BigEndian.PutUint16(buf, port)
	data.AddChild(nl.NewRtAttr(int(nl.IPSET_ATTR_PORT|nl.NLA_F_NET_BYTEORDER), buf))
	req.AddData(data)
	_, err := s.exec(req)
	return err
}
