package router

import (
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// re2Substitution converts an RE2 rewrite string (\0..\9 name capture groups,
// \\ is a backslash) into a Go regexp template ($ escaped). RE2 refuses any
// other escape and any group beyond the pattern's; so does this.
func re2Substitution(sub string, groups int) (string, error) {
	var b strings.Builder
	for i := 0; i < len(sub); i++ {
		c := sub[i]
		switch c {
		case '\\':
			if i+1 >= len(sub) {
				return "", errors.New("substitution ends with a lone backslash")
			}
			i++
			n := sub[i]
			switch {
			case n >= '0' && n <= '9':
				g := int(n - '0')
				if g > groups {
					return "", fmt.Errorf("substitution refers to group \\%d but the pattern has %d capture group(s)", g, groups)
				}
				b.WriteString("${")
				b.WriteByte(n)
				b.WriteByte('}')
			case n == '\\':
				b.WriteByte('\\')
			default:
				return "", fmt.Errorf("substitution has invalid escape \\%c (RE2 allows \\0-\\9 and \\\\)", n)
			}
		case '$':
			b.WriteString("$$")
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// regexRewrite is a compiled RegexMatchAndSubstitute: every match in the
// subject is replaced (RE2::GlobalReplace).
type regexRewrite struct {
	re       *regexp.Regexp
	template string
}

func compileRegexRewrite(path string, rs *matcherv3.RegexMatchAndSubstitute) (*regexRewrite, error) {
	re, err := envoymatch.CompileRegex(joinPath(path, "pattern"), rs.GetPattern(), false)
	if err != nil {
		return nil, err
	}
	tmpl, err := re2Substitution(rs.GetSubstitution(), re.NumSubexp())
	if err != nil {
		return nil, fieldError(joinPath(path, "substitution"), "%v", err)
	}
	return &regexRewrite{re: re, template: tmpl}, nil
}

func (r *regexRewrite) replace(s string) string { return r.re.ReplaceAllString(s, r.template) }

type pathKind uint8

const (
	pathPrefix pathKind = iota + 1
	pathExact
	pathRegex
	pathSeparatedPrefix
)

// pathMatcher is RouteMatch's path_specifier plus case_sensitive.
type pathMatcher struct {
	kind       pathKind
	value      string
	ignoreCase bool
	re         *envoymatch.FullRegexp
}

// match reports whether p (the :path without query and fragment) matches.
func (m *pathMatcher) match(p string) bool {
	switch m.kind {
	case pathPrefix:
		if m.ignoreCase {
			return envoymatch.HasPrefixFold(p, m.value)
		}
		return strings.HasPrefix(p, m.value)
	case pathExact:
		if m.ignoreCase {
			return envoymatch.EqualFoldASCII(p, m.value)
		}
		return p == m.value
	case pathRegex:
		return m.re.MatchString(p)
	case pathSeparatedPrefix:
		if len(p) < len(m.value) {
			return false
		}
		if m.ignoreCase {
			if !envoymatch.EqualFoldASCII(p[:len(m.value)], m.value) {
				return false
			}
		} else if p[:len(m.value)] != m.value {
			return false
		}
		return len(p) == len(m.value) || p[len(m.value)] == '/'
	}
	return false
}

func compilePathMatcher(path string, rm *routev3.RouteMatch) (pathMatcher, error) {
	m := pathMatcher{ignoreCase: rm.GetCaseSensitive() != nil && !rm.GetCaseSensitive().GetValue()}
	switch p := rm.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		m.kind, m.value = pathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		m.kind, m.value = pathExact, p.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		v := p.PathSeparatedPrefix
		if v == "" || strings.HasSuffix(v, "/") || strings.ContainsAny(v, "?#") {
			return m, fieldError(joinPath(path, "path_separated_prefix"), "%q must be non-empty, must not end in '/' and must not contain '?' or '#'", v)
		}
		m.kind, m.value = pathSeparatedPrefix, v
	case *routev3.RouteMatch_SafeRegex:
		re, err := envoymatch.CompileFullRegex(joinPath(path, "safe_regex"), p.SafeRegex)
		if err != nil {
			return m, err
		}
		m.kind, m.re = pathRegex, re
	default:
		return m, fieldError(path, "a path specifier (prefix, path, safe_regex or path_separated_prefix) is required")
	}
	return m, nil
}

// pseudo names the request fields that header matchers reach through
// pseudo-header names.
type pseudo uint8

const (
	pseudoNone pseudo = iota
	pseudoAuthority
	pseudoMethod
	pseudoPath
	pseudoScheme
)

func pseudoFor(lower string) (pseudo, bool) {
	switch lower {
	case ":authority", "host":
		return pseudoAuthority, true
	case ":method":
		return pseudoMethod, true
	case ":path":
		return pseudoPath, true
	case ":scheme":
		return pseudoScheme, true
	}
	return pseudoNone, !strings.HasPrefix(lower, ":")
}

// headerRef finds one header (or pseudo-header) of a request.
type headerRef struct {
	name   string // lower case, for messages
	key    string // canonical http.Header key
	pseudo pseudo
}

func newHeaderRef(path, name string) (headerRef, error) {
	lower := envoymatch.ToLowerASCII(name)
	ps, ok := pseudoFor(lower)
	if !ok {
		return headerRef{}, fieldError(path, "pseudo-header %q is not supported (only :authority, :method, :path, :scheme)", name)
	}
	return headerRef{name: lower, key: textproto.CanonicalMIMEHeaderKey(lower), pseudo: ps}, nil
}

// value returns the header's value, several values joined by "," as Envoy's
// getAllOfHeaderAsString does, and whether it is present at all.
func (h *headerRef) value(req *Request) (string, bool) {
	switch h.pseudo {
	case pseudoAuthority:
		return req.Authority, req.Authority != ""
	case pseudoMethod:
		return req.Method, req.Method != ""
	case pseudoPath:
		return req.Path, req.Path != ""
	case pseudoScheme:
		s := req.scheme()
		return s, true
	}
	vals := req.Headers[h.key]
	switch len(vals) {
	case 0:
		return "", false
	case 1:
		return vals[0], true
	}
	return strings.Join(vals, ","), true
}

type headerKind uint8

const (
	hdrPresent  headerKind = iota + 1
	hdrString              // exact (non-empty), prefix, suffix, contains, regex, string_match
	hdrAnyValue            // deprecated exact_match with an empty value: any value matches
	hdrRange
)

// headerMatcher is Envoy's HeaderMatcher.
type headerMatcher struct {
	ref            headerRef
	kind           headerKind
	present        bool
	str            envoymatch.String
	start, end     int64
	invert         bool
	missingAsEmpty bool
}

func compileHeaderMatcher(path string, hm *routev3.HeaderMatcher) (headerMatcher, error) {
	ref, err := newHeaderRef(joinPath(path, "name"), hm.GetName())
	if err != nil {
		return headerMatcher{}, err
	}
	m := headerMatcher{ref: ref, invert: hm.GetInvertMatch(), missingAsEmpty: hm.GetTreatMissingHeaderAsEmpty()}
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case nil:
		// No specifier: Envoy matches on presence.
		m.kind, m.present = hdrPresent, true
	case *routev3.HeaderMatcher_PresentMatch:
		m.kind, m.present = hdrPresent, s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		sm, err := envoymatch.CompileString(joinPath(path, "string_match"), s.StringMatch)
		if err != nil {
			return m, err
		}
		m.kind, m.str = hdrString, sm
	default:
		ok, err := compileLegacyHeaderSpecifier(path, s, &m)
		if err != nil {
			return m, err
		}
		if !ok {
			return m, fieldError(path, "unsupported header match specifier %T", s)
		}
	}
	return m, nil
}

func (m *headerMatcher) match(req *Request) bool {
	v, ok := m.ref.value(req)
	if m.kind == hdrPresent {
		return (ok == m.present) != m.invert
	}
	if !ok {
		if !m.missingAsEmpty {
			// Envoy ignores invert_match for an absent header: no match.
			return false
		}
		v = ""
	}
	var r bool
	switch m.kind {
	case hdrAnyValue:
		r = true
	case hdrString:
		r = m.str.Match(v)
	case hdrRange:
		n, err := strconv.ParseInt(strings.Trim(v, " \t\n\v\f\r"), 10, 64)
		r = err == nil && n >= m.start && n < m.end
	}
	return r != m.invert
}

// queryMatcher is Envoy's QueryParameterMatcher.
type queryMatcher struct {
	name       string
	hasPresent bool
	present    bool
	str        *envoymatch.String
}

func compileQueryMatcher(path string, qm *routev3.QueryParameterMatcher) (queryMatcher, error) {
	m := queryMatcher{name: qm.GetName()}
	switch s := qm.GetQueryParameterMatchSpecifier().(type) {
	case nil:
	case *routev3.QueryParameterMatcher_PresentMatch:
		m.hasPresent, m.present = true, s.PresentMatch
	case *routev3.QueryParameterMatcher_StringMatch:
		sm, err := envoymatch.CompileString(joinPath(path, "string_match"), s.StringMatch)
		if err != nil {
			return m, err
		}
		m.str = &sm
	default:
		return m, fieldError(path, "unsupported query parameter match specifier %T", s)
	}
	return m, nil
}

func (m *queryMatcher) match(rawPath string) bool {
	v, ok := firstQueryValue(rawPath, m.name)
	if m.hasPresent {
		return ok == m.present
	}
	if !ok {
		return false
	}
	if m.str == nil {
		return true
	}
	return m.str.Match(v)
}

// firstQueryValue finds the first value of a query parameter in a :path, as
// Envoy's parseQueryString does: the query starts after the first '?',
// parameters are split on '&', a parameter without '=' has an empty value,
// and nothing is percent-decoded.
func firstQueryValue(rawPath, name string) (string, bool) {
	q := strings.IndexByte(rawPath, '?')
	if q < 0 {
		return "", false
	}
	rest := rawPath[q+1:]
	for len(rest) > 0 {
		param := rest
		if amp := strings.IndexByte(rest, '&'); amp >= 0 {
			param, rest = rest[:amp], rest[amp+1:]
		} else {
			rest = ""
		}
		key, val := param, ""
		if eq := strings.IndexByte(param, '='); eq >= 0 {
			key, val = param[:eq], param[eq+1:]
		}
		if key == name {
			return val, true
		}
	}
	return "", false
}

// pathOnly is Envoy's removeQueryAndFragment.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// isGRPC is Envoy's Grpc::Common::isGrpcRequestHeaders: content-type is
// application/grpc or application/grpc+<subtype> (not grpc-web).
func isGRPC(req *Request) bool {
	if req.Path == "" {
		return false
	}
	ct := req.Headers["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	const g = "application/grpc"
	v := ct[0]
	return strings.HasPrefix(v, g) && (len(v) == len(g) || v[len(g)] == '+')
}
