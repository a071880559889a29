package state

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

const (
	addrURL  = workloadv1.AddressTypeURL
	authzURL = workloadv1.AuthorizationTypeURL
)

func TestAddressIndices(t *testing.T) {
	s := NewStore()
	web := svcKey("web")
	mustHandle(t, s, addrURL, addrs(t,
		svc("web", "10.96.0.10", 80, 8080, 443, 0),
		wl("web-1", "10.0.0.1", backs(web, 80, 8080, 443, 8443)),
		wl("web-2", "10.0.0.2", backs(web, 80, 8080, 443, 9443), onNode("node-2")),
		wl("db-1", "10.0.0.3"),
	))

	if d := s.FindDestination("", netip.MustParseAddr("10.96.0.10")); d.Service.GetName() != "web" || d.Workload != nil {
		t.Errorf("VIP: %+v", d)
	}
	if d := s.FindDestination("", netip.MustParseAddr("10.0.0.2")); d.Workload.GetName() != "web-2" || d.Service != nil {
		t.Errorf("pod IP: %+v", d)
	}
	if d := s.FindDestination("", netip.MustParseAddr("::ffff:10.0.0.2")); d.Workload.GetName() != "web-2" {
		t.Errorf("v4-mapped lookup: %+v", d)
	}
	if d := s.FindDestination("other-net", netip.MustParseAddr("10.0.0.2")); d.Found() {
		t.Errorf("other network: %+v", d)
	}
	if d := s.FindDestination("", netip.MustParseAddr("10.0.0.99")); d.Found() {
		t.Errorf("unknown IP: %+v", d)
	}
	if s.ServiceByHostname("ns", "web.ns.svc.cluster.local") == nil || s.ServiceByIP("", netip.MustParseAddr("10.96.0.10")) == nil {
		t.Error("service lookups")
	}
	if s.WorkloadByIP("", netip.MustParseAddr("10.96.0.10")) != nil {
		t.Error("a VIP is no workload")
	}
	if got := endpointUIDs(s.Endpoints(web)); !slices.Equal(got, []string{uidOf("web-1"), uidOf("web-2")}) {
		t.Errorf("endpoints %v", got)
	}
	// Named target port (443 -> 0 on the service) resolves per workload.
	eps := s.Endpoints(web)
	for i, want := range []uint16{8443, 9443} {
		if p, ok := eps[i].TargetPort(s.Service(web), 443); !ok || p != want {
			t.Errorf("endpoint %d port 443 -> %d %v, want %d", i, p, ok, want)
		}
	}
	if got := uids(s.LocalWorkloads("node-1")); !slices.Equal(got, []string{uidOf("db-1"), uidOf("web-1")}) {
		t.Errorf("node-1: %v", got)
	}

	// One update: web-1 changes IP, leaves the service, moves node; web-2
	// turns unready.
	mustHandle(t, s, addrURL, addrs(t,
		wl("web-1", "10.0.0.11", onNode("node-2")),
		wl("web-2", "10.0.0.2", backs(web, 80, 8080, 443, 9443), onNode("node-2"), unhealthy),
	))
	if s.WorkloadByIP("", netip.MustParseAddr("10.0.0.1")) != nil || s.WorkloadByIP("", netip.MustParseAddr("10.0.0.11")).GetName() != "web-1" {
		t.Error("address index not updated")
	}
	if got := endpointUIDs(s.Endpoints(web)); !slices.Equal(got, []string{uidOf("web-2")}) {
		t.Errorf("endpoints after update %v", got)
	}
	if s.Endpoints(web)[0].Ready() || len(s.ReadyEndpoints(web)) != 0 {
		t.Error("unready endpoint reported ready")
	}
	if got := uids(s.LocalWorkloads("node-1")); !slices.Equal(got, []string{uidOf("db-1")}) {
		t.Errorf("node-1 after move: %v", got)
	}
	if got := uids(s.LocalWorkloads("node-2")); !slices.Equal(got, []string{uidOf("web-1"), uidOf("web-2")}) {
		t.Errorf("node-2 after move: %v", got)
	}

	// Removals, including unknown names.
	mustHandle(t, s, addrURL, nil, uidOf("web-2"), svcKey("web"), "ns/unknown", uidOf("nobody"))
	if s.FindDestination("", netip.MustParseAddr("10.96.0.10")).Found() || len(s.Endpoints(web)) != 0 || s.Service(web) != nil {
		t.Error("removal")
	}
	if st := s.Stats(); st != (Stats{Workloads: 2}) {
		t.Errorf("stats %+v", st)
	}
	if n := len(s.LocalWorkloads("nowhere")); n != 0 {
		t.Errorf("unknown node has %d workloads", n)
	}
}

