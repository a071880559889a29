package gamma

import (
	"regexp"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Routes are the routes to translate for a Service.
type Routes struct {
	HTTP []*gatewayv1.HTTPRoute
	GRPC []*gatewayv1.GRPCRoute
}

// Route kinds, as RouteStatus.Kind reports them.
const (
	KindHTTPRoute = "HTTPRoute"
	KindGRPCRoute = "GRPCRoute"
)

// grpcAsHTTP expresses a GRPCRoute as the HTTPRoute with the same effect:
// a gRPC method is the HTTP/2 path /<service>/<method>, and GRPCRoute's
// filters are a subset of HTTPRoute's. Invalid values are carried over, so
// the HTTPRoute translation refuses them with the usual status.
func grpcAsHTTP(g *gatewayv1.GRPCRoute) *gatewayv1.HTTPRoute {
	h := &gatewayv1.HTTPRoute{ObjectMeta: g.ObjectMeta}
	h.Spec.CommonRouteSpec = g.Spec.CommonRouteSpec
	for _, gr := range g.Spec.Rules {
		hr := gatewayv1.HTTPRouteRule{Name: gr.Name}
		for _, m := range gr.Matches {
			hr.Matches = append(hr.Matches, grpcMatch(m))
		}
		hr.Filters = grpcFilters(gr.Filters)
		for _, b := range gr.BackendRefs {
			hr.BackendRefs = append(hr.BackendRefs, gatewayv1.HTTPBackendRef{BackendRef: b.BackendRef, Filters: grpcFilters(b.Filters)})
		}
		h.Spec.Rules = append(h.Spec.Rules, hr)
	}
	return h
}

func grpcMatch(m gatewayv1.GRPCRouteMatch) gatewayv1.HTTPRouteMatch {
	var hm gatewayv1.HTTPRouteMatch
	for _, h := range m.Headers {
		x := gatewayv1.HTTPHeaderMatch{Name: gatewayv1.HTTPHeaderName(h.Name), Value: h.Value}
		if h.Type != nil {
			t := gatewayv1.HeaderMatchType(*h.Type)
			x.Type = &t
		}
		hm.Headers = append(hm.Headers, x)
	}
	mm := m.Method
	if mm == nil || (mm.Service == nil && mm.Method == nil) {
		return hm // every method: PathPrefix /
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	svc, meth := str(mm.Service), str(mm.Method)
	path := func(t gatewayv1.PathMatchType, v string) *gatewayv1.HTTPPathMatch {
		return &gatewayv1.HTTPPathMatch{Type: &t, Value: &v}
	}
	if mm.Type == nil || *mm.Type == gatewayv1.GRPCMethodMatchExact {
		switch {
		case svc != "" && meth != "":
			hm.Path = path(gatewayv1.PathMatchExact, "/"+svc+"/"+meth)
		case svc != "":
			hm.Path = path(gatewayv1.PathMatchPathPrefix, "/"+svc+"/")
		default:
			hm.Path = path(gatewayv1.PathMatchRegularExpression, "/[^/]+/"+regexp.QuoteMeta(meth))
		}
		return hm
	}
	if *mm.Type != gatewayv1.GRPCMethodMatchRegularExpression {
		hm.Path = path(gatewayv1.PathMatchType("GRPC"+string(*mm.Type)), "/") // refused as unsupported
		return hm
	}
	if svc == "" {
		svc = "[^/]+"
	}
	if meth == "" {
		meth = "[^/]+"
	}
	hm.Path = path(gatewayv1.PathMatchRegularExpression, "/(?:"+svc+")/(?:"+meth+")")
	return hm
}

func grpcFilters(fs []gatewayv1.GRPCRouteFilter) []gatewayv1.HTTPRouteFilter {
	var out []gatewayv1.HTTPRouteFilter
	for _, f := range fs {
		out = append(out, gatewayv1.HTTPRouteFilter{
			Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}
