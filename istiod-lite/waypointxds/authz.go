package waypointxds

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
)

// PeerPrincipalKey is the filter state key holding the HBONE peer's SPIFFE
// id (waypoint/rbac.PeerPrincipalKey).
const PeerPrincipalKey = "io.istio.peer_principal"

// policy is an AuthorizationPolicy that applies to the waypoint.
type policy struct {
	ap     *securityv1.AuthorizationPolicy
	key    types.NamespacedName
	action rbacv3.RBAC_Action
	// services: the served Services it applies to; nil means all (it
	// targets the Gateway or the GatewayClass).
	services map[types.NamespacedName]bool
	// invalid: the policy failed validation; it is enforced fail-closed.
	invalid  bool
	problems map[string]bool
}

func (p *policy) problem(format string, a ...any) {
	p.problems[fmt.Sprintf(format, a...)] = true
}

// TargetRefs are the policy's targetRefs, with the deprecated targetRef
// (still honoured, as Istio does) first.
func TargetRefs(ap *securityv1.AuthorizationPolicy) []*typeapi.PolicyTargetReference {
	refs := ap.Spec.GetTargetRefs()
	if r := ap.Spec.GetTargetRef(); r != nil {
		refs = append([]*typeapi.PolicyTargetReference{r}, refs...)
	}
	return refs
}

