package gamma

import (
	"fmt"
	"maps"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

type translator struct {
	svc  Service
	opts Options
	host string
}

// entry is one Envoy route (one match of one rule) with its precedence.
type entry struct {
	route *routev3.Route
	key   precedence
	// consumer is the namespace of a consumer route (a route in another
	// namespace than the Service), empty for a producer route.
	consumer string
}

// precedence is the Gateway API ordering key of a match. Regular
// expression precedence is implementation-specific: here after Exact and
// before PathPrefix, longer patterns first.
type precedence struct {
	pathKind  int // 0 exact, 1 regex, 2 prefix
	pathLen   int
	method    bool
	headers   int
	queries   int
	routeRank int // arrival order: route (age, namespace/name), rule, match
}

func comparePrecedence(a, b precedence) int {
	if a.pathKind != b.pathKind {
		return a.pathKind - b.pathKind
	}
	if a.pathLen != b.pathLen {
		return b.pathLen - a.pathLen
	}
	if a.method != b.method {
		if a.method {
			return -1
		}
		return 1
	}
	if a.headers != b.headers {
		return b.headers - a.headers
	}
	if a.queries != b.queries {
		return b.queries - a.queries
	}
	return a.routeRank - b.routeRank
}

type routeResult struct {
	entries  []entry
	rules    int
	badRules []string // why each dropped rule was dropped
	partial  []string // rules kept but answered with a 500
	refs     *condition
}

func (res *routeResult) conditions(r *gatewayv1.HTTPRoute) []metav1.Condition {
	if res.rules > 0 && len(res.badRules) == res.rules {
		return conditions(r, false, string(gatewayv1.RouteReasonUnsupportedValue), strings.Join(res.badRules, "; "), res.refs)
	}
	cs := conditions(r, true, "", "", res.refs)
	if msgs := append(slices.Clone(res.badRules), res.partial...); len(msgs) > 0 {
		cs = append(cs, metav1.Condition{Type: string(gatewayv1.RouteConditionPartiallyInvalid), Status: metav1.ConditionTrue,
			Reason: string(gatewayv1.RouteReasonUnsupportedValue), Message: strings.Join(msgs, "; "), ObservedGeneration: r.Generation})
	}
	return cs
}

func (res *routeResult) refError(reason gatewayv1.RouteConditionReason, format string, a ...any) {
	if res.refs == nil {
		res.refs = &condition{reason: string(reason), msg: fmt.Sprintf(format, a...)}
	}
}

// translateRoute translates every rule of r for one port.
func (t *translator) translateRoute(r *gatewayv1.HTTPRoute, port uint32) routeResult {
	res := routeResult{rules: len(r.Spec.Rules)}
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		es, err := t.translateRule(r, i, rule, port, &res)
		if err != nil {
			res.badRules = append(res.badRules, fmt.Sprintf("rule %d: %v", i, err))
			continue
		}
		res.entries = append(res.entries, es...)
	}
	return res
}

func ruleName(r *gatewayv1.HTTPRoute, i int, rule *gatewayv1.HTTPRouteRule) string {
	if rule.Name != nil && *rule.Name != "" {
		return string(*rule.Name)
	}
	return fmt.Sprintf("%s.%s.%d", r.Namespace, r.Name, i)
}

// translateRule returns the routes of one rule (one per match), or an error
// that makes the rule invalid (it is dropped).
func (t *translator) translateRule(r *gatewayv1.HTTPRoute, i int, rule *gatewayv1.HTTPRouteRule, port uint32, res *routeResult) ([]entry, error) {
	matches := rule.Matches
	if len(matches) == 0 {
		matches = []gatewayv1.HTTPRouteMatch{{}}
	}
	var out []entry
	for mi := range matches {
		m := &matches[mi]
		rm, key, prefix, err := translateMatch(m)
		if err != nil {
			return nil, fmt.Errorf("match %d: %w", mi, err)
		}
		route := &routev3.Route{Name: ruleName(r, i, rule), Match: rm}
		if err := t.action(r, rule, route, prefix, port, res); err != nil {
			return nil, err
		}
		out = append(out, entry{route: route, key: key})
	}
	return out, nil
}

// pathMatch is the path match a rewrite or redirect works from.
type pathMatch struct {
	kind  gatewayv1.PathMatchType
	value string
}

