package gamma

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func grpcRule(name string, m *gatewayv1.GRPCMethodMatch, to string, hdr ...gatewayv1.GRPCHeaderMatch) gatewayv1.GRPCRouteRule {
	return gatewayv1.GRPCRouteRule{Name: ptr(gatewayv1.SectionName(name)),
		Matches:     []gatewayv1.GRPCRouteMatch{{Method: m, Headers: hdr}},
		BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: backend(to, 80, 1).BackendRef}}}
}

func TestGRPCRouteEndToEnd(t *testing.T) {
	re := ptr(gatewayv1.GRPCMethodMatchRegularExpression)
	g := &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "grpc", Generation: 2, CreationTimestamp: metav1.NewTime(base)},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent("reviews")}},
			Rules: []gatewayv1.GRPCRouteRule{
				grpcRule("exact", &gatewayv1.GRPCMethodMatch{Service: ptr("pkg.Svc"), Method: ptr("Get")}, "v1"),
				grpcRule("service", &gatewayv1.GRPCMethodMatch{Service: ptr("pkg.Svc")}, "v2"),
				grpcRule("method-only", &gatewayv1.GRPCMethodMatch{Method: ptr("Watch")}, "v3"),
				grpcRule("regex", &gatewayv1.GRPCMethodMatch{Type: re, Service: ptr(`pkg\.Other.*`)}, "v3"),
				grpcRule("header", nil, "v2", gatewayv1.GRPCHeaderMatch{Name: "x-tenant", Value: "a"}),
				grpcRule("badregex", &gatewayv1.GRPCMethodMatch{Type: re, Method: ptr("(")}, "v1"),
			},
		},
	}
	h := httpRoute("web", 1, gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("web")), Matches: ms(prefix("/web")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)}})
	rcs, sts, err := Translate(reviews, Routes{HTTP: []*gatewayv1.HTTPRoute{h}, GRPC: []*gatewayv1.GRPCRoute{g}}, Options{Lookup: defaultLookup()})
	if err != nil {
		t.Fatal(err)
	}
	if err := rcs[0].Validate(); err != nil {
		t.Fatal(err)
	}
	tbl := tbls(t, rcs)
	cases := []struct{ path, tenant, want string }{
		{"/pkg.Svc/Get", "", "exact"},
		{"/pkg.Svc/List", "", "service"},
		{"/other.Svc/Watch", "", "method-only"},
		{"/pkg.OtherThing/Do", "", "regex"},
		{"/x.Y/Z", "a", "header"},
		{"/web/page", "", "web"},
	}
	for _, c := range cases {
		r := req("POST", c.path)
		if c.tenant != "" {
			r.Headers.Set("X-Tenant", c.tenant)
		}
		if d, ok := tbl.Route(r); !ok || d.RouteName != c.want {
			t.Errorf("%s: %v, want %s", c.path, d, c.want)
		}
	}
	if d, ok := tbl.Route(req("POST", "/x.Y/Z")); ok {
		t.Errorf("unmatched gRPC method routed to %s", d.RouteName)
	}
	if len(sts) != 2 || sts[0].Kind != KindGRPCRoute || sts[1].Kind != KindHTTPRoute {
		t.Fatalf("statuses %+v", sts)
	}
	if c := cond(t, sts[0], "PartiallyInvalid"); c.Status != metav1.ConditionTrue || c.ObservedGeneration != 2 {
		t.Errorf("PartiallyInvalid %+v", c)
	}
	missing := MissingParents(Routes{GRPC: []*gatewayv1.GRPCRoute{g}}, lookup())
	if len(missing) != 1 || missing[0].Kind != KindGRPCRoute {
		t.Errorf("MissingParents %+v", missing)
	}
}