func TestEndpointsOfUnknownService(t *testing.T) {
	// Endpoints arrive before their Service (or without it): they are kept.
	s := NewStore()
	mustHandle(t, s, addrURL, addrs(t, wl("a", "10.0.0.1", backs(svcKey("late"), 80, 8080))))
	if len(s.Endpoints(svcKey("late"))) != 1 {
		t.Fatal("endpoint of an unknown service dropped")
	}
	mustHandle(t, s, addrURL, addrs(t, svc("late", "10.96.0.1", 80, 0)))
	if p, ok := s.Endpoints(svcKey("late"))[0].TargetPort(s.Service(svcKey("late")), 80); !ok || p != 8080 {
		t.Errorf("port %d %v", p, ok)
	}
}

func TestSharedAddress(t *testing.T) {
	// hostNetwork pods share their node's IP: both are indexed; the lookup
	// is deterministic and survives removing either.
	s := NewStore()
	mustHandle(t, s, addrURL, addrs(t, wl("b", "192.168.1.1"), wl("a", "192.168.1.1")))
	node := netip.MustParseAddr("192.168.1.1")
	if got := s.WorkloadByIP("", node).GetName(); got != "a" {
		t.Errorf("got %q, want the smallest uid", got)
	}
	mustHandle(t, s, addrURL, nil, uidOf("a"))
	if got := s.WorkloadByIP("", node).GetName(); got != "b" {
		t.Errorf("after removing a: %q", got)
	}
}

func TestKindChange(t *testing.T) {
	// A name that was a service and becomes a workload (never in practice,
	// but must not leave stale indices).
	s := NewStore()
	mustHandle(t, s, addrURL, addrs(t, svc("x", "10.96.0.1", 80, 80)))
	w := wl("x", "10.0.0.1")
	w.Uid = svcKey("x")
	mustHandle(t, s, addrURL, addrs(t, w))
	if s.Service(svcKey("x")) != nil || s.FindDestination("", netip.MustParseAddr("10.96.0.1")).Found() {
		t.Error("stale service")
	}
	mustHandle(t, s, addrURL, addrs(t, svc("x", "10.96.0.1", 80, 80)))
	if s.Workload(svcKey("x")) != nil || s.WorkloadByIP("", netip.MustParseAddr("10.0.0.1")) != nil {
		t.Error("stale workload")
	}
}

