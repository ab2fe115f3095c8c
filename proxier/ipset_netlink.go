package proxier

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkIpset implements Ipset over the ipset netlink protocol (nfnetlink).
//
// The zero value (NewNetlinkIpset) opens, binds and closes a netlink socket
// for every request, as vishvananda/netlink's package-level functions do
// (nl.NetlinkRequest.ExecuteIter without req.Sockets): about eight system
// calls of overhead per entry, which under qemu TCG cost more than the
// request itself. OpenNetlinkIpset keeps two sockets open instead, one for
// the library's requests (a netlink.Handle) and one for kipvs's own.
type NetlinkIpset struct {
	mu      sync.Mutex // guards closing against use
	h       *netlink.Handle
	sockets map[int]*nl.SocketHandle
}

// NewNetlinkIpset returns the netlink implementation of Ipset with a socket
// per request: for short-lived uses (tests, cleanup). A long-running proxier
// uses OpenNetlinkIpset.
func NewNetlinkIpset() *NetlinkIpset { return &NetlinkIpset{} }

// netlinkSocketTimeout bounds a request on a long-lived socket like the
// library's per-request sockets (nl.SocketTimeoutTv): a kernel that never
// answers fails the request instead of blocking the sync for ever.
var netlinkSocketTimeout = nl.SocketTimeoutTv

// OpenNetlinkIpset opens the long-lived NETLINK_NETFILTER sockets, in the
// network namespace of the calling thread. Close releases them.
func OpenNetlinkIpset() (*NetlinkIpset, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening a netfilter netlink socket for ipsets: %w", err)
	}
	if err := h.SetSocketTimeout(timevalDuration(netlinkSocketTimeout)); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting the ipset netlink socket timeout: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
	if err == nil {
		if err = s.SetSendTimeout(&netlinkSocketTimeout); err == nil {
			err = s.SetReceiveTimeout(&netlinkSocketTimeout)
		}
		if err != nil {
			s.Close()
		}
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening a netfilter netlink socket for ipsets: %w", err)
	}
	return &NetlinkIpset{h: h, sockets: map[int]*nl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: s}}}, nil
}

// Close closes the sockets OpenNetlinkIpset opened; later requests open a
// socket each, as the zero value does.
func (s *NetlinkIpset) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h != nil {
		s.h.Close()
	}
	for _, sh := range s.sockets {
		sh.Close()
	}
	s.h, s.sockets = nil, nil
	return nil
}

func timevalDuration(tv unix.Timeval) time.Duration { return time.Duration(tv.Nano()) }

// perRequestHandle is a Handle without sockets: each request opens its own,
// as with netlink's package-level functions (whose handle is such a value).
var perRequestHandle = &netlink.Handle{}

// handle returns the long-lived netlink.Handle, or perRequestHandle.
func (s *NetlinkIpset) handle() *netlink.Handle {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h == nil {
		return perRequestHandle
	}
	return s.h
}

// exec runs a request built by ipsetRequest on the long-lived socket (if
// open) and maps ipset's private error numbers to their names.
func (s *NetlinkIpset) exec(req *nl.NetlinkRequest) ([][]byte, error) {
	s.mu.Lock()
	req.Sockets = s.sockets
	s.mu.Unlock()
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	var errno syscall.Errno
	if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
		return nil, nl.IPSetError(uintptr(errno))
	}
	return msgs, err
}

// ipsetRequest starts an ipset netlink request for set.
func ipsetRequest(cmd int, flags int, set string) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	return req
}

// IpsetBatcher is implemented by Ipsets that add many entries in one request.
// It is separate from Ipset so that wrappers embedding an Ipset (fault
// injection in tests) keep seeing every add.
type IpsetBatcher interface {
	// AddEntries adds entries to set, as many Adds would. On an error some
	// entries may have been added and others not; the caller retries them
	// one by one to learn which entry failed.
	AddEntries(ctx context.Context, set string, entries []IPSetEntry) error
}

var _ IpsetBatcher = (*NetlinkIpset)(nil)

// ipsetBatchBytes caps the entries of one batched request: the kernel reads
// them from one IPSET_ATTR_ADT attribute, whose length is 16 bits.
const ipsetBatchBytes = 48 << 10

