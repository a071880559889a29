package gamma

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

func TestNamesAndDomains(t *testing.T) {
	rcs, _, _ := translate(t, defaultLookup())
	rc := rcs[0]
	if want := "inbound-vip|9080|http|reviews.default.svc.cluster.local"; rc.Name != want {
		t.Errorf("name %q, want %q", rc.Name, want)
	}
	// The listener chain selects the Service by VIP and port; the virtual
	// host takes any authority (a request to this VIP with another
	// Service's Host is still this Service's: MeshFrontendHostname).
	if d := rc.VirtualHosts[0].Domains; len(d) != 1 || d[0] != "*" {
		t.Errorf("domains %q, want [*]", d)
	}
	// No route attached: the Service's own cluster.
	r := rc.VirtualHosts[0].Routes
	if len(r) != 1 || r[0].GetRoute().GetCluster() != "outbound|9080||reviews.default.svc.cluster.local" {
		t.Errorf("default route: %v", r)
	}
}

// TestTranslation checks the generated Envoy route of one rule.
func TestTranslation(t *testing.T) {
	cases := []struct {
		name string
		rule gatewayv1.HTTPRouteRule
		want string // substrings of the route's protojson
	}{
		{"prefix", rule(ms(prefix("/foo/")), backend("v1", 80, 1)),
			`"pathSeparatedPrefix":"/foo"|"cluster":"outbound|80||v1.default.svc.cluster.local"|"timeout":"0s"`},
		{"root prefix", rule(ms(prefix("/")), backend("v1", 80, 1)), `"prefix":"/"`},
		{"exact", rule(ms(exact("/a")), backend("v1", 80, 1)), `"path":"/a"`},
		{"regex", rule(ms(regex("/a/[0-9]+")), backend("v1", 80, 1)), `"safeRegex":{"regex":"/a/[0-9]+"}`},
		{"headers query method", rule(ms(gatewayv1.HTTPRouteMatch{
			Headers:     []gatewayv1.HTTPHeaderMatch{{Name: "X-Ver", Value: "v2"}, {Type: ptr(gatewayv1.HeaderMatchRegularExpression), Name: "x-re", Value: "a.*"}},
			QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "1"}},
			Method:      ptr(gatewayv1.HTTPMethodPost),
		}), backend("v1", 80, 1)),
			`"name":"x-ver","stringMatch":{"exact":"v2"}|"name":"x-re","stringMatch":{"safeRegex":{"regex":"a.*"}}|"queryParameters":[{"name":"q","stringMatch":{"exact":"1"}}]|"name":":method","stringMatch":{"exact":"POST"}`},
		{"weighted", rule(nil, backend("v1", 80, 1), backend("v2", 80, 3)),
			`"weightedClusters":{"clusters":[{"name":"outbound|80||v1.default.svc.cluster.local","weight":1},{"name":"outbound|80||v2.default.svc.cluster.local","weight":3}]}`},
		{"all weights zero", rule(nil, backend("v1", 80, 0)), `"directResponse":{"status":500}`},
		{"no backends", rule(nil), `"directResponse":{"status":500}`},
		{"missing backend", rule(nil, backend("v1", 80, 1), backend("nope", 80, 1)),
			`"name":"gamma-invalid-backend","weight":1|"clusterNotFoundResponseCode":"INTERNAL_SERVER_ERROR"`},
		{"named", gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("canary")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)}},
			`"name":"canary"`},
		{"timeouts", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("10s")), BackendRequest: ptr(gatewayv1.Duration("2s"))}},
			`"timeout":"10s"|"perTryTimeout":"2s"`},
		{"retry", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Retry: &gatewayv1.HTTPRouteRetry{Codes: []gatewayv1.HTTPRouteRetryStatusCode{503}, Attempts: ptr(3), Backoff: ptr(gatewayv1.Duration("100ms"))}},
			`"retryOn":"connect-failure,refused-stream,retriable-status-codes"|"numRetries":3|"retriableStatusCodes":[503]|"baseInterval":"0.100s"`},
		{"header modifiers", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Filters: []gatewayv1.HTTPRouteFilter{
				{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
					Set: []gatewayv1.HTTPHeader{{Name: "X-Set", Value: "50%"}, {Name: "Host", Value: "h.example"}}, Add: []gatewayv1.HTTPHeader{{Name: "x-add", Value: "a"}}, Remove: []string{"X-Rm"}}},
				{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{Set: []gatewayv1.HTTPHeader{{Name: "x-resp", Value: "r"}}}},
			}},
			`"requestHeadersToAdd":[{"header":{"key":"x-set","value":"50%%"},"appendAction":"OVERWRITE_IF_EXISTS_OR_ADD"},{"header":{"key":"x-add","value":"a"}}]|"requestHeadersToRemove":["x-rm"]|"responseHeadersToAdd":[{"header":{"key":"x-resp","value":"r"},"appendAction":"OVERWRITE_IF_EXISTS_OR_ADD"}]|"hostRewriteLiteral":"h.example"`},
		{"mirror", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Filters: []gatewayv1.HTTPRouteFilter{
				{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
					BackendRef: gatewayv1.BackendObjectReference{Name: "mirror", Port: ptr(gatewayv1.PortNumber(81))}, Percent: ptr(int32(25))}},
				{Type: gatewayv1.HTTPRouteFilterRequestMirror, RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{
					BackendRef: gatewayv1.BackendObjectReference{Name: "mirror", Port: ptr(gatewayv1.PortNumber(82))}, Fraction: &gatewayv1.Fraction{Numerator: 1, Denominator: ptr(int32(3))}}},
			}},
			`{"cluster":"outbound|81||mirror.default.svc.cluster.local","runtimeFraction":{"defaultValue":{"numerator":25}}}|"cluster":"outbound|82||mirror.default.svc.cluster.local","runtimeFraction":{"defaultValue":{"numerator":333333,"denominator":"MILLION"}}}`},
		{"redirect", gatewayv1.HTTPRouteRule{Matches: ms(prefix("/old")), Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect,
			RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https"), Hostname: ptr(gatewayv1.PreciseHostname("x.example")), StatusCode: ptr(301),
				Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr("/new")}}}}},
			`"redirect":{"schemeRedirect":"https","hostRedirect":"x.example","portRedirect":443,"prefixRewrite":"/new"}`},
		{"redirect default port", gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect,
			RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{Hostname: ptr(gatewayv1.PreciseHostname("x.example"))}}}},
			`"portRedirect":9080`},
		{"rewrite full path", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{
				Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr("/full")}}}}},
			`"regexRewrite":{"pattern":{"regex":"^.*$"},"substitution":"/full"}`},
		{"unsupported filter", gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterExtensionRef, ExtensionRef: &gatewayv1.LocalObjectReference{Name: "x"}}}},
			`"directResponse":{"status":500}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rcs, _, sts := translate(t, defaultLookup(), httpRoute("r", 0, c.rule))
			if len(sts) != 1 {
				t.Fatalf("statuses: %+v", sts)
			}
			routes := rcs[0].VirtualHosts[0].Routes
			if len(routes) != 1 {
				t.Fatalf("%d routes", len(routes))
			}
			js := protojson.MarshalOptions{}.Format(routes[0])
			js = strings.ReplaceAll(js, " ", "")
			for _, w := range strings.Split(c.want, "|\"") {
				if !strings.HasPrefix(w, `"`) && !strings.HasPrefix(w, `{`) {
					w = `"` + w
				}
				if !strings.Contains(js, w) {
					t.Errorf("route lacks %s\n%s", w, js)
				}
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	r1 := httpRoute("older", 0,
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("prefix-short")), Matches: ms(prefix("/a")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)}},
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("headers1")), Matches: ms(gatewayv1.HTTPRouteMatch{Path: prefix("/a/b").Path,
			Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x", Value: "1"}}}), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)}},
	)
	r2 := httpRoute("newer", 10,
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("exact")), Matches: ms(exact("/a/b/c")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}},
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("method")), Matches: ms(gatewayv1.HTTPRouteMatch{Path: prefix("/a/b").Path, Method: ptr(gatewayv1.HTTPMethodGet)}),
			BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}},
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("headers2")), Matches: ms(gatewayv1.HTTPRouteMatch{Path: prefix("/a/b").Path,
			Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x", Value: "1"}, {Name: "y", Value: "2"}}}), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}},
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("tie-newer")), Matches: ms(prefix("/a")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}},
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("query")), Matches: ms(gatewayv1.HTTPRouteMatch{Path: prefix("/a").Path,
			QueryParams: []gatewayv1.HTTPQueryParamMatch{{Name: "q", Value: "1"}}}), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}},
	)
	// Same age as r2, alphabetically first: wins ties with r2.
	r3 := httpRoute("alpha", 10,
		gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("alpha-exact")), Matches: ms(exact("/a/b/c")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v3", 80, 1)}})
	rcs, tbls, _ := translate(t, defaultLookup(), r2, r1, r3)
	if got, want := routeNames(rcs[0]), "alpha-exact,exact,method,headers2,headers1,query,prefix-short,tie-newer"; got != want {
		t.Errorf("order\n got %s\nwant %s", got, want)
	}
	cases := []struct {
		method, path string
		hdr          []string
		want         string
	}{
		{"GET", "/a/b/c", nil, "alpha-exact"},
		{"GET", "/a/b/d", []string{"X", "1", "Y", "2"}, "method"},
		{"POST", "/a/b/d", []string{"X", "1", "Y", "2"}, "headers2"},
		{"POST", "/a/b/d", []string{"X", "1"}, "headers1"},
		{"POST", "/a/b/d?q=1", nil, "query"},
		{"POST", "/a/bc", nil, "query-miss"},
		{"POST", "/a", nil, "prefix-short"},
	}
	for _, c := range cases {
		d, ok := tbls[0].Route(req(c.method, c.path, c.hdr...))
		want := c.want
		if want == "query-miss" {
			want = "prefix-short"
		}
		if !ok || d.RouteName != want {
			t.Errorf("%s %s %v: route %v, want %s", c.method, c.path, c.hdr, d, want)
		}
	}
	// Nothing matches: 404 (no route).
	if d, ok := tbls[0].Route(req("GET", "/zzz")); ok {
		t.Errorf("/zzz routed to %s", d.RouteName)
	}
}