func translateMatch(m *gatewayv1.HTTPRouteMatch) (*routev3.RouteMatch, precedence, pathMatch, error) {
	rm := &routev3.RouteMatch{}
	var key precedence
	pm := pathMatch{kind: gatewayv1.PathMatchPathPrefix, value: "/"}
	if m.Path != nil {
		if m.Path.Type != nil {
			pm.kind = *m.Path.Type
		}
		if m.Path.Value != nil {
			pm.value = *m.Path.Value
		}
	}
	switch pm.kind {
	case gatewayv1.PathMatchExact:
		if !validPath(pm.value) {
			return nil, key, pm, fmt.Errorf("path %q must start with / and have no ?, # or control characters", pm.value)
		}
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: pm.value}
		key.pathKind, key.pathLen = 0, len(pm.value)
	case gatewayv1.PathMatchPathPrefix:
		if !validPath(pm.value) {
			return nil, key, pm, fmt.Errorf("path prefix %q must start with / and have no ?, # or control characters", pm.value)
		}
		p := strings.TrimRight(pm.value, "/")
		if p == "" {
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		} else {
			rm.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}
		}
		key.pathKind, key.pathLen = 2, len(p)+1
	case gatewayv1.PathMatchRegularExpression:
		re, err := safeRegex(pm.value)
		if err != nil {
			return nil, key, pm, fmt.Errorf("path: %w", err)
		}
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		key.pathKind, key.pathLen = 1, len(pm.value)
	default:
		return nil, key, pm, fmt.Errorf("unsupported path match type %q", pm.kind)
	}
	// The spec: of several matches of one header (names are
	// case-insensitive) or query parameter, only the first counts.
	seenHeaders, seenQueries := map[string]bool{}, map[string]bool{}
	for _, h := range m.Headers {
		if seenHeaders[strings.ToLower(string(h.Name))] {
			continue
		}
		seenHeaders[strings.ToLower(string(h.Name))] = true
		sm, err := stringMatch(h.Type == nil || *h.Type == gatewayv1.HeaderMatchExact, h.Type, h.Value)
		if err != nil {
			return nil, key, pm, fmt.Errorf("header %q: %w", h.Name, err)
		}
		name := strings.ToLower(string(h.Name))
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, key, pm, fmt.Errorf("invalid header name %q", h.Name)
		}
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: name,
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}})
	}
	for _, q := range m.QueryParams {
		if seenQueries[string(q.Name)] {
			continue
		}
		seenQueries[string(q.Name)] = true
		var typ *gatewayv1.HeaderMatchType
		if q.Type != nil {
			ht := gatewayv1.HeaderMatchType(*q.Type)
			typ = &ht
		}
		sm, err := stringMatch(q.Type == nil || *q.Type == gatewayv1.QueryParamMatchExact, typ, q.Value)
		if err != nil {
			return nil, key, pm, fmt.Errorf("query parameter %q: %w", q.Name, err)
		}
		if q.Name == "" || len(q.Name) > 1024 {
			return nil, key, pm, fmt.Errorf("invalid query parameter name %q", q.Name)
		}
		rm.QueryParameters = append(rm.QueryParameters, &routev3.QueryParameterMatcher{Name: string(q.Name),
			QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}})
	}
	if m.Method != nil {
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: string(*m.Method)}}}})
		key.method = true
	}
	key.headers, key.queries = len(seenHeaders), len(seenQueries)
	return rm, key, pm, nil
}

func stringMatch(exact bool, typ *gatewayv1.HeaderMatchType, value string) (*matcherv3.StringMatcher, error) {
	if exact {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}, nil
	}
	if *typ != gatewayv1.HeaderMatchRegularExpression {
		return nil, fmt.Errorf("unsupported match type %q", *typ)
	}
	re, err := safeRegex(value)
	if err != nil {
		return nil, err
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: re}}, nil
}

// maxRegexInsts is waypoint/router's limit on a compiled regex.
const maxRegexInsts = 5000

// safeRegex checks a Gateway API regular expression with RE2 (Go) syntax
// and the route engine's limits.
func safeRegex(pattern string) (*matcherv3.RegexMatcher, error) {
	if pattern == "" {
		return nil, fmt.Errorf("empty regular expression")
	}
	if strings.Contains(pattern, `\C`) {
		return nil, fmt.Errorf("regular expression %q: \\C is not supported", pattern)
	}
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %w", pattern, err)
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, fmt.Errorf("regular expression %q: %w", pattern, err)
	}
	if len(prog.Inst) > maxRegexInsts {
		return nil, fmt.Errorf("regular expression %q is too large", pattern)
	}
	return &matcherv3.RegexMatcher{Regex: pattern}, nil
}

