// Package authz makes ztunnel's L4 authorization decisions: it evaluates the
// Authorization resources of the workload API (apis/workload/v1) against one
// connection, with the semantics of Istio's AuthorizationPolicy at L4, and
// answers the PeerAuthentication question "may this workload receive plain
// text on this port?" from the policies istiod-lite derives from
// PeerAuthentications.
//
// It is pure logic: no I/O, no state. Policies come from ztunnel/state
// (Store.PoliciesFor); see docs/ztunnel.md, "State and authorization".
package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// ConnInfo is what ztunnel knows about an inbound connection.
type ConnInfo struct {
	// SourceIdentity is the peer's verified SPIFFE identity. The zero value
	// means plain text (no identity): such a connection never matches a
	// principal or namespace value, so it matches every not_principals and
	// not_namespaces list.
	SourceIdentity identity.Identity
	// SourceIP is the peer's IP. An invalid (zero) address matches no IP
	// block.
	SourceIP netip.Addr
	// DestinationIP and DestinationPort are the original destination.
	DestinationIP   netip.Addr
	DestinationPort uint16
	// Destination is the workload the connection is for; it decides which
	// policies apply (their scope). nil: only GLOBAL policies apply.
	Destination *workloadv1.Workload
}

// Plaintext reports whether the connection has no peer identity.
func (c *ConnInfo) Plaintext() bool { return c.SourceIdentity.IsZero() }

// Reason says why a Decision was made.
type Reason int

const (
	// NoAllowPolicy: allowed, no DENY policy matched and no ALLOW policy
	// applies to the destination.
	NoAllowPolicy Reason = iota
	// AllowMatched: allowed by the ALLOW policy Decision.Policy.
	AllowMatched
	// DenyMatched: denied by the DENY policy Decision.Policy.
	DenyMatched
	// NoAllowMatched: denied, ALLOW policies apply to the destination and
	// none of them matched.
	NoAllowMatched
)

