package rbac

import (
	"fmt"
	"net/netip"
	"net/textproto"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// PeerPrincipalKey is the only filter state key the engine knows: Istio's
// waypoints match the HBONE peer's identity through it.
const PeerPrincipalKey = "io.istio.peer_principal"

// input is an Attributes with the values matchers need prepared once.
type input struct {
	*Attributes
	src, dst netip.Addr // unmapped
}

func newInput(a *Attributes) *input {
	return &input{Attributes: a, src: a.SourceIP.Unmap(), dst: a.DestinationIP.Unmap()}
}

// matcher is one compiled Permission or Principal.
type matcher interface{ match(*input) bool }

type anyM struct{}

func (anyM) match(*input) bool { return true }

type andM []matcher

func (m andM) match(in *input) bool { return allMatch(m, in) }

type orM []matcher

func (m orM) match(in *input) bool { return anyMatch(m, in) }

type notM struct{ m matcher }

func (m notM) match(in *input) bool { return !m.m.match(in) }

type destPortM uint16

func (m destPortM) match(in *input) bool { return in.DestinationPort == uint16(m) }

type cidrM struct {
	prefix netip.Prefix
	dest   bool // destination address, else source
}

func (m cidrM) match(in *input) bool {
	a := in.src
	if m.dest {
		a = in.dst
	}
	return a.IsValid() && m.prefix.Contains(a)
}

// authenticatedM is Envoy's AuthenticatedMatcher: an unauthenticated
// connection never matches; without principal_name any peer does.
type authenticatedM struct{ name *envoymatch.String }

func (m authenticatedM) match(in *input) bool {
	if in.PeerPrincipal == "" {
		return false
	}
	return m.name == nil || m.name.Match(in.PeerPrincipal)
}

// peerPrincipalM is filter_state io.istio.peer_principal: absent (no peer
// identity) never matches.
type peerPrincipalM struct{ str envoymatch.String }

func (m peerPrincipalM) match(in *input) bool {
	return in.PeerPrincipal != "" && m.str.Match(in.PeerPrincipal)
}

// pathM is Envoy's PathMatcher: the path without query and fragment; no path
// (L4) never matches.
type pathM struct{ str envoymatch.String }

func (m pathM) match(in *input) bool {
	if in.Path == "" {
		return false
	}
	return m.str.Match(pathOnly(in.Path))
}

func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

func compilePermission(path string, p *rbacv3.Permission, depth int) (matcher, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%s: nesting deeper than %d levels", path, maxDepth)
	}
	switch r := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return anyM{}, nil
	case *rbacv3.Permission_AndRules:
		ms, err := compilePermissions(joinPath(path, "and_rules.rules"), r.AndRules.GetRules(), depth)
		return andM(ms), err
	case *rbacv3.Permission_OrRules:
		ms, err := compilePermissions(joinPath(path, "or_rules.rules"), r.OrRules.GetRules(), depth)
		return orM(ms), err
	case *rbacv3.Permission_NotRule:
		m, err := compilePermission(joinPath(path, "not_rule"), r.NotRule, depth+1)
		if err != nil {
			return nil, err
		}
		return notM{m}, nil
	case *rbacv3.Permission_Header:
		return compileHeaderMatcher(joinPath(path, "header"), r.Header)
	case *rbacv3.Permission_UrlPath:
		sm, err := compileStringMatcher(joinPath(path, "url_path.path"), r.UrlPath.GetPath())
		return pathM{sm}, err
	case *rbacv3.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return nil, fmt.Errorf("%s: port %d is out of range", joinPath(path, "destination_port"), r.DestinationPort)
		}
		return destPortM(r.DestinationPort), nil
	case *rbacv3.Permission_DestinationIp:
		pfx, err := compileCIDR(joinPath(path, "destination_ip"), r.DestinationIp)
		return cidrM{prefix: pfx, dest: true}, err
	}
	// checkSupported refuses every other rule first; this is a backstop.
	return nil, fmt.Errorf("%s: rule %T is not supported", path, p.GetRule())
}