func TestMalformedResponsesAreRejectedWhole(t *testing.T) {
	good := wl("good", "10.0.0.50")
	badAny := func(name string) *discovery.Resource {
		a, _ := anypb.New(&workloadv1.Authorization{Name: "x"})
		return &discovery.Resource{Name: name, Resource: a}
	}
	garbage := &discovery.Resource{Name: "g", Resource: &anypb.Any{TypeUrl: addrURL, Value: []byte{0xff, 0xff}}}
	mod := func(f func(*workloadv1.Workload)) *workloadv1.Workload {
		w := wl("bad", "10.0.0.60")
		f(w)
		return w
	}
	for _, tc := range []struct {
		name    string
		typeURL string
		res     []*discovery.Resource
		want    string
	}{
		{"unknown type", "type.googleapis.com/x.Y", nil, "unsupported type"},
		{"no content", addrURL, []*discovery.Resource{{Name: "x"}}, "no content"},
		{"wrong message type", addrURL, []*discovery.Resource{badAny("x")}, "mismatch"},
		{"undecodable", addrURL, []*discovery.Resource{garbage}, "resource \"g\""},
		{"empty address", addrURL, []*discovery.Resource{resource(t, "x", &workloadv1.Address{})}, "neither"},
		{"uid differs from name", addrURL, []*discovery.Resource{resource(t, "other",
			&workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: wl("x", "")}})}, "must equal the resource name"},
		{"listed twice", addrURL, addrs(t, good, good), "listed twice"},
		{"5-byte address", addrURL, addrs(t, mod(func(w *workloadv1.Workload) { w.Addresses = [][]byte{{1, 2, 3, 4, 5}} })), "5 bytes"},
		{"unknown tunnel", addrURL, addrs(t, mod(func(w *workloadv1.Workload) { w.TunnelProtocol = 7 })), "tunnel_protocol"},
		{"unknown status", addrURL, addrs(t, mod(func(w *workloadv1.Workload) { w.Status = 3 })), "status"},
		{"bad service key", addrURL, addrs(t, mod(backs("nohost", 80, 80))), "want <namespace>/<hostname>"},
		{"port 0", addrURL, addrs(t, mod(backs(svcKey("s"), 0, 80))), "out of range"},
		{"target port too big", addrURL, addrs(t, mod(backs(svcKey("s"), 80, 70000))), "out of range"},
		{"bad policy name", addrURL, addrs(t, mod(withPolicies("nope"))), "authorization_policies[0]"},
		{"waypoint without destination", addrURL, addrs(t, mod(func(w *workloadv1.Workload) {
			w.Waypoint = &workloadv1.GatewayAddress{HboneMtlsPort: 15008}
		})), "no destination"},
		{"waypoint bad port", addrURL, addrs(t, mod(func(w *workloadv1.Workload) {
			w.Waypoint = &workloadv1.GatewayAddress{Destination: &workloadv1.GatewayAddress_Hostname{
				Hostname: &workloadv1.NamespacedHostname{Namespace: "ns", Hostname: "wp"}}}
		})), "bad HBONE port"},
		{"service without hostname", addrURL, []*discovery.Resource{resource(t, "ns/",
			&workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{Namespace: "ns"}}})}, "missing namespace or hostname"},
		{"service name mismatch", addrURL, []*discovery.Resource{resource(t, "ns/other",
			&workloadv1.Address{Type: &workloadv1.Address_Service{Service: svc("s", "10.96.0.1")}})}, "resource name must be"},
		{"service bad VIP", addrURL, addrs(t, func() *workloadv1.Service {
			s := svc("s", "")
			s.Addresses = []*workloadv1.NetworkAddress{{Address: []byte{1}}}
			return s
		}()), "1 bytes"},
		{"service port 0", addrURL, addrs(t, svc("s", "10.96.0.1", 0, 80)), "out of range"},
		{"authorization name mismatch", authzURL, []*discovery.Resource{resource(t, "ns/x",
			&workloadv1.Authorization{Name: "y", Namespace: "ns"})}, "name must be \"ns/y\""},
		{"authorization invalid", authzURL, []*discovery.Resource{resource(t, "ns/y", &workloadv1.Authorization{Name: "y", Namespace: "ns",
			Groups: []*workloadv1.Group{{Rules: []*workloadv1.Rules{{Matches: []*workloadv1.Match{{DestinationPorts: []uint32{0}}}}}}}})}, "bad port 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore()
			mustHandle(t, s, addrURL, addrs(t, wl("kept", "10.0.0.1"), svc("kept", "10.96.0.1", 80, 80)))
			mustHandle(t, s, authzURL, []*discovery.Resource{resource(t, "ns/kept", &workloadv1.Authorization{Name: "kept", Namespace: "ns"})})
			before := s.Stats()
			// The bad resource comes with a good upsert and a removal: none
			// of them may be applied.
			res := append(addrs(t, good), tc.res...)
			if tc.typeURL == authzURL {
				res = append([]*discovery.Resource{resource(t, "ns/good", &workloadv1.Authorization{Name: "good", Namespace: "ns"})}, tc.res...)
			}
			err := s.Handle(tc.typeURL, res, []string{uidOf("kept"), "ns/kept"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
			if after := s.Stats(); after != before || s.Workload(uidOf("kept")) == nil || s.Workload(uidOf("good")) != nil ||
				s.Authorization("ns/kept") == nil || s.Authorization("ns/good") != nil {
				t.Errorf("state changed by a rejected response: %+v -> %+v", before, after)
			}
		})
	}
}

