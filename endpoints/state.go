package endpoints

import (
	"cmp"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// State is what the informer handlers feed and the proxier drains. Handlers
// record pending changes (safe to call from any goroutine, concurrently with
// Apply); Apply merges them into the long-lived ServiceMap and EndpointsMap in
// place and reports which Services changed.
//
// Like kube-proxy's change trackers (pkg/proxy/servicechangetracker.go,
// endpointschangetracker.go), State keeps for each object with pending changes
// its value before and after them, and drops the entry when the two are equal
// again: an add and a delete before Apply, or an update that changes nothing
// kipvs uses, is no change at all.
type State struct {
	nodeName string

	mu     sync.Mutex
	synced bool

	// services is the applied ServiceMap; svcPending holds, per Service with
	// pending changes, the applied value and the newest one (nil = absent).
	services   ServiceMap
	svcPending map[types.NamespacedName]*serviceChange

	// endpoints is the applied EndpointsMap, built from the slice trackers;
	// epPending names the trackers that hold pending slice changes.
	endpoints  EndpointsMap
	trackers   map[types.NamespacedName]*sliceTracker
	epPending  sets.Set[types.NamespacedName]
	node       Node
	nodeNext   *Node
	rejections map[objectRef][]Rejection

	svcUpdates, epUpdates int
	// started is when the State was made; triggers holds the
	// endpoints.kubernetes.io/last-change-trigger-time of slice updates since the
	// last Apply that are newer than started (kube-proxy's rule: older ones
	// describe changes made before this process could have programmed them).
	started  time.Time
	triggers []time.Time
}

// serviceChange is one Service's applied value and its newest pending value.
type serviceChange struct {
	prev, cur *Service
}

// sliceTracker is one Service's EndpointSlices, like kube-proxy's
// endpointSliceTracker: applied slices by name, pending ones (a nil value is a
// removal), and the EndpointsMap keys currently set for the Service.
type sliceTracker struct {
	applied map[string]*sliceInfo
	pending map[string]*sliceInfo
	ports   []ServicePortName
}

// objectRef names an API object for the rejection index.
type objectRef struct {
	kind, namespace, name string
}

// NewState returns an empty State for the node named nodeName: endpoints on that
// node are local, and only that Node object is used.
func NewState(nodeName string) *State {
	return &State{
		nodeName:   nodeName,
		services:   ServiceMap{},
		svcPending: map[types.NamespacedName]*serviceChange{},
		endpoints:  EndpointsMap{},
		trackers:   map[types.NamespacedName]*sliceTracker{},
		epPending:  sets.New[types.NamespacedName](),
		node:       Node{Name: nodeName},
		rejections: map[objectRef][]Rejection{},
		started:    time.Now(),
	}
}

// NodeName is the node name given to NewState.
func (s *State) NodeName() string { return s.nodeName }

// OnServiceUpdate records a Service add (prev nil), update, or delete (cur nil).
func (s *State) OnServiceUpdate(prev, cur *v1.Service) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	if obj == nil {
		return
	}
	nn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	var parsed *Service
	var rejections []Rejection
	if cur != nil {
		parsed, _, rejections = ParseService(cur)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.svcUpdates++
	s.setRejections(objectRef{"Service", nn.Namespace, nn.Name}, rejections)
	ch, ok := s.svcPending[nn]
	if !ok {
		ch = &serviceChange{prev: s.services[nn]}
	}
	ch.cur = parsed
	if reflect.DeepEqual(ch.prev, ch.cur) {
		delete(s.svcPending, nn)
		return
	}
	s.svcPending[nn] = ch
}

// OnEndpointSliceUpdate records an EndpointSlice add (prev nil), update, or
// delete (cur nil). Slices without the kubernetes.io/service-name label are
// ignored and reported by Rejected.
func (s *State) OnEndpointSliceUpdate(prev, cur *discoveryv1.EndpointSlice) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	if obj == nil {
		return
	}
	ref := objectRef{"EndpointSlice", obj.Namespace, obj.Name}
	var info *sliceInfo
	var rejections []Rejection
	var curSvc types.NamespacedName
	curOK := false
	if cur != nil {
		curSvc, curOK = sliceOwner(cur)
		if curOK {
			info, rejections = parseSlice(cur)
		} else {
			rejections = []Rejection{{Kind: ref.kind, Namespace: ref.namespace, Name: ref.name,
				Reason: "no " + discoveryv1.LabelServiceName + " label"}}
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.epUpdates++
	if t, ok := triggerTime(cur); ok && t.After(s.started) {
		s.triggers = append(s.triggers, t)
	}
	s.setRejections(ref, rejections)
	// A slice relabelled to another Service (or unlabelled) leaves its old one.
	if prev != nil {
		if prevSvc, ok := sliceOwner(prev); ok && (!curOK || prevSvc != curSvc) {
			s.setSlice(prevSvc, prev.Name, nil)
		}
	}
	if curOK {
		s.setSlice(curSvc, cur.Name, info)
	}
}

// setSlice records info (nil = removed) as the pending value of one slice,
// dropping the pending entry when it equals the applied value.
func (s *State) setSlice(svc types.NamespacedName, name string, info *sliceInfo) {
	t := s.trackers[svc]
	if t == nil {
		if info == nil {
			return
		}
		t = &sliceTracker{applied: map[string]*sliceInfo{}, pending: map[string]*sliceInfo{}}
		s.trackers[svc] = t
	}
	if t.applied[name].equal(info) {
		delete(t.pending, name)
	} else {
		t.pending[name] = info
	}
	if len(t.pending) > 0 {
		s.epPending.Insert(svc)
		return
	}
	s.epPending.Delete(svc)
	if len(t.applied) == 0 {
		delete(s.trackers, svc)
	}
}

// OnNodeUpdate records an update of this node's Node object. Other Nodes are
// ignored. A deleted Node counts as Deleting.
func (s *State) OnNodeUpdate(prev, cur *v1.Node) {
	obj := cur
	if obj == nil {
		obj = prev
	}
	if obj == nil || obj.Name != s.nodeName {
		return
	}
	n := Node{Name: s.nodeName, Deleting: true}
	if cur != nil {
		n = ParseNode(cur)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodeNext = &n
}

// ParseNode extracts what kipvs uses from a Node object.
func ParseNode(n *v1.Node) Node {
	out := Node{Name: n.Name, Zone: n.Labels[v1.LabelTopologyZone], Deleting: n.DeletionTimestamp != nil}
	if len(n.Labels) > 0 {
		out.Labels = maps.Clone(n.Labels)
	}
	for _, t := range n.Spec.Taints {
		if t.Key == TaintToBeDeletedByClusterAutoscaler {
			out.Deleting = true
		}
	}
	out.PrimaryIPs = primaryIPs(n.Status.Addresses)
	return out
}

// primaryIPs returns the Node's primary addresses: the first InternalIP, else
// the first ExternalIP, and then the first address of the other family in the
// same order of preference (kube-proxy's GetNodeHostIPs). Unparsable
// addresses are skipped.
func primaryIPs(addrs []v1.NodeAddress) []netip.Addr {
	var out []netip.Addr
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, na := range addrs {
			if na.Type != typ {
				continue
			}
			a, ok := ParseIP(na.Address)
			if !ok {
				continue
			}
			switch {
			case len(out) == 0:
				out = append(out, a)
			case len(out) == 1 && out[0].Is4() != a.Is4():
				return append(out, a)
			}
		}
	}
	return out
}

// SetSynced records that the informers have delivered their initial lists.
func (s *State) SetSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = true
}

// Synced reports whether SetSynced was called. The proxier must not sync before
// then: a partial initial list would delete rules for Services not seen yet.
func (s *State) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Pending returns how many Services have Service changes and how many have
// endpoint changes queued and not yet applied
// (kubeproxy_sync_proxy_rules_{service,endpoint}_changes_pending).
func (s *State) Pending() (services, endpoints int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.svcPending), s.epPending.Len()
}

