package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// SetID names one of kipvs's ipsets, for either family.
type SetID uint8

// kipvs's ipsets. Per-Service membership lives in them, so the iptables rules
// (BuildRules) are a fixed set that does not grow with the number of Services.
const (
	// SetClusterIP holds clusterIP,proto:port of every ClusterIP virtual server.
	SetClusterIP SetID = iota
	// SetExternal holds externalIP/loadBalancerIP,proto:port with
	// externalTrafficPolicy Cluster: always masqueraded.
	SetExternal
	// SetExternalLocal holds the same with externalTrafficPolicy Local: never
	// masqueraded, so the backend sees the client's address.
	SetExternalLocal
	// SetLBFirewall holds loadBalancerIP,proto:port of ports with loadBalancerSourceRanges.
	SetLBFirewall
	// SetLBSourceCIDR holds loadBalancerIP,proto:port,sourceRange: the allowed sources.
	SetLBSourceCIDR
	// SetLoopBack holds endpointIP,proto:port,endpointIP of this node's
	// endpoints: a pod reaching itself through a Service (hairpin) is masqueraded.
	SetLoopBack
	// SetVIPs holds the addresses kipvs binds to the dummy link: new
	// connections to them on a port that is not a Service port are dropped
	// (kube-proxy #72236).
	SetVIPs
	// SetNoLocal holds vip,proto:port (node IP for a NodePort) of every
	// virtual server whose Local traffic policy finds no local endpoint: its
	// traffic is dropped, as kube-proxy's iptables and nftables modes do,
	// instead of IPVS's ICMP reject for a virtual server without real servers.
	SetNoLocal
	// SetNodePortTCP, SetNodePortUDP and SetNodePortSCTP hold the NodePorts
	// with externalTrafficPolicy Cluster, which are masqueraded.
	SetNodePortTCP
	SetNodePortUDP
	SetNodePortSCTP
	// SetHealthCheck holds loadBalancerIP,tcp:healthCheckNodePort of every
	// LoadBalancer Service with a health check: cloud load balancers probe
	// the LB IP itself on that port (kube-proxy #79783, #117723), which the
	// VIP filter (#72236) must let through to the health check server.
	SetHealthCheck
	// SetShortCircuit holds externalIP/loadBalancerIP/node IP,proto:port of
	// every virtual server with externalTrafficPolicy Local, each with the
	// firewall mark (skbinfo) of its Service port's fwmark virtual server,
	// which holds the cluster's endpoints: traffic from pods and from the
	// node itself is marked and so balanced over every endpoint, as
	// kube-proxy's iptables and nftables modes do (#115931).
	SetShortCircuit
	numSets
)

// setDefs are the sets' name suffixes and types.
var setDefs = [numSets]struct {
	suffix, typ string
	skbinfo     bool
}{
	SetClusterIP:     {"CLUSTER-IP", SetTypeHashIPPort, false},
	SetExternal:      {"EXTERNAL", SetTypeHashIPPort, false},
	SetExternalLocal: {"EXTERNAL-LOCAL", SetTypeHashIPPort, false},
	SetLBFirewall:    {"LB-FIREWALL", SetTypeHashIPPort, false},
	SetLBSourceCIDR:  {"LB-SOURCE-CIDR", SetTypeHashIPPortNet, false},
	SetLoopBack:      {"LOOP-BACK", SetTypeHashIPPortIP, false},
	SetVIPs:          {"VIPS", SetTypeHashIP, false},
	SetNoLocal:       {"NO-LOCAL", SetTypeHashIPPort, false},
	SetNodePortTCP:   {"NODE-PORT-TCP", SetTypeBitmapPort, false},
	SetNodePortUDP:   {"NODE-PORT-UDP", SetTypeBitmapPort, false},
	SetNodePortSCTP:  {"NODE-PORT-SCTP", SetTypeBitmapPort, false},
	SetHealthCheck:   {"HEALTH-CHECK", SetTypeHashIPPort, false},
	SetShortCircuit:  {"SHORT-CIRCUIT", SetTypeHashIPPort, true},
}