func TestPolicies(t *testing.T) {
	s := NewStore()
	pol := func(ns, name string, scope workloadv1.AuthorizationScope) *discovery.Resource {
		return resource(t, ns+"/"+name, &workloadv1.Authorization{Name: name, Namespace: ns, Scope: scope})
	}
	const (
		global   = workloadv1.AuthorizationScope_GLOBAL
		nsScope  = workloadv1.AuthorizationScope_NAMESPACE
		selector = workloadv1.AuthorizationScope_WORKLOAD_SELECTOR
	)
	mustHandle(t, s, authzURL, []*discovery.Resource{
		pol("istio-system", "g2", global), pol("istio-system", "g1", global),
		pol("ns", "n2", nsScope), pol("ns", "n1", nsScope), pol("other", "n", nsScope),
		pol("ns", "sel", selector), pol("ns", "unlisted", selector), pol("istio-system", "root-sel", selector),
	})
	names := func(ps []*workloadv1.Authorization) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.GetNamespace()+"/"+p.GetName())
		}
		return out
	}
	w := wl("a", "10.0.0.1", withPolicies("ns/sel", "istio-system/root-sel", "ns/missing", "ns/n1", "ns/sel"))
	want := []string{"istio-system/g1", "istio-system/g2", "ns/n1", "ns/n2", "ns/sel", "istio-system/root-sel"}
	if got := names(s.PoliciesFor(w)); !slices.Equal(got, want) {
		t.Errorf("PoliciesFor:\n got %v\nwant %v", got, want)
	}
	if got := names(s.PoliciesFor(nil)); !slices.Equal(got, []string{"istio-system/g1", "istio-system/g2"}) {
		t.Errorf("PoliciesFor(nil): %v", got)
	}
	// Remove one global and one namespace policy; change a namespace
	// policy's scope to a selector one.
	mustHandle(t, s, authzURL, []*discovery.Resource{pol("ns", "n2", selector)}, "istio-system/g1", "ns/n1", "ns/nothing")
	if got := names(s.PoliciesFor(w)); !slices.Equal(got, []string{"istio-system/g2", "ns/sel", "istio-system/root-sel"}) {
		t.Errorf("after update: %v", got)
	}
	if s.Authorization("ns/n2").GetScope() != selector || s.Authorization("ns/n1") != nil {
		t.Error("Authorization lookup")
	}
}