func TestWeightsEndToEnd(t *testing.T) {
	_, tbls, _ := translate(t, defaultLookup(), httpRoute("w", 0, rule(nil, backend("v1", 80, 10), backend("v2", 80, 30), backend("v3", 80, 60), backend("nope", 80, 0))))
	rng := rand.New(rand.NewPCG(7, 9))
	counts := map[string]int{}
	const n = 100000
	for range n {
		r := req("GET", "/")
		r.Rand = rng
		d, ok := tbls[0].Route(r)
		if !ok {
			t.Fatal("no route")
		}
		counts[d.Cluster]++
	}
	for c, w := range map[string]float64{"outbound|80||v1.default.svc.cluster.local": 0.1, "outbound|80||v2.default.svc.cluster.local": 0.3, "outbound|80||v3.default.svc.cluster.local": 0.6} {
		if got := float64(counts[c]) / n; got < w-0.01 || got > w+0.01 {
			t.Errorf("%s: share %.3f, want %.2f", c, got, w)
		}
	}
	if counts[invalidCluster] != 0 {
		t.Errorf("weight-0 invalid backend picked %d times", counts[invalidCluster])
	}
}

func TestInvalidBackendShare500(t *testing.T) {
	_, tbls, sts := translate(t, defaultLookup(), httpRoute("w", 0, rule(nil, backend("v1", 80, 1), backend("nope", 80, 1))))
	if c := cond(t, sts[0], "ResolvedRefs"); c.Status != metav1.ConditionFalse || c.Reason != "BackendNotFound" {
		t.Errorf("ResolvedRefs %+v", c)
	}
	if c := cond(t, sts[0], "Accepted"); c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
		t.Errorf("Accepted %+v", c)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	n500 := 0
	for range 1000 {
		r := req("GET", "/")
		r.Rand = rng
		d, _ := tbls[0].Route(r)
		if d.Cluster == invalidCluster {
			if d.ClusterNotFoundStatus != 500 {
				t.Fatalf("ClusterNotFoundStatus %d", d.ClusterNotFoundStatus)
			}
			n500++
		}
	}
	if n500 < 400 || n500 > 600 {
		t.Errorf("%d of 1000 to the invalid backend", n500)
	}
}