// resolved is a resolved backendRef.
type resolved struct {
	cluster string
	valid   bool
}

// resolve resolves a backend reference of route r.
func (t *translator) resolve(r *gatewayv1.HTTPRoute, ref gatewayv1.BackendObjectReference, res *routeResult) resolved {
	if (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Service") {
		res.refError(gatewayv1.RouteReasonInvalidKind, "backend %s: unsupported kind %s/%s", ref.Name, ptrStr(ref.Group), ptrStr(ref.Kind))
		return resolved{}
	}
	ns := r.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	// A consumer route may send to the Service it is attached to without a
	// ReferenceGrant: the parentRef already names it (GAMMA).
	parent := ns == t.svc.Namespace && string(ref.Name) == t.svc.Name
	if ns != r.Namespace && !parent && !t.opts.Lookup.ReferenceGranted(r.Namespace, ns, string(ref.Name)) {
		res.refError(gatewayv1.RouteReasonRefNotPermitted, "backend %s/%s: not permitted by any ReferenceGrant", ns, ref.Name)
		return resolved{}
	}
	if !t.opts.Lookup.ServiceExists(ns, string(ref.Name)) {
		res.refError(gatewayv1.RouteReasonBackendNotFound, "backend %s/%s: service not found", ns, ref.Name)
		return resolved{}
	}
	if ref.Port == nil || *ref.Port < 1 || *ref.Port > 65535 {
		res.refError(gatewayv1.RouteReasonUnsupportedValue, "backend %s/%s: port is required", ns, ref.Name)
		return resolved{}
	}
	return resolved{cluster: ClusterName(uint32(*ref.Port), Hostname(ns, string(ref.Name), t.opts.Domain)), valid: true}
}

func ptrStr[T ~string](p *T) string {
	if p == nil {
		return "<nil>"
	}
	return string(*p)
}

// invalidCluster names the cluster an invalid backendRef's share of the
// traffic goes to: it never exists, and cluster_not_found_response_code
// makes the proxy answer 500, as the spec asks.
const invalidCluster = "gamma-invalid-backend"

func directResponse(route *routev3.Route, status uint32) {
	route.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: status}}
}

