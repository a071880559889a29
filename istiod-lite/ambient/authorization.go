package ambient

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// PolicyError is the error for a policy that could not be translated and was
// skipped. It names the policy so that the caller can log it and write a
// status condition or an Event on the object.
type PolicyError struct {
	Kind      string // "AuthorizationPolicy" or "PeerAuthentication"
	Namespace string
	Name      string
	Err       error
}

func (e *PolicyError) Error() string {
	return fmt.Sprintf("%s %s/%s: %v", e.Kind, e.Namespace, e.Name, e.Err)
}

func (e *PolicyError) Unwrap() error { return e.Err }

// Status reasons of a PolicyResult.
const (
	// ReasonAccepted: translated in full.
	ReasonAccepted = "Accepted"
	// ReasonPartiallyEnforced: translated, but it has attributes ztunnel
	// cannot enforce; they were handled fail-closed (see Message).
	ReasonPartiallyEnforced = "PartiallyEnforced"
	// ReasonNotForZtunnel: the policy targets a waypoint (targetRefs) and
	// gives no L4 policy.
	ReasonNotForZtunnel = "NotForZtunnel"
	// ReasonUnsupportedValue: the policy uses something ztunnel does not
	// support and gives no L4 policy (the AUDIT action).
	ReasonUnsupportedValue = "UnsupportedValue"
	// ReasonInvalid: the policy is invalid and was skipped.
	ReasonInvalid = "Invalid"
)

// PolicyResult is the outcome of translating one AuthorizationPolicy.
type PolicyResult struct {
	// Authorization is the L4 policy for ztunnel; nil when the policy gives
	// none (targetRefs, AUDIT, invalid).
	Authorization *workloadv1.Authorization
	// Selector is the policy's workload selector (matchLabels) when its scope
	// is WORKLOAD_SELECTOR.
	Selector map[string]string
	// UnenforcedAttributes lists, sorted, the attributes of the policy that
	// ztunnel cannot enforce (HTTP attributes and others); non-empty means
	// the policy needs a waypoint to be enforced as written.
	UnenforcedAttributes []string
	// ForWaypoint reports that the policy (or part of it) is meant for a
	// waypoint.
	ForWaypoint bool
	// Reason and Message describe the outcome for a status condition.
	Reason  string
	Message string
}

const (
	msgAllowL7 = "Within an ALLOW policy, rules with attributes ztunnel cannot enforce are omitted at L4 " +
		"(they match nothing), which is more restrictive than requested; enforce them with a waypoint."
	msgDenyL7 = "Within a DENY policy, attributes ztunnel cannot enforce are ignored at L4, " +
		"so the rules deny more broadly than requested; enforce them with a waypoint."
	msgCustom = "The CUSTOM action needs a waypoint; at L4 the policy is enforced as DENY of its rules " +
		"(attributes ztunnel cannot enforce ignored), which is more restrictive than requested."
)

// ConvertAuthorizationPolicy translates a security.istio.io
// AuthorizationPolicy to an L4 Authorization. A non-nil error is a
// *PolicyError: the policy is invalid and must be skipped. See
// docs/workload-api.md for the rules.
func ConvertAuthorizationPolicy(o Options, p *securityv1.AuthorizationPolicy) (PolicyResult, error) {
	o = o.withDefaults()
	res, err := convertAuthorizationPolicy(o, p)
	if err != nil {
		return PolicyResult{Reason: ReasonInvalid, Message: err.Error()},
			&PolicyError{Kind: "AuthorizationPolicy", Namespace: p.Namespace, Name: p.Name, Err: err}
	}
	return res, nil
}