func compilePermissions(path string, ps []*rbacv3.Permission, depth int) ([]matcher, error) {
	out := make([]matcher, 0, len(ps))
	for i, p := range ps {
		m, err := compilePermission(idx(path, i), p, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func compilePrincipal(path string, p *rbacv3.Principal, depth int) (matcher, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%s: nesting deeper than %d levels", path, maxDepth)
	}
	switch r := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return anyM{}, nil
	case *rbacv3.Principal_AndIds:
		ms, err := compilePrincipals(joinPath(path, "and_ids.ids"), r.AndIds.GetIds(), depth)
		return andM(ms), err
	case *rbacv3.Principal_OrIds:
		ms, err := compilePrincipals(joinPath(path, "or_ids.ids"), r.OrIds.GetIds(), depth)
		return orM(ms), err
	case *rbacv3.Principal_NotId:
		m, err := compilePrincipal(joinPath(path, "not_id"), r.NotId, depth+1)
		if err != nil {
			return nil, err
		}
		return notM{m}, nil
	case *rbacv3.Principal_Authenticated_:
		if r.Authenticated.GetPrincipalName() == nil {
			return authenticatedM{}, nil
		}
		sm, err := compileStringMatcher(joinPath(path, "authenticated.principal_name"), r.Authenticated.GetPrincipalName())
		return authenticatedM{name: &sm}, err
	case *rbacv3.Principal_FilterState:
		fpath := joinPath(path, "filter_state")
		if k := r.FilterState.GetKey(); k != PeerPrincipalKey {
			return nil, fmt.Errorf("%s: filter state key %q is not supported (only %q)", joinPath(fpath, "key"), k, PeerPrincipalKey)
		}
		if r.FilterState.GetStringMatch() == nil {
			return nil, fmt.Errorf("%s: a string_match is required", fpath)
		}
		sm, err := compileStringMatcher(joinPath(fpath, "string_match"), r.FilterState.GetStringMatch())
		return peerPrincipalM{sm}, err
	case *rbacv3.Principal_DirectRemoteIp:
		pfx, err := compileCIDR(joinPath(path, "direct_remote_ip"), r.DirectRemoteIp)
		return cidrM{prefix: pfx}, err
	case *rbacv3.Principal_RemoteIp:
		pfx, err := compileCIDR(joinPath(path, "remote_ip"), r.RemoteIp)
		return cidrM{prefix: pfx}, err
	case *rbacv3.Principal_SourceIp:
		// Deprecated in Envoy, where it means direct_remote_ip; Istio
		// still emits it for ipBlocks in some versions.
		//lint:ignore SA1019 deprecated in Envoy, still accepted by it
		pfx, err := compileCIDR(joinPath(path, "source_ip"), r.SourceIp)
		return cidrM{prefix: pfx}, err
	case *rbacv3.Principal_Header:
		return compileHeaderMatcher(joinPath(path, "header"), r.Header)
	case *rbacv3.Principal_UrlPath:
		sm, err := compileStringMatcher(joinPath(path, "url_path.path"), r.UrlPath.GetPath())
		return pathM{sm}, err
	}
	return nil, fmt.Errorf("%s: identifier %T is not supported", path, p.GetIdentifier())
}

func compilePrincipals(path string, ps []*rbacv3.Principal, depth int) ([]matcher, error) {
	out := make([]matcher, 0, len(ps))
	for i, p := range ps {
		m, err := compilePrincipal(idx(path, i), p, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// compileCIDR is Envoy's CidrRange: an unset prefix_len is 0; a length
// beyond the address family's is refused (Envoy refuses it too).
func compileCIDR(path string, c *corev3.CidrRange) (netip.Prefix, error) {
	addr, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: %w", joinPath(path, "address_prefix"), err)
	}
	if addr.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s: %q has a zone", joinPath(path, "address_prefix"), c.GetAddressPrefix())
	}
	plen := c.GetPrefixLen().GetValue()
	if plen > uint32(addr.BitLen()) {
		return netip.Prefix{}, fmt.Errorf("%s: %d is longer than the address (%d bits)", joinPath(path, "prefix_len"), plen, addr.BitLen())
	}
	if addr.Is4In6() && plen >= 96 {
		// Attributes are unmapped, so an IPv4-mapped range is an IPv4 one.
		addr, plen = addr.Unmap(), plen-96
	}
	return netip.PrefixFrom(addr, int(plen)).Masked(), nil
}

// headerM is Envoy's HeaderMatcher as Http::HeaderUtility::matchHeaders
// applies it: several values are joined by ","; an absent header does not
// match, inverted or not, unless treated as empty.
type headerM struct {
	key            string // canonical key; "" for a pseudo-header
	pseudo         string // ":method", ":path", ":authority"
	present        *bool
	str            envoymatch.String
	invert         bool
	missingAsEmpty bool
}

func compileHeaderMatcher(path string, hm *routev3.HeaderMatcher) (matcher, error) {
	m := headerM{invert: hm.GetInvertMatch(), missingAsEmpty: hm.GetTreatMissingHeaderAsEmpty()}
	lower := strings.ToLower(hm.GetName())
	switch lower {
	case ":method", ":path", ":authority":
		m.pseudo = lower
	case "host":
		m.pseudo = ":authority" // net/http keeps Host out of the header map
	default:
		if strings.HasPrefix(lower, ":") {
			return nil, fmt.Errorf("%s: pseudo-header %q is not supported (only :method, :path, :authority)", joinPath(path, "name"), hm.GetName())
		}
		m.key = textproto.CanonicalMIMEHeaderKey(lower)
	}
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case nil:
		t := true // no specifier: presence, as Envoy
		m.present = &t
	case *routev3.HeaderMatcher_PresentMatch:
		v := s.PresentMatch
		m.present = &v
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := compileStringMatcher(joinPath(path, "string_match"), s.StringMatch)
		if err != nil {
			return nil, err
		}
		m.str = sm
	default:
		return nil, fmt.Errorf("%s: header match specifier %T is not supported", path, s)
	}
	return m, nil
}

func (m headerM) value(in *input) (string, bool) {
	switch m.pseudo {
	case ":method":
		return in.Method, in.Method != ""
	case ":path":
		return in.Path, in.Path != ""
	case ":authority":
		return in.Host, in.Host != ""
	}
	vals := in.Headers[m.key]
	switch len(vals) {
	case 0:
		return "", false
	case 1:
		return vals[0], true
	}
	return strings.Join(vals, ","), true
}

func (m headerM) match(in *input) bool {
	v, ok := m.value(in)
	if m.present != nil {
		return (ok == *m.present) != m.invert
	}
	if !ok {
		if !m.missingAsEmpty {
			return false
		}
		v = ""
	}
	return m.str.Match(v) != m.invert
}

// compileStringMatcher is envoymatch.CompileString, except that ignore_case
// with safe_regex is refused: Envoy ignores it there ("ignore_case has no
// effect for safe_regex"), and a policy that reads as case-insensitive but
// is not could allow what it means to deny.
func compileStringMatcher(path string, sm *matcherv3.StringMatcher) (envoymatch.String, error) {
	if _, ok := sm.GetMatchPattern().(*matcherv3.StringMatcher_SafeRegex); ok && sm.GetIgnoreCase() {
		return envoymatch.String{}, fmt.Errorf("%s: ignore_case may not be combined with safe_regex", joinPath(path, "ignore_case"))
	}
	return envoymatch.CompileString(path, sm)
}