// action fills in the action and the filters of route for rule.
func (t *translator) action(r *gatewayv1.HTTPRoute, rule *gatewayv1.HTTPRouteRule, route *routev3.Route, pm pathMatch, port uint32, res *routeResult) error {
	var redirect *gatewayv1.HTTPRequestRedirectFilter
	var rewrite *gatewayv1.HTTPURLRewriteFilter
	var mirrors []*routev3.RouteAction_RequestMirrorPolicy
	var hostRewrite string
	unsupported := ""
	for _, f := range rule.Filters {
		switch f.Type {
		case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
			if f.RequestHeaderModifier == nil {
				return fmt.Errorf("filter %s without its configuration", f.Type)
			}
			add, rm, host, err := headerMutations(f.RequestHeaderModifier, true)
			if err != nil {
				return err
			}
			route.RequestHeadersToAdd = append(route.RequestHeadersToAdd, add...)
			route.RequestHeadersToRemove = append(route.RequestHeadersToRemove, rm...)
			if host != "" {
				hostRewrite = host
			}
		case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
			if f.ResponseHeaderModifier == nil {
				return fmt.Errorf("filter %s without its configuration", f.Type)
			}
			add, rm, _, err := headerMutations(f.ResponseHeaderModifier, false)
			if err != nil {
				return err
			}
			route.ResponseHeadersToAdd = append(route.ResponseHeadersToAdd, add...)
			route.ResponseHeadersToRemove = append(route.ResponseHeadersToRemove, rm...)
		case gatewayv1.HTTPRouteFilterRequestRedirect:
			if f.RequestRedirect == nil {
				return fmt.Errorf("filter %s without its configuration", f.Type)
			}
			redirect = f.RequestRedirect
		case gatewayv1.HTTPRouteFilterURLRewrite:
			if f.URLRewrite == nil {
				return fmt.Errorf("filter %s without its configuration", f.Type)
			}
			rewrite = f.URLRewrite
		case gatewayv1.HTTPRouteFilterRequestMirror:
			if f.RequestMirror == nil {
				return fmt.Errorf("filter %s without its configuration", f.Type)
			}
			b := t.resolve(r, f.RequestMirror.BackendRef, res)
			if !b.valid {
				continue // nothing to mirror to; ResolvedRefs says why
			}
			mp := &routev3.RouteAction_RequestMirrorPolicy{Cluster: b.cluster}
			frac, err := mirrorFraction(f.RequestMirror)
			if err != nil {
				return err
			}
			if frac != nil {
				mp.RuntimeFraction = &corev3.RuntimeFractionalPercent{DefaultValue: frac}
			}
			mirrors = append(mirrors, mp)
		default:
			unsupported = string(f.Type)
		}
	}
	if redirect != nil && rewrite != nil {
		return fmt.Errorf("filters RequestRedirect and URLRewrite may not be combined")
	}
	if unsupported != "" {
		// The spec: a rule with a filter the implementation cannot apply is
		// answered with a 500 rather than forwarded without it.
		res.partial = append(res.partial, fmt.Sprintf("filter %s is not supported; its rule answers 500", unsupported))
		directResponse(route, 500)
		return nil
	}
	if redirect != nil {
		ra, err := t.redirectAction(redirect, pm, port)
		if err != nil {
			return err
		}
		route.Action = &routev3.Route_Redirect{Redirect: ra}
		return nil
	}

	ra := &routev3.RouteAction{Timeout: durationpb.New(0)}
	if err := applyTimeouts(rule, ra); err != nil {
		return err
	}
	if rewrite != nil {
		if err := applyRewrite(rewrite, pm, ra); err != nil {
			return err
		}
	}
	if hostRewrite != "" && ra.HostRewriteSpecifier == nil {
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: hostRewrite}
	}
	ra.RequestMirrorPolicies = mirrors

	var wcs []*routev3.WeightedCluster_ClusterWeight
	var sum uint64
	invalid := false
	for _, br := range rule.BackendRefs {
		w := uint32(1)
		if br.Weight != nil {
			if *br.Weight < 0 {
				return fmt.Errorf("backend %s: negative weight", br.Name)
			}
			w = uint32(*br.Weight)
		}
		b := t.resolve(r, br.BackendObjectReference, res)
		cw := &routev3.WeightedCluster_ClusterWeight{Name: invalidCluster, Weight: wrapperspb.UInt32(w)}
		if b.valid {
			cw.Name = b.cluster
		} else {
			invalid = true
		}
		for _, f := range br.Filters {
			switch {
			case f.Type == gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.RequestHeaderModifier != nil:
				add, rm, host, err := headerMutations(f.RequestHeaderModifier, true)
				if err != nil {
					return fmt.Errorf("backend %s: %w", br.Name, err)
				}
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = append(cw.RequestHeadersToAdd, add...), append(cw.RequestHeadersToRemove, rm...)
				if host != "" {
					cw.HostRewriteSpecifier = &routev3.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: host}
				}
			case f.Type == gatewayv1.HTTPRouteFilterResponseHeaderModifier && f.ResponseHeaderModifier != nil:
				add, rm, _, err := headerMutations(f.ResponseHeaderModifier, false)
				if err != nil {
					return fmt.Errorf("backend %s: %w", br.Name, err)
				}
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = append(cw.ResponseHeadersToAdd, add...), append(cw.ResponseHeadersToRemove, rm...)
			default:
				return fmt.Errorf("backend %s: filter %s is not supported on a backendRef", br.Name, f.Type)
			}
		}
		sum += uint64(w)
		wcs = append(wcs, cw)
	}
	switch {
	case len(wcs) == 0 || sum == 0:
		// No backends, or all weights 0: the spec's 500.
		directResponse(route, 500)
		return nil
	case sum > 1<<32-1:
		return fmt.Errorf("backend weights add up to %d, more than 2^32-1", sum)
	}
	if invalid {
		ra.ClusterNotFoundResponseCode = routev3.RouteAction_INTERNAL_SERVER_ERROR
	}
	if len(wcs) == 1 && wcs[0].RequestHeadersToAdd == nil && wcs[0].RequestHeadersToRemove == nil &&
		wcs[0].ResponseHeadersToAdd == nil && wcs[0].ResponseHeadersToRemove == nil && wcs[0].HostRewriteSpecifier == nil {
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: wcs[0].Name}
	} else {
		ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: wcs}}
	}
	route.Action = &routev3.Route_Route{Route: ra}
	return nil
}

