package router

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// defaultMaxDirectResponseBody is Envoy's default for
// max_direct_response_body_size_bytes.
const defaultMaxDirectResponseBody = 4096

// Compile validates rc and compiles it into a Table. Errors name the route
// configuration and the path of the offending field.
func Compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if rc == nil {
		return nil, fmt.Errorf("route configuration: nil")
	}
	t, err := compile(rc)
	if err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	return t, nil
}

func compile(rc *routev3.RouteConfiguration) (*Table, error) {
	if err := rc.Validate(); err != nil {
		return nil, fmt.Errorf("invalid: %w", err)
	}
	if err := schema.Check(rc.ProtoReflect()); err != nil {
		return nil, err
	}
	t := &Table{
		name:             rc.GetName(),
		exact:            map[string]*virtualHost{},
		ignorePort:       rc.GetIgnorePortInHostMatching(),
		ignorePathParams: rc.GetIgnorePathParametersInPathMatching(),
		mostSpecificWins: rc.GetMostSpecificHeaderMutationsWins(),
	}
	if h := rc.GetVhostHeader(); h != "" {
		ref, err := newHeaderRef("vhost_header", h)
		if err != nil {
			return nil, err
		}
		t.vhostHeader = &ref
	}
	var err error
	if t.mut, err = compileLevel("", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	if t.mirrors, err = compileMirrors("request_mirror_policies", rc.GetRequestMirrorPolicies()); err != nil {
		return nil, err
	}
	maxBody := uint64(defaultMaxDirectResponseBody)
	if v := rc.GetMaxDirectResponseBodySizeBytes(); v != nil {
		maxBody = uint64(v.GetValue())
	}

	suffixes := map[int]map[string]*virtualHost{}
	prefixes := map[int]map[string]*virtualHost{}
	names := map[string]bool{}
	for i, vhc := range rc.GetVirtualHosts() {
		path := idx("virtual_hosts", i)
		if names[vhc.GetName()] {
			return nil, fieldError(joinPath(path, "name"), "virtual host name %q is not unique", vhc.GetName())
		}
		names[vhc.GetName()] = true
		vh, err := compileVirtualHost(path, vhc, maxBody)
		if err != nil {
			return nil, err
		}
		for j, d := range vhc.GetDomains() {
			dpath := idx(joinPath(path, "domains"), j)
			domain := envoymatch.ToLowerASCII(d)
			var dup bool
			switch {
			case domain == "*":
				if t.star != nil {
					return nil, fieldError(dpath, "only one virtual host may have the domain \"*\"")
				}
				t.star = vh
			case strings.HasPrefix(domain, "*"):
				dup = addWildcard(suffixes, domain[1:], vh)
			case strings.HasSuffix(domain, "*"):
				dup = addWildcard(prefixes, domain[:len(domain)-1], vh)
			default:
				if _, dup = t.exact[domain]; !dup {
					t.exact[domain] = vh
				}
			}
			if dup {
				return nil, fieldError(dpath, "domain %q appears more than once in the route configuration", d)
			}
		}
	}
	t.suffixes = sortedGroups(suffixes)
	t.prefixes = sortedGroups(prefixes)
	t.onlyStar = len(t.exact) == 0 && len(t.suffixes) == 0 && len(t.prefixes) == 0
	return t, nil
}

func addWildcard(groups map[int]map[string]*virtualHost, key string, vh *virtualHost) (dup bool) {
	g := groups[len(key)]
	if g == nil {
		g = map[string]*virtualHost{}
		groups[len(key)] = g
	}
	if _, ok := g[key]; ok {
		return true
	}
	g[key] = vh
	return false
}

func sortedGroups(groups map[int]map[string]*virtualHost) []wildcardGroup {
	out := make([]wildcardGroup, 0, len(groups))
	for n, hosts := range groups {
		out = append(out, wildcardGroup{n: n, hosts: hosts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n > out[j].n })
	return out
}

func compileLevel(path string, reqAdd []*corev3.HeaderValueOption, reqRemove []string, respAdd []*corev3.HeaderValueOption, respRemove []string) (levelMutations, error) {
	var l levelMutations
	var err error
	if l.request, err = compileMutations(joinPath(path, "request_headers_to_add"), reqAdd, joinPath(path, "request_headers_to_remove"), reqRemove); err != nil {
		return l, err
	}
	if l.response, err = compileMutations(joinPath(path, "response_headers_to_add"), respAdd, joinPath(path, "response_headers_to_remove"), respRemove); err != nil {
		return l, err
	}
	return l, nil
}

func compileVirtualHost(path string, vhc *routev3.VirtualHost, maxBody uint64) (*virtualHost, error) {
	vh := &virtualHost{name: vhc.GetName()}
	var err error
	if vh.mut, err = compileLevel(path, vhc.GetRequestHeadersToAdd(), vhc.GetRequestHeadersToRemove(), vhc.GetResponseHeadersToAdd(), vhc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}
	if vh.retry, err = compileRetryPolicy(joinPath(path, "retry_policy"), vhc.GetRetryPolicy()); err != nil {
		return nil, err
	}
	if vh.mirrors, err = compileMirrors(joinPath(path, "request_mirror_policies"), vhc.GetRequestMirrorPolicies()); err != nil {
		return nil, err
	}
	for i, rc := range vhc.GetRoutes() {
		r, err := compileRoute(idx(joinPath(path, "routes"), i), rc, maxBody)
		if err != nil {
			return nil, err
		}
		vh.routes = append(vh.routes, r)
	}
	return vh, nil
}

func compileRoute(path string, rc *routev3.Route, maxBody uint64) (*route, error) {
	r := &route{name: rc.GetName(), statPrefix: rc.GetStatPrefix()}
	m := rc.GetMatch()
	mpath := joinPath(path, "match")
	if m == nil {
		return nil, fieldError(mpath, "match is required")
	}
	var err error
	if r.path, err = compilePathMatcher(mpath, m); err != nil {
		return nil, err
	}
	if rf := m.GetRuntimeFraction(); rf != nil {
		if r.runtime, err = compileFraction(joinPath(mpath, "runtime_fraction"), rf); err != nil {
			return nil, err
		}
	}
	for i, hm := range m.GetHeaders() {
		h, err := compileHeaderMatcher(idx(joinPath(mpath, "headers"), i), hm)
		if err != nil {
			return nil, err
		}
		r.headers = append(r.headers, h)
	}
	for i, qm := range m.GetQueryParameters() {
		q, err := compileQueryMatcher(idx(joinPath(mpath, "query_parameters"), i), qm)
		if err != nil {
			return nil, err
		}
		r.query = append(r.query, q)
	}
	r.grpc = m.GetGrpc() != nil
	for i, fm := range m.GetFilterState() {
		fpath := idx(joinPath(mpath, "filter_state"), i)
		if fm.GetKey() == "" || fm.GetStringMatch() == nil {
			return nil, fieldError(fpath, "a key and a string_match are required")
		}
		sm, err := envoymatch.CompileString(joinPath(fpath, "string_match"), fm.GetStringMatch())
		if err != nil {
			return nil, err
		}
		r.state = append(r.state, filterStateMatcher{key: fm.GetKey(), value: sm})
	}
	if r.mut, err = compileLevel(path, rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove()); err != nil {
		return nil, err
	}

	switch a := rc.GetAction().(type) {
	case *routev3.Route_Route:
		r.action = Forward
		err = compileRouteAction(joinPath(path, "route"), r, a.Route)
	case *routev3.Route_Redirect:
		r.action = Redirect
		r.redirect, err = compileRedirect(joinPath(path, "redirect"), a.Redirect)
	case *routev3.Route_DirectResponse:
		r.action = DirectResponse
		r.direct, err = compileDirectResponse(joinPath(path, "direct_response"), a.DirectResponse, maxBody)
	default:
		err = fieldError(path, "an action (route, redirect or direct_response) is required")
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

func compileRouteAction(path string, r *route, ra *routev3.RouteAction) error {
	if ra == nil {
		return fieldError(path, "route action is required")
	}
	switch cs := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return fieldError(joinPath(path, "cluster"), "must not be empty")
		}
		r.cluster = cs.Cluster
	case *routev3.RouteAction_WeightedClusters:
		w, err := compileWeighted(joinPath(path, "weighted_clusters"), cs.WeightedClusters)
		if err != nil {
			return err
		}
		r.weighted = w
	default:
		return fieldError(path, "a cluster specifier (cluster or weighted_clusters) is required")
	}
	switch ra.GetClusterNotFoundResponseCode() {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		r.clusterNotFound = 503
	case routev3.RouteAction_NOT_FOUND:
		r.clusterNotFound = 404
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		r.clusterNotFound = 500
	default:
		return fieldError(joinPath(path, "cluster_not_found_response_code"), "unknown code %d", ra.GetClusterNotFoundResponseCode())
	}
	if ra.GetPrefixRewrite() != "" && ra.GetRegexRewrite() != nil {
		return fieldError(path, "only one of prefix_rewrite and regex_rewrite may be set")
	}
	r.prefixRewrite = ra.GetPrefixRewrite()
	if rr := ra.GetRegexRewrite(); rr != nil {
		var err error
		if r.regexRewrite, err = compileRegexRewrite(joinPath(path, "regex_rewrite"), rr); err != nil {
			return err
		}
	}
	switch h := ra.GetHostRewriteSpecifier().(type) {
	case nil:
	case *routev3.RouteAction_HostRewriteLiteral:
		r.hostRewrite = h.HostRewriteLiteral
	default:
		return fieldError(path, "host rewrite %T is not supported (only host_rewrite_literal)", h)
	}
	timeout, set, err := duration(joinPath(path, "timeout"), ra.GetTimeout())
	if err != nil {
		return err
	}
	if !set {
		timeout = DefaultRouteTimeout
	}
	r.timeout = timeout
	idle, set, err := duration(joinPath(path, "idle_timeout"), ra.GetIdleTimeout())
	if err != nil {
		return err
	}
	if set {
		r.idleTimeout = &idle
	}
	if r.retry, err = compileRetryPolicy(joinPath(path, "retry_policy"), ra.GetRetryPolicy()); err != nil {
		return err
	}
	if r.mirrors, err = compileMirrors(joinPath(path, "request_mirror_policies"), ra.GetRequestMirrorPolicies()); err != nil {
		return err
	}
	return nil
}

func compileWeighted(path string, wc *routev3.WeightedCluster) (*weightedClusters, error) {
	w := &weightedClusters{}
	var sum uint64
	for i, c := range wc.GetClusters() {
		cpath := idx(joinPath(path, "clusters"), i)
		if c.GetName() == "" {
			return nil, fieldError(joinPath(cpath, "name"), "must not be empty")
		}
		weight := uint64(c.GetWeight().GetValue())
		sum += weight
		cl := weightedCluster{name: c.GetName(), weight: weight}
		switch h := c.GetHostRewriteSpecifier().(type) {
		case nil:
		case *routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral:
			cl.hostRewrite = h.HostRewriteLiteral
		default:
			return nil, fieldError(cpath, "host rewrite %T is not supported", h)
		}
		var err error
		if cl.mut, err = compileLevel(cpath, c.GetRequestHeadersToAdd(), c.GetRequestHeadersToRemove(), c.GetResponseHeadersToAdd(), c.GetResponseHeadersToRemove()); err != nil {
			return nil, err
		}
		if weight > 0 {
			w.clusters = append(w.clusters, cl)
		}
	}
	if sum == 0 {
		return nil, fieldError(path, "the sum of the cluster weights must be greater than 0")
	}
	if sum > math.MaxUint32 {
		return nil, fieldError(path, "the sum of the cluster weights (%d) exceeds %d", sum, uint64(math.MaxUint32))
	}
	if tw := legacyTotalWeight(wc); tw != nil && uint64(tw.GetValue()) != sum {
		return nil, fieldError(joinPath(path, "total_weight"), "is %d but the cluster weights add up to %d", tw.GetValue(), sum)
	}
	w.total = sum
	return w, nil
}

func compileFraction(path string, rf *corev3.RuntimeFractionalPercent) (*fraction, error) {
	dv := rf.GetDefaultValue()
	if dv == nil {
		// Without a runtime, a fraction with no default is 0%.
		return &fraction{numerator: 0, denominator: 100}, nil
	}
	f := &fraction{numerator: uint64(dv.GetNumerator())}
	switch dv.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		f.denominator = 100
	case typev3.FractionalPercent_TEN_THOUSAND:
		f.denominator = 10_000
	case typev3.FractionalPercent_MILLION:
		f.denominator = 1_000_000
	default:
		return nil, fieldError(joinPath(path, "default_value.denominator"), "unknown denominator %d", dv.GetDenominator())
	}
	return f, nil
}

func compileMirrors(path string, ms []*routev3.RouteAction_RequestMirrorPolicy) ([]mirrorPolicy, error) {
	var out []mirrorPolicy
	for i, m := range ms {
		mpath := idx(path, i)
		if m.GetCluster() == "" {
			return nil, fieldError(joinPath(mpath, "cluster"), "must not be empty")
		}
		mp := mirrorPolicy{cluster: m.GetCluster(), noSuffix: m.GetDisableShadowHostSuffixAppend()}
		if rf := m.GetRuntimeFraction(); rf != nil {
			f, err := compileFraction(joinPath(mpath, "runtime_fraction"), rf)
			if err != nil {
				return nil, err
			}
			mp.fraction = f
		}
		out = append(out, mp)
	}
	return out, nil
}

func compileRedirect(path string, ra *routev3.RedirectAction) (*redirect, error) {
	if ra == nil {
		return nil, fieldError(path, "redirect action is required")
	}
	rd := &redirect{host: ra.GetHostRedirect(), stripQuery: ra.GetStripQuery()}
	switch s := ra.GetSchemeRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			rd.scheme = "https"
		}
	case *routev3.RedirectAction_SchemeRedirect:
		rd.scheme = s.SchemeRedirect
	}
	if p := ra.GetPortRedirect(); p != 0 {
		if p > 65535 {
			return nil, fieldError(joinPath(path, "port_redirect"), "%d is not a port", p)
		}
		rd.port = fmt.Sprintf(":%d", p)
	}
	switch p := ra.GetPathRewriteSpecifier().(type) {
	case nil:
	case *routev3.RedirectAction_PathRedirect:
		rd.pathRedirect = p.PathRedirect
		rd.pathHasQuery = strings.Contains(p.PathRedirect, "?")
	case *routev3.RedirectAction_PrefixRewrite:
		rd.prefixRewrite = p.PrefixRewrite
	case *routev3.RedirectAction_RegexRewrite:
		rr, err := compileRegexRewrite(joinPath(path, "regex_rewrite"), p.RegexRewrite)
		if err != nil {
			return nil, err
		}
		rd.regexRewrite = rr
	default:
		return nil, fieldError(path, "path rewrite %T is not supported", p)
	}
	switch ra.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.status = 301
	case routev3.RedirectAction_FOUND:
		rd.status = 302
	case routev3.RedirectAction_SEE_OTHER:
		rd.status = 303
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.status = 307
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.status = 308
	default:
		return nil, fieldError(joinPath(path, "response_code"), "unknown response code %d", ra.GetResponseCode())
	}
	return rd, nil
}