// SetName is the kernel name of a set: KIPVS-<suffix> for IPv4, KIPVS6-<suffix> for IPv6.
func SetName(id SetID, ipv6 bool) string {
	if ipv6 {
		return "KIPVS6-" + setDefs[id].suffix
	}
	return "KIPVS-" + setDefs[id].suffix
}

// SetSpec is the spec of a set.
func SetSpec(id SetID, ipv6 bool) IPSetSpec {
	return IPSetSpec{Name: SetName(id, ipv6), Type: setDefs[id].typ, IPv6: ipv6 && setDefs[id].typ != SetTypeBitmapPort,
		Skbinfo: setDefs[id].skbinfo}
}

// SetMember is one entry that one Service wants in one set.
type SetMember struct {
	Set   SetID
	IPv6  bool
	Entry IPSetEntry
}

// SetName is the kernel name of the member's set.
func (m SetMember) SetName() string { return SetName(m.Set, m.IPv6) }

// String renders "SET entry".
func (m SetMember) String() string { return m.SetName() + " " + m.Entry.String() }

// nodePortSet is the NodePort set of a protocol.
var nodePortSet = map[ipvs.Protocol]SetID{ipvs.TCP: SetNodePortTCP, ipvs.UDP: SetNodePortUDP, ipvs.SCTP: SetNodePortSCTP}