// headerMutations translates a header modifier. A request "Host" set
// becomes a host rewrite (returned as host); other pseudo-headers and
// "host" otherwise are refused, as Envoy refuses to modify them.
func headerMutations(f *gatewayv1.HTTPHeaderFilter, request bool) (add []*corev3.HeaderValueOption, remove []string, host string, err error) {
	check := func(name string) (string, error) {
		n := strings.ToLower(name)
		if !httpguts.ValidHeaderFieldName(n) || n == "host" {
			return "", fmt.Errorf("header %q may not be modified", name)
		}
		return n, nil
	}
	checkValue := func(name, v string) error {
		if !httpguts.ValidHeaderFieldValue(v) {
			return fmt.Errorf("header %q: invalid value %q", name, v)
		}
		return nil
	}
	for _, h := range slices.Concat(f.Set, f.Add) {
		if err := checkValue(string(h.Name), h.Value); err != nil {
			return nil, nil, "", err
		}
	}
	for _, h := range f.Set {
		if request && strings.EqualFold(string(h.Name), "host") {
			if !validHost(h.Value) {
				return nil, nil, "", fmt.Errorf("header Host: invalid value %q", h.Value)
			}
			host = h.Value
			continue
		}
		n, err := check(string(h.Name))
		if err != nil {
			return nil, nil, "", err
		}
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: n, Value: escapeValue(h.Value)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, h := range f.Add {
		n, err := check(string(h.Name))
		if err != nil {
			return nil, nil, "", err
		}
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: n, Value: escapeValue(h.Value)},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	for _, name := range f.Remove {
		n, err := check(name)
		if err != nil {
			return nil, nil, "", err
		}
		remove = append(remove, n)
	}
	return add, remove, host, nil
}

// validPath reports whether p is an absolute path without query, fragment
// or characters a header may not carry.
func validPath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.ContainsAny(p, "?#") && httpguts.ValidHeaderFieldValue(p)
}

// validReplacement reports whether a replacePrefixMatch value is usable:
// empty or a valid path.
func validReplacement(p string) bool { return p == "" || validPath(p) }

// validHost reports whether h may be written as an authority.
func validHost(h string) bool {
	return h != "" && httpguts.ValidHostHeader(h) && !strings.ContainsAny(h, "/?#@")
}

// escapeValue escapes % for Envoy's substitution formatter.
func escapeValue(v string) string { return strings.ReplaceAll(v, "%", "%%") }

func mirrorFraction(m *gatewayv1.HTTPRequestMirrorFilter) (*typev3.FractionalPercent, error) {
	switch {
	case m.Percent != nil:
		if *m.Percent < 0 || *m.Percent > 100 {
			return nil, fmt.Errorf("mirror percent %d out of range", *m.Percent)
		}
		return &typev3.FractionalPercent{Numerator: uint32(*m.Percent), Denominator: typev3.FractionalPercent_HUNDRED}, nil
	case m.Fraction != nil:
		den := int64(100)
		if m.Fraction.Denominator != nil {
			den = int64(*m.Fraction.Denominator)
		}
		num := int64(m.Fraction.Numerator)
		if den <= 0 || num < 0 || num > den {
			return nil, fmt.Errorf("mirror fraction %d/%d out of range", num, den)
		}
		return &typev3.FractionalPercent{Numerator: uint32(num * 1_000_000 / den), Denominator: typev3.FractionalPercent_MILLION}, nil
	}
	return nil, nil
}

// parseDuration parses a Gateway API duration (a subset of Go's syntax).
func parseDuration(d gatewayv1.Duration) (time.Duration, error) {
	v, err := time.ParseDuration(string(d))
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", d, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("duration %q is negative", d)
	}
	return v, nil
}