func TestRedirectsAndRewritesEndToEnd(t *testing.T) {
	redirect := func(name, match string, f gatewayv1.HTTPRequestRedirectFilter) gatewayv1.HTTPRouteRule {
		return gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName(name)), Matches: ms(prefix(match)),
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &f}}}
	}
	rewrite := func(name, match string, f gatewayv1.HTTPURLRewriteFilter) gatewayv1.HTTPRouteRule {
		return gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName(name)), Matches: ms(prefix(match)), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
			Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &f}}}
	}
	pfx := func(r string) *gatewayv1.HTTPPathModifier {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr(r)}
	}
	full := func(r string) *gatewayv1.HTTPPathModifier {
		return &gatewayv1.HTTPPathModifier{Type: gatewayv1.FullPathHTTPPathModifier, ReplaceFullPath: ptr(r)}
	}
	rt := httpRoute("rr", 0,
		redirect("r-https", "/secure", gatewayv1.HTTPRequestRedirectFilter{Scheme: ptr("https")}),
		redirect("r-host", "/host", gatewayv1.HTTPRequestRedirectFilter{Hostname: ptr(gatewayv1.PreciseHostname("example.com")), StatusCode: ptr(301)}),
		redirect("r-port", "/port", gatewayv1.HTTPRequestRedirectFilter{Port: ptr(gatewayv1.PortNumber(8443)), Scheme: ptr("https")}),
		redirect("r-prefix", "/old", gatewayv1.HTTPRequestRedirectFilter{Path: pfx("/new")}),
		redirect("r-strip", "/strip", gatewayv1.HTTPRequestRedirectFilter{Path: pfx("/")}),
		redirect("r-full", "/full", gatewayv1.HTTPRequestRedirectFilter{Path: full("/elsewhere")}),
		rewrite("w-prefix", "/prefix/one", gatewayv1.HTTPURLRewriteFilter{Path: pfx("/one")}),
		rewrite("w-strip", "/strip-prefix", gatewayv1.HTTPURLRewriteFilter{Path: pfx("/")}),
		rewrite("w-full", "/full-path", gatewayv1.HTTPURLRewriteFilter{Path: full("/one"), Hostname: ptr(gatewayv1.PreciseHostname("rewritten.example"))}),
	)
	_, tbls, sts := translate(t, defaultLookup(), rt)
	if c := cond(t, sts[0], "Accepted"); c.Status != metav1.ConditionTrue {
		t.Fatalf("Accepted %+v", c)
	}
	redirects := []struct{ path, loc string }{
		{"/secure/x?a=1", "https://reviews.default.svc.cluster.local/secure/x?a=1"},
		{"/host/x", "http://example.com:9080/host/x"},
		{"/port", "https://reviews.default.svc.cluster.local:8443/port"},
		{"/old/x?q", "http://reviews.default.svc.cluster.local:9080/new/x?q"},
		{"/strip/x", "http://reviews.default.svc.cluster.local:9080/x"},
		{"/full/x?q=1", "http://reviews.default.svc.cluster.local:9080/elsewhere?q=1"},
	}
	for _, c := range redirects {
		r := req("GET", c.path)
		d, ok := tbls[0].Route(r)
		if !ok || d.Action != router.Redirect {
			t.Errorf("%s: %v", c.path, d)
			continue
		}
		if got := d.RedirectLocation(r); got != c.loc {
			t.Errorf("%s: Location %s, want %s", c.path, got, c.loc)
		}
	}
	rewrites := []struct{ path, want, authority string }{
		{"/prefix/one/two", "/one/two", ""},
		{"/strip-prefix/three", "/three", ""},
		{"/strip-prefix", "/", ""},
		{"/full-path/x?a=b", "/one?a=b", "rewritten.example"},
	}
	for _, c := range rewrites {
		d, ok := tbls[0].Route(req("GET", c.path))
		if !ok || d.Action != router.Forward {
			t.Errorf("%s: %v", c.path, d)
			continue
		}
		if d.Path != c.want || (c.authority != "" && d.Authority != c.authority) {
			t.Errorf("%s: path %s authority %s, want %s %s", c.path, d.Path, d.Authority, c.want, c.authority)
		}
	}
}