// BuildNetfilterService returns the set entries one Service wants, sorted and
// without duplicates, from its effective model (only the virtual servers it
// won), the Service and its endpoints. It is pure, like BuildService.
//
//   - ClusterIP virtual servers go to SetClusterIP; ExternalIP and LoadBalancer
//     ones to SetExternal, or SetExternalLocal with externalTrafficPolicy Local;
//     NodePorts with externalTrafficPolicy Cluster to the protocol's NodePort set.
//   - A LoadBalancer port with loadBalancerSourceRanges puts its LB IPs in
//     SetLBFirewall and each (LB IP, range) of the same family in
//     SetLBSourceCIDR; ipset refuses a /0, so 0.0.0.0/0 becomes two /1
//     halves (as kube-proxy does).
//   - Every real server that is an endpoint on this node goes to SetLoopBack.
//   - The Service's dummy-link addresses go to SetVIPs.
//   - A virtual server whose Local policy finds no local endpoint goes to SetNoLocal.
//   - With a health check, each LoadBalancer IP with the healthCheckNodePort
//     (TCP) goes to SetHealthCheck.
//   - ExternalIP, LoadBalancer and NodePort virtual servers with
//     externalTrafficPolicy Local go to SetShortCircuit with the mark of
//     their Service port's fwmark virtual server (BuildFwmarkServers).
func BuildNetfilterService(sm *ServiceModel, svc *endpoints.Service, eps endpoints.EndpointsMap, nodeName string) []SetMember {
	if sm == nil || svc == nil {
		return nil
	}
	ports := make(map[endpoints.ServicePortName]*endpoints.ServicePort, len(svc.Ports))
	for _, sp := range svc.Ports {
		ports[sp.Name] = sp
	}
	local := map[endpoints.ServicePortName]map[ipvs.RealServerKey]bool{}
	isLocal := func(pn endpoints.ServicePortName, k ipvs.RealServerKey) bool {
		m, ok := local[pn]
		if !ok {
			m = map[ipvs.RealServerKey]bool{}
			for _, ep := range eps[pn] {
				if nodeName != "" && ep.NodeName == nodeName {
					m[ipvs.RealServerKey{Address: ep.Address.Unmap(), Port: ep.Port}] = true
				}
			}
			local[pn] = m
		}
		return m[k]
	}
	var out []SetMember
	add := func(id SetID, ipv6 bool, e IPSetEntry) {
		out = append(out, SetMember{Set: id, IPv6: ipv6, Entry: e})
	}
	for k, dvs := range sm.VirtualServers {
		sp := ports[dvs.Port]
		if sp == nil {
			continue
		}
		v6 := k.Address.Is6()
		ipPort := IPSetEntry{IP: k.Address, Protocol: k.Protocol, Port: k.Port}
		switch dvs.Kind {
		case KindClusterIP:
			add(SetClusterIP, v6, ipPort)
		case KindExternalIP, KindLoadBalancer:
			if sp.ExternalPolicyLocal {
				add(SetExternalLocal, v6, ipPort)
			} else {
				add(SetExternal, v6, ipPort)
			}
			if dvs.Kind == KindLoadBalancer && len(sp.LoadBalancerSourceRanges) > 0 {
				add(SetLBFirewall, v6, ipPort)
				for _, r := range sourceRanges(sp.LoadBalancerSourceRanges, v6) {
					add(SetLBSourceCIDR, v6, IPSetEntry{IP: k.Address, Protocol: k.Protocol, Port: k.Port, Net: r})
				}
			}
		case KindNodePort:
			if !sp.ExternalPolicyLocal {
				add(nodePortSet[k.Protocol], v6, IPSetEntry{Port: k.Port})
			}
		}
		if dvs.Kind != KindClusterIP && sp.ExternalPolicyLocal {
			e := ipPort
			e.Mark = ShortCircuitMark(dvs.Port, v6)
			add(SetShortCircuit, v6, e)
		}
		if dvs.NoLocalEndpoints {
			add(SetNoLocal, v6, ipPort)
		}
		if dvs.Kind == KindLoadBalancer && sm.HealthCheck != nil && sm.HealthCheck.NodePort != 0 {
			add(SetHealthCheck, v6, IPSetEntry{IP: k.Address, Protocol: ipvs.TCP, Port: sm.HealthCheck.NodePort})
		}
		for rk := range dvs.RealServers {
			if isLocal(dvs.Port, rk) {
				add(SetLoopBack, v6, IPSetEntry{IP: rk.Address, Protocol: k.Protocol, Port: rk.Port, IP2: rk.Address})
			}
		}
	}
	for _, a := range sm.Addresses {
		add(SetVIPs, a.Is6(), IPSetEntry{IP: a})
	}
	slices.SortFunc(out, compareMembers)
	return slices.Compact(out)
}

// sourceRanges returns the ranges of one family, masked, with a /0 split in
// two halves because hash:ip,port,net refuses a zero prefix length.
func sourceRanges(ranges []netip.Prefix, ipv6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range ranges {
		r = r.Masked()
		if !r.IsValid() || r.Addr().Is6() != ipv6 {
			continue
		}
		if r.Bits() == 0 {
			lo := netip.PrefixFrom(r.Addr(), 1)
			b := r.Addr().AsSlice()
			b[0] = 0x80
			hi, _ := netip.AddrFromSlice(b)
			out = append(out, lo, netip.PrefixFrom(hi, 1))
			continue
		}
		out = append(out, r)
	}
	return out
}

// compareMembers orders members by set, family, then entry.
func compareMembers(a, b SetMember) int {
	if a.Set != b.Set {
		return int(a.Set) - int(b.Set)
	}
	if a.IPv6 != b.IPv6 {
		if a.IPv6 {
			return 1
		}
		return -1
	}
	return compareEntries(a.Entry, b.Entry)
}

// MasqueradeMark is the packet mark bit that asks for masquerading: bit 14,
// kube-proxy's default, so both can share a node during a takeover and a
// CNI that honours kube-proxy's bit keeps working.
const MasqueradeMark = "0x4000"

// RuleConfig is what kipvs's fixed iptables rules depend on.
type RuleConfig struct {
	IPv6 bool
	// ClusterCIDR is the pod range of this family (--cluster-cidr); invalid when not given.
	ClusterCIDR   netip.Prefix
	MasqueradeAll bool
	// RandomFully adds --random-fully to MASQUERADE (iptables >= 1.6.2).
	RandomFully bool
}