func convertAuthorizationPolicy(o Options, p *securityv1.AuthorizationPolicy) (PolicyResult, error) {
	spec := &p.Spec
	if p.Name == "" || p.Namespace == "" {
		return PolicyResult{}, errors.New("missing name or namespace")
	}
	if err := checkUnknownFields(spec.ProtoReflect(), "spec"); err != nil {
		return PolicyResult{}, err
	}
	hasTarget := spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0
	if hasTarget && spec.GetSelector() != nil {
		return PolicyResult{}, errors.New("spec: selector and targetRef(s) are mutually exclusive")
	}
	if spec.GetProvider() != nil && spec.GetAction() != securityapi.AuthorizationPolicy_CUSTOM {
		return PolicyResult{}, fmt.Errorf("spec.provider: only allowed with action CUSTOM, not %s", spec.GetAction())
	}

	var action workloadv1.AuthorizationAction
	res := PolicyResult{Reason: ReasonAccepted}
	switch spec.GetAction() {
	case securityapi.AuthorizationPolicy_ALLOW:
		action = workloadv1.AuthorizationAction_ALLOW
	case securityapi.AuthorizationPolicy_DENY:
		action = workloadv1.AuthorizationAction_DENY
	case securityapi.AuthorizationPolicy_CUSTOM:
		if spec.GetProvider().GetName() == "" {
			return PolicyResult{}, errors.New("spec.provider.name: required with action CUSTOM")
		}
		action = workloadv1.AuthorizationAction_DENY
		res.ForWaypoint = true
	case securityapi.AuthorizationPolicy_AUDIT:
		// Validate all the same so that a broken policy is reported.
	default:
		return PolicyResult{}, fmt.Errorf("spec.action: unknown value %d", spec.GetAction())
	}

	selector := spec.GetSelector().GetMatchLabels()
	scope := workloadv1.AuthorizationScope_WORKLOAD_SELECTOR
	if len(selector) == 0 {
		selector = nil
		scope = workloadv1.AuthorizationScope_NAMESPACE
		if p.Namespace == o.RootNamespace {
			scope = workloadv1.AuthorizationScope_GLOBAL
		}
	}

	c := &ruleConverter{opts: o, namespace: p.Namespace, unenforced: map[string]bool{}}
	auth := &workloadv1.Authorization{Name: p.Name, Namespace: p.Namespace, Scope: scope, Action: action}
	for i, r := range spec.GetRules() {
		g, err := c.rule(fmt.Sprintf("spec.rules[%d]", i), r, action)
		if err != nil {
			return PolicyResult{}, err
		}
		if g != nil {
			auth.Groups = append(auth.Groups, g)
		}
	}
	res.UnenforcedAttributes = sortedKeys(c.unenforced)

	switch {
	case hasTarget:
		return PolicyResult{ForWaypoint: true, UnenforcedAttributes: res.UnenforcedAttributes, Reason: ReasonNotForZtunnel,
			Message: "The policy targets a waypoint (targetRefs); ztunnel does not enforce it."}, nil
	case spec.GetAction() == securityapi.AuthorizationPolicy_AUDIT:
		return PolicyResult{UnenforcedAttributes: res.UnenforcedAttributes, Reason: ReasonUnsupportedValue,
			Message: "ztunnel does not support the AUDIT action (it never changes a verdict); the policy is not enforced at L4."}, nil
	}
	res.Authorization = auth
	if scope == workloadv1.AuthorizationScope_WORKLOAD_SELECTOR {
		res.Selector = selector
	}
	switch {
	case spec.GetAction() == securityapi.AuthorizationPolicy_CUSTOM:
		res.Reason, res.Message = ReasonPartiallyEnforced, msgCustom
	case len(res.UnenforcedAttributes) > 0:
		res.ForWaypoint = true
		res.Reason = ReasonPartiallyEnforced
		msg := msgAllowL7
		if action == workloadv1.AuthorizationAction_DENY {
			msg = msgDenyL7
		}
		res.Message = "ztunnel cannot enforce " + strings.Join(res.UnenforcedAttributes, ", ") + ". " + msg
	}
	return res, nil
}

// ruleConverter converts the rules of one policy.
type ruleConverter struct {
	opts       Options
	namespace  string
	unenforced map[string]bool
}

