// Package proxier turns the Services and endpoints that package endpoints keeps
// into IPVS virtual servers and addresses on a dummy link.
//
// The work is split in pure steps: BuildService/BuildModel compute what is wanted
// (no kernel, no clock), Reconcile diffs it against the observed kernel state and
// yields a Plan, and Apply runs the plan. Proxier ties them to a bounded-frequency
// Runner and keeps the state that makes incremental syncs cheap.
package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kipvs/kipvs/endpoints"
	"github.com/kipvs/kipvs/ipvs"
)

// SchedulerAnnotation lets a Service choose its IPVS scheduler (one of
// ipvs.Schedulers), overriding Config.Scheduler.
const SchedulerAnnotation = "kipvs.io/scheduler"

// defaultScheduler is used when Config.Scheduler is empty, as kube-proxy does.
const defaultScheduler = "rr"

// NodeInfo is what the model needs to know about this node.
type NodeInfo struct {
	endpoints.Node
	// IPs are the node addresses that get NodePort virtual servers, already
	// filtered by the caller (nodePortAddresses, no loopback, no link-local).
	IPs []netip.Addr
	// LocalAddrs are every local address not on the dummy link. An ExternalIP or
	// LoadBalancer IP that is local is not bound to the dummy link (kube-proxy does
	// the same): the address already routes to this host.
	LocalAddrs []netip.Addr
	// NoIPv4 and NoIPv6 say that the node lacks an address family (no address of
	// it at all, not even on loopback: IPv6 disabled). Virtual servers and VIPs
	// of a missing family are skipped rather than failing in the kernel once per
	// Service; the proxier logs the missing family once.
	NoIPv4, NoIPv6 bool
}

// hasFamily reports whether the node can serve addresses of a's family.
func (n *NodeInfo) hasFamily(a netip.Addr) bool {
	if a.Is6() {
		return !n.NoIPv6
	}
	return !n.NoIPv4
}

// FamiliesFrom sets NoIPv4 and NoIPv6 from the node's local addresses (those of
// every link, loopback included: the kernel gives lo ::1 unless IPv6 is disabled).
func (n *NodeInfo) FamiliesFrom(local []netip.Addr) {
	n.NoIPv4, n.NoIPv6 = true, true
	for _, a := range local {
		if a.Unmap().Is4() {
			n.NoIPv4 = false
		} else {
			n.NoIPv6 = false
		}
	}
}

// isLocal reports whether a is one of the node's own addresses.
func (n *NodeInfo) isLocal(a netip.Addr) bool {
	return slices.Contains(n.IPs, a) || slices.Contains(n.LocalAddrs, a)
}

// Kind says which Service field a virtual server comes from.
type Kind uint8

// The kinds of virtual servers a Service port produces.
const (
	KindClusterIP Kind = iota
	KindNodePort
	KindExternalIP
	KindLoadBalancer
)