func applyTimeouts(rule *gatewayv1.HTTPRouteRule, ra *routev3.RouteAction) error {
	var perTry *durationpb.Duration
	if to := rule.Timeouts; to != nil {
		if to.Request != nil {
			v, err := parseDuration(*to.Request)
			if err != nil {
				return fmt.Errorf("timeouts.request: %w", err)
			}
			ra.Timeout = durationpb.New(v)
		}
		if to.BackendRequest != nil {
			v, err := parseDuration(*to.BackendRequest)
			if err != nil {
				return fmt.Errorf("timeouts.backendRequest: %w", err)
			}
			if v > 0 {
				perTry = durationpb.New(v)
			}
		}
	}
	rt := rule.Retry
	if rt == nil && perTry == nil {
		return nil
	}
	rp := &routev3.RetryPolicy{PerTryTimeout: perTry, NumRetries: wrapperspb.UInt32(0)}
	if rt != nil {
		on := []string{"connect-failure", "refused-stream"}
		if len(rt.Codes) > 0 {
			on = append(on, "retriable-status-codes")
			for _, c := range rt.Codes {
				if c < 400 || c > 599 {
					return fmt.Errorf("retry code %d out of range", c)
				}
				rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(c))
			}
		}
		rp.RetryOn = strings.Join(on, ",")
		if rt.Attempts != nil {
			if *rt.Attempts < 0 {
				return fmt.Errorf("retry attempts %d is negative", *rt.Attempts)
			}
			rp.NumRetries = wrapperspb.UInt32(uint32(*rt.Attempts))
		} else {
			rp.NumRetries = wrapperspb.UInt32(1)
		}
		if rt.Backoff != nil {
			v, err := parseDuration(*rt.Backoff)
			if err != nil {
				return fmt.Errorf("retry.backoff: %w", err)
			}
			if v >= time.Millisecond {
				rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(v)}
			}
		}
	}
	ra.RetryPolicy = rp
	return nil
}

// prefixRewrite returns the prefix_rewrite or regex_rewrite replacing the
// matched prefix p by repl (docs/waypoint.md).
func prefixRewrite(p, repl string) (prefix string, rx *matcherv3.RegexMatchAndSubstitute) {
	p = strings.TrimRight(p, "/")
	r := strings.TrimRight(repl, "/")
	switch {
	case r == "":
		return "", &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(p) + "/*"}, Substitution: "/"}
	case p == "":
		return r + "/", nil
	}
	return r, nil
}