// rule converts one rule to a Group. It returns a nil Group when the rule
// matches nothing at L4 (an ALLOW rule with unenforceable attributes).
func (c *ruleConverter) rule(path string, r *securityapi.Rule, action workloadv1.AuthorizationAction) (*workloadv1.Group, error) {
	if r == nil {
		return nil, fmt.Errorf("%s: empty rule", path)
	}
	unenforced := false
	mark := func(attr string) {
		unenforced = true
		c.unenforced[attr] = true
	}
	var rules []*workloadv1.Rules

	var to []*workloadv1.Match
	for i, t := range r.GetTo() {
		p := fmt.Sprintf("%s.to[%d].operation", path, i)
		op := t.GetOperation()
		if op == nil {
			return nil, fmt.Errorf("%s: required", p)
		}
		m := &workloadv1.Match{}
		var err error
		if m.DestinationPorts, err = ports(p+".ports", op.GetPorts()); err != nil {
			return nil, err
		}
		if m.NotDestinationPorts, err = ports(p+".notPorts", op.GetNotPorts()); err != nil {
			return nil, err
		}
		for _, f := range []struct {
			name   string
			values []string
		}{
			{"hosts", op.GetHosts()}, {"notHosts", op.GetNotHosts()},
			{"methods", op.GetMethods()}, {"notMethods", op.GetNotMethods()},
			{"paths", op.GetPaths()}, {"notPaths", op.GetNotPaths()},
		} {
			if len(f.values) == 0 {
				continue
			}
			if err := nonEmpty(p+"."+f.name, f.values); err != nil {
				return nil, err
			}
			mark(f.name)
		}
		to = append(to, m)
	}

	var from []*workloadv1.Match
	for i, f := range r.GetFrom() {
		p := fmt.Sprintf("%s.from[%d].source", path, i)
		src := f.GetSource()
		if src == nil {
			return nil, fmt.Errorf("%s: required", p)
		}
		m, err := c.source(p, src, mark)
		if err != nil {
			return nil, err
		}
		from = append(from, m)
	}
	if len(to) > 0 {
		rules = append(rules, &workloadv1.Rules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, &workloadv1.Rules{Matches: from})
	}

	for i, cond := range r.GetWhen() {
		p := fmt.Sprintf("%s.when[%d]", path, i)
		m, err := c.condition(p, cond, mark)
		if err != nil {
			return nil, err
		}
		if m != nil {
			rules = append(rules, &workloadv1.Rules{Matches: []*workloadv1.Match{m}})
		}
	}

	if unenforced && action == workloadv1.AuthorizationAction_ALLOW {
		// An ALLOW rule that ztunnel cannot check fully must not allow
		// anything at L4: drop it.
		return nil, nil
	}
	// DENY: the unenforceable parts were left out, so the rule denies more.
	return &workloadv1.Group{Rules: rules}, nil
}

func (c *ruleConverter) source(p string, src *securityapi.Source, mark func(string)) (*workloadv1.Match, error) {
	m := &workloadv1.Match{}
	var err error
	if len(src.GetServiceAccounts())+len(src.GetNotServiceAccounts()) > 0 &&
		len(src.GetPrincipals())+len(src.GetNotPrincipals())+len(src.GetNamespaces())+len(src.GetNotNamespaces()) > 0 {
		return nil, fmt.Errorf("%s: serviceAccounts cannot be set with principals or namespaces", p)
	}
	if m.Principals, err = stringMatches(p+".principals", src.GetPrincipals(), checkPrincipal); err != nil {
		return nil, err
	}
	if m.NotPrincipals, err = stringMatches(p+".notPrincipals", src.GetNotPrincipals(), checkPrincipal); err != nil {
		return nil, err
	}
	if m.Namespaces, err = stringMatches(p+".namespaces", src.GetNamespaces(), nil); err != nil {
		return nil, err
	}
	if m.NotNamespaces, err = stringMatches(p+".notNamespaces", src.GetNotNamespaces(), nil); err != nil {
		return nil, err
	}
	sa, err := c.serviceAccounts(p+".serviceAccounts", src.GetServiceAccounts())
	if err != nil {
		return nil, err
	}
	m.Principals = append(m.Principals, sa...)
	sa, err = c.serviceAccounts(p+".notServiceAccounts", src.GetNotServiceAccounts())
	if err != nil {
		return nil, err
	}
	m.NotPrincipals = append(m.NotPrincipals, sa...)
	if m.SourceIps, err = ipBlocks(p+".ipBlocks", src.GetIpBlocks()); err != nil {
		return nil, err
	}
	if m.NotSourceIps, err = ipBlocks(p+".notIpBlocks", src.GetNotIpBlocks()); err != nil {
		return nil, err
	}
	remote, err := ipBlocks(p+".remoteIpBlocks", src.GetRemoteIpBlocks())
	if err != nil {
		return nil, err
	}
	notRemote, err := ipBlocks(p+".notRemoteIpBlocks", src.GetNotRemoteIpBlocks())
	if err != nil {
		return nil, err
	}
	if c.opts.RemoteIPAsSourceIP {
		if len(remote) > 0 && len(m.SourceIps) > 0 {
			// Both must match, which one OR-ed list cannot say.
			return nil, fmt.Errorf("%s: ipBlocks and remoteIpBlocks cannot both be set when remote IPs are matched as source IPs", p)
		}
		m.SourceIps = append(m.SourceIps, remote...)
		// Not-lists AND together: neither may match.
		m.NotSourceIps = append(m.NotSourceIps, notRemote...)
	} else {
		if len(remote) > 0 {
			mark("remoteIpBlocks")
		}
		if len(notRemote) > 0 {
			mark("notRemoteIpBlocks")
		}
	}
	for _, f := range []struct {
		name   string
		values []string
	}{
		{"requestPrincipals", src.GetRequestPrincipals()}, {"notRequestPrincipals", src.GetNotRequestPrincipals()},
		{"trustDomains", src.GetTrustDomains()}, {"notTrustDomains", src.GetNotTrustDomains()},
	} {
		if len(f.values) == 0 {
			continue
		}
		if err := nonEmpty(p+"."+f.name, f.values); err != nil {
			return nil, err
		}
		mark(f.name)
	}
	return m, nil
}

