package endpoints

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// changedNames renders a Changed set as sorted "ns/name" strings.
func changedNames(s sets.Set[types.NamespacedName]) []string {
	var out []string
	for n := range s {
		out = append(out, n.String())
	}
	slices.Sort(out)
	return out
}

func TestStateServices(t *testing.T) {
	base := makeService("ns", "a")
	tests := []struct {
		name        string
		setup       func(s *State) // applied before the step under test
		step        func(s *State)
		wantChanged []string
		wantPresent []string
	}{
		{
			name:        "add",
			step:        func(s *State) { s.OnServiceUpdate(nil, base) },
			wantChanged: []string{"ns/a"},
			wantPresent: []string{"ns/a"},
		},
		{
			name: "add and delete before Apply is no change",
			step: func(s *State) {
				s.OnServiceUpdate(nil, base)
				s.OnServiceUpdate(base, nil)
			},
		},
		{
			name:  "status-only update is no change",
			setup: func(s *State) { s.OnServiceUpdate(nil, base) },
			step: func(s *State) {
				cur := makeService("ns", "a", func(svc *v1.Service) {
					svc.ResourceVersion = "2"
					svc.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue}}
				})
				s.OnServiceUpdate(base, cur)
			},
			wantPresent: []string{"ns/a"},
		},
		{
			name:  "update and revert before Apply is no change",
			setup: func(s *State) { s.OnServiceUpdate(nil, base) },
			step: func(s *State) {
				mod := makeService("ns", "a", withPorts(v1.ServicePort{Name: "http", Port: 81, Protocol: v1.ProtocolTCP}))
				s.OnServiceUpdate(base, mod)
				s.OnServiceUpdate(mod, base)
			},
			wantPresent: []string{"ns/a"},
		},
		{
			name:  "port change",
			setup: func(s *State) { s.OnServiceUpdate(nil, base) },
			step: func(s *State) {
				s.OnServiceUpdate(base, makeService("ns", "a", withPorts(v1.ServicePort{Name: "http", Port: 81})))
			},
			wantChanged: []string{"ns/a"},
			wantPresent: []string{"ns/a"},
		},
		{
			name:  "becomes ExternalName: changed and gone",
			setup: func(s *State) { s.OnServiceUpdate(nil, base) },
			step: func(s *State) {
				s.OnServiceUpdate(base, makeService("ns", "a", func(svc *v1.Service) { svc.Spec.Type = v1.ServiceTypeExternalName }))
			},
			wantChanged: []string{"ns/a"},
		},
		{
			name: "headless add is no change",
			step: func(s *State) {
				s.OnServiceUpdate(nil, makeService("ns", "h", func(svc *v1.Service) { svc.Spec.ClusterIP = "None" }))
			},
			wantChanged: nil,
		},
		{
			name:        "delete",
			setup:       func(s *State) { s.OnServiceUpdate(nil, base); s.OnServiceUpdate(nil, makeService("ns", "b")) },
			step:        func(s *State) { s.OnServiceUpdate(base, nil) },
			wantChanged: []string{"ns/a"},
			wantPresent: []string{"ns/b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewState("node1")
			if tt.setup != nil {
				tt.setup(s)
				s.Apply()
			}
			tt.step(s)
			snap := s.Apply()
			if diff := cmp.Diff(tt.wantChanged, changedNames(snap.Changed)); diff != "" {
				t.Errorf("Changed (-want +got):\n%s", diff)
			}
			var present []string
			for n := range snap.Services {
				present = append(present, n.String())
			}
			slices.Sort(present)
			if diff := cmp.Diff(tt.wantPresent, present); diff != "" {
				t.Errorf("Services (-want +got):\n%s", diff)
			}
			if svcs, eps := s.Pending(); svcs != 0 || eps != 0 {
				t.Errorf("Pending after Apply = %d, %d", svcs, eps)
			}
		})
	}
}