func TestHeadersAndTimeoutsEndToEnd(t *testing.T) {
	rt := httpRoute("h", 0, gatewayv1.HTTPRouteRule{
		BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)},
		Timeouts:    &gatewayv1.HTTPRouteTimeouts{BackendRequest: ptr(gatewayv1.Duration("500ms"))},
		Filters: []gatewayv1.HTTPRouteFilter{
			{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
				Set: []gatewayv1.HTTPHeader{{Name: "X-Set", Value: "new"}}, Add: []gatewayv1.HTTPHeader{{Name: "X-Add", Value: "b"}}, Remove: []string{"X-Rm"}}},
			{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{Add: []gatewayv1.HTTPHeader{{Name: "X-Resp", Value: "r"}}}},
		},
	})
	_, tbls, _ := translate(t, defaultLookup(), rt)
	d, ok := tbls[0].Route(req("GET", "/"))
	if !ok {
		t.Fatal("no route")
	}
	h := http.Header{"X-Set": {"old"}, "X-Add": {"a"}, "X-Rm": {"gone"}}
	d.ApplyRequestHeaders(h)
	if h.Get("X-Set") != "new" || strings.Join(h.Values("X-Add"), ",") != "a,b" || h.Get("X-Rm") != "" {
		t.Errorf("request headers %v", h)
	}
	resp := http.Header{}
	d.ApplyResponseHeaders(resp)
	if resp.Get("X-Resp") != "r" {
		t.Errorf("response headers %v", resp)
	}
	if d.Timeout != 0 || d.Retry == nil || d.Retry.PerTryTimeout != 500*time.Millisecond {
		t.Errorf("timeout %v retry %+v", d.Timeout, d.Retry)
	}
}