// AddEntries implements IpsetBatcher with IPSET_CMD_ADD requests that nest
// many IPSET_ATTR_DATA in one IPSET_ATTR_ADT, as `ipset restore` does. The
// kernel (ip_set_core.c ip_set_ad) adds them in order and stops at the first
// failure, answering with its error; an ADT request must carry
// IPSET_ATTR_LINENO, and since no entry carries one the error comes back as a
// plain netlink error (call_ad replies with the line number only for entries
// that have one).
func (s *NetlinkIpset) AddEntries(ctx context.Context, set string, entries []IPSetEntry) error {
	for len(entries) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		adt := nl.NewRtAttr(nl.IPSET_ATTR_ADT|int(nl.NLA_F_NESTED), nil)
		size, n := 0, 0
		for _, e := range entries {
			d := ipsetEntryData(e)
			if size += d.Len(); n > 0 && size > ipsetBatchBytes {
				break
			}
			adt.AddChild(d)
			n++
		}
		req := ipsetRequest(nl.IPSET_CMD_ADD, nl.GetIpsetFlags(nl.IPSET_CMD_ADD), set)
		req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_LINENO|int(nl.NLA_F_NET_BYTEORDER), make([]byte, 4)))
		req.AddData(adt)
		if _, err := s.exec(req); err != nil {
			return fmt.Errorf("adding %d entries (from %s) to ipset %s: %w", n, entries[0], set, ipsetError(err))
		}
		entries = entries[n:]
	}
	return nil
}

// ipsetEntryData encodes one entry as an IPSET_ATTR_DATA attribute with the
// attributes its set type takes: only the port for bitmap:port (no
// IPSET_ATTR_PROTO, see bitmapPortAddDel), the skbinfo mark with mask
// 0xffffffff when there is a mark, the timeout when there is one.
func ipsetEntryData(e IPSetEntry) *nl.RtAttr {
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	be16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	port := func() {
		data.AddChild(nl.NewRtAttr(int(nl.IPSET_ATTR_PORT|nl.NLA_F_NET_BYTEORDER), be16(e.Port)))
	}
	if e.Timeout > 0 {
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_TIMEOUT|int(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint32(nil, timeoutSeconds(e.Timeout))))
	}
	if !e.IP.IsValid() { // bitmap:port
		port()
		return data
	}
	data.AddChild(ipsetAddrAttr(nl.IPSET_ATTR_IP, e.IP.AsSlice(), e.IP.Is6()))
	if e.Protocol == "" { // hash:ip
		return data
	}
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PROTO, nl.Uint8Attr(protoNumbers[e.Protocol])))
	port()
	switch {
	case e.IP2.IsValid():
		data.AddChild(ipsetAddrAttr(nl.IPSET_ATTR_IP2, e.IP2.AsSlice(), e.IP2.Is6()))
	case e.Net.IsValid():
		data.AddChild(ipsetAddrAttr(nl.IPSET_ATTR_IP2, e.Net.Addr().AsSlice(), e.Net.Addr().Is6()))
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_CIDR2, nl.Uint8Attr(uint8(e.Net.Bits()))))
	}
	if e.Mark != 0 {
		data.AddChild(nl.NewRtAttr(int(nl.IPSET_ATTR_SKBMARK|nl.NLA_F_NET_BYTEORDER),
			binary.BigEndian.AppendUint64(nil, uint64(e.Mark)<<32|0xffffffff)))
	}
	return data
}

// ipsetAddrAttr nests an address in attribute typ (IPSET_ATTR_IP or IP2).
func ipsetAddrAttr(typ int, ip []byte, v6 bool) *nl.RtAttr {
	a := nl.NewRtAttr(typ|int(nl.NLA_F_NESTED), nil)
	fam := nl.IPSET_ATTR_IPADDR_IPV4
	if v6 {
		fam = nl.IPSET_ATTR_IPADDR_IPV6
	}
	a.AddChild(nl.NewRtAttr(fam|int(nl.NLA_F_NET_BYTEORDER), ip))
	return a
}