// Rejected returns the current Rejections of the newest version of every object
// the handlers have seen, sorted by kind, namespace and name. Rejections of a
// deleted object are dropped.
func (s *State) Rejected() []Rejection {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Rejection
	for _, rs := range s.rejections {
		out = append(out, rs...)
	}
	slices.SortStableFunc(out, func(a, b Rejection) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace),
			cmp.Compare(a.Name, b.Name), cmp.Compare(a.Reason, b.Reason))
	})
	return out
}

// setRejections replaces one object's rejections. Callers hold s.mu.
func (s *State) setRejections(ref objectRef, rs []Rejection) {
	if len(rs) == 0 {
		delete(s.rejections, ref)
		return
	}
	s.rejections[ref] = rs
}

// Apply merges the pending changes into the ServiceMap and EndpointsMap and
// returns them with what changed since the previous Apply. A Service is in
// Changed when its parsed Service or any of its endpoint lists differs; only the
// endpoints of Services with pending slice changes are rebuilt.
func (s *State) Apply() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{
		Services:        s.services,
		Endpoints:       s.endpoints,
		Changed:         sets.New[types.NamespacedName](),
		ServiceChanges:  s.svcUpdates,
		EndpointChanges: s.epUpdates,
		TriggerTimes:    s.triggers,
	}
	s.svcUpdates, s.epUpdates = 0, 0
	s.triggers = nil

	for nn, ch := range s.svcPending {
		if ch.cur == nil {
			delete(s.services, nn)
		} else {
			s.services[nn] = ch.cur
		}
		snap.Changed.Insert(nn)
	}
	// Fresh maps, not clear(): iterating a map costs its peak size, and the
	// initial sync leaves these with room for every Service.
	s.svcPending = map[types.NamespacedName]*serviceChange{}

	for svc := range s.epPending {
		if s.applySlices(svc) {
			snap.Changed.Insert(svc)
		}
	}
	s.epPending = sets.New[types.NamespacedName]()

	if s.nodeNext != nil {
		if !reflect.DeepEqual(*s.nodeNext, s.node) {
			s.node = *s.nodeNext
			snap.NodeChanged = true
		}
		s.nodeNext = nil
	}
	snap.Node = s.node
	return snap
}

// applySlices merges one Service's pending slices, rebuilds its endpoints and
// updates EndpointsMap; it reports whether any endpoint list changed.
func (s *State) applySlices(svc types.NamespacedName) bool {
	t := s.trackers[svc]
	if t == nil {
		return false
	}
	for name, info := range t.pending {
		if info == nil {
			delete(t.applied, name)
		} else {
			t.applied[name] = info
		}
	}
	clear(t.pending)

	built := buildEndpoints(svc, t.applied)
	changed := false
	for _, key := range t.ports {
		if _, ok := built[key]; !ok {
			delete(s.endpoints, key)
			changed = true
		}
	}
	t.ports = t.ports[:0]
	for key, eps := range built {
		if old, ok := s.endpoints[key]; !ok || !endpointsEqual(old, eps) {
			s.endpoints[key] = eps
			changed = true
		}
		t.ports = append(t.ports, key)
	}
	if len(t.applied) == 0 {
		delete(s.trackers, svc)
	}
	return changed
}

// triggerTime reads a slice's endpoints.kubernetes.io/last-change-trigger-time
// annotation; ok is false for a nil slice or a missing or malformed value.
func triggerTime(slice *discoveryv1.EndpointSlice) (time.Time, bool) {
	if slice == nil {
		return time.Time{}, false
	}
	v, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}