// applicablePolicies selects the AuthorizationPolicies that target the
// waypoint (its Gateway, the istio-waypoint GatewayClass from the root
// namespace, or a Service it serves), sorted by namespace and name.
func (b *builder) applicablePolicies(svcs []*corev1.Service) []*policy {
	served := map[types.NamespacedName]bool{}
	for _, s := range svcs {
		served[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = true
	}
	aps := slices.Clone(b.st.AuthorizationPolicies())
	slices.SortFunc(aps, func(x, y *securityv1.AuthorizationPolicy) int {
		if x == nil || y == nil {
			return 0
		}
		if c := strings.Compare(x.Namespace, y.Namespace); c != 0 {
			return c
		}
		return strings.Compare(x.Name, y.Name)
	})
	var out []*policy
	for _, ap := range aps {
		if ap == nil || ap.Spec.GetSelector() != nil {
			continue // selector (or nothing): ztunnel's
		}
		refs := TargetRefs(ap)
		all := false
		var svcSet map[types.NamespacedName]bool
		for _, r := range refs {
			if r.GetNamespace() != "" && r.GetNamespace() != ap.Namespace {
				continue // Istio: a target must be in the policy's namespace
			}
			switch {
			case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "Gateway":
				all = all || (ap.Namespace == b.wp.Namespace && r.GetName() == b.wp.Name)
			case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "GatewayClass":
				all = all || (ap.Namespace == b.opts.RootNamespace && r.GetName() == waypointClass)
			case (r.GetGroup() == "" || r.GetGroup() == "core") && r.GetKind() == "Service":
				k := types.NamespacedName{Namespace: ap.Namespace, Name: r.GetName()}
				if served[k] {
					if svcSet == nil {
						svcSet = map[types.NamespacedName]bool{}
					}
					svcSet[k] = true
				}
			}
		}
		if !all && svcSet == nil {
			continue
		}
		p := &policy{ap: ap, key: types.NamespacedName{Namespace: ap.Namespace, Name: ap.Name}, problems: map[string]bool{}}
		if !all {
			p.services = svcSet
		}
		// The ztunnel translation validates every field the same way.
		if _, err := ambient.ConvertAuthorizationPolicy(ambient.Options{RootNamespace: b.opts.RootNamespace}, ap); err != nil {
			p.invalid = true
			p.problem("invalid, enforced fail-closed (ALLOW: allows nothing; DENY and CUSTOM: denies everything; AUDIT: ignored): %v", err)
		}
		switch ap.Spec.GetAction() {
		case securityapi.AuthorizationPolicy_ALLOW:
			p.action = rbacv3.RBAC_ALLOW
		case securityapi.AuthorizationPolicy_DENY:
			p.action = rbacv3.RBAC_DENY
		case securityapi.AuthorizationPolicy_AUDIT:
			p.action = rbacv3.RBAC_LOG
		case securityapi.AuthorizationPolicy_CUSTOM:
			p.action = rbacv3.RBAC_DENY
			p.problem("action CUSTOM (external authorization) is not supported by the waypoint: its rules are enforced as DENY")
		default:
			p.action = rbacv3.RBAC_DENY
			p.invalid = true
			p.problem("unknown action %d, enforced as DENY of everything", ap.Spec.GetAction())
		}
		out = append(out, p)
	}
	return out
}

// policyReports lists every applied policy with its problems.
func (b *builder) policyReports() []PolicyReport {
	out := make([]PolicyReport, 0, len(b.policies))
	for _, p := range b.policies {
		r := PolicyReport{Namespace: p.key.Namespace, Name: p.key.Name}
		for m := range p.problems {
			r.Problems = append(r.Problems, m)
		}
		slices.Sort(r.Problems)
		out = append(out, r)
	}
	return out
}

// rbacConfigs returns the RBAC configurations of one chain of Service svc,
// in filter order: DENY, ALLOW, LOG (AUDIT); an action without any policy
// gets no filter. l4: a TCP chain, where HTTP attributes cannot be checked.
func (b *builder) rbacConfigs(svc types.NamespacedName, port uint32, l4 bool) []*rbacv3.RBAC {
	byAction := map[rbacv3.RBAC_Action]*rbacv3.RBAC{}
	for _, p := range b.policies {
		if p.services != nil && !p.services[svc] {
			continue
		}
		cfg := byAction[p.action]
		if cfg == nil {
			cfg = &rbacv3.RBAC{Action: p.action, Policies: map[string]*rbacv3.Policy{}}
			byAction[p.action] = cfg
		}
		prefix := "ns[" + p.key.Namespace + "]-policy[" + p.key.Name + "]"
		if p.invalid {
			if p.action == rbacv3.RBAC_DENY {
				cfg.Policies[prefix+"-invalid"] = matchAll()
			}
			continue
		}
		for i, r := range p.ap.Spec.GetRules() {
			t := &ruleTranslator{b: b, p: p, l4: l4, path: fmt.Sprintf("spec.rules[%d]", i), port: port}
			if rp := t.rule(r); rp != nil {
				cfg.Policies[prefix+"-rule["+strconv.Itoa(i)+"]"] = rp
			}
		}
	}
	var out []*rbacv3.RBAC
	for _, a := range []rbacv3.RBAC_Action{rbacv3.RBAC_DENY, rbacv3.RBAC_ALLOW, rbacv3.RBAC_LOG} {
		if cfg := byAction[a]; cfg != nil {
			out = append(out, cfg)
		}
	}
	return out
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func matchAll() *rbacv3.Policy {
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{anyPrincipal()}}
}

// ruleTranslator translates one rule of one policy for one chain.
type ruleTranslator struct {
	b    *builder
	p    *policy
	l4   bool
	path string
	port uint32
	// skipped: an attribute that cannot be checked was left out. ALLOW:
	// the rule then matches nothing; DENY and AUDIT: it matches more.
	skipped bool
}

// skip records an attribute the waypoint cannot check here.
func (t *ruleTranslator) skip(field, why string) {
	t.skipped = true
	effect := "the rule is ignored (it allows nothing)"
	if t.p.action != rbacv3.RBAC_ALLOW {
		effect = "the attribute is ignored (the rule matches more)"
	}
	t.p.problem("%s: %s; %s", field, why, effect)
}

// http marks an HTTP attribute; on a TCP chain it cannot be checked.
func (t *ruleTranslator) http(field string) bool {
	if t.l4 {
		why := fmt.Sprintf("an HTTP attribute cannot apply to TCP port %d", t.port)
		if t.port == 0 {
			why = "an HTTP attribute cannot apply to opaque TCP traffic to a workload"
		}
		t.skip(field, why)
		return false
	}
	return true
}

// rule is Istio's rule semantics: each `to` is one permission and each
// `from` one principal (OR), every field of one of them and every `when`
// condition must match (AND). It returns nil when the rule matches nothing.
func (t *ruleTranslator) rule(r *securityapi.Rule) *rbacv3.Policy {
	if r == nil {
		return nil
	}
	var whenPerm []*rbacv3.Permission
	var whenPrin []*rbacv3.Principal
	for i, c := range r.GetWhen() {
		perm, prin := t.condition(fmt.Sprintf("%s.when[%d]", t.path, i), c)
		if perm != nil {
			whenPerm = append(whenPerm, perm)
		}
		if prin != nil {
			whenPrin = append(whenPrin, prin)
		}
	}
	pol := &rbacv3.Policy{}
	for i, to := range r.GetTo() {
		terms := t.operation(fmt.Sprintf("%s.to[%d].operation", t.path, i), to.GetOperation())
		pol.Permissions = append(pol.Permissions, andPermissions(append(terms, whenPerm...)))
	}
	if len(pol.Permissions) == 0 {
		pol.Permissions = []*rbacv3.Permission{andPermissions(whenPerm)}
	}
	for i, from := range r.GetFrom() {
		terms := t.source(fmt.Sprintf("%s.from[%d].source", t.path, i), from.GetSource())
		pol.Principals = append(pol.Principals, andPrincipals(append(terms, whenPrin...)))
	}
	if len(pol.Principals) == 0 {
		pol.Principals = []*rbacv3.Principal{andPrincipals(whenPrin)}
	}
	if t.skipped && t.p.action == rbacv3.RBAC_ALLOW {
		return nil
	}
	return pol
}

func andPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	switch len(ps) {
	case 0:
		return anyPermission()
	case 1:
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func orPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

func notPermission(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

func andPrincipals(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return anyPrincipal()
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func orPrincipals(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func notPrincipal(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

// permList converts values with conv into one OR term (negated for not
// lists); nil when there are no values or one could not be converted (then
// t.skip was called).
type permConv func(field, v string) *rbacv3.Permission

func (t *ruleTranslator) permTerms(terms []*rbacv3.Permission, field string, values []string, negate bool, conv permConv) []*rbacv3.Permission {
	if len(values) == 0 {
		return terms
	}
	var or []*rbacv3.Permission
	for i, v := range values {
		p := conv(fmt.Sprintf("%s[%d]", field, i), v)
		if p == nil {
			return terms
		}
		or = append(or, p)
	}
	term := orPermissions(or)
	if negate {
		term = notPermission(term)
	}
	return append(terms, term)
}

type prinConv func(field, v string) *rbacv3.Principal

func (t *ruleTranslator) prinTerms(terms []*rbacv3.Principal, field string, values []string, negate bool, conv prinConv) []*rbacv3.Principal {
	if len(values) == 0 {
		return terms
	}
	var or []*rbacv3.Principal
	for i, v := range values {
		p := conv(fmt.Sprintf("%s[%d]", field, i), v)
		if p == nil {
			return terms
		}
		or = append(or, p)
	}
	term := orPrincipals(or)
	if negate {
		term = notPrincipal(term)
	}
	return append(terms, term)
}

func (t *ruleTranslator) operation(path string, op *securityapi.Operation) []*rbacv3.Permission {
	var terms []*rbacv3.Permission
	if op == nil {
		return nil
	}
	for _, f := range []struct {
		name   string
		values []string
		negate bool
		conv   permConv
	}{
		{"hosts", op.GetHosts(), false, t.host},
		{"notHosts", op.GetNotHosts(), true, t.host},
		{"ports", op.GetPorts(), false, t.destPort},
		{"notPorts", op.GetNotPorts(), true, t.destPort},
		{"methods", op.GetMethods(), false, t.method},
		{"notMethods", op.GetNotMethods(), true, t.method},
		{"paths", op.GetPaths(), false, t.urlPath},
		{"notPaths", op.GetNotPaths(), true, t.urlPath},
	} {
		if len(f.values) == 0 {
			continue
		}
		field := path + "." + f.name
		if f.name != "ports" && f.name != "notPorts" && !t.http(field) {
			continue
		}
		terms = t.permTerms(terms, field, f.values, f.negate, f.conv)
	}
	return terms
}

func (t *ruleTranslator) source(path string, src *securityapi.Source) []*rbacv3.Principal {
	var terms []*rbacv3.Principal
	if src == nil {
		return nil
	}
	for _, f := range []struct {
		name   string
		values []string
		negate bool
		conv   prinConv
	}{
		{"principals", src.GetPrincipals(), false, t.principal},
		{"notPrincipals", src.GetNotPrincipals(), true, t.principal},
		{"namespaces", src.GetNamespaces(), false, t.namespace},
		{"notNamespaces", src.GetNotNamespaces(), true, t.namespace},
		{"serviceAccounts", src.GetServiceAccounts(), false, t.serviceAccount},
		{"notServiceAccounts", src.GetNotServiceAccounts(), true, t.serviceAccount},
		{"ipBlocks", src.GetIpBlocks(), false, t.cidr(false)},
		{"notIpBlocks", src.GetNotIpBlocks(), true, t.cidr(false)},
		{"remoteIpBlocks", src.GetRemoteIpBlocks(), false, t.cidr(true)},
		{"notRemoteIpBlocks", src.GetNotRemoteIpBlocks(), true, t.cidr(true)},
	} {
		terms = t.prinTerms(terms, path+"."+f.name, f.values, f.negate, f.conv)
	}
	for _, f := range []struct {
		name   string
		values []string
		why    string
	}{
		{"requestPrincipals", src.GetRequestPrincipals(), "request authentication (JWT) is not supported by the waypoint"},
		{"notRequestPrincipals", src.GetNotRequestPrincipals(), "request authentication (JWT) is not supported by the waypoint"},
		{"trustDomains", src.GetTrustDomains(), "not supported by the waypoint"},
		{"notTrustDomains", src.GetNotTrustDomains(), "not supported by the waypoint"},
	} {
		if len(f.values) > 0 {
			t.skip(path+"."+f.name, f.why)
		}
	}
	return terms
}

// condition translates one `when`: values OR-ed, notValues none of them.
func (t *ruleTranslator) condition(path string, c *securityapi.Condition) (*rbacv3.Permission, *rbacv3.Principal) {
	key := c.GetKey()
	var pconv permConv
	var sconv prinConv
	switch {
	case key == "source.ip":
		sconv = t.cidr(false)
	case key == "remote.ip":
		sconv = t.cidr(true)
	case key == "source.namespace":
		sconv = t.namespace
	case key == "source.principal":
		sconv = t.principal
	case key == "destination.port":
		pconv = t.destPort
	case key == "destination.ip":
		pconv = t.destIP
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]") && len(key) > len("request.headers[]"):
		if !t.http(path) {
			return nil, nil
		}
		name := key[len("request.headers[") : len(key)-1]
		pconv = func(field, v string) *rbacv3.Permission { return t.header(field, name, v) }
	case strings.HasPrefix(key, "request.auth."):
		t.skip(path, fmt.Sprintf("%q: request authentication (JWT) is not supported by the waypoint", key))
		return nil, nil
	default:
		t.skip(path, fmt.Sprintf("%q is not supported by the waypoint", key))
		return nil, nil
	}
	if pconv != nil {
		terms := t.permTerms(nil, path+".values", c.GetValues(), false, pconv)
		terms = t.permTerms(terms, path+".notValues", c.GetNotValues(), true, pconv)
		if len(terms) == 0 {
			return nil, nil
		}
		return andPermissions(terms), nil
	}
	terms := t.prinTerms(nil, path+".values", c.GetValues(), false, sconv)
	terms = t.prinTerms(terms, path+".notValues", c.GetNotValues(), true, sconv)
	if len(terms) == 0 {
		return nil, nil
	}
	return nil, andPrincipals(terms)
}

// pattern is Istio's value syntax: "*" (any), "prefix*", "*suffix", exact.
type pattern struct {
	any            bool
	exact          string
	prefix, suffix string
	isPrefix       bool
	isSuffix       bool
}

func parsePattern(v string) (pattern, error) {
	if v == "*" {
		return pattern{any: true}, nil
	}
	body, suf := strings.CutPrefix(v, "*")
	body, pre := strings.CutSuffix(body, "*")
	switch {
	case body == "" || (suf && pre) || strings.Contains(body, "*"):
		return pattern{}, fmt.Errorf("value %q: a wildcard is only allowed alone, at the start or at the end", v)
	case suf:
		return pattern{isSuffix: true, suffix: body}, nil
	case pre:
		return pattern{isPrefix: true, prefix: body}, nil
	}
	return pattern{exact: v}, nil
}

func regexMatcher(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}

// stringMatcher converts a pattern, prepending add to exact and prefix
// values; "*" is any non-empty value.
func (p pattern) stringMatcher(add string) *matcherv3.StringMatcher {
	switch {
	case p.any:
		return regexMatcher(regexp.QuoteMeta(add) + ".+")
	case p.isPrefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: add + p.prefix}}
	case p.isSuffix:
		if add != "" {
			return regexMatcher(regexp.QuoteMeta(add) + ".*" + regexp.QuoteMeta(p.suffix))
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: p.suffix}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: add + p.exact}}
}

func (t *ruleTranslator) badValue(field string, err error) {
	t.skip(field, err.Error())
}

func peerPrincipal(sm *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key:     PeerPrincipalKey,
		Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: sm},
	}}}
}