// Chain is one of kipvs's own chains with its complete rule list.
type Chain struct {
	Table, Name string
	Rules       [][]string
}

// Jump is a rule kipvs ensures (at the top) of a builtin chain.
type Jump struct {
	Table, Chain string
	Rule         []string
}

// RuleSet is the complete, fixed iptables configuration of one family.
type RuleSet struct {
	Chains []Chain
	Jumps  []Jump
}

// The chains kipvs owns.
const (
	ChainServices     = "KIPVS-SERVICES"
	ChainNodePort     = "KIPVS-NODE-PORT"
	ChainMarkMasq     = "KIPVS-MARK-MASQ"
	ChainPostrouting  = "KIPVS-POSTROUTING"
	ChainFirewall     = "KIPVS-FIREWALL"
	ChainSourceRanges = "KIPVS-SOURCE-RANGES"
	ChainIPVSFilter   = "KIPVS-IPVS-FILTER"
	ChainForward      = "KIPVS-FORWARD"
	ChainOutput       = "KIPVS-OUTPUT"
	ChainPrerouting   = "KIPVS-PREROUTING"
)

// BuildRules returns kipvs's iptables rules for one family. They depend only
// on rc, never on Services: which VIPs, ports and endpoints they apply to is
// the content of the ipsets. The rules are spelled as iptables-save prints
// them, so a full sync compares them with the kernel's text and writes nothing
// when they match.
//
// nat:
//   - PREROUTING and OUTPUT jump to KIPVS-SERVICES, which marks for
//     masquerading: traffic to cluster IPs from outside --cluster-cidr (all of
//     it with --masquerade-all; without a cluster CIDR, like kube-proxy's IPVS
//     mode, only traffic whose source is a VIP: the node talking to a Service
//     from a VIP it picked as source), traffic to external/LB IPs with
//     externalTrafficPolicy Cluster, and traffic to a local address on a
//     NodePort with externalTrafficPolicy Cluster.
//   - POSTROUTING jumps to KIPVS-POSTROUTING: hairpin traffic (an endpoint
//     reaching itself after IPVS picked it), the node's own short-circuited
//     traffic (as kube-proxy masquerades LOCAL traffic to ETP=Local
//     addresses) and marked traffic are masqueraded.
//
// filter:
//   - INPUT and FORWARD jump to KIPVS-FIREWALL: new connections to a VIP:port
//     whose Local traffic policy finds no local endpoint are dropped, unless
//     marked for short-circuiting (only a connection's first packet is
//     marked: IPVS finds the later ones by address) (filter INPUT
//     runs before IPVS's LOCAL_IN hook, so IPVS never rejects it); traffic to
//     an LB IP:port with source ranges from another source is dropped.
//   - INPUT sends new connections to KIPVS-IPVS-FILTER: traffic to an address
//     on the dummy link that is not a Service IP:port, nor an LB IP on its
//     Service's healthCheckNodePort (#79783), is dropped (#72236).
//     kube-proxy REJECTs; kipvs DROPs so that it needs no REJECT target
//     (ipt_REJECT/nft_reject are not loaded everywhere; a failed REJECT rule
//     would leave the node without any of kipvs's rules).
//   - FORWARD jumps to KIPVS-FORWARD, which accepts marked and established
//     traffic even when the FORWARD policy is DROP.
//
// mangle:
//   - PREROUTING sends new connections to KIPVS-PREROUTING, which gives
//     packets from --cluster-cidr to an externalTrafficPolicy=Local address
//     the mark of its fwmark virtual server (SetShortCircuit, #115931).
//   - OUTPUT sends new connections to KIPVS-OUTPUT, which marks the node's
//     own traffic the same way, then drops the node's unmarked traffic to a
//     VIP:port whose Local policy finds no local endpoint.
//     IPVS's LOCAL_OUT hook (NF_IP_PRI_NAT_DST+1 and +2) runs before filter
//     OUTPUT and would answer with an ICMP port unreachable; mangle OUTPUT
//     (NF_IP_PRI_MANGLE) runs before it. kube-proxy's iptables mode drops too.
func BuildRules(rc RuleConfig) RuleSet {
	set := func(id SetID) string { return SetName(id, rc.IPv6) }
	masq := []string{"-j", "MASQUERADE"}
	if rc.RandomFully {
		masq = append(masq, "--random-fully")
	}
	var clusterMasq []string
	switch {
	case rc.MasqueradeAll:
		clusterMasq = args("-m set --match-set", set(SetClusterIP), "dst,dst -j", ChainMarkMasq)
	case rc.ClusterCIDR.IsValid():
		clusterMasq = args("! -s", rc.ClusterCIDR.Masked().String(), "-m set --match-set", set(SetClusterIP), "dst,dst -j", ChainMarkMasq)
	default:
		clusterMasq = args("-m set --match-set", set(SetClusterIP), "src,dst -j", ChainMarkMasq)
	}
	shortMark := fmt.Sprintf("%#x", ShortCircuitMarkBit)
	// Without a cluster CIDR pods cannot be told apart: like kube-proxy
	// without a local-traffic detector, only the node is short-circuited.
	shortPods := [][]string{}
	if rc.ClusterCIDR.IsValid() {
		shortPods = append(shortPods, args("-s", rc.ClusterCIDR.Masked().String(), "-j SET --map-set", set(SetShortCircuit), "dst,dst --map-mark"))
	}
	nodePorts := make([][]string, 0, 3)
	for _, p := range []struct {
		proto string
		id    SetID
	}{{"tcp", SetNodePortTCP}, {"udp", SetNodePortUDP}, {"sctp", SetNodePortSCTP}} {
		nodePorts = append(nodePorts, args("-p", p.proto, "-m set --match-set", set(p.id), "dst -j", ChainMarkMasq))
	}
	return RuleSet{
		Chains: []Chain{
			{Table: "nat", Name: ChainServices, Rules: [][]string{
				clusterMasq,
				args("-m set --match-set", set(SetExternal), "dst,dst -j", ChainMarkMasq),
				args("-m addrtype --dst-type LOCAL -j", ChainNodePort),
			}},
			{Table: "nat", Name: ChainNodePort, Rules: nodePorts},
			{Table: "nat", Name: ChainMarkMasq, Rules: [][]string{args("-j MARK --set-xmark", MasqueradeMark+"/"+MasqueradeMark)}},
			{Table: "nat", Name: ChainPostrouting, Rules: [][]string{
				append(args("-m set --match-set", set(SetLoopBack), "dst,dst,src"), masq...),
				append(args("-m mark --mark", shortMark+"/"+shortMark, "-m addrtype --src-type LOCAL"), masq...),
				args("-m mark ! --mark", MasqueradeMark+"/"+MasqueradeMark, "-j RETURN"),
				args("-j MARK --set-xmark", MasqueradeMark+"/0x0"),
				masq,
			}},
			{Table: "filter", Name: ChainFirewall, Rules: [][]string{
				args("-m conntrack --ctstate NEW -m mark ! --mark", shortMark+"/"+shortMark, "-m set --match-set", set(SetNoLocal), "dst,dst -j DROP"),
				args("-m set --match-set", set(SetLBFirewall), "dst,dst -j", ChainSourceRanges),
			}},
			{Table: "filter", Name: ChainSourceRanges, Rules: [][]string{
				args("-m set --match-set", set(SetLBSourceCIDR), "dst,dst,src -j RETURN"),
				args("-j DROP"),
			}},
			{Table: "filter", Name: ChainIPVSFilter, Rules: [][]string{
				args("-m set --match-set", set(SetClusterIP), "dst,dst -j RETURN"),
				args("-m set --match-set", set(SetExternal), "dst,dst -j RETURN"),
				args("-m set --match-set", set(SetExternalLocal), "dst,dst -j RETURN"),
				args("-m set --match-set", set(SetHealthCheck), "dst,dst -j RETURN"),
				args("-m set --match-set", set(SetVIPs), "dst -j DROP"),
			}},
			{Table: "filter", Name: ChainForward, Rules: [][]string{
				args("-m mark --mark", MasqueradeMark+"/"+MasqueradeMark, "-j ACCEPT"),
				args("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
			}},
			{Table: "mangle", Name: ChainPrerouting, Rules: shortPods},
			{Table: "mangle", Name: ChainOutput, Rules: [][]string{
				args("-j SET --map-set", set(SetShortCircuit), "dst,dst --map-mark"),
				args("-m mark ! --mark", shortMark+"/"+shortMark, "-m set --match-set", set(SetNoLocal), "dst,dst -j DROP"),
			}},
		},
		Jumps: []Jump{
			{Table: "nat", Chain: "PREROUTING", Rule: args("-m comment --comment kipvs-services -j", ChainServices)},
			{Table: "nat", Chain: "OUTPUT", Rule: args("-m comment --comment kipvs-services -j", ChainServices)},
			{Table: "nat", Chain: "POSTROUTING", Rule: args("-m comment --comment kipvs-postrouting -j", ChainPostrouting)},
			{Table: "filter", Chain: "INPUT", Rule: args("-m comment --comment kipvs-firewall -j", ChainFirewall)},
			{Table: "filter", Chain: "INPUT", Rule: args("-m conntrack --ctstate NEW -m comment --comment kipvs-ipvs-filter -j", ChainIPVSFilter)},
			{Table: "filter", Chain: "FORWARD", Rule: args("-m comment --comment kipvs-firewall -j", ChainFirewall)},
			{Table: "filter", Chain: "FORWARD", Rule: args("-m comment --comment kipvs-forward -j", ChainForward)},
			{Table: "mangle", Chain: "PREROUTING", Rule: args("-m conntrack --ctstate NEW -m comment --comment kipvs-prerouting -j", ChainPrerouting)},
			{Table: "mangle", Chain: "OUTPUT", Rule: args("-m conntrack --ctstate NEW -m comment --comment kipvs-output -j", ChainOutput)},
		},
	}
}

// Tables returns the tables the rule set uses, in a fixed order (raw, mangle,
// nat, filter): the order in which a full sync writes them.
func (rs RuleSet) Tables() []string {
	var out []string
	for _, t := range []string{"raw", "mangle", "nat", "filter"} {
		used := slices.ContainsFunc(rs.Chains, func(c Chain) bool { return c.Table == t }) ||
			slices.ContainsFunc(rs.Jumps, func(j Jump) bool { return j.Table == t })
		if used {
			out = append(out, t)
		}
	}
	return out
}

// args splits space-separated words and appends them in order.
func args(parts ...string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, strings.Fields(p)...)
	}
	return out
}

// Text renders the rule set as iptables-save would show kipvs's part of it,
// tables in the order nat, filter: for golden files and logs.
func (rs RuleSet) Text() string {
	var b strings.Builder
	for _, table := range rs.Tables() {
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range rs.Chains {
			if c.Table == table {
				fmt.Fprintf(&b, ":%s\n", c.Name)
			}
		}
		for _, j := range rs.Jumps {
			if j.Table == table {
				fmt.Fprintf(&b, "-A %s %s\n", j.Chain, strings.Join(j.Rule, " "))
			}
		}
		for _, c := range rs.Chains {
			if c.Table != table {
				continue
			}
			for _, r := range c.Rules {
				fmt.Fprintf(&b, "-A %s %s\n", c.Name, strings.Join(r, " "))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