func (r Reason) String() string {
	switch r {
	case NoAllowPolicy:
		return "no_allow_policy"
	case AllowMatched:
		return "allow_matched"
	case DenyMatched:
		return "deny_matched"
	case NoAllowMatched:
		return "no_allow_matched"
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Decision is the verdict for one connection, with what decided it, for
// logs and metrics.
type Decision struct {
	Allowed bool
	Reason  Reason
	// Policy is "<namespace>/<name>" of the deciding policy (AllowMatched,
	// DenyMatched); empty otherwise.
	Policy string
	// AllowPolicies is how many ALLOW policies applied (NoAllowMatched: none
	// of them matched).
	AllowPolicies int
}

// PeerAuthentication reports whether the deciding policy was derived from
// a PeerAuthentication (a plain-text connection denied by STRICT mTLS).
func (d Decision) PeerAuthentication() bool {
	_, name, _ := strings.Cut(d.Policy, "/")
	return d.Reason == DenyMatched && IsPeerAuthenticationPolicyName(name)
}

func (d Decision) String() string {
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	if d.Policy != "" {
		return verdict + " (" + d.Reason.String() + " " + d.Policy + ")"
	}
	return verdict + " (" + d.Reason.String() + ")"
}

// Evaluate decides whether conn is allowed, as Istio's AuthorizationPolicy
// does at L4:
//
//  1. if any DENY policy that applies to conn.Destination matches, deny;
//  2. if no ALLOW policy applies, allow;
//  3. if any applicable ALLOW policy matches, allow; else deny.
//
// A policy applies (Applies) by its scope: GLOBAL always, NAMESPACE to
// workloads of its namespace, and any policy the workload lists in
// authorization_policies. policies is normally Store.PoliciesFor(workload),
// which holds only applicable policies; the check is repeated here so that
// a broader list cannot widen a policy's reach.
//
// Matching (see authorization.proto): a policy matches when any group
// matches; a group when all its rules match (a group with no rules matches
// everything); a rule when any of its matches matches (a rule with no
// matches matches everything, as in Istio's ztunnel); a match when every
// field that is set matches. The values of one field are OR-ed; a not_
// field matches when none of its values match. A policy with no groups
// matches nothing. Values Validate rejects (bad IP blocks, ports outside
// 1-65535, a StringMatch without a type) match nothing; the store never
// hands out such policies. Evaluate never panics, whatever the input.
func Evaluate(conn ConnInfo, policies []*workloadv1.Authorization) Decision {
	e := evaluator{conn: &conn}
	allows := 0
	for _, p := range policies {
		if p == nil || p.GetAction() != workloadv1.AuthorizationAction_DENY || !Applies(p, conn.Destination) {
			continue
		}
		if e.policyMatches(p) {
			return Decision{Reason: DenyMatched, Policy: policyName(p)}
		}
	}
	var allowed *workloadv1.Authorization
	for _, p := range policies {
		if p == nil || p.GetAction() != workloadv1.AuthorizationAction_ALLOW || !Applies(p, conn.Destination) {
			continue
		}
		allows++
		if allowed == nil && e.policyMatches(p) {
			allowed = p
		}
	}
	switch {
	case allowed != nil:
		return Decision{Allowed: true, Reason: AllowMatched, Policy: policyName(allowed), AllowPolicies: allows}
	case allows == 0:
		return Decision{Allowed: true, Reason: NoAllowPolicy}
	}
	return Decision{Reason: NoAllowMatched, AllowPolicies: allows}
}

// Applies reports whether policy p applies to workload w by its scope:
// GLOBAL policies apply to every workload, NAMESPACE policies to the
// workloads of their namespace, and a workload's authorization_policies
// ("<namespace>/<name>") name the others (normally WORKLOAD_SELECTOR
// ones). With w nil only GLOBAL policies apply.
func Applies(p *workloadv1.Authorization, w *workloadv1.Workload) bool {
	switch p.GetScope() {
	case workloadv1.AuthorizationScope_GLOBAL:
		return true
	case workloadv1.AuthorizationScope_NAMESPACE:
		if w != nil && w.GetNamespace() == p.GetNamespace() {
			return true
		}
	}
	if w == nil {
		return false
	}
	ns, name := p.GetNamespace(), p.GetName()
	for _, s := range w.GetAuthorizationPolicies() {
		if len(s) == len(ns)+1+len(name) && s[len(ns)] == '/' && s[:len(ns)] == ns && s[len(ns)+1:] == name {
			return true
		}
	}
	return false
}

func policyName(p *workloadv1.Authorization) string {
	return p.GetNamespace() + "/" + p.GetName()
}

// evaluator matches one connection; it builds the principal string once,
// on first use.
type evaluator struct {
	conn      *ConnInfo
	principal string
	built     bool
}

func (e *evaluator) policyMatches(p *workloadv1.Authorization) bool {
	for _, g := range p.GetGroups() {
		if e.groupMatches(g) {
			return true
		}
	}
	return false
}

func (e *evaluator) groupMatches(g *workloadv1.Group) bool {
	for _, r := range g.GetRules() {
		if !e.rulesMatch(r) {
			return false
		}
	}
	return true
}

func (e *evaluator) rulesMatch(r *workloadv1.Rules) bool {
	ms := r.GetMatches()
	if len(ms) == 0 {
		return true
	}
	for _, m := range ms {
		if e.matchMatches(m) {
			return true
		}
	}
	return false
}

func (e *evaluator) matchMatches(m *workloadv1.Match) bool {
	c := e.conn
	if !portsMatch(m.GetDestinationPorts(), m.GetNotDestinationPorts(), c.DestinationPort) {
		return false
	}
	if !ipsMatch(m.GetDestinationIps(), m.GetNotDestinationIps(), c.DestinationIP) {
		return false
	}
	if !ipsMatch(m.GetSourceIps(), m.GetNotSourceIps(), c.SourceIP) {
		return false
	}
	if len(m.GetNamespaces())+len(m.GetNotNamespaces()) > 0 {
		if !stringsMatch(m.GetNamespaces(), m.GetNotNamespaces(), c.SourceIdentity.Namespace, !c.Plaintext()) {
			return false
		}
	}
	if len(m.GetPrincipals())+len(m.GetNotPrincipals()) > 0 {
		if !e.built {
			if !c.Plaintext() {
				id := c.SourceIdentity
				e.principal = id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
			}
			e.built = true
		}
		if !stringsMatch(m.GetPrincipals(), m.GetNotPrincipals(), e.principal, !c.Plaintext()) {
			return false
		}
	}
	return true
}

// stringsMatch applies a positive and a negative list to v; with have
// false (no identity) no value matches.
func stringsMatch(pos, neg []*workloadv1.StringMatch, v string, have bool) bool {
	if len(pos) > 0 {
		if !have || !anyString(pos, v) {
			return false
		}
	}
	return !have || !anyString(neg, v)
}

func anyString(ms []*workloadv1.StringMatch, v string) bool {
	for _, m := range ms {
		if StringMatches(m, v) {
			return true
		}
	}
	return false
}

// StringMatches reports whether m matches v: exact, prefix, suffix, or
// presence (any non-empty value). A StringMatch with no type matches
// nothing.
func StringMatches(m *workloadv1.StringMatch, v string) bool {
	switch t := m.GetMatchType().(type) {
	case *workloadv1.StringMatch_Exact:
		return v == t.Exact
	case *workloadv1.StringMatch_Prefix:
		return strings.HasPrefix(v, t.Prefix)
	case *workloadv1.StringMatch_Suffix:
		return strings.HasSuffix(v, t.Suffix)
	case *workloadv1.StringMatch_Presence_:
		return v != ""
	}
	return false
}

func portsMatch(pos, neg []uint32, port uint16) bool {
	if len(pos) > 0 && !containsPort(pos, port) {
		return false
	}
	return len(neg) == 0 || !containsPort(neg, port)
}

func containsPort(ports []uint32, port uint16) bool {
	for _, p := range ports {
		if p == uint32(port) && p != 0 {
			return true
		}
	}
	return false
}

func ipsMatch(pos, neg []*workloadv1.IPBlock, ip netip.Addr) bool {
	if len(pos) > 0 && !anyBlock(pos, ip) {
		return false
	}
	return len(neg) == 0 || !anyBlock(neg, ip)
}

func anyBlock(blocks []*workloadv1.IPBlock, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, b := range blocks {
		if pfx, ok := blockPrefix(b); ok && pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// blockPrefix converts an IPBlock; ok is false for a malformed one.
func blockPrefix(b *workloadv1.IPBlock) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(b.GetAddress())
	if !ok {
		return netip.Prefix{}, false
	}
	bits := b.GetLength()
	if addr.Is4In6() && bits >= 96 {
		// An IPv4-mapped IPv6 block is the IPv4 block; connection
		// addresses are compared unmapped.
		addr, bits = addr.Unmap(), bits-96
	}
	if bits > uint32(addr.BitLen()) {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, int(bits)), true
}

// Validate reports what is malformed in an Authorization, or nil: missing
// name or namespace, an unknown scope or action, nil groups, rules or
// matches, a StringMatch without a type, an IP block whose address is not
// 4 or 16 bytes or whose length exceeds it, a port outside 1-65535. The
// store rejects (NACKs) such resources rather than guessing: Istio's
// ztunnel silently drops bad IP blocks, which turns a positive list that
// held only bad blocks into "any IP".
func Validate(p *workloadv1.Authorization) error {
	if p == nil {
		return errors.New("nil authorization")
	}
	if p.GetName() == "" || p.GetNamespace() == "" {
		return errors.New("missing name or namespace")
	}
	if _, ok := workloadv1.AuthorizationScope_name[int32(p.GetScope())]; !ok {
		return fmt.Errorf("unknown scope %d", p.GetScope())
	}
	if _, ok := workloadv1.AuthorizationAction_name[int32(p.GetAction())]; !ok {
		return fmt.Errorf("unknown action %d", p.GetAction())
	}
	for gi, g := range p.GetGroups() {
		if g == nil {
			return fmt.Errorf("groups[%d]: nil", gi)
		}
		for ri, r := range g.GetRules() {
			if r == nil {
				return fmt.Errorf("groups[%d].rules[%d]: nil", gi, ri)
			}
			for mi, m := range r.GetMatches() {
				if err := validateMatch(m); err != nil {
					return fmt.Errorf("groups[%d].rules[%d].matches[%d].%w", gi, ri, mi, err)
				}
			}
		}
	}
	return nil
}

func validateMatch(m *workloadv1.Match) error {
	if m == nil {
		return errors.New("nil")
	}
	for _, f := range []struct {
		name string
		v    []*workloadv1.StringMatch
	}{
		{"namespaces", m.GetNamespaces()}, {"not_namespaces", m.GetNotNamespaces()},
		{"principals", m.GetPrincipals()}, {"not_principals", m.GetNotPrincipals()},
	} {
		for i, s := range f.v {
			if s.GetMatchType() == nil {
				return fmt.Errorf("%s[%d]: no match type", f.name, i)
			}
		}
	}
	for _, f := range []struct {
		name string
		v    []*workloadv1.IPBlock
	}{
		{"source_ips", m.GetSourceIps()}, {"not_source_ips", m.GetNotSourceIps()},
		{"destination_ips", m.GetDestinationIps()}, {"not_destination_ips", m.GetNotDestinationIps()},
	} {
		for i, b := range f.v {
			if _, ok := blockPrefix(b); !ok {
				return fmt.Errorf("%s[%d]: bad IP block (%d address bytes, length %d)", f.name, i, len(b.GetAddress()), b.GetLength())
			}
		}
	}
	for _, f := range []struct {
		name string
		v    []uint32
	}{
		{"destination_ports", m.GetDestinationPorts()}, {"not_destination_ports", m.GetNotDestinationPorts()},
	} {
		for i, p := range f.v {
			if p == 0 || p > 65535 {
				return fmt.Errorf("%s[%d]: bad port %d", f.name, i, p)
			}
		}
	}
	return nil
}

// addrFromBytes converts a 4- or 16-byte address (unmapped); invalid for
// anything else.
func addrFromBytes(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}
