// Package envoymatch implements Envoy's StringMatcher and RE2 regex
// semantics on Go's regexp, for the route engine (waypoint/router) and the
// RBAC engine (waypoint/rbac): safe_regex matches the whole value
// (RE2::FullMatch), ignore_case folds ASCII letters only (as Envoy's absl
// helpers do), and a regex's compiled size is bounded.
//
// Errors have the shape "<field path>: message"; the paths come from the
// callers.
package envoymatch

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/ambit-mesh/ambit/waypoint/internal/protoschema"
)

// MaxRegexInsts bounds the size of a compiled regular expression (Go's
// instruction count). Envoy rejects RE2 programs above 100 by default
// (re2.max_program_size.error_level); the two measures are not the same unit,
// so the bound here is generous: it only keeps absurd patterns out of memory.
const MaxRegexInsts = 5000

func fieldError(path string, format string, args ...any) error {
	return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
}

// CompileRegex compiles an Envoy RegexMatcher (RE2 syntax) with Go's regexp;
// path names the RegexMatcher. full anchors it so that it must match the
// whole input, as Envoy's safe_regex matchers do (RE2::FullMatch).
func CompileRegex(path string, rm *matcherv3.RegexMatcher, full bool) (*regexp.Regexp, error) {
	if rm == nil {
		return nil, fieldError(path, "regex matcher is required")
	}
	expr := rm.GetRegex()
	if err := checkRegexSize(expr); err != nil {
		return nil, fieldError(protoschema.JoinPath(path, "regex"), "%v", err)
	}
	if full {
		expr = `^(?:` + expr + `)$`
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fieldError(protoschema.JoinPath(path, "regex"), "invalid RE2 regex %q: %v", rm.GetRegex(), err)
	}
	return re, nil
}

func checkRegexSize(expr string) error {
	parsed, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return fmt.Errorf("invalid RE2 regex %q: %w", expr, err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return fmt.Errorf("invalid RE2 regex %q: %w", expr, err)
	}
	if n := len(prog.Inst); n > MaxRegexInsts {
		return fmt.Errorf("regex %q compiles to %d instructions, more than the limit of %d", expr, n, MaxRegexInsts)
	}
	return nil
}

// FullRegexp is a regex anchored at both ends, with the literal prefix every
// match must start with checked first (a cheap rejection for the common
// "/service/[^/]+" shapes).
type FullRegexp struct {
	re     *regexp.Regexp
	prefix string
}

// CompileFullRegex is CompileRegex with full set, as a FullRegexp.
func CompileFullRegex(path string, rm *matcherv3.RegexMatcher) (*FullRegexp, error) {
	re, err := CompileRegex(path, rm, true)
	if err != nil {
		return nil, err
	}
	prefix, _ := re.LiteralPrefix()
	return &FullRegexp{re: re, prefix: prefix}, nil
}

// MatchString reports whether the whole of s matches.
func (f *FullRegexp) MatchString(s string) bool {
	return strings.HasPrefix(s, f.prefix) && f.re.MatchString(s)
}

type kind uint8

const (
	kindExact kind = iota + 1
	kindPrefix
	kindSuffix
	kindContains
	kindRegex
)

// String is a compiled StringMatcher. Its zero value matches nothing.
type String struct {
	kind       kind
	value      string
	ignoreCase bool
	re         *FullRegexp
}

// Exact matches a value equal to v.
func Exact(v string) String { return String{kind: kindExact, value: v} }

// Prefix matches a value starting with v.
func Prefix(v string) String { return String{kind: kindPrefix, value: v} }

// Suffix matches a value ending with v.
func Suffix(v string) String { return String{kind: kindSuffix, value: v} }

// Contains matches a value containing v.
func Contains(v string) String { return String{kind: kindContains, value: v} }

// Regex matches a value re matches as a whole.
func Regex(re *FullRegexp) String { return String{kind: kindRegex, re: re} }

// CompileString compiles an Envoy StringMatcher; path names it. ignore_case
// folds ASCII letters only; with safe_regex it is ignored (Envoy: "has no
// effect for safe_regex"), so a caller that must not accept it refuses it
// first.
func CompileString(path string, sm *matcherv3.StringMatcher) (String, error) {
	if sm == nil {
		return String{}, fieldError(path, "a string matcher is required")
	}
	m := String{ignoreCase: sm.GetIgnoreCase()}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.kind, m.value = kindExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		m.kind, m.value = kindPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		m.kind, m.value = kindSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		m.kind, m.value = kindContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := CompileFullRegex(protoschema.JoinPath(path, "safe_regex"), p.SafeRegex)
		if err != nil {
			return String{}, err
		}
		m.kind, m.re, m.ignoreCase = kindRegex, re, false
	default:
		return String{}, fieldError(path, "string matcher has no supported match_pattern")
	}
	return m, nil
}

// Match reports whether v matches.
func (m *String) Match(v string) bool {
	switch m.kind {
	case kindExact:
		if m.ignoreCase {
			return EqualFoldASCII(v, m.value)
		}
		return v == m.value
	case kindPrefix:
		if m.ignoreCase {
			return HasPrefixFold(v, m.value)
		}
		return strings.HasPrefix(v, m.value)
	case kindSuffix:
		if m.ignoreCase {
			return hasSuffixFold(v, m.value)
		}
		return strings.HasSuffix(v, m.value)
	case kindContains:
		if m.ignoreCase {
			return containsFold(v, m.value)
		}
		return strings.Contains(v, m.value)
	case kindRegex:
		return m.re.MatchString(v)
	}
	return false
}

// ASCII case folding, as absl's *IgnoreCase helpers do (Envoy's ignore_case
// and case_sensitive: false fold ASCII letters only).
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// EqualFoldASCII reports whether a and b are equal with ASCII letters folded.
func EqualFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] != b[i] && lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

// HasPrefixFold is strings.HasPrefix with ASCII letters folded.
func HasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && EqualFoldASCII(s[:len(prefix)], prefix)
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && EqualFoldASCII(s[len(s)-len(suffix):], suffix)
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if EqualFoldASCII(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// ToLowerASCII lowers ASCII letters only; s itself is returned when it has
// none to lower.
func ToLowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				b[j] = lowerASCII(b[j])
			}
			return string(b)
		}
	}
	return s
}
