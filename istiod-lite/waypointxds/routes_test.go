package waypointxds

import (
	"fmt"
	"slices"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

func TestRoutesAndBackendClusters(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").ns("backends").waypoint("shop", "waypoint", "")
	st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""), port("tcp", 3306, ""))
	v2 := st.service("backends", "reviews-v2", "10.96.1.10", nil, port("http", 8080, ""))
	st.service("backends", "shadow", "10.96.1.11", nil, port("http", 80, ""))
	st.endpoints(v2, "10.2.0.1")
	st.pod("10.2.0.1", "backends", "v2", "reviews", true)
	st.grants["shop->backends/reviews-v2"] = true
	st.grants["shop->backends/shadow"] = true
	v2ref := backend("reviews-v2", 8080, 1)
	v2ref.Namespace = ptr(gatewayv1.Namespace("backends"))
	st.http = append(st.http, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "split", Generation: 2},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("reviews"), svcParent("absent")}},
			Rules: []gatewayv1.HTTPRouteRule{{
				BackendRefs: []gatewayv1.HTTPBackendRef{v2ref, backend("reviews", 9080, 1)},
				Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
					BackendRef: gatewayv1.BackendObjectReference{Name: "shadow", Namespace: ptr(gatewayv1.Namespace("backends")), Port: ptr(gatewayv1.PortNumber(80))},
				}}},
			}},
		},
	})
	res, rep := build(t, st, "shop", "waypoint")

	wantClusters := []string{
		connectOriginate, encap, mainInternal,
		"outbound|3306||reviews.shop.svc.cluster.local",
		"outbound|8080||reviews-v2.backends.svc.cluster.local",
		"outbound|80||shadow.backends.svc.cluster.local",
		"outbound|9080||reviews.shop.svc.cluster.local",
	}
	var got []string
	for name := range res[resource.ClusterType] {
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, wantClusters) {
		t.Errorf("clusters\n got %v\nwant %v", got, wantClusters)
	}
	if len(res[resource.EndpointType]) != 4 {
		t.Errorf("endpoints for %d clusters", len(res[resource.EndpointType]))
	}
	wantBackends := []types.NamespacedName{{Namespace: "backends", Name: "reviews-v2"}, {Namespace: "backends", Name: "shadow"}}
	if !slices.Equal(rep.Backends, wantBackends) || !slices.Equal(rep.Services, []types.NamespacedName{{Namespace: "shop", Name: "reviews"}}) {
		t.Errorf("report services %v backends %v", rep.Services, rep.Backends)
	}
	// One status, for the served parent; the missing one from
	// MissingParents.
	if len(rep.RouteStatuses) != 1 || rep.RouteStatuses[0].ParentRef.Name != "reviews" ||
		rep.RouteStatuses[0].Condition("Accepted").Status != metav1.ConditionTrue {
		t.Errorf("route statuses %+v", rep.RouteStatuses)
	}
	missing := MissingParents(st)
	if len(missing) != 1 || missing[0].ParentRef.Name != "absent" {
		t.Errorf("missing parents %+v", missing)
	}

	// Route through the generated configuration: every cluster a decision
	// names exists.
	rc := res[resource.RouteType][gamma.RouteConfigName(9080, "reviews.shop.svc.cluster.local")].(*routev3.RouteConfiguration)
	tbl, err := router.Compile(rc)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := range 200 {
		d, ok := tbl.Route(&router.Request{Authority: "reviews.shop.svc.cluster.local:9080", Method: "GET", Path: "/", Rand: fixedRand(uint64(i))})
		if !ok {
			t.Fatal("no route")
		}
		seen[d.Cluster] = true
		for _, m := range d.Mirrors {
			seen[m.Cluster] = true
		}
	}
	for c := range seen {
		if res[resource.ClusterType][c] == nil {
			t.Errorf("route names cluster %q, which is not generated", c)
		}
	}
	if len(seen) != 3 {
		t.Errorf("clusters reached %v", seen)
	}
	// No route configuration for the TCP port.
	if res[resource.RouteType][gamma.RouteConfigName(3306, "reviews.shop.svc.cluster.local")] != nil {
		t.Error("route configuration for a TCP port")
	}
}

type fixedRand uint64

func (f fixedRand) Uint64() uint64 { return uint64(f) }

// A parentRef naming a port declared opaque TCP matches no parent: the
// waypoint routes nothing there, so the route must not be reported
// Accepted. The same holds served or not, through Build or RouteStatuses.
func TestRouteStatusOnOpaqueTCPPort(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	mixed := st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""), port("tcp-db", 3306, ""))
	tcpOnly := st.service("shop", "db", "10.96.0.11", nil, port("mysql", 3306, ""))
	onPort := func(name string, p int32) gatewayv1.ParentReference {
		pr := svcParent(name)
		pr.Port = ptr(gatewayv1.PortNumber(p))
		return pr
	}
	st.http = append(st.http, &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "r", Generation: 1},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{onPort("reviews", 9080), onPort("reviews", 3306), svcParent("db")}},
			Rules:           []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{backend("reviews", 9080, 1)}}},
		},
	})
	want := map[string]string{"reviews:9080": "True", "reviews:3306": "False", "db:0": "False"}
	check := func(from string, statuses []gamma.RouteStatus) {
		t.Helper()
		got := map[string]string{}
		for _, s := range statuses {
			var p int32
			if s.ParentRef.Port != nil {
				p = int32(*s.ParentRef.Port)
			}
			c := s.Condition("Accepted")
			got[fmt.Sprintf("%s:%d", s.ParentRef.Name, p)] = string(c.Status)
			if c.Status == metav1.ConditionFalse && c.Reason != string(gatewayv1.RouteReasonNoMatchingParent) {
				t.Errorf("%s: %s:%d reason %s, want NoMatchingParent", from, s.ParentRef.Name, p, c.Reason)
			}
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: Accepted on %s = %q, want %s (all: %v)", from, k, got[k], v, got)
			}
		}
	}
	_, rep := build(t, st, "shop", "waypoint")
	check("Build", rep.RouteStatuses)
	check("RouteStatuses", append(RouteStatuses(st, mixed, ""), RouteStatuses(st, tcpOnly, "")...))
}