// String names the kind as Kubernetes does.
func (k Kind) String() string {
	switch k {
	case KindClusterIP:
		return "clusterIP"
	case KindNodePort:
		return "nodePort"
	case KindExternalIP:
		return "externalIP"
	case KindLoadBalancer:
		return "loadBalancer"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// DesiredVirtualServer is one virtual server kipvs wants, with its real servers.
// RealServers may be shared by several virtual servers of the same Service port
// and family: treat it as read-only.
type DesiredVirtualServer struct {
	VirtualServer ipvs.VirtualServer
	RealServers   map[ipvs.RealServerKey]ipvs.RealServer
	// Port is the Service port this virtual server serves.
	Port endpoints.ServicePortName
	Kind Kind
	// NoLocalEndpoints is true when the virtual server follows a Local traffic
	// policy (internalTrafficPolicy for KindClusterIP, externalTrafficPolicy for
	// the others) and this node has no usable local endpoint while the cluster has
	// some: it has no real server, and traffic to it is meant to be dropped, as
	// kube-proxy's iptables and nftables modes do. IPVS alone rejects it with an
	// ICMP port unreachable; a netfilter DROP for external sources matches
	// kube-proxy exactly (in-cluster sources are redirected to the cluster IP first).
	NoLocalEndpoints bool
}

// FamilyCounts counts per IP family.
type FamilyCounts struct {
	IPv4, IPv6 int
}

// add adds n to the count of a's family.
func (c *FamilyCounts) add(a netip.Addr, n int) {
	if a.Is6() {
		c.IPv6 += n
	} else {
		c.IPv4 += n
	}
}

// NoLocalEndpointCounts counts Service ports (per family) whose Local traffic
// policy finds no local endpoint, for kube-proxy's metric
// kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy,ip_family}.
type NoLocalEndpointCounts struct {
	Internal, External FamilyCounts
}

// Add adds o to c.
func (c *NoLocalEndpointCounts) Add(o NoLocalEndpointCounts) {
	c.Internal.IPv4 += o.Internal.IPv4
	c.Internal.IPv6 += o.Internal.IPv6
	c.External.IPv4 += o.External.IPv4
	c.External.IPv6 += o.External.IPv6
}

// Sub subtracts o from c.
func (c *NoLocalEndpointCounts) Sub(o NoLocalEndpointCounts) {
	c.Internal.IPv4 -= o.Internal.IPv4
	c.Internal.IPv6 -= o.Internal.IPv6
	c.External.IPv4 -= o.External.IPv4
	c.External.IPv6 -= o.External.IPv6
}

// HealthCheck is what a Service's healthCheckNodePort server serves.
type HealthCheck struct {
	// NodePort is spec.healthCheckNodePort.
	NodePort uint16
	// LocalEndpoints counts the distinct addresses of the Service's ready
	// endpoints on this node, over all of its ports (kube-proxy's
	// EndpointsMap.LocalReadyEndpoints).
	LocalEndpoints int
}

// ServiceModel is everything one Service wants in the kernel.
type ServiceModel struct {
	Name types.NamespacedName
	// VirtualServers are the wanted virtual servers, keyed by their key.
	VirtualServers map[ipvs.VirtualServerKey]*DesiredVirtualServer
	// Addresses are the VIPs this Service needs bound to the dummy link, sorted.
	Addresses []netip.Addr
	// NoLocalEndpoints counts the Service's ports whose Local policy finds no
	// local endpoint.
	NoLocalEndpoints NoLocalEndpointCounts
	// HealthCheck is set for a LoadBalancer Service with externalTrafficPolicy
	// Local and a healthCheckNodePort.
	HealthCheck *HealthCheck
	// Err is a Service-scoped problem (invalid Service, unknown scheduler, a
	// virtual server claimed by another Service). It names the Service and the reason.
	Err error
	// Skipped says why a valid Service is not programmed on this node (its
	// only address family is one the node lacks). It is not an error: the
	// proxier logs the missing family once, not once per Service.
	Skipped string
}

// Model is the desired state of every Service, after conflicts between Services
// were resolved.
type Model struct {
	Services map[types.NamespacedName]*ServiceModel
}

// BuildModel builds every Service's model and resolves virtual servers claimed by
// more than one Service: the first Service by namespace/name keeps the key, the
// others lose it and carry an Err naming both.
func BuildModel(services endpoints.ServiceMap, eps endpoints.EndpointsMap, node NodeInfo, cfg Config) Model {
	raw := make(map[types.NamespacedName]*ServiceModel, len(services))
	c := make(claims, len(services))
	for name, svc := range services {
		sm := BuildService(svc, eps, node, cfg)
		raw[name] = &sm
		c.add(&sm)
	}
	m := Model{Services: make(map[types.NamespacedName]*ServiceModel, len(raw))}
	for name, sm := range raw {
		m.Services[name] = c.resolve(sm)
	}
	return m
}

// BuildService computes what one Service wants: for each port a virtual server on
// every ClusterIP, ExternalIP and LoadBalancer IP, and one per node IP for its
// NodePort, each with the port's usable endpoints of the same address family as
// real servers (weight 1). VIPs inside cfg.ExcludeCIDRs are skipped.
func BuildService(svc *endpoints.Service, eps endpoints.EndpointsMap, node NodeInfo, cfg Config) ServiceModel {
	sm := ServiceModel{Name: svc.Name}
	if svc.Err != nil {
		sm.Err = fmt.Errorf("service %s: %w", svc.Name, svc.Err)
		return sm
	}
	sched := cfg.Scheduler
	if sched == "" {
		sched = defaultScheduler
	}
	if a, ok := svc.Annotations[SchedulerAnnotation]; ok {
		if !ipvs.ValidScheduler(a) {
			sm.Err = fmt.Errorf("service %s: unknown IPVS scheduler %q in annotation %s (valid: %s)",
				svc.Name, a, SchedulerAnnotation, strings.Join(ipvs.Schedulers, ", "))
			return sm
		}
		sched = a
	}
	if reason := unservableFamily(svc, &node); reason != "" {
		sm.Skipped = reason
		return sm
	}
	b := serviceBuilder{sm: &sm, node: &node, cfg: &cfg, sched: sched}
	for _, sp := range svc.Ports {
		if err := b.addPort(sp, eps[sp.Name]); err != nil {
			return ServiceModel{Name: svc.Name, Err: fmt.Errorf("service %s: %w", svc.Name, err)}
		}
	}
	sm.HealthCheck = healthCheck(svc, eps, node.Name)
	slices.SortFunc(sm.Addresses, netip.Addr.Compare)
	sm.Addresses = slices.Compact(sm.Addresses)
	return sm
}

// unservableFamily says why the node cannot serve the Service when it has none
// of the address families of the Service's cluster IPs (an IPv6-only Service on
// an IPv4-only node), and is "" otherwise. Such a Service gets nothing and is
// marked skipped (shown in /status), not failed: the proxier logs the missing
// family once, where a Service error would log and raise an Event per Service.
// A dual-stack Service on a single-stack node is served in the node's family.
func unservableFamily(svc *endpoints.Service, node *NodeInfo) string {
	if len(svc.Ports) == 0 || len(svc.Ports[0].ClusterIPs) == 0 {
		return ""
	}
	ips := svc.Ports[0].ClusterIPs // the same for every port
	for _, ip := range ips {
		if node.hasFamily(ip) {
			return ""
		}
	}
	family := "IPv4"
	if ips[0].Is6() {
		family = "IPv6"
	}
	return fmt.Sprintf("this node has no %s address, so its cluster IPs %v are not served", family, ips)
}

// serviceBuilder accumulates one Service's virtual servers.
type serviceBuilder struct {
	sm    *ServiceModel
	node  *NodeInfo
	cfg   *Config
	sched string
}

// addPort adds the virtual servers of one Service port.
func (b *serviceBuilder) addPort(sp *endpoints.ServicePort, eps []*endpoints.Endpoint) error {
	proto, err := ipvs.ParseProtocol(string(sp.Protocol))
	if err != nil {
		return fmt.Errorf("port %s: %w", sp.Name, err)
	}
	vs := ipvs.VirtualServer{Scheduler: b.sched}
	if sp.StickyMaxAgeSeconds > 0 {
		vs.Flags |= ipvs.FlagPersistent
		vs.Timeout = sp.StickyMaxAgeSeconds
	}
	if b.sched == "mh" {
		// kube-proxy sets its FlagSourceHash (0x10, IP_VS_SVC_F_SCHED2) for mh so that
		// the source port is hashed too; matching it keeps a takeover write-free.
		vs.Flags |= ipvs.FlagSHPort
	}
	// Each family selects from its own endpoints, as kube-proxy's per-family
	// proxiers do: the terminating fallback, topology and Local policies are
	// decided per family.
	v4, v6 := splitFamilies(eps)
	sels := [2]selected{selectEndpoints(sp, v4, b.node), selectEndpoints(sp, v6, b.node)}
	var internal, external rsCache
	// counted[policy][family] notes a port already counted without local endpoints.
	var counted [2][2]bool
	add := func(kind Kind, addr netip.Addr, port uint16, rs *rsCache) {
		addr = addr.Unmap()
		if !addr.IsValid() || excluded(addr, b.cfg.ExcludeCIDRs) || !sameFamilyAsCluster(addr, sp.ClusterIPs) ||
			!b.node.hasFamily(addr) {
			return
		}
		v := vs
		v.VirtualServerKey = ipvs.VirtualServerKey{Address: addr, Protocol: proto, Port: port}
		if _, dup := b.sm.VirtualServers[v.VirtualServerKey]; dup {
			return
		}
		if b.sm.VirtualServers == nil {
			b.sm.VirtualServers = make(map[ipvs.VirtualServerKey]*DesiredVirtualServer, 4)
		}
		fam := 0
		if addr.Is6() {
			fam = 1
		}
		sel := &sels[fam]
		set, noLocal, policy, counts := sel.external, sel.noLocalExternal, 1, &b.sm.NoLocalEndpoints.External
		if kind == KindClusterIP {
			set, noLocal, policy, counts = sel.internal, sel.noLocalInternal, 0, &b.sm.NoLocalEndpoints.Internal
		}
		if noLocal && !counted[policy][fam] {
			counted[policy][fam] = true
			counts.add(addr, 1)
		}
		b.sm.VirtualServers[v.VirtualServerKey] = &DesiredVirtualServer{
			VirtualServer: v, RealServers: rs.get(set, addr.Is6()), Port: sp.Name, Kind: kind, NoLocalEndpoints: noLocal,
		}
		if kind != KindNodePort && !b.node.isLocal(addr) {
			b.sm.Addresses = append(b.sm.Addresses, addr)
		}
	}
	for _, ip := range sp.ClusterIPs {
		add(KindClusterIP, ip, sp.Port, &internal)
	}
	for _, ip := range sp.ExternalIPs {
		add(KindExternalIP, ip, sp.Port, &external)
	}
	for _, ip := range sp.LoadBalancerIPs {
		add(KindLoadBalancer, ip, sp.Port, &external)
	}
	if sp.NodePort != 0 {
		for _, ip := range b.node.IPs {
			add(KindNodePort, ip, sp.NodePort, &external)
		}
	}
	return nil
}

// splitFamilies splits endpoints by address family, keeping their order. The
// common single-family case returns eps itself.
func splitFamilies(eps []*endpoints.Endpoint) (v4, v6 []*endpoints.Endpoint) {
	n6 := 0
	for _, e := range eps {
		if e.Address.Unmap().Is6() {
			n6++
		}
	}
	switch n6 {
	case 0:
		return eps, nil
	case len(eps):
		return nil, eps
	}
	v4 = make([]*endpoints.Endpoint, 0, len(eps)-n6)
	v6 = make([]*endpoints.Endpoint, 0, n6)
	for _, e := range eps {
		if e.Address.Unmap().Is6() {
			v6 = append(v6, e)
		} else {
			v4 = append(v4, e)
		}
	}
	return v4, v6
}

// sameFamilyAsCluster reports whether a has the family of one of the cluster IPs.
// kube-proxy runs one proxier per family and each skips Services without a
// cluster IP of its family, so an IPv4-only Service gets no NodePort on the
// node's IPv6 addresses and ignores IPv6 external IPs; kipvs does the same.
func sameFamilyAsCluster(a netip.Addr, clusterIPs []netip.Addr) bool {
	if len(clusterIPs) == 0 {
		return true
	}
	for _, c := range clusterIPs {
		if c.Unmap().Is4() == a.Is4() {
			return true
		}
	}
	return false
}

// rsCache builds a port's real-server set once per address family, so that every
// virtual server of the port shares it.
type rsCache struct {
	v4, v6         map[ipvs.RealServerKey]ipvs.RealServer
	haveV4, haveV6 bool
}

// get returns the real servers of family is6 from set.
func (c *rsCache) get(set []*endpoints.Endpoint, is6 bool) map[ipvs.RealServerKey]ipvs.RealServer {
	m, have := &c.v4, &c.haveV4
	if is6 {
		m, have = &c.v6, &c.haveV6
	}
	if !*have {
		*m = realServers(set, is6)
		*have = true
	}
	return *m
}

// realServers turns endpoints of one family into weight-1 real servers.
func realServers(set []*endpoints.Endpoint, is6 bool) map[ipvs.RealServerKey]ipvs.RealServer {
	out := make(map[ipvs.RealServerKey]ipvs.RealServer, len(set))
	for _, ep := range set {
		a := ep.Address.Unmap()
		if !a.IsValid() || a.Is6() != is6 {
			continue
		}
		k := ipvs.RealServerKey{Address: a, Port: ep.Port}
		out[k] = ipvs.RealServer{RealServerKey: k, Weight: 1}
	}
	return out
}

// selected are the endpoints a Service port sends traffic to: internal for
// ClusterIPs, external for NodePorts, ExternalIPs and LoadBalancer IPs. The
// noLocal flags say that a Local policy left a set empty while the cluster has
// usable endpoints.
type selected struct {
	internal, external               []*endpoints.Endpoint
	noLocalInternal, noLocalExternal bool
}

// healthCheck returns the health check of a LoadBalancer Service with
// externalTrafficPolicy Local, nil for other Services.
func healthCheck(svc *endpoints.Service, eps endpoints.EndpointsMap, nodeName string) *HealthCheck {
	var hc *HealthCheck
	var local map[netip.Addr]struct{}
	for _, sp := range svc.Ports {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		if hc == nil {
			hc = &HealthCheck{NodePort: sp.HealthCheckNodePort}
			local = map[netip.Addr]struct{}{}
		}
	}
	if hc == nil {
		return nil
	}
	for _, sp := range svc.Ports {
		for _, ep := range eps[sp.Name] {
			if ep.Ready && nodeName != "" && ep.NodeName == nodeName {
				local[ep.Address.Unmap()] = struct{}{}
			}
		}
	}
	hc.LocalEndpoints = len(local)
	return hc
}

// excluded reports whether a lies in one of the excluded prefixes.
func excluded(a netip.Addr, cidrs []netip.Prefix) bool {
	a = a.Unmap()
	for _, p := range cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// claims records, for every virtual server key, the Services that want it in
// the order they win it: first those whose virtual server there the API server
// allocated (a cluster IP or a node port, unique cluster-wide), then those
// that name the address themselves (externalIPs, load balancer ingress), each
// group by namespace/name. Without the first rule any Service could take
// another's cluster IP by listing it in its externalIPs and sorting first
// (the API server accepts any externalIP; CVE-2020-8554).
type claims map[ipvs.VirtualServerKey][]claim

// claim is one Service's claim of a virtual server key.
type claim struct {
	name types.NamespacedName
	// named is true for a key the Service names itself (KindExternalIP,
	// KindLoadBalancer), false for one the API server allocated.
	named bool
}

// compareNames orders Services by namespace, then name.
func compareNames(a, b types.NamespacedName) int {
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// compareClaims orders claims of one key: allocated before named, then by name.
func compareClaims(a, b claim) int {
	if a.named != b.named {
		if a.named {
			return 1
		}
		return -1
	}
	return compareNames(a.name, b.name)
}

// claimOf is sm's claim of its virtual server dvs.
func claimOf(sm *ServiceModel, dvs *DesiredVirtualServer) claim {
	return claim{name: sm.Name, named: dvs.Kind == KindExternalIP || dvs.Kind == KindLoadBalancer}
}

// add records sm's claims.
func (c claims) add(sm *ServiceModel) {
	for k, dvs := range sm.VirtualServers {
		cl := claimOf(sm, dvs)
		i, found := slices.BinarySearchFunc(c[k], cl, compareClaims)
		if !found {
			c[k] = slices.Insert(c[k], i, cl)
		}
	}
}

// remove drops sm's claims (sm as it was added).
func (c claims) remove(sm *ServiceModel) {
	for k, dvs := range sm.VirtualServers {
		cls := c[k]
		i, found := slices.BinarySearchFunc(cls, claimOf(sm, dvs), compareClaims)
		if !found {
			continue
		}
		if len(cls) == 1 {
			delete(c, k)
			continue
		}
		c[k] = slices.Delete(slices.Clone(cls), i, i+1)
	}
}

// resolve returns sm as it takes effect: sm itself when it wins every key it
// wants, else a copy without the keys another Service won, with an Err naming both.
func (c claims) resolve(sm *ServiceModel) *ServiceModel {
	var lost []ipvs.VirtualServerKey
	for k := range sm.VirtualServers {
		if cls := c[k]; len(cls) > 0 && cls[0].name != sm.Name {
			lost = append(lost, k)
		}
	}
	if len(lost) == 0 {
		return sm
	}
	slices.SortFunc(lost, ipvs.VirtualServerKey.Compare)
	out := &ServiceModel{
		Name: sm.Name, NoLocalEndpoints: sm.NoLocalEndpoints, HealthCheck: sm.HealthCheck,
		VirtualServers: make(map[ipvs.VirtualServerKey]*DesiredVirtualServer, len(sm.VirtualServers)),
	}
	for k, dvs := range sm.VirtualServers {
		if !slices.Contains(lost, k) {
			out.VirtualServers[k] = dvs
		}
	}
	used := make(map[netip.Addr]bool, len(out.VirtualServers))
	for k := range out.VirtualServers {
		used[k.Address] = true
	}
	for _, a := range sm.Addresses {
		if used[a] {
			out.Addresses = append(out.Addresses, a)
		}
	}
	msgs := make([]string, 0, len(lost))
	for _, k := range lost {
		msgs = append(msgs, fmt.Sprintf("virtual server %s is already claimed by service %s", k, c[k][0].name))
	}
	out.Err = fmt.Errorf("service %s: %s", sm.Name, strings.Join(msgs, "; "))
	if sm.Err != nil {
		out.Err = fmt.Errorf("%w; %s", sm.Err, strings.Join(msgs, "; "))
	}
	return out
}