// principal: "<td>/ns/<ns>/sa/<sa>" patterns against the peer's SPIFFE id.
// As in Istio, the trust domain "cluster.local" in a policy also means the
// mesh's own trust domain.
func (t *ruleTranslator) principal(field, v string) *rbacv3.Principal {
	p, err := parsePattern(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	m := peerPrincipal(p.stringMatcher("spiffe://"))
	td := t.b.opts.TrustDomain
	if rest, ok := strings.CutPrefix(v, "cluster.local/"); ok && td != "cluster.local" {
		alias, _ := parsePattern(td + "/" + rest)
		return orPrincipals([]*rbacv3.Principal{m, peerPrincipal(alias.stringMatcher("spiffe://"))})
	}
	return m
}

// namespace matches the namespace part of the peer's SPIFFE id.
func (t *ruleTranslator) namespace(field, v string) *rbacv3.Principal {
	p, err := parsePattern(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	var ns string
	switch {
	case p.any:
		ns = `[^/]+`
	case p.isPrefix:
		ns = regexp.QuoteMeta(p.prefix) + `[^/]*`
	case p.isSuffix:
		ns = `[^/]*` + regexp.QuoteMeta(p.suffix)
	default:
		ns = regexp.QuoteMeta(p.exact)
	}
	return peerPrincipal(regexMatcher(`spiffe://[^/]+/ns/` + ns + `/sa/[^/]+`))
}

// serviceAccount: "<ns>/<sa>" or "<sa>" (the policy's namespace).
func (t *ruleTranslator) serviceAccount(field, v string) *rbacv3.Principal {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = t.p.key.Namespace, v
	}
	if ns == "" || sa == "" || strings.ContainsAny(sa, "/*") || strings.Contains(ns, "*") {
		t.badValue(field, fmt.Errorf("invalid service account %q", v))
		return nil
	}
	return peerPrincipal(regexMatcher(`spiffe://[^/]+/ns/` + regexp.QuoteMeta(ns) + `/sa/` + regexp.QuoteMeta(sa)))
}

func parseCIDR(v string) (*corev3.CidrRange, error) {
	pfx, err := ambient.ParseIPBlock(v)
	if err != nil {
		return nil, err
	}
	if pfx.Addr().Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
	}
	pfx = pfx.Masked()
	return &corev3.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))}, nil
}