func TestSubscribe(t *testing.T) {
	s := NewStore()
	mustHandle(t, s, addrURL, addrs(t, wl("a", "10.0.0.1"), wl("x", "10.0.0.9", onNode("node-2"))))

	type rec struct {
		typ  EventType
		name string
		prev string
	}
	var mu sync.Mutex
	var got []rec
	cancel := s.Subscribe("node-1", func(evs []Event) {
		// The store is already updated and readable from the callback.
		for _, e := range evs {
			if e.Type != WorkloadRemoved && s.Workload(e.Workload.GetUid()) != e.Workload {
				t.Errorf("callback sees a stale store for %s", e.Workload.GetName())
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			got = append(got, rec{e.Type, e.Workload.GetName(), e.Previous.GetName()})
		}
	})
	var all atomic.Int32
	cancelAll := s.Subscribe("*", func(evs []Event) { all.Add(int32(len(evs))) })

	mustHandle(t, s, addrURL, addrs(t, wl("b", "10.0.0.2"), wl("a", "10.0.0.1", unhealthy), wl("y", "10.0.0.8", onNode("node-2"))))
	mustHandle(t, s, addrURL, addrs(t, wl("a", "10.0.0.1", unhealthy))) // identical: no event
	mustHandle(t, s, addrURL, addrs(t, wl("b", "10.0.0.2", onNode("node-2"))), uidOf("a"))
	mustHandle(t, s, addrURL, addrs(t, wl("x", "10.0.0.9")))   // moves here
	mustHandle(t, s, addrURL, addrs(t, svc("s", "10.96.0.1"))) // services: no event
	cancel()
	mustHandle(t, s, addrURL, addrs(t, wl("c", "10.0.0.3")))
	cancelAll()
	mustHandle(t, s, addrURL, addrs(t, wl("d", "10.0.0.4")))

	want := []rec{
		{WorkloadAdded, "a", ""},
		{WorkloadAdded, "b", ""}, {WorkloadUpdated, "a", "a"},
		{WorkloadRemoved, "a", ""}, {WorkloadRemoved, "b", ""},
		{WorkloadAdded, "x", ""},
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("events:\n got %v\nwant %v", got, want)
	}
	// "*": 2 initial + 3 + 2 (a removed, b moved: removed+added... b is an
	// update of node: removed+added) + 2 (x moved) + 1 (c).
	if n := all.Load(); n != 2+3+3+2+1 {
		t.Errorf("all-workload subscriber got %d events", n)
	}
}

func TestSubscribeCancelFromCallback(t *testing.T) {
	s := NewStore()
	calls := 0
	var cancel func()
	cancel = s.Subscribe("node-1", func([]Event) {
		calls++
		cancel()
	})
	mustHandle(t, s, addrURL, addrs(t, wl("a", "10.0.0.1")))
	mustHandle(t, s, addrURL, addrs(t, wl("b", "10.0.0.2")))
	if calls != 1 {
		t.Errorf("calls = %d", calls)
	}
}

// TestResponsesAreAtomic: an IP moves from one workload to another in one
// response; concurrent readers must always find it (never a state where
// neither has it) and each service's endpoint list is consistent.
func TestResponsesAreAtomic(t *testing.T) {
	s := NewStore()
	addr := netip.MustParseAddr("10.0.0.100")
	key := svcKey("s")
	aHas := addrs(t, wl("a", "10.0.0.100", backs(key, 80, 80)), wl("b", "10.0.0.200"))
	bHas := addrs(t, wl("a", "10.0.0.201"), wl("b", "10.0.0.100", backs(key, 80, 80)))
	mustHandle(t, s, addrURL, aHas)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lookups atomic.Int64
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				w := s.WorkloadByIP("", addr)
				eps := s.Endpoints(key)
				if w == nil {
					t.Error("address missing mid-update")
					return
				}
				if len(eps) != 1 {
					t.Errorf("service has %d endpoints mid-update", len(eps))
					return
				}
				lookups.Add(1)
			}
		})
	}
	for i := range 2000 {
		if i%2 == 0 {
			mustHandle(t, s, addrURL, bHas)
		} else {
			mustHandle(t, s, addrURL, aHas)
		}
	}
	close(stop)
	wg.Wait()
	if lookups.Load() == 0 {
		t.Error("readers never ran")
	}
}

func TestStoredMessagesAreTheDecodedOnes(t *testing.T) {
	s := NewStore()
	w := wl("a", "10.0.0.1", backs(svcKey("s"), 80, 8080))
	mustHandle(t, s, addrURL, addrs(t, w))
	if !proto.Equal(s.Workload(uidOf("a")), w) {
		t.Error("stored workload differs from the one sent")
	}
}