func TestStatus(t *testing.T) {
	lk := defaultLookup()
	lk.grants["default->other/granted"] = true
	lk.services["other/granted"] = true
	bad := func(name string, ref gatewayv1.BackendObjectReference) *gatewayv1.HTTPRoute {
		return httpRoute(name, 0, gatewayv1.HTTPRouteRule{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: ref}}}})
	}
	port := ptr(gatewayv1.PortNumber(80))
	routes := []*gatewayv1.HTTPRoute{
		bad("missing", gatewayv1.BackendObjectReference{Name: "nope", Port: port}),
		bad("kind", gatewayv1.BackendObjectReference{Group: ptr(gatewayv1.Group("example.com")), Kind: ptr(gatewayv1.Kind("Bucket")), Name: "b"}),
		bad("cross", gatewayv1.BackendObjectReference{Namespace: ptr(gatewayv1.Namespace("other")), Name: "remote", Port: port}),
		bad("granted", gatewayv1.BackendObjectReference{Namespace: ptr(gatewayv1.Namespace("other")), Name: "granted", Port: port}),
		httpRoute("badregex", 0, rule(ms(regex("/(")), backend("v1", 80, 1))),
		httpRoute("partial", 0, rule(ms(regex("[")), backend("v1", 80, 1)), rule(ms(prefix("/ok")), backend("v1", 80, 1))),
	}
	wrongPort := httpRoute("wrongport", 0, rule(nil, backend("v1", 80, 1)))
	wrongPort.Spec.ParentRefs[0].Port = ptr(gatewayv1.PortNumber(1234))
	named := httpRoute("sectionname", 0, rule(nil, backend("v1", 80, 1)))
	named.Spec.ParentRefs[0].SectionName = ptr(gatewayv1.SectionName("grpc"))
	routes = append(routes, named)
	other := httpRoute("otherparent", 0, rule(nil, backend("v1", 80, 1)))
	other.Spec.ParentRefs = []gatewayv1.ParentReference{svcParent("ratings"), {Name: "some-gateway"}}
	routes = append(routes, wrongPort, other)

	rcs, _, sts := translate(t, lk, routes...)
	byName := map[string]RouteStatus{}
	for _, s := range sts {
		byName[s.Name] = s
	}
	want := []struct{ route, typ, status, reason string }{
		{"missing", "ResolvedRefs", "False", "BackendNotFound"},
		{"missing", "Accepted", "True", "Accepted"},
		{"kind", "ResolvedRefs", "False", "InvalidKind"},
		{"cross", "ResolvedRefs", "False", "RefNotPermitted"},
		{"granted", "ResolvedRefs", "True", "ResolvedRefs"},
		{"badregex", "Accepted", "False", "UnsupportedValue"},
		{"partial", "Accepted", "True", "Accepted"},
		{"partial", "PartiallyInvalid", "True", "UnsupportedValue"},
		{"wrongport", "Accepted", "False", "NoMatchingParent"},
		{"sectionname", "Accepted", "False", "NoMatchingParent"},
	}
	for _, w := range want {
		st, ok := byName[w.route]
		if !ok {
			t.Errorf("no status for %s", w.route)
			continue
		}
		c := cond(t, st, w.typ)
		if string(c.Status) != w.status || c.Reason != w.reason {
			t.Errorf("%s %s: %s %s (%s), want %s %s", w.route, w.typ, c.Status, c.Reason, c.Message, w.status, w.reason)
		}
	}
	if _, ok := byName["otherparent"]; ok {
		t.Error("status for a route not attached to reviews")
	}
	// The valid rule of "partial" still routes; the invalid one is gone.
	if d, ok := tbls(t, rcs).Route(req("GET", "/ok/1")); !ok || d.RouteName != "default.partial.1" {
		t.Errorf("partial: %v", d)
	}

	missing := MissingParents(Routes{HTTP: []*gatewayv1.HTTPRoute{other}}, lk)
	if len(missing) != 1 || missing[0].ParentRef.Name != "ratings" || cond(t, missing[0], "Accepted").Reason != "NoMatchingParent" {
		t.Errorf("MissingParents: %+v", missing)
	}
}