// serviceAccounts converts "<namespace>/<sa>" or "<sa>" (the policy's
// namespace) to a principal suffix match "/ns/<namespace>/sa/<sa>", which
// identifies the service account in any trust domain.
func (c *ruleConverter) serviceAccounts(p string, values []string) ([]*workloadv1.StringMatch, error) {
	var out []*workloadv1.StringMatch
	for i, v := range values {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = c.namespace, v
		}
		if ns == "" || sa == "" || strings.ContainsAny(sa, "/*") || strings.Contains(ns, "*") || strings.TrimSpace(v) != v {
			return nil, fmt.Errorf("%s[%d]: invalid service account %q: want <namespace>/<name> or <name>, no wildcards", p, i, v)
		}
		out = append(out, &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: "/ns/" + ns + "/sa/" + sa}})
	}
	return out, nil
}

// condition converts one `when` condition. It returns nil (and marks the key)
// for a valid condition ztunnel cannot enforce.
func (c *ruleConverter) condition(p string, cond *securityapi.Condition, mark func(string)) (*workloadv1.Match, error) {
	if cond == nil {
		return nil, fmt.Errorf("%s: empty condition", p)
	}
	key := cond.GetKey()
	vals, notVals := cond.GetValues(), cond.GetNotValues()
	if len(vals)+len(notVals) == 0 {
		return nil, fmt.Errorf("%s: key %q: values or notValues required", p, key)
	}
	if err := nonEmpty(p+".values", vals); err != nil {
		return nil, err
	}
	if err := nonEmpty(p+".notValues", notVals); err != nil {
		return nil, err
	}
	if key == "remote.ip" && c.opts.RemoteIPAsSourceIP {
		key = "source.ip"
	}
	m := &workloadv1.Match{}
	var err error
	switch key {
	case "source.ip":
		if m.SourceIps, err = ipBlocks(p+".values", vals); err == nil {
			m.NotSourceIps, err = ipBlocks(p+".notValues", notVals)
		}
	case "destination.ip":
		if m.DestinationIps, err = ipBlocks(p+".values", vals); err == nil {
			m.NotDestinationIps, err = ipBlocks(p+".notValues", notVals)
		}
	case "destination.port":
		if m.DestinationPorts, err = ports(p+".values", vals); err == nil {
			m.NotDestinationPorts, err = ports(p+".notValues", notVals)
		}
	case "source.namespace":
		if m.Namespaces, err = stringMatches(p+".values", vals, nil); err == nil {
			m.NotNamespaces, err = stringMatches(p+".notValues", notVals, nil)
		}
	case "source.principal":
		if m.Principals, err = stringMatches(p+".values", vals, checkPrincipal); err == nil {
			m.NotPrincipals, err = stringMatches(p+".notValues", notVals, checkPrincipal)
		}
	case "remote.ip":
		if _, err = ipBlocks(p+".values", vals); err == nil {
			_, err = ipBlocks(p+".notValues", notVals)
		}
		if err == nil {
			mark(key)
			return nil, nil
		}
	default:
		if err := checkL7ConditionKey(key); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		mark(key)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// checkL7ConditionKey accepts the `when` keys Istio defines that only a
// waypoint can enforce, and rejects the rest.
func checkL7ConditionKey(key string) error {
	mapKey := func(prefix string) bool {
		if !strings.HasPrefix(key, prefix+"[") || !strings.HasSuffix(key, "]") {
			return false
		}
		return len(key) > len(prefix)+2
	}
	switch {
	case key == "request.auth.principal", key == "request.auth.audiences", key == "request.auth.presenter",
		key == "connection.sni":
		return nil
	case mapKey("request.headers"), mapKey("request.auth.claims"):
		return nil
	case strings.HasPrefix(key, "experimental.envoy.filters.") && strings.HasSuffix(key, "]") && strings.Contains(key, "["):
		return nil
	case key == "destination.namespace", strings.HasPrefix(key, "destination.labels"),
		key == "destination.name", key == "destination.user":
		return fmt.Errorf("unsupported attribute %q (use metadata.namespace or the workload selector)", key)
	}
	return fmt.Errorf("unknown attribute %q", key)
}

func nonEmpty(p string, values []string) error {
	for i, v := range values {
		if v == "" {
			return fmt.Errorf("%s[%d]: empty value", p, i)
		}
	}
	return nil
}

// stringMatches converts Istio's string patterns: "*" (presence),
// "prefix*", "*suffix", or an exact value. extra, if set, checks each value.
func stringMatches(p string, values []string, extra func(string) error) ([]*workloadv1.StringMatch, error) {
	var out []*workloadv1.StringMatch
	for i, v := range values {
		sm, err := stringMatch(v)
		if err == nil && extra != nil {
			err = extra(v)
		}
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", p, i, err)
		}
		out = append(out, sm)
	}
	return out, nil
}

func stringMatch(v string) (*workloadv1.StringMatch, error) {
	switch {
	case v == "":
		return nil, errors.New("empty value")
	case strings.TrimSpace(v) != v || strings.ContainsAny(v, " \t\r\n"):
		return nil, fmt.Errorf("value %q contains white space", v)
	case v == "*":
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence_{Presence: &workloadv1.StringMatch_Presence{}}}, nil
	}
	body, isSuffix := strings.CutPrefix(v, "*")
	body, isPrefix := strings.CutSuffix(body, "*")
	switch {
	case isSuffix && isPrefix, strings.Contains(body, "*"):
		return nil, fmt.Errorf("value %q: a wildcard is only allowed at the start or the end", v)
	case isSuffix:
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: body}}, nil
	case isPrefix:
		return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: body}}, nil
	}
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: v}}, nil
}

