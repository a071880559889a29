package authz

import (
	"strings"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// Names of the Authorizations istiod-lite derives from PeerAuthentications
// (istiod-lite/ambient, peerauth.go). Kubernetes names cannot contain '_',
// so they never collide with a user's AuthorizationPolicy.
const (
	// StaticStrictPolicyName is the DENY-plain-text policy (in the root
	// namespace) that every workload under an effective STRICT mode lists.
	StaticStrictPolicyName = "istio_converted_static_strict"
	// PeerAuthenticationPolicyPrefix prefixes the policy converted from a
	// workload-level PeerAuthentication with port-level modes
	// ("<namespace>/converted_peer_authentication_<name>").
	PeerAuthenticationPolicyPrefix = "converted_peer_authentication_"
)

// IsPeerAuthenticationPolicyName reports whether an Authorization's name
// (without namespace) is one istiod-lite derives from a PeerAuthentication.
func IsPeerAuthenticationPolicyName(name string) bool {
	return name == StaticStrictPolicyName || strings.HasPrefix(name, PeerAuthenticationPolicyPrefix)
}

// PlaintextAllowed answers the PeerAuthentication question for an inbound
// plain-text (non-HBONE) connection to port of workload w: may it be
// accepted? It mirrors the translation, which expresses PeerAuthentication
// only through DENY policies that the workload lists:
//
//   - STRICT (effective mode): the static policy denying connections
//     without a peer identity, on every port;
//   - port-level modes: a converted policy denying plain text on every
//     port but the PERMISSIVE/DISABLE ones (STRICT overall), or only on the
//     STRICT ones (PERMISSIVE overall);
//   - PERMISSIVE, DISABLE, UNSET: nothing, so plain text is allowed.
//     DISABLE cannot be honoured for mTLS (ztunnel always accepts HBONE) and
//     is the same as PERMISSIVE.
//
// Only the PeerAuthentication-derived policies among policies that apply to
// w are considered; the result names the deciding one ("" when allowed).
// Evaluate applies the same policies to every connection, so this is the
// early, explainable answer for a plain-text listener, not an extra rule.
func PlaintextAllowed(w *workloadv1.Workload, port uint16, policies []*workloadv1.Authorization) (allowed bool, policy string) {
	e := evaluator{conn: &ConnInfo{DestinationPort: port, Destination: w}}
	if len(w.GetAddresses()) > 0 {
		// Only for completeness of the connection: the derived policies
		// never match on addresses.
		e.conn.DestinationIP = addrFromBytes(w.GetAddresses()[0])
	}
	for _, p := range policies {
		if p == nil || p.GetAction() != workloadv1.AuthorizationAction_DENY ||
			!IsPeerAuthenticationPolicyName(p.GetName()) || !Applies(p, w) {
			continue
		}
		if e.policyMatches(p) {
			return false, policyName(p)
		}
	}
	return true, ""
}