func TestStateEndpoints(t *testing.T) {
	ports2 := []discoveryv1.EndpointPort{port("https", v1.ProtocolTCP, 8443), port("http", v1.ProtocolTCP, 8080)}
	sliceA := makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.2"), ep("10.1.0.1"))
	notReady := cond(ptr(false), nil, nil)
	tests := []struct {
		name        string
		setup       []*discoveryv1.EndpointSlice // added and applied before step
		step        func(s *State)
		wantChanged []string
		want        EndpointsMap
		wantReject  []string
	}{
		{
			name: "ports matched by name, endpoints sorted",
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-1", "a", ports2, ep("10.1.0.2"), ep("10.1.0.1")))
			},
			wantChanged: []string{"ns/a"},
			want: EndpointsMap{
				spn("ns", "a", "http", v1.ProtocolTCP):  {makeEndpoint("10.1.0.1", 8080), makeEndpoint("10.1.0.2", 8080)},
				spn("ns", "a", "https", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8443), makeEndpoint("10.1.0.2", 8443)},
			},
		},
		{
			name: "same port name, different protocols",
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "dns-1", "dns",
					[]discoveryv1.EndpointPort{port("dns", v1.ProtocolUDP, 53), port("dns", v1.ProtocolTCP, 53)}, ep("10.1.0.1")))
			},
			wantChanged: []string{"ns/dns"},
			want: EndpointsMap{
				spn("ns", "dns", "dns", v1.ProtocolUDP): {makeEndpoint("10.1.0.1", 53)},
				spn("ns", "dns", "dns", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 53)},
			},
		},
		{
			name:  "second slice merged",
			setup: []*discoveryv1.EndpointSlice{sliceA},
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-2", "a", httpPort, ep("10.1.0.0"), ep("10.1.0.3")))
			},
			wantChanged: []string{"ns/a"},
			want: EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {
				makeEndpoint("10.1.0.0", 8080), makeEndpoint("10.1.0.1", 8080),
				makeEndpoint("10.1.0.2", 8080), makeEndpoint("10.1.0.3", 8080),
			}},
		},
		{
			name:  "duplicate across slices: the ready copy wins whichever slice holds it",
			setup: []*discoveryv1.EndpointSlice{makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1", notReady))},
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-2", "a", httpPort, ep("10.1.0.1", onNode("n2"))))
			},
			wantChanged: []string{"ns/a"},
			want: EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {
				makeEndpoint("10.1.0.1", 8080, func(e *Endpoint) { e.NodeName = "n2" }),
			}},
		},
		{
			name:  "endpoint moving between slices is no change",
			setup: []*discoveryv1.EndpointSlice{sliceA},
			step: func(s *State) {
				s.OnEndpointSliceUpdate(sliceA, makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1")))
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-2", "a", httpPort, ep("10.1.0.2")))
			},
			want: EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8080), makeEndpoint("10.1.0.2", 8080)}},
		},
		{
			name:  "reordered endpoints and new resourceVersion is no change",
			setup: []*discoveryv1.EndpointSlice{sliceA},
			step: func(s *State) {
				cur := makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1"), ep("10.1.0.2"))
				cur.ResourceVersion = "2"
				s.OnEndpointSliceUpdate(sliceA, cur)
			},
			want: EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8080), makeEndpoint("10.1.0.2", 8080)}},
		},
		{
			name: "add and delete before Apply is no change",
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, sliceA)
				s.OnEndpointSliceUpdate(sliceA, nil)
			},
			want: EndpointsMap{},
		},
		{
			name:  "port removed from the slice: its entry is deleted",
			setup: []*discoveryv1.EndpointSlice{makeSlice("ns", "a-1", "a", ports2, ep("10.1.0.1"))},
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1")))
			},
			wantChanged: []string{"ns/a"},
			want:        EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8080)}},
		},
		{
			name:        "slice deleted: every entry of the Service is deleted",
			setup:       []*discoveryv1.EndpointSlice{sliceA, makeSlice("ns", "b-1", "b", httpPort, ep("10.2.0.1"))},
			step:        func(s *State) { s.OnEndpointSliceUpdate(sliceA, nil) },
			wantChanged: []string{"ns/a"},
			want:        EndpointsMap{spn("ns", "b", "http", v1.ProtocolTCP): {makeEndpoint("10.2.0.1", 8080)}},
		},
		{
			name:  "slice relabelled to another Service",
			setup: []*discoveryv1.EndpointSlice{sliceA},
			step: func(s *State) {
				s.OnEndpointSliceUpdate(sliceA, makeSlice("ns", "a-1", "b", httpPort, ep("10.1.0.1")))
			},
			wantChanged: []string{"ns/a", "ns/b"},
			want:        EndpointsMap{spn("ns", "b", "http", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8080)}},
		},
		{
			name: "FQDN slice ignored",
			step: func(s *State) {
				sl := makeSlice("ns", "f-1", "f", httpPort, ep("example.com"))
				sl.AddressType = discoveryv1.AddressTypeFQDN
				s.OnEndpointSliceUpdate(nil, sl)
			},
			want:       EndpointsMap{},
			wantReject: []string{`EndpointSlice ns/f-1: addressType "FQDN" is not proxied`},
		},
		{
			name:       "slice without service-name label ignored",
			step:       func(s *State) { s.OnEndpointSliceUpdate(nil, makeSlice("ns", "orphan", "", httpPort, ep("10.1.0.1"))) },
			want:       EndpointsMap{},
			wantReject: []string{"EndpointSlice ns/orphan: no kubernetes.io/service-name label"},
		},
		{
			name: "headless and other-proxy slices ignored",
			step: func(s *State) {
				h := makeSlice("ns", "h-1", "h", httpPort, ep("10.1.0.1"))
				h.Labels[LabelHeadless] = ""
				o := makeSlice("ns", "o-1", "o", httpPort, ep("10.1.0.1"))
				o.Labels[LabelServiceProxyName] = "other"
				s.OnEndpointSliceUpdate(nil, h)
				s.OnEndpointSliceUpdate(nil, o)
			},
			want: EndpointsMap{},
		},
		{
			name: "bad addresses and ports skipped, the rest kept",
			step: func(s *State) {
				ports := append([]discoveryv1.EndpointPort{
					{Name: ptr("all"), Protocol: ptr(v1.ProtocolTCP)},
					port("icmp", "ICMP", 1),
				}, httpPort...)
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-1", "a", ports,
					ep("10.1.0.1"), ep("fd00::1"), ep("not-an-ip"), discoveryv1.Endpoint{}))
			},
			wantChanged: []string{"ns/a"},
			want:        EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {makeEndpoint("10.1.0.1", 8080)}},
			wantReject: []string{
				`EndpointSlice ns/a-1: endpoint address "fd00::1" does not match the slice's address type`,
				`EndpointSlice ns/a-1: endpoint address "not-an-ip" is not an IP address`,
				"EndpointSlice ns/a-1: endpoint without addresses",
				`EndpointSlice ns/a-1: port "all": no port number`,
				`EndpointSlice ns/a-1: port "icmp": protocol "ICMP" is not supported`,
			},
		},
		{
			name: "conditions, node, zone, hints and pod name",
			step: func(s *State) {
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-1", "a", httpPort,
					ep("10.1.0.1", cond(nil, nil, nil)),
					ep("10.1.0.2", cond(ptr(false), nil, nil)),
					ep("10.1.0.3", cond(ptr(false), ptr(true), ptr(true))),
					ep("10.1.0.4", func(e *discoveryv1.Endpoint) {
						e.NodeName, e.Zone = ptr("n1"), ptr("z1")
						e.Hints = &discoveryv1.EndpointHints{
							ForZones: []discoveryv1.ForZone{{Name: "z1"}, {Name: "z2"}},
							ForNodes: []discoveryv1.ForNode{{Name: "n1"}},
						}
						e.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "pod-4"}
					}),
				))
			},
			wantChanged: []string{"ns/a"},
			want: EndpointsMap{spn("ns", "a", "http", v1.ProtocolTCP): {
				makeEndpoint("10.1.0.1", 8080),
				makeEndpoint("10.1.0.2", 8080, func(e *Endpoint) { e.Ready, e.Serving = false, false }),
				makeEndpoint("10.1.0.3", 8080, func(e *Endpoint) { e.Ready, e.Terminating = false, true }),
				makeEndpoint("10.1.0.4", 8080, func(e *Endpoint) {
					e.NodeName, e.Zone, e.PodName = "n1", "z1", "ns/pod-4"
					e.ZoneHints, e.NodeHints = []string{"z1", "z2"}, []string{"n1"}
				}),
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewState("node1")
			for _, sl := range tt.setup {
				s.OnEndpointSliceUpdate(nil, sl)
			}
			s.Apply()
			tt.step(s)
			snap := s.Apply()
			if diff := cmp.Diff(tt.wantChanged, changedNames(snap.Changed)); diff != "" {
				t.Errorf("Changed (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, snap.Endpoints, cmpOpts); diff != "" {
				t.Errorf("Endpoints (-want +got):\n%s", diff)
			}
			var reasons []string
			for _, r := range s.Rejected() {
				reasons = append(reasons, r.String())
			}
			if diff := cmp.Diff(tt.wantReject, reasons); diff != "" {
				t.Errorf("Rejected (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStateRejectionsFollowTheObject(t *testing.T) {
	s := NewState("node1")
	bad := makeService("ns", "a", func(svc *v1.Service) { svc.Spec.ExternalIPs = []string{"bad"} })
	s.OnServiceUpdate(nil, bad)
	if got := len(s.Rejected()); got != 1 {
		t.Fatalf("Rejected has %d entries, want 1", got)
	}
	fixed := makeService("ns", "a")
	s.OnServiceUpdate(bad, fixed)
	if got := s.Rejected(); len(got) != 0 {
		t.Errorf("Rejected after fix = %v", got)
	}
	orphan := makeSlice("ns", "orphan", "", httpPort)
	s.OnEndpointSliceUpdate(nil, orphan)
	s.OnEndpointSliceUpdate(orphan, nil)
	if got := s.Rejected(); len(got) != 0 {
		t.Errorf("Rejected after delete = %v", got)
	}
}

func TestStateCountsAndPending(t *testing.T) {
	s := NewState("node1")
	svc := makeService("ns", "a")
	s.OnServiceUpdate(nil, svc)
	s.OnServiceUpdate(nil, makeService("ns", "b"))
	s.OnServiceUpdate(svc, svc)
	s.OnEndpointSliceUpdate(nil, makeSlice("ns", "a-1", "a", httpPort, ep("10.1.0.1")))
	if svcs, eps := s.Pending(); svcs != 2 || eps != 1 {
		t.Errorf("Pending = %d, %d; want 2, 1", svcs, eps)
	}
	snap := s.Apply()
	if snap.ServiceChanges != 3 || snap.EndpointChanges != 1 {
		t.Errorf("changes = %d, %d; want 3, 1", snap.ServiceChanges, snap.EndpointChanges)
	}
	snap = s.Apply()
	if snap.ServiceChanges != 0 || snap.EndpointChanges != 0 || snap.Changed.Len() != 0 {
		t.Errorf("second Apply = %d, %d, %v; want nothing", snap.ServiceChanges, snap.EndpointChanges, snap.Changed)
	}
}

func TestStateNode(t *testing.T) {
	node := func(mutate ...func(*v1.Node)) *v1.Node {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}}}
		for _, m := range mutate {
			m(n)
		}
		return n
	}
	base := node()
	tests := []struct {
		name        string
		step        func(s *State)
		want        Node
		wantChanged bool
	}{
		{
			name: "unchanged update",
			step: func(s *State) { s.OnNodeUpdate(base, node(func(n *v1.Node) { n.Status.Phase = v1.NodeRunning })) },
			want: Node{Name: "node1", Zone: "z1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		},
		{
			name: "zone change",
			step: func(s *State) {
				s.OnNodeUpdate(base, node(func(n *v1.Node) { n.Labels[v1.LabelTopologyZone] = "z2" }))
			},
			want:        Node{Name: "node1", Zone: "z2", Labels: map[string]string{v1.LabelTopologyZone: "z2"}},
			wantChanged: true,
		},
		{
			name: "deletion timestamp",
			step: func(s *State) {
				s.OnNodeUpdate(base, node(func(n *v1.Node) { n.DeletionTimestamp = &metav1.Time{} }))
			},
			want:        Node{Name: "node1", Zone: "z1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}, Deleting: true},
			wantChanged: true,
		},
		{
			name: "autoscaler taint",
			step: func(s *State) {
				s.OnNodeUpdate(base, node(func(n *v1.Node) {
					n.Spec.Taints = []v1.Taint{{Key: TaintToBeDeletedByClusterAutoscaler, Effect: v1.TaintEffectNoSchedule}}
				}))
			},
			want:        Node{Name: "node1", Zone: "z1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}, Deleting: true},
			wantChanged: true,
		},
		{
			name:        "Node deleted",
			step:        func(s *State) { s.OnNodeUpdate(base, nil) },
			want:        Node{Name: "node1", Deleting: true},
			wantChanged: true,
		},
		{
			name: "other Node ignored",
			step: func(s *State) {
				s.OnNodeUpdate(nil, node(func(n *v1.Node) { n.Name = "node2"; n.Labels[v1.LabelTopologyZone] = "z9" }))
			},
			want: Node{Name: "node1", Zone: "z1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewState("node1")
			if n := s.Apply().Node; n.Name != "node1" || n.Deleting {
				t.Fatalf("initial Node = %+v", n)
			}
			s.OnNodeUpdate(nil, base)
			if !s.Apply().NodeChanged {
				t.Fatal("first Node add not reported")
			}
			tt.step(s)
			snap := s.Apply()
			if diff := cmp.Diff(tt.want, snap.Node); diff != "" {
				t.Errorf("Node (-want +got):\n%s", diff)
			}
			if snap.NodeChanged != tt.wantChanged {
				t.Errorf("NodeChanged = %v, want %v", snap.NodeChanged, tt.wantChanged)
			}
		})
	}
}

// TestStateConcurrent feeds handlers from several goroutines while Apply runs;
// run with -race. Every Service must end up present with its endpoints.
func TestStateConcurrent(t *testing.T) {
	s := NewState("node1")
	const workers, perWorker = 4, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				name := fmt.Sprintf("svc-%d-%d", w, i)
				s.OnServiceUpdate(nil, makeService("ns", name))
				s.OnEndpointSliceUpdate(nil, makeSlice("ns", name+"-1", name, httpPort, ep(fmt.Sprintf("10.%d.%d.1", w, i))))
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		s.Apply()
	}
	snap := s.Apply()
	if len(snap.Services) != workers*perWorker || len(snap.Endpoints) != workers*perWorker {
		t.Errorf("got %d Services and %d endpoint entries, want %d each", len(snap.Services), len(snap.Endpoints), workers*perWorker)
	}
}

// TestEndpointsEqualCoversEveryField changes each Endpoint field in turn: a
// field that endpointsEqual forgets would make real updates look like no change.
func TestEndpointsEqualCoversEveryField(t *testing.T) {
	base := makeEndpoint("10.0.0.1", 80)
	typ := reflect.TypeOf(*base)
	for i := range typ.NumField() {
		mod := *base
		f := reflect.ValueOf(&mod).Elem().Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.String:
			f.SetString("changed")
		case reflect.Uint16:
			f.SetUint(f.Uint() + 1)
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"changed"}))
		case reflect.Struct:
			f.Set(reflect.ValueOf(addr("10.0.0.2")))
		default:
			t.Fatalf("field %s: kind %s not handled by this test", typ.Field(i).Name, f.Kind())
		}
		if endpointsEqual([]*Endpoint{base}, []*Endpoint{&mod}) {
			t.Errorf("endpointsEqual ignores field %s", typ.Field(i).Name)
		}
	}
	if !endpointsEqual([]*Endpoint{base}, []*Endpoint{makeEndpoint("10.0.0.1", 80)}) {
		t.Error("equal endpoints compare unequal")
	}
}

func TestApplyTriggerTimes(t *testing.T) {
	s := NewState("node-a")
	withTrigger := func(ts time.Time) *discoveryv1.EndpointSlice {
		sl := makeSlice("ns", "web-1", "web", httpPort, ep("10.1.0.1"))
		sl.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: ts.Format(time.RFC3339Nano)}
		return sl
	}
	before := s.started.Add(-time.Minute) // older than the State: dropped
	after := s.started.Add(time.Second)
	s.OnEndpointSliceUpdate(nil, withTrigger(before))
	s.OnEndpointSliceUpdate(withTrigger(before), withTrigger(after))
	bad := withTrigger(after)
	bad.Annotations[v1.EndpointsLastChangeTriggerTime] = "yesterday"
	s.OnEndpointSliceUpdate(withTrigger(after), bad)
	s.OnEndpointSliceUpdate(bad, nil) // a removal carries no trigger
	if got := s.Apply().TriggerTimes; len(got) != 1 || !got[0].Equal(after) {
		t.Fatalf("TriggerTimes = %v, want [%v]", got, after)
	}
	if got := s.Apply().TriggerTimes; len(got) != 0 {
		t.Fatalf("second Apply TriggerTimes = %v, want none", got)
	}
}
