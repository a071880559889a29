// Package rbac evaluates Envoy RBAC configurations
// (envoy.config.rbac.v3.RBAC) the way Envoy's RBAC filters do, for the Go
// waypoint. It is pure logic: no I/O, no goroutines.
//
//	eng, err := rbac.Compile(filter.GetRules()) // NACK the update if err != nil
//	res := eng.Evaluate(&rbac.Attributes{PeerPrincipal: id, SourceIP: src, ...})
//	if !res.Allowed { /* 403 (HTTP) or close the connection (TCP) */ }
//
// Compile runs go-control-plane's Validate, then refuses every set field
// outside the supported subset, naming its path, so the waypoint never
// enforces a policy with a condition silently ignored. A filter whose rules
// are unset allows everything; that case belongs to the caller (Compile
// refuses a nil RBAC).
//
// Deviations from Envoy: remote_ip is the same address as direct_remote_ip
// (the waypoint does not derive a client address from x-forwarded-for);
// filter_state knows only io.istio.peer_principal (Attributes.PeerPrincipal);
// regexes are Go's RE2 syntax with a 5,000-instruction bound instead of
// Envoy's program size; pseudo-headers other than :method, :path and
// :authority are refused.
package rbac

import (
	"fmt"
	"net/http"
	"net/netip"
	"sort"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
)

// Attributes are what a policy may look at. For an L4 (network filter)
// evaluation, Headers is nil and Method, Path and Host are empty: every
// header and path matcher then sees an absent value.
type Attributes struct {
	// PeerPrincipal is the SPIFFE id of the peer (the HBONE client's
	// certificate URI SAN); "" when the connection is not authenticated.
	PeerPrincipal string
	// SourceIP is the client address (direct_remote_ip, remote_ip, source_ip).
	SourceIP netip.Addr
	// DestinationIP and DestinationPort are the connection's local
	// (original destination) address.
	DestinationIP   netip.Addr
	DestinationPort uint16
	// Method, Path (:path, query included) and Host (:authority) are the
	// request's pseudo-headers.
	Method, Path, Host string
	// Headers are the request headers with canonical keys, as net/http
	// gives them; nil for L4.
	Headers http.Header
}

// Result is the outcome of an evaluation.
type Result struct {
	// Allowed says whether the request or connection may proceed.
	Allowed bool
	// Matched says whether a policy matched; Policy names the first one,
	// policies being evaluated in sorted name order (as Envoy's std::map).
	Matched bool
	Policy  string
	Action  rbacv3.RBAC_Action
}

// Engine is a compiled RBAC configuration. It is immutable and safe for
// concurrent use.
type Engine struct {
	action   rbacv3.RBAC_Action
	policies []policy
}

type policy struct {
	name        string
	permissions []matcher // OR
	principals  []matcher // OR
}

// Compile validates cfg and compiles it. Errors name the offending field's
// path.
func Compile(cfg *rbacv3.RBAC) (*Engine, error) {
	if cfg == nil {
		return nil, fmt.Errorf("rbac: nil configuration")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("rbac: invalid: %w", err)
	}
	if err := schema.Check(cfg.ProtoReflect()); err != nil {
		return nil, fmt.Errorf("rbac: %w", err)
	}
	e := &Engine{action: cfg.GetAction()}
	switch e.action {
	case rbacv3.RBAC_ALLOW, rbacv3.RBAC_DENY, rbacv3.RBAC_LOG:
	default:
		return nil, fmt.Errorf("rbac: action: %v is not supported", e.action)
	}
	names := make([]string, 0, len(cfg.GetPolicies()))
	for name := range cfg.GetPolicies() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pc := cfg.GetPolicies()[name]
		path := fmt.Sprintf("policies[%q]", name)
		p := policy{name: name}
		for i, perm := range pc.GetPermissions() {
			m, err := compilePermission(idx(joinPath(path, "permissions"), i), perm, 0)
			if err != nil {
				return nil, fmt.Errorf("rbac: %w", err)
			}
			p.permissions = append(p.permissions, m)
		}
		for i, pr := range pc.GetPrincipals() {
			m, err := compilePrincipal(idx(joinPath(path, "principals"), i), pr, 0)
			if err != nil {
				return nil, fmt.Errorf("rbac: %w", err)
			}
			p.principals = append(p.principals, m)
		}
		e.policies = append(e.policies, p)
	}
	return e, nil
}

// Action is the configuration's action.
func (e *Engine) Action() rbacv3.RBAC_Action { return e.action }

// Evaluate decides on a request (or, with no HTTP attributes, a connection).
// ALLOW: allowed iff some policy matches. DENY: allowed iff none matches.
// LOG: always allowed; Matched says whether to log.
func (e *Engine) Evaluate(a *Attributes) Result {
	if a == nil {
		a = &Attributes{}
	}
	in := newInput(a)
	res := Result{Action: e.action}
	for i := range e.policies {
		if e.policies[i].matches(in) {
			res.Matched, res.Policy = true, e.policies[i].name
			break
		}
	}
	switch e.action {
	case rbacv3.RBAC_ALLOW:
		res.Allowed = res.Matched
	case rbacv3.RBAC_DENY:
		res.Allowed = !res.Matched
	default:
		res.Allowed = true
	}
	return res
}

func (p *policy) matches(in *input) bool {
	return anyMatch(p.permissions, in) && anyMatch(p.principals, in)
}

func anyMatch(ms []matcher, in *input) bool {
	for _, m := range ms {
		if m.match(in) {
			return true
		}
	}
	return false
}

func allMatch(ms []matcher, in *input) bool {
	for _, m := range ms {
		if !m.match(in) {
			return false
		}
	}
	return true
}
