package gamma

import (
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

// fakeLookup knows Services ("ns/name") and grants ("from->ns/name").
type fakeLookup struct {
	services map[string]bool
	grants   map[string]bool
}

func (f fakeLookup) ServiceExists(ns, name string) bool { return f.services[ns+"/"+name] }
func (f fakeLookup) ReferenceGranted(from, ns, name string) bool {
	return f.grants[from+"->"+ns+"/"+name]
}

func lookup(services ...string) fakeLookup {
	f := fakeLookup{services: map[string]bool{}, grants: map[string]bool{}}
	for _, s := range services {
		f.services[s] = true
	}
	return f
}

var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// httpRoute builds an HTTPRoute in ns "default" attached to Service
// default/reviews, created age seconds after base.
func httpRoute(name string, age int, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Generation: 3,
			CreationTimestamp: metav1.NewTime(base.Add(time.Duration(age) * time.Second))},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("reviews")}},
			Rules:           rules,
		},
	}
}

func svcParent(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
}

func backend(name string, port int32, weight int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port))},
		Weight:                 ptr(weight),
	}}
}

func rule(matches []gatewayv1.HTTPRouteMatch, backends ...gatewayv1.HTTPBackendRef) gatewayv1.HTTPRouteRule {
	return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: backends}
}

func prefix(p string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchPathPrefix), Value: ptr(p)}}
}

func exact(p string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchExact), Value: ptr(p)}}
}

func regex(p string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr(gatewayv1.PathMatchRegularExpression), Value: ptr(p)}}
}

func ms(m ...gatewayv1.HTTPRouteMatch) []gatewayv1.HTTPRouteMatch { return m }

var reviews = Service{Namespace: "default", Name: "reviews", VIPs: []string{"10.0.0.7", "fd00::7"}, Ports: []uint32{9080}}

func defaultLookup() fakeLookup {
	return lookup("default/reviews", "default/v1", "default/v2", "default/v3", "default/mirror", "other/remote")
}

// translate runs RoutesForService and checks every output with Validate
// and router.Compile.
func translate(t *testing.T, lk Lookup, routes ...*gatewayv1.HTTPRoute) ([]*routev3.RouteConfiguration, []*router.Table, []RouteStatus) {
	t.Helper()
	rcs, sts, err := RoutesForService(reviews, routes, Options{Lookup: lk})
	if err != nil {
		t.Fatalf("RoutesForService: %v", err)
	}
	var tbls []*router.Table
	for _, rc := range rcs {
		if err := rc.Validate(); err != nil {
			t.Fatalf("Validate %s: %v", rc.Name, err)
		}
		tbl, err := router.Compile(rc)
		if err != nil {
			t.Fatalf("router.Compile %s: %v", rc.Name, err)
		}
		tbls = append(tbls, tbl)
	}
	return rcs, tbls, sts
}

// req builds a request to reviews; hdr is name, value pairs.
func req(method, path string, hdr ...string) *router.Request {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Add(hdr[i], hdr[i+1])
	}
	return &router.Request{Authority: "reviews.default.svc.cluster.local:9080", Method: method, Path: path,
		Headers: h, Rand: rand.New(rand.NewPCG(1, 2))}
}

func routeNames(rc *routev3.RouteConfiguration) string {
	var n []string
	for _, r := range rc.VirtualHosts[0].Routes {
		n = append(n, r.Name)
	}
	return strings.Join(n, ",")
}

func cond(t *testing.T, st RouteStatus, typ string) metav1.Condition {
	t.Helper()
	c := st.Condition(typ)
	if c == nil {
		t.Fatalf("%s/%s: no %s condition in %+v", st.Namespace, st.Name, typ, st.Conditions)
	}
	return *c
}