func tbls(t *testing.T, rcs []*routev3.RouteConfiguration) *router.Table {
	t.Helper()
	tbl, err := router.Compile(rcs[0])
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

func TestPortsAndSectionName(t *testing.T) {
	svc := reviews
	svc.Ports = []uint32{9080, 9090}
	svc.PortNames = map[string]uint32{"http": 9080, "admin": 9090}
	onAdmin := httpRoute("admin", 0, gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("admin")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v2", 80, 1)}})
	onAdmin.Spec.ParentRefs[0].SectionName = ptr(gatewayv1.SectionName("admin"))
	onHTTP := httpRoute("http", 0, gatewayv1.HTTPRouteRule{Name: ptr(gatewayv1.SectionName("http")), BackendRefs: []gatewayv1.HTTPBackendRef{backend("v1", 80, 1)}})
	onHTTP.Spec.ParentRefs[0].Port = ptr(gatewayv1.PortNumber(9080))
	rcs, sts, err := RoutesForService(svc, []*gatewayv1.HTTPRoute{onAdmin, onHTTP}, Options{Lookup: defaultLookup()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rcs) != 2 || routeNames(rcs[0]) != "http" || routeNames(rcs[1]) != "admin" {
		t.Errorf("routes per port: %s / %s", routeNames(rcs[0]), routeNames(rcs[1]))
	}
	if rcs[1].Name != "inbound-vip|9090|http|reviews.default.svc.cluster.local" {
		t.Errorf("name %s", rcs[1].Name)
	}
	for _, s := range sts {
		if c := cond(t, s, "Accepted"); c.Status != metav1.ConditionTrue {
			t.Errorf("%s: %+v", s.Name, c)
		}
	}
}

func TestBadInput(t *testing.T) {
	if _, _, err := RoutesForService(Service{Namespace: "a", Name: "b"}, nil, Options{Lookup: lookup()}); err == nil {
		t.Error("no ports: no error")
	}
	if _, _, err := RoutesForService(reviews, nil, Options{}); err == nil {
		t.Error("no lookup: no error")
	}
	// Nil routes, nil filter configurations, bad durations and header names
	// never panic and never break the Validate/Compile guarantee.
	routes := []*gatewayv1.HTTPRoute{nil,
		httpRoute("nilfilter", 0, gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect}}}),
		httpRoute("badduration", 0, gatewayv1.HTTPRouteRule{Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: ptr(gatewayv1.Duration("forever"))}}),
		httpRoute("pseudo", 0, gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
			RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Remove: []string{":path"}}}}}),
		httpRoute("both", 0, gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{
			{Type: gatewayv1.HTTPRouteFilterRequestRedirect, RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{}},
			{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{}}}}),
		httpRoute("regexrewrite", 0, gatewayv1.HTTPRouteRule{Matches: ms(regex("/a.*")), Filters: []gatewayv1.HTTPRouteFilter{
			{Type: gatewayv1.HTTPRouteFilterURLRewrite, URLRewrite: &gatewayv1.HTTPURLRewriteFilter{Path: &gatewayv1.HTTPPathModifier{Type: gatewayv1.PrefixMatchHTTPPathModifier, ReplacePrefixMatch: ptr("/b")}}}}}),
		httpRoute("badstatus", 0, gatewayv1.HTTPRouteRule{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestRedirect,
			RequestRedirect: &gatewayv1.HTTPRequestRedirectFilter{StatusCode: ptr(200)}}}}),
	}
	rcs, _, sts := translate(t, defaultLookup(), routes...)
	if len(sts) != len(routes)-1 {
		t.Fatalf("%d statuses", len(sts))
	}
	for _, s := range sts {
		if c := cond(t, s, "Accepted"); c.Status != metav1.ConditionFalse || c.Reason != "UnsupportedValue" {
			t.Errorf("%s: Accepted %+v", s.Name, c)
		}
	}
	// Every route was refused: the port falls back to the Service itself.
	if routeNames(rcs[0]) != "default" {
		t.Errorf("routes %s", routeNames(rcs[0]))
	}
}