// cidr: ipBlocks are the client address ztunnel reports (direct_remote_ip);
// remoteIpBlocks are remote_ip (the same address for the Go waypoint, which
// does not trust X-Forwarded-For).
func (t *ruleTranslator) cidr(remote bool) prinConv {
	return func(field, v string) *rbacv3.Principal {
		c, err := parseCIDR(v)
		if err != nil {
			t.badValue(field, err)
			return nil
		}
		if remote {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: c}}
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: c}}
	}
}

func (t *ruleTranslator) destIP(field, v string) *rbacv3.Permission {
	c, err := parseCIDR(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: c}}
}

func (t *ruleTranslator) destPort(field, v string) *rbacv3.Permission {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		t.badValue(field, fmt.Errorf("bad port %q", v))
		return nil
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}
}

// headerPermission matches header name against a pattern ("*": present).
func headerPermission(name string, p pattern) *rbacv3.Permission {
	hm := &routev3.HeaderMatcher{Name: name}
	if p.any {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
	} else {
		hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: p.stringMatcher("")}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: hm}}
}

func (t *ruleTranslator) method(field, v string) *rbacv3.Permission {
	p, err := parsePattern(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	return headerPermission(":method", p)
}

func (t *ruleTranslator) header(field, name, v string) *rbacv3.Permission {
	if !validHeaderName(name) {
		t.badValue(field, fmt.Errorf("invalid header name %q", name))
		return nil
	}
	p, err := parsePattern(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	return headerPermission(strings.ToLower(name), p)
}

func validHeaderName(n string) bool {
	if n == "" || strings.HasPrefix(n, ":") {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// host matches :authority case-insensitively, with or without a port.
func (t *ruleTranslator) host(field, v string) *rbacv3.Permission {
	p, err := parsePattern(v)
	if err != nil {
		t.badValue(field, err)
		return nil
	}
	if p.any {
		return headerPermission(":authority", p)
	}
	const port = `(?::[0-9]+)?`
	var re string
	switch {
	case p.isPrefix:
		re = `(?i)` + regexp.QuoteMeta(p.prefix) + `.*`
	case p.isSuffix:
		re = `(?i).*` + regexp.QuoteMeta(p.suffix) + port
	default:
		re = `(?i)` + regexp.QuoteMeta(p.exact) + port
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &routev3.HeaderMatcher{
		Name:                 ":authority",
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: regexMatcher(re)},
	}}}
}

// urlPath matches the path without query: an Istio pattern (exact, "*",
// prefix*, *suffix) or a path template ({*}, {**}).
func (t *ruleTranslator) urlPath(field, v string) *rbacv3.Permission {
	var sm *matcherv3.StringMatcher
	if strings.ContainsAny(v, "{}") {
		re, err := pathTemplateRegex(v)
		if err != nil {
			t.badValue(field, err)
			return nil
		}
		sm = regexMatcher(re)
	} else {
		p, err := parsePattern(v)
		if err != nil {
			t.badValue(field, err)
			return nil
		}
		sm = p.stringMatcher("")
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: sm},
	}}}
}

