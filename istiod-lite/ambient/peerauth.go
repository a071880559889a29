package ambient

import (
	"errors"
	"fmt"
	"slices"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// mtlsMode is a PeerAuthentication mode as ztunnel sees it: DISABLE is the
// same as PERMISSIVE at L4 (ztunnel always accepts mTLS).
type mtlsMode int

const (
	mtlsUnset mtlsMode = iota
	mtlsPermissive
	mtlsStrict
)

func convertMode(m *securityapi.PeerAuthentication_MutualTLS) (mtlsMode, error) {
	switch m.GetMode() {
	case securityapi.PeerAuthentication_MutualTLS_UNSET:
		return mtlsUnset, nil
	case securityapi.PeerAuthentication_MutualTLS_PERMISSIVE, securityapi.PeerAuthentication_MutualTLS_DISABLE:
		return mtlsPermissive, nil
	case securityapi.PeerAuthentication_MutualTLS_STRICT:
		return mtlsStrict, nil
	}
	return mtlsUnset, fmt.Errorf("unknown mTLS mode %d", m.GetMode())
}

// peerAuth is a validated PeerAuthentication.
type peerAuth struct {
	namespace, name string
	created         int64 // creation time, unix nanos, for "oldest wins"
	selector        map[string]string
	mode            mtlsMode
	// portModes: non-UNSET port-level modes by (target) port.
	portModes map[uint32]mtlsMode
}

// key orders policies the way Istio picks among conflicting ones: the
// oldest wins, ties broken by name.
func (p *peerAuth) olderThan(q *peerAuth) bool {
	if p.created != q.created {
		return p.created < q.created
	}
	return p.name < q.name
}

func (p *peerAuth) resourceName() string {
	return AuthorizationResourceName(p.namespace, peerAuthPolicyPrefix+p.name)
}

// parsePeerAuthentication validates a PeerAuthentication. A non-nil error is
// a *PolicyError: the policy must be skipped.
func parsePeerAuthentication(p *securityv1.PeerAuthentication) (*peerAuth, error) {
	pa, err := parsePeerAuth(p)
	if err != nil {
		return nil, &PolicyError{Kind: "PeerAuthentication", Namespace: p.Namespace, Name: p.Name, Err: err}
	}
	return pa, nil
}

func parsePeerAuth(p *securityv1.PeerAuthentication) (*peerAuth, error) {
	if p.Name == "" || p.Namespace == "" {
		return nil, errors.New("missing name or namespace")
	}
	spec := &p.Spec
	if err := checkUnknownFields(spec.ProtoReflect(), "spec"); err != nil {
		return nil, err
	}
	pa := &peerAuth{namespace: p.Namespace, name: p.Name, created: p.CreationTimestamp.UnixNano()}
	if sel := spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
		pa.selector = sel
	}
	var err error
	if pa.mode, err = convertMode(spec.GetMtls()); err != nil {
		return nil, fmt.Errorf("spec.mtls: %w", err)
	}
	if len(spec.GetPortLevelMtls()) > 0 && pa.selector == nil {
		return nil, errors.New("spec.portLevelMtls: requires a workload selector")
	}
	for port, m := range spec.GetPortLevelMtls() {
		if port == 0 || port > 65535 {
			return nil, fmt.Errorf("spec.portLevelMtls: bad port %d", port)
		}
		if m == nil {
			return nil, fmt.Errorf("spec.portLevelMtls[%d]: empty", port)
		}
		mode, err := convertMode(m)
		if err != nil {
			return nil, fmt.Errorf("spec.portLevelMtls[%d]: %w", port, err)
		}
		if mode != mtlsUnset {
			if pa.portModes == nil {
				pa.portModes = map[uint32]mtlsMode{}
			}
			pa.portModes[port] = mode
		}
	}
	return pa, nil
}

// staticStrictPolicy denies every connection without a peer identity (plain
// text), for the workloads that list it. It is Istio's static STRICT policy.
func staticStrictPolicy(rootNamespace string) *workloadv1.Authorization {
	return &workloadv1.Authorization{
		Name:      StaticStrictPolicyName,
		Namespace: rootNamespace,
		Scope:     workloadv1.AuthorizationScope_WORKLOAD_SELECTOR,
		Action:    workloadv1.AuthorizationAction_DENY,
		Groups: []*workloadv1.Group{{Rules: []*workloadv1.Rules{{Matches: []*workloadv1.Match{{
			NotPrincipals: []*workloadv1.StringMatch{presence()},
		}}}}}},
	}
}

func presence() *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence_{Presence: &workloadv1.StringMatch_Presence{}}}
}

// portLevelPolicy converts a workload-level PeerAuthentication with
// port-level modes, given whether the workload is STRICT by inheritance
// (mesh, namespace and the policy's own mode). It returns nil when the
// port-level modes change nothing (the workload is then simply strict or
// not).
//
//   - strict overall, some ports PERMISSIVE/DISABLE: deny plain text except
//     on those ports;
//   - not strict overall, some ports STRICT: deny plain text on those ports.
func portLevelPolicy(pa *peerAuth, strict bool) *workloadv1.Authorization {
	var exceptions []uint32
	for port, m := range pa.portModes {
		if (strict && m == mtlsPermissive) || (!strict && m == mtlsStrict) {
			exceptions = append(exceptions, port)
		}
	}
	if len(exceptions) == 0 {
		return nil
	}
	slices.Sort(exceptions)
	match := &workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{presence()}}
	if strict {
		match.NotDestinationPorts = exceptions
	} else {
		match.DestinationPorts = exceptions
	}
	return &workloadv1.Authorization{
		Name:      peerAuthPolicyPrefix + pa.name,
		Namespace: pa.namespace,
		Scope:     workloadv1.AuthorizationScope_WORKLOAD_SELECTOR,
		Action:    workloadv1.AuthorizationAction_DENY,
		Groups:    []*workloadv1.Group{{Rules: []*workloadv1.Rules{{Matches: []*workloadv1.Match{match}}}}},
	}
}

// selects reports whether selector (matchLabels) selects labels. An empty
// selector selects nothing here: callers treat it as "no selector".
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}