// Consumer routes (in the client's namespace, attached to a Service of
// another) apply to that namespace's clients only, replacing the producer
// routes for them; they may send to the parent Service without a
// ReferenceGrant.
func TestConsumerRoutes(t *testing.T) {
	producer := httpRoute("producer", 1, rule(ms(prefix("/")), backend("v1", 80, 1)))
	consumer := httpRoute("consumer", 0, rule(ms(prefix("/shop")), backend("reviews", 9080, 1)))
	consumer.Namespace = "shop"
	consumer.Spec.ParentRefs[0].Namespace = ptr(gatewayv1.Namespace("default"))
	consumer.Spec.Rules[0].BackendRefs[0].Namespace = ptr(gatewayv1.Namespace("default"))
	_, tbls, sts := translate(t, defaultLookup(), producer, consumer)
	for _, st := range sts {
		if c := cond(t, st, "ResolvedRefs"); c.Status != metav1.ConditionTrue {
			t.Errorf("%s/%s: ResolvedRefs %s %s", st.Namespace, st.Name, c.Reason, c.Message)
		}
	}
	from := func(ns, path string) (string, string) {
		r := req("GET", path)
		if ns != "" {
			r.FilterState = map[string]string{router.PeerPrincipalKey: "spiffe://cluster.local/ns/" + ns + "/sa/client"}
		}
		d, ok := tbls[0].Route(r)
		if !ok {
			return "<none>", ""
		}
		if d.Action == router.DirectResponse {
			return d.RouteName, fmt.Sprint(d.DirectStatus)
		}
		return d.RouteName, d.Cluster
	}
	for _, tc := range []struct{ ns, path, route, target string }{
		{"shop", "/shop/x", "shop.consumer.0", "outbound|9080||reviews.default.svc.cluster.local"},
		{"shop", "/other", "shop.consumer-no-match", "404"},
		{"default", "/shop/x", "default.producer.0", "outbound|80||v1.default.svc.cluster.local"},
		{"", "/shop/x", "default.producer.0", "outbound|80||v1.default.svc.cluster.local"},
		{"shopping", "/shop/x", "default.producer.0", "outbound|80||v1.default.svc.cluster.local"},
	} {
		if route, target := from(tc.ns, tc.path); route != tc.route || target != tc.target {
			t.Errorf("from %q %s: %s -> %s, want %s -> %s", tc.ns, tc.path, route, target, tc.route, tc.target)
		}
	}
	// Another backend in the Service's namespace still needs a grant.
	other := httpRoute("consumer2", 0, rule(nil, backend("v2", 80, 1)))
	other.Namespace = "shop"
	other.Spec.ParentRefs[0].Namespace = ptr(gatewayv1.Namespace("default"))
	other.Spec.Rules[0].BackendRefs[0].Namespace = ptr(gatewayv1.Namespace("default"))
	_, _, sts = translate(t, defaultLookup(), other)
	if c := cond(t, sts[0], "ResolvedRefs"); c.Reason != string(gatewayv1.RouteReasonRefNotPermitted) {
		t.Errorf("cross-namespace backend without a grant: %s", c.Reason)
	}
}
