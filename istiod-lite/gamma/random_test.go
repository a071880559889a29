package gamma

import (
	"math/rand/v2"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

// Values the random routes draw from, valid and invalid on purpose.
var (
	rndStrings = []string{"", "/", "/a", "/a/", "/a/b", "a", "/a?b", "/a#b", "/a\nb", "/x%y", `\`, "(", "[a-", ".*", "/a/[0-9]+",
		"x-h", "X-H", ":path", "host", "Host", "bad header", "v\r\n", "example.com", "a/b", "\x00", "\\C", "%REQ(x)%"}
	rndDurations = []gatewayv1.Duration{"", "0s", "1s", "500ms", "1h", "-1s", "forever", "10"}
	rndNames     = []string{"v1", "v2", "nope", "remote"}
)

type randomRoutes struct{ r *rand.Rand }

func (g randomRoutes) str() string { return rndStrings[g.r.IntN(len(rndStrings))] }
func (g randomRoutes) maybe() bool { return g.r.IntN(3) == 0 }

func (g randomRoutes) ref() gatewayv1.BackendObjectReference {
	ref := gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(rndNames[g.r.IntN(len(rndNames))])}
	if g.r.IntN(5) != 0 {
		ref.Port = ptr(gatewayv1.PortNumber(g.r.IntN(3) * 40))
	}
	if g.maybe() {
		ref.Namespace = ptr(gatewayv1.Namespace("other"))
	}
	if g.r.IntN(8) == 0 {
		ref.Kind = ptr(gatewayv1.Kind("Bucket"))
	}
	return ref
}

func (g randomRoutes) headerFilter() *gatewayv1.HTTPHeaderFilter {
	f := &gatewayv1.HTTPHeaderFilter{}
	for range g.r.IntN(3) {
		f.Set = append(f.Set, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(g.str()), Value: g.str()})
		f.Add = append(f.Add, gatewayv1.HTTPHeader{Name: gatewayv1.HTTPHeaderName(g.str()), Value: g.str()})
		f.Remove = append(f.Remove, g.str())
	}
	return f
}

func (g randomRoutes) pathMod() *gatewayv1.HTTPPathModifier {
	if g.maybe() {
		return nil
	}
	if g.r.IntN(2) == 0 {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr(g.str())}
	}
	return &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(g.str())}
}

func (g randomRoutes) filter() gatewayv1.HTTPRouteFilter {
	switch g.r.IntN(7) {
	case 0:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: g.headerFilter()}
	case 1:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: g.headerFilter()}
	case 2:
		rd := &gatewayv1.HTTPRequestRedirectFilter{Path: g.pathMod()}
		if g.maybe() {
			rd.Scheme = ptr([]string{"http", "https", "ftp"}[g.r.IntN(3)])
		}
		if g.maybe() {
			rd.Hostname = ptr(gatewayv1.PreciseHostname(g.str()))
		}
		if g.maybe() {
			rd.Port = ptr(gatewayv1.PortNumber(g.r.IntN(70000)))
		}
		if g.maybe() {
			rd.StatusCode = ptr([]int{200, 301, 302, 303, 307, 308}[g.r.IntN(6)])
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: rd}
	case 3:
		rw := &gatewayv1.HTTPURLRewriteFilter{Path: g.pathMod()}
		if g.maybe() {
			rw.Hostname = ptr(gatewayv1.PreciseHostname(g.str()))
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: rw}
	case 4:
		m := &gatewayv1.HTTPRequestMirrorFilter{BackendRef: g.ref()}
		if g.maybe() {
			m.Percent = ptr(int32(g.r.IntN(120) - 10))
		} else if g.maybe() {
			m.Fraction = &gatewayv1.Fraction{Numerator: int32(g.r.IntN(5) - 1), Denominator: ptr(int32(g.r.IntN(5) - 1))}
		}
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: m}
	case 5:
		return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterRequestRedirect} // configuration missing
	}
	return gatewayv1.HTTPRouteFilter{Type: gatewayv1.HTTPRouteFilterCORS, CORS: &gatewayv1.HTTPCORSFilter{}}
}

func (g randomRoutes) match() gatewayv1.HTTPRouteMatch {
	var m gatewayv1.HTTPRouteMatch
	if !g.maybe() {
		types := []gatewayv1.PathMatchType{gatewayv1.PathMatchExact, gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchRegularExpression, "Other"}
		m.Path = &gatewayv1.HTTPPathMatch{Type: ptr(types[g.r.IntN(len(types))]), Value: ptr(g.str())}
	}
	for range g.r.IntN(3) {
		h := gatewayv1.HTTPHeaderMatch{Name: gatewayv1.HTTPHeaderName(g.str()), Value: g.str()}
		if g.maybe() {
			h.Type = ptr(gatewayv1.HeaderMatchRegularExpression)
		}
		m.Headers = append(m.Headers, h)
	}
	for range g.r.IntN(3) {
		q := gatewayv1.HTTPQueryParamMatch{Name: gatewayv1.HTTPHeaderName(g.str()), Value: g.str()}
		if g.maybe() {
			q.Type = ptr(gatewayv1.QueryParamMatchRegularExpression)
		}
		m.QueryParams = append(m.QueryParams, q)
	}
	if g.maybe() {
		m.Method = ptr(gatewayv1.HTTPMethodGet)
	}
	return m
}

func (g randomRoutes) rule() gatewayv1.HTTPRouteRule {
	var rl gatewayv1.HTTPRouteRule
	for range g.r.IntN(3) {
		rl.Matches = append(rl.Matches, g.match())
	}
	for range g.r.IntN(3) {
		rl.Filters = append(rl.Filters, g.filter())
	}
	for range g.r.IntN(4) {
		br := gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{BackendObjectReference: g.ref()}}
		if g.maybe() {
			br.Weight = ptr(int32(g.r.IntN(4) - 1))
		}
		if g.r.IntN(4) == 0 {
			br.Filters = []gatewayv1.HTTPRouteFilter{g.filter()}
		}
		rl.BackendRefs = append(rl.BackendRefs, br)
	}
	if g.maybe() {
		rl.Timeouts = &gatewayv1.HTTPRouteTimeouts{}
		if d := rndDurations[g.r.IntN(len(rndDurations))]; d != "" {
			rl.Timeouts.Request = &d
		}
		if d := rndDurations[g.r.IntN(len(rndDurations))]; d != "" {
			rl.Timeouts.BackendRequest = &d
		}
	}
	if g.maybe() {
		rl.Retry = &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{gatewayv1.HTTPRouteRetryStatusCode(g.r.IntN(700))},
			Attempts: ptr(g.r.IntN(4) - 1)}
		if d := rndDurations[g.r.IntN(len(rndDurations))]; d != "" {
			rl.Retry.Backoff = &d
		}
	}
	if g.maybe() {
		rl.Name = ptr(gatewayv1.SectionName("n" + string(rune('a'+g.r.IntN(3)))))
	}
	return rl
}

// checkRandom translates random routes and requires every output to pass
// Validate and router.Compile, and routing not to panic.
func checkRandom(t *testing.T, seed uint64) {
	g := randomRoutes{rand.New(rand.NewPCG(seed, seed>>7))}
	var routes []*gatewayv1.HTTPRoute
	for i := range 1 + g.r.IntN(4) {
		var rules []gatewayv1.HTTPRouteRule
		for range g.r.IntN(4) {
			rules = append(rules, g.rule())
		}
		rt := httpRoute(string(rune('a'+i)), g.r.IntN(3), rules...)
		if g.maybe() {
			rt.Spec.ParentRefs[0].Port = ptr(gatewayv1.PortNumber([]int{9080, 9090, 1}[g.r.IntN(3)]))
		}
		routes = append(routes, rt)
	}
	var grpcs []*gatewayv1.GRPCRoute
	for i := range g.r.IntN(3) {
		gr := &gatewayv1.GRPCRoute{ObjectMeta: httpRoute("g"+string(rune('a'+i)), g.r.IntN(3)).ObjectMeta}
		gr.Spec.ParentRefs = []gatewayv1.ParentReference{svcParent("reviews")}
		for range g.r.IntN(3) {
			h := g.rule()
			rl := gatewayv1.GRPCRouteRule{Name: h.Name}
			for range g.r.IntN(3) {
				mm := &gatewayv1.GRPCMethodMatch{}
				if g.maybe() {
					mm.Type = ptr([]gatewayv1.GRPCMethodMatchType{"Exact", "RegularExpression", "Other"}[g.r.IntN(3)])
				}
				if !g.maybe() {
					mm.Service = ptr(g.str())
				}
				if !g.maybe() {
					mm.Method = ptr(g.str())
				}
				rl.Matches = append(rl.Matches, gatewayv1.GRPCRouteMatch{Method: mm,
					Headers: []gatewayv1.GRPCHeaderMatch{{Name: gatewayv1.GRPCHeaderName(g.str()), Value: g.str()}}})
			}
			for _, b := range h.BackendRefs {
				rl.BackendRefs = append(rl.BackendRefs, gatewayv1.GRPCBackendRef{BackendRef: b.BackendRef})
			}
			for _, f := range h.Filters {
				rl.Filters = append(rl.Filters, gatewayv1.GRPCRouteFilter{Type: gatewayv1.GRPCRouteFilterType(f.Type),
					RequestHeaderModifier: f.RequestHeaderModifier, ResponseHeaderModifier: f.ResponseHeaderModifier, RequestMirror: f.RequestMirror})
			}
			gr.Spec.Rules = append(gr.Spec.Rules, rl)
		}
		grpcs = append(grpcs, gr)
	}
	svc := reviews
	svc.Ports = []uint32{9080, 9090}
	rcs, sts, err := Translate(svc, Routes{HTTP: routes, GRPC: grpcs}, Options{Lookup: defaultLookup()})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if len(sts) != len(routes)+len(grpcs) {
		t.Fatalf("seed %d: %d statuses for %d routes", seed, len(sts), len(routes)+len(grpcs))
	}
	for _, rc := range rcs {
		if err := rc.Validate(); err != nil {
			t.Fatalf("seed %d: Validate %s: %v", seed, rc.Name, err)
		}
		tbl, err := router.Compile(rc)
		if err != nil {
			t.Fatalf("seed %d: router.Compile %s: %v", seed, rc.Name, err)
		}
		for _, p := range []string{"/", "/a", "/a/b?x=1", "/zzz"} {
			r := req("GET", p, "X-H", "v")
			if d, ok := tbl.Route(r); ok && d.Action == router.Redirect {
				_ = d.RedirectLocation(r)
			}
		}
	}
}

// TestRandomRoutesAlwaysValid: whatever the input, every RouteConfiguration
// passes Validate() and compiles; bad rules only affect their own status.
func TestRandomRoutesAlwaysValid(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 300
	}
	for seed := range uint64(n) {
		checkRandom(t, seed)
	}
}

func FuzzRoutesForService(f *testing.F) {
	f.Add(uint64(1))
	f.Add(uint64(42))
	f.Fuzz(func(t *testing.T, seed uint64) {
		checkRandom(t, seed)
	})
}