// Path template operators, with the characters Envoy's uri_template lets
// them match (RFC 3986 pchar; {**} also "/"), which is what Istio compiles
// them to.
const (
	segmentChars = `[a-zA-Z0-9\-._~%!$&'()+,;:@=]`
	oneSegment   = segmentChars + `+`
	anySegments  = `[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*`
)

// pathTemplateRegex translates an Istio path template into a full-match
// RE2 regex. As Istio requires: the path starts with "/", "{*}" (exactly one
// segment) and "{**}" (the rest of the path, zero or more segments) stand
// for whole segments, "{**}" only last, and no other "{", "}" or "*".
func pathTemplateRegex(v string) (string, error) {
	if !strings.HasPrefix(v, "/") {
		return "", fmt.Errorf("path template %q must start with /", v)
	}
	segs := strings.Split(v[1:], "/")
	var b strings.Builder
	for i, seg := range segs {
		b.WriteString("/")
		switch {
		case seg == "{*}":
			b.WriteString(oneSegment)
		case seg == "{**}":
			if i != len(segs)-1 {
				return "", fmt.Errorf("path template %q: {**} must be the last segment", v)
			}
			b.WriteString(anySegments)
		case strings.ContainsAny(seg, "{}*"):
			return "", fmt.Errorf("path template %q: segment %q: {*} and {**} must be whole path segments, with no other wildcard", v, seg)
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	return b.String(), nil
}