// checkPrincipal rejects principals that can never match an identity
// "<trust_domain>/ns/<namespace>/sa/<service_account>".
func checkPrincipal(v string) error {
	if strings.Contains(v, "://") {
		return fmt.Errorf("principal %q: write it without the spiffe:// scheme, as <trust_domain>/ns/<namespace>/sa/<name>", v)
	}
	if v == "*" || strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*") {
		return nil
	}
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || parts[0] == "" || parts[2] == "" || parts[4] == "" {
		return fmt.Errorf("principal %q: want <trust_domain>/ns/<namespace>/sa/<name>", v)
	}
	return nil
}

// ParseIPBlock parses an AuthorizationPolicy IP block: an address (a host
// prefix) or a CIDR, without a zone. The prefix is not masked.
func ParseIPBlock(v string) (netip.Prefix, error) {
	var pfx netip.Prefix
	var err error
	if strings.Contains(v, "/") {
		pfx, err = netip.ParsePrefix(v)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(v); err == nil {
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err == nil && pfx.Addr().Zone() != "" {
		err = errors.New("zones are not allowed")
	}
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad IP block %q: %w", v, err)
	}
	return pfx, nil
}

// ipBlocks parses addresses and CIDRs.
func ipBlocks(p string, values []string) ([]*workloadv1.IPBlock, error) {
	var out []*workloadv1.IPBlock
	for i, v := range values {
		pfx, err := ParseIPBlock(v)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", p, i, err)
		}
		pfx = pfx.Masked()
		out = append(out, &workloadv1.IPBlock{Address: pfx.Addr().AsSlice(), Length: uint32(pfx.Bits())})
	}
	return out, nil
}

// ports parses port numbers 1-65535.
func ports(p string, values []string) ([]uint32, error) {
	var out []uint32
	for i, v := range values {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%s[%d]: bad port %q: want 1-65535", p, i, v)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// checkUnknownFields fails when m or any message below it carries fields
// its schema does not know (kept by a binary decode). JSON decoded by the
// Kubernetes client drops unknown fields silently; DecodeAuthorizationPolicy
// catches those.
func checkUnknownFields(m protoreflect.Message, path string) error {
	if !m.IsValid() {
		return nil
	}
	if len(m.GetUnknown()) > 0 {
		return fmt.Errorf("%s: unknown fields", path)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + fd.JSONName()
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = checkUnknownFields(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = checkUnknownFields(mv.Message(), fmt.Sprintf("%s[%v]", p, k.Interface()))
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = checkUnknownFields(v.Message(), p)
		}
		return err == nil
	})
	return err
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return slices.Clip(out)
}