func applyRewrite(rw *gatewayv1.HTTPURLRewriteFilter, pm pathMatch, ra *routev3.RouteAction) error {
	if rw.Hostname != nil {
		if !validHost(string(*rw.Hostname)) {
			return fmt.Errorf("URLRewrite: invalid hostname %q", *rw.Hostname)
		}
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*rw.Hostname)}
	}
	if rw.Path == nil {
		return nil
	}
	switch rw.Path.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		if rw.Path.ReplaceFullPath == nil || !validPath(*rw.Path.ReplaceFullPath) {
			return fmt.Errorf("URLRewrite: replaceFullPath missing or invalid")
		}
		ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^.*$"},
			Substitution: strings.ReplaceAll(*rw.Path.ReplaceFullPath, `\`, `\\`)}
	case gatewayv1.PrefixMatchHTTPPathModifier:
		if rw.Path.ReplacePrefixMatch == nil || !validReplacement(*rw.Path.ReplacePrefixMatch) {
			return fmt.Errorf("URLRewrite: replacePrefixMatch missing or invalid")
		}
		if pm.kind != gatewayv1.PathMatchPathPrefix {
			return fmt.Errorf("URLRewrite: replacePrefixMatch requires a PathPrefix match")
		}
		ra.PrefixRewrite, ra.RegexRewrite = prefixRewrite(pm.value, *rw.Path.ReplacePrefixMatch)
	default:
		return fmt.Errorf("URLRewrite: unsupported path modifier %q", rw.Path.Type)
	}
	return nil
}

func (t *translator) redirectAction(rd *gatewayv1.HTTPRequestRedirectFilter, pm pathMatch, port uint32) (*routev3.RedirectAction, error) {
	ra := &routev3.RedirectAction{}
	switch {
	case rd.StatusCode == nil || *rd.StatusCode == 302:
		ra.ResponseCode = routev3.RedirectAction_FOUND
	case *rd.StatusCode == 301:
		ra.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
	case *rd.StatusCode == 303:
		ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case *rd.StatusCode == 307:
		ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case *rd.StatusCode == 308:
		ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	default:
		return nil, fmt.Errorf("RequestRedirect: unsupported status code %d", *rd.StatusCode)
	}
	if rd.Scheme != nil {
		s := strings.ToLower(*rd.Scheme)
		if s != "http" && s != "https" {
			return nil, fmt.Errorf("RequestRedirect: unsupported scheme %q", *rd.Scheme)
		}
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: s}
	}
	if rd.Hostname != nil {
		if !validHost(string(*rd.Hostname)) {
			return nil, fmt.Errorf("RequestRedirect: invalid hostname %q", *rd.Hostname)
		}
		ra.HostRedirect = string(*rd.Hostname)
	}
	switch {
	case rd.Port != nil:
		if *rd.Port < 1 || *rd.Port > 65535 {
			return nil, fmt.Errorf("RequestRedirect: invalid port %d", *rd.Port)
		}
		ra.PortRedirect = uint32(*rd.Port)
	case rd.Scheme != nil && strings.EqualFold(*rd.Scheme, "https"):
		ra.PortRedirect = 443
	case rd.Scheme != nil:
		ra.PortRedirect = 80
	default:
		ra.PortRedirect = port
	}
	if rd.Path != nil {
		switch rd.Path.Type {
		case gatewayv1.FullPathHTTPPathModifier:
			if rd.Path.ReplaceFullPath == nil || !validPath(*rd.Path.ReplaceFullPath) {
				return nil, fmt.Errorf("RequestRedirect: replaceFullPath missing or invalid")
			}
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: *rd.Path.ReplaceFullPath}
		case gatewayv1.PrefixMatchHTTPPathModifier:
			if rd.Path.ReplacePrefixMatch == nil || !validReplacement(*rd.Path.ReplacePrefixMatch) {
				return nil, fmt.Errorf("RequestRedirect: replacePrefixMatch missing or invalid")
			}
			if pm.kind != gatewayv1.PathMatchPathPrefix {
				return nil, fmt.Errorf("RequestRedirect: replacePrefixMatch requires a PathPrefix match")
			}
			prefix, rx := prefixRewrite(pm.value, *rd.Path.ReplacePrefixMatch)
			if rx != nil {
				ra.PathRewriteSpecifier = &routev3.RedirectAction_RegexRewrite{RegexRewrite: rx}
			} else {
				ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: prefix}
			}
		default:
			return nil, fmt.Errorf("RequestRedirect: unsupported path modifier %q", rd.Path.Type)
		}
	}
	return ra, nil
}

// routeConfig assembles the RouteConfiguration of one port. The listener
// chain already selected the Service by destination VIP and port, so the
// one virtual host takes every authority (GAMMA routes by the Service's
// frontend, not by Host). Consumer routes come first, each namespace's
// behind a filter_state match on the client's namespace and closed by a
// 404: for its clients they replace the producer routes. Without any
// producer route, traffic goes to the Service itself.
func (t *translator) routeConfig(port uint32, entries []entry) *routev3.RouteConfiguration {
	name := RouteConfigName(port, t.host)
	for i := range entries {
		entries[i].key.routeRank = i
	}
	slices.SortStableFunc(entries, func(a, b entry) int { return comparePrecedence(a.key, b.key) })
	consumers := map[string][]*routev3.Route{}
	var producer []*routev3.Route
	for _, e := range entries {
		if e.consumer == "" {
			producer = append(producer, e.route)
			continue
		}
		r := proto.Clone(e.route).(*routev3.Route)
		r.Match = consumerMatch(r.Match, e.consumer)
		consumers[e.consumer] = append(consumers[e.consumer], r)
	}
	var routes []*routev3.Route
	for _, ns := range slices.Sorted(maps.Keys(consumers)) {
		routes = append(routes, consumers[ns]...)
		routes = append(routes, &routev3.Route{
			Name:   ns + ".consumer-no-match",
			Match:  consumerMatch(&routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, ns),
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
		})
	}
	if len(producer) == 0 {
		producer = []*routev3.Route{{
			Name:  "default",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(port, t.host)},
				Timeout:          durationpb.New(0),
			}},
		}}
	}
	routes = append(routes, producer...)
	return &routev3.RouteConfiguration{
		Name:             name,
		ValidateClusters: wrapperspb.Bool(false),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    t.host + ":" + strconv.FormatUint(uint64(port), 10),
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

// PeerPrincipalKey is the filter state key holding the client's SPIFFE id
// (Istio's), which consumer routes select on.
const PeerPrincipalKey = "io.istio.peer_principal"

// consumerMatch narrows m (modified and returned) to clients of namespace
// ns.
func consumerMatch(m *routev3.RouteMatch, ns string) *routev3.RouteMatch {
	m.FilterState = append(m.FilterState, &matcherv3.FilterStateMatcher{
		Key: PeerPrincipalKey,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
				Regex: "spiffe://[^/]+/ns/" + regexp.QuoteMeta(ns) + "/sa/[^/]+",
			}},
		}},
	})
	return m
}
