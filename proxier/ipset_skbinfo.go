package proxier

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink/nl"
)

// Sets with the skbinfo extension need requests of their own:
// vishvananda/netlink v1.3.1 can create them (IpsetCreateOptions.Skbinfo) but
// neither sends nor reads IPSET_ATTR_SKBMARK (its IPSetEntry.Mark is the
// hash:ip,mark key, IPSET_ATTR_MARK), and its List drops the attribute.

// skbinfoSet reports whether a kipvs set carries skbinfo marks.
func skbinfoSet(name string) bool {
	for id, d := range setDefs {
		if d.skbinfo && (name == SetName(SetID(id), false) || name == SetName(SetID(id), true)) {
			return true
		}
	}
	return false
}

// addSkbmark adds (or, without NLM_F_EXCL, replaces) a hash:ip,port entry
// with its skbinfo mark and mask 0xffffffff.
func (s *NetlinkIpset) addSkbmark(set string, e IPSetEntry) error {
	req := ipsetRequest(nl.IPSET_CMD_ADD, nl.GetIpsetFlags(nl.IPSET_CMD_ADD), set)
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	ip := nl.NewRtAttr(nl.IPSET_ATTR_IP|int(nl.NLA_F_NESTED), nil)
	typ := nl.IPSET_ATTR_IPADDR_IPV4
	if e.IP.Is6() {
		typ = nl.IPSET_ATTR_IPADDR_IPV6
	}
	ip.AddChild(nl.NewRtAttr(typ|int(nl.NLA_F_NET_BYTEORDER), e.IP.AsSlice()))
	data.AddChild(ip)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PROTO, nl.Uint8Attr(protoNumbers[e.Protocol])))
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, e.Port)
	data.AddChild(nl.NewRtAttr(int(nl.IPSET_ATTR_PORT|nl.NLA_F_NET_BYTEORDER), port))
	mark := make([]byte, 8)
	binary.BigEndian.PutUint64(mark, uint64(e.Mark)<<32|0xffffffff)
	data.AddChild(nl.NewRtAttr(int(nl.IPSET_ATTR_SKBMARK|nl.NLA_F_NET_BYTEORDER), mark))
	req.AddData(data)
	_, err := s.exec(req)
	return err
}

// listSkbinfo lists a hash:ip,port set with skbinfo marks.
func (s *NetlinkIpset) listSkbinfo(name string) (string, []IPSetEntry, error) {
	req := ipsetRequest(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST), name)
	msgs, err := s.exec(req)
	if err != nil {
		return "", nil, fmt.Errorf("listing ipset %s: %w", name, ipsetError(err))
	}
	var typ string
	var out []IPSetEntry
	for _, msg := range msgs {
		if len(msg) < nl.SizeofNfgenmsg {
			continue
		}
		for attr := range nl.ParseAttributes(msg[nl.SizeofNfgenmsg:]) {
			switch attr.Type {
			case nl.IPSET_ATTR_TYPENAME:
				typ = nl.BytesToString(attr.Value)
			case nl.IPSET_ATTR_ADT | nl.NLA_F_NESTED:
				for d := range nl.ParseAttributes(attr.Value) {
					if d.Type != nl.IPSET_ATTR_DATA|nl.NLA_F_NESTED {
						continue
					}
					e, err := parseSkbinfoEntry(d.Value)
					if err != nil {
						return "", nil, fmt.Errorf("listing ipset %s: %w", name, err)
					}
					out = append(out, e)
				}
			}
		}
	}
	if typ != "" && !strings.HasPrefix(typ, SetTypeHashIPPort) {
		return typ, nil, nil // the caller reports the wrong type
	}
	return typ, out, nil
}

// parseSkbinfoEntry reads one hash:ip,port entry with its skbinfo mark.
func parseSkbinfoEntry(b []byte) (IPSetEntry, error) {
	var e IPSetEntry
	for a := range nl.ParseAttributes(b) {
		switch a.Type {
		case nl.IPSET_ATTR_IP | nl.NLA_F_NESTED:
			for ip := range nl.ParseAttributes(a.Value) {
				if addr, ok := netip.AddrFromSlice(ip.Value); ok {
					e.IP = addr.Unmap()
				}
			}
		case nl.IPSET_ATTR_PORT | nl.NLA_F_NET_BYTEORDER:
			if len(a.Value) == 2 {
				e.Port = binary.BigEndian.Uint16(a.Value)
			}
		case nl.IPSET_ATTR_PROTO:
			for p, n := range protoNumbers {
				if len(a.Value) == 1 && n == a.Value[0] {
					e.Protocol = p
				}
			}
		case nl.IPSET_ATTR_SKBMARK | nl.NLA_F_NET_BYTEORDER:
			if len(a.Value) == 8 {
				e.Mark = uint32(binary.BigEndian.Uint64(a.Value) >> 32)
			}
		}
	}
	if !e.IP.IsValid() || e.Protocol == "" {
		return e, fmt.Errorf("skbinfo entry without address or known protocol: %+v", e)
	}
	return e, nil
}