func compileDirectResponse(path string, dr *routev3.DirectResponseAction, maxBody uint64) (*directResponse, error) {
	if dr == nil {
		return nil, fieldError(path, "direct response action is required")
	}
	st := dr.GetStatus()
	if st < 100 || st > 599 {
		return nil, fieldError(joinPath(path, "status"), "%d is not an HTTP status", st)
	}
	d := &directResponse{status: int(st)}
	if b := dr.GetBody(); b != nil {
		switch s := b.GetSpecifier().(type) {
		case *corev3.DataSource_InlineBytes:
			d.body = s.InlineBytes
		case *corev3.DataSource_InlineString:
			d.body = []byte(s.InlineString)
		case nil:
		default:
			return nil, fieldError(joinPath(path, "body"), "data source %T is not supported (only inline_bytes and inline_string)", s)
		}
		if uint64(len(d.body)) > maxBody {
			return nil, fieldError(joinPath(path, "body"), "body is %d bytes, more than max_direct_response_body_size_bytes (%d)", len(d.body), maxBody)
		}
	}
	return d, nil
}

// duration converts a protobuf Duration; set is false when it is absent.
// Negative and out-of-range durations are refused, as Envoy does.
func duration(path string, d *durationpb.Duration) (v time.Duration, set bool, err error) {
	if d == nil {
		return 0, false, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, false, fieldError(path, "%v", err)
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, false, fieldError(path, "must not be negative")
	}
	if d.GetSeconds() > int64(math.MaxInt64/time.Second)-1 {
		return 0, false, fieldError(path, "%ds is too long", d.GetSeconds())
	}
	return d.AsDuration(), true, nil
}
