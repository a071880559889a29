package envoymatch

import (
	"strings"
	"testing"

	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func exact(v string, ic bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}, IgnoreCase: ic}
}

func prefix(v string, ic bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v}, IgnoreCase: ic}
}

func suffix(v string, ic bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v}, IgnoreCase: ic}
}

func contains(v string, ic bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Contains{Contains: v}, IgnoreCase: ic}
}

func safeRegex(expr string, ic bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{
		MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: expr}},
		IgnoreCase:   ic,
	}
}

func TestCompileStringMatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		sm   *matcherv3.StringMatcher
		v    string
		want bool
	}{
		{"exact", exact("abc", false), "abc", true},
		{"exact other case", exact("abc", false), "ABC", false},
		{"exact longer", exact("abc", false), "abcd", false},
		{"exact ignore_case", exact("abc", true), "AbC", true},
		{"exact ignore_case other", exact("abc", true), "abd", false},
		{"exact empty", exact("", false), "", true},
		{"exact ignore_case folds ASCII only", exact("é", true), "É", false},
		{"exact ignore_case non-ASCII itself", exact("é", true), "é", true},
		{"exact ignore_case no fold across ASCII and non-ASCII", exact("k", true), "\u212a", false}, // Kelvin sign
		{"prefix", prefix("/ab", false), "/abc", true},
		{"prefix other case", prefix("/ab", false), "/ABc", false},
		{"prefix ignore_case", prefix("/ab", true), "/ABc", true},
		{"prefix ignore_case too short", prefix("/ab", true), "/A", false},
		{"prefix ignore_case non-ASCII", prefix("ä", true), "Äx", false},
		{"suffix", suffix("/sa/b", false), "ns/a/sa/b", true},
		{"suffix other case", suffix("/sa/b", false), "ns/a/SA/B", false},
		{"suffix ignore_case", suffix("/sa/b", true), "ns/a/SA/B", true},
		{"suffix ignore_case too short", suffix("/sa/b", true), "a/b", false},
		{"suffix ignore_case non-ASCII", suffix("ß", true), "xẞ", false},
		{"contains", contains("b", false), "abc", true},
		{"contains absent", contains("x", false), "abc", false},
		{"contains other case", contains("B", false), "abc", false},
		{"contains ignore_case", contains("B", true), "abc", true},
		{"contains ignore_case at end", contains("BC", true), "abc", true},
		{"contains ignore_case longer than value", contains("abcd", true), "abc", false},
		{"contains ignore_case empty", contains("", true), "", true},
		{"contains ignore_case non-ASCII", contains("ö", true), "xÖx", false},
		{"regex full", safeRegex(`\d{3}`, false), "123", true},
		{"regex not partial", safeRegex(`\d{3}`, false), "1234", false},
		{"regex alternation anchored as a whole", safeRegex("a|b", false), "ab", false},
		{"regex alternation", safeRegex("a|b", false), "b", true},
		{"regex literal prefix", safeRegex("/service/[^/]+", false), "/service/x", true},
		{"regex literal prefix mismatch", safeRegex("/service/[^/]+", false), "/other/x", false},
		{"regex own anchors", safeRegex("^/a$", false), "/a", true},
		{"regex ignore_case has no effect", safeRegex("abc", true), "ABC", false},
		{"regex inline flag", safeRegex("(?i)abc", false), "ABC", true},
		{"regex empty", safeRegex("", false), "", true},
		{"regex empty against value", safeRegex("", false), "a", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := CompileString("m", tc.sm)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Match(tc.v); got != tc.want {
				t.Errorf("Match(%q) = %v, want %v", tc.v, got, tc.want)
			}
		})
	}
}

func TestCompileStringErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		sm   *matcherv3.StringMatcher
		want string
	}{
		{"nil", nil, "m: a string matcher is required"},
		{"no pattern", &matcherv3.StringMatcher{IgnoreCase: true}, "m: string matcher has no supported match_pattern"},
		{"nil regex matcher", &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{}}, "m.safe_regex: regex matcher is required"},
		{"invalid regex", safeRegex("(", false), `m.safe_regex.regex: invalid RE2 regex "(": `},
		{"backreference", safeRegex(`(a)\1`, false), `m.safe_regex.regex: invalid RE2 regex`},
		{"too large", safeRegex(strings.Repeat("a{1000}", 6), false), "m.safe_regex.regex: regex \"a{1000}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileString("m", tc.sm)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want prefix %q", err, tc.want)
			}
		})
	}
}

func TestRegexSizeLimit(t *testing.T) {
	big := strings.Repeat("a{1000}", 6)
	_, err := CompileRegex("r", &matcherv3.RegexMatcher{Regex: big}, false)
	if err == nil || !strings.HasPrefix(err.Error(), "r.regex: ") || !strings.Contains(err.Error(), "more than the limit of 5000") {
		t.Fatalf("err = %v, want the size limit at r.regex", err)
	}
	// Just under the bound compiles.
	if _, err := CompileRegex("r", &matcherv3.RegexMatcher{Regex: "a{1000}"}, true); err != nil {
		t.Fatal(err)
	}
}

func TestCompileRegexFull(t *testing.T) {
	rm := &matcherv3.RegexMatcher{Regex: "a|b"}
	partial, err := CompileRegex("r", rm, false)
	if err != nil {
		t.Fatal(err)
	}
	if !partial.MatchString("xax") {
		t.Error("unanchored regex should match inside the value")
	}
	full, err := CompileRegex("r", rm, true)
	if err != nil {
		t.Fatal(err)
	}
	if full.MatchString("ab") || full.MatchString("xa") || !full.MatchString("a") {
		t.Error("full regex must match the whole value")
	}
	if _, err := CompileRegex("r", nil, true); err == nil || err.Error() != "r: regex matcher is required" {
		t.Errorf("nil matcher: err = %v", err)
	}
}

func TestConstructors(t *testing.T) {
	re, err := CompileFullRegex("r", &matcherv3.RegexMatcher{Regex: "a.c"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    String
		v    string
		want bool
	}{
		{"exact", Exact("v"), "v", true},
		{"exact is case-sensitive", Exact("v"), "V", false},
		{"prefix", Prefix("a"), "ab", true},
		{"suffix", Suffix("b"), "ab", true},
		{"contains", Contains("b"), "abc", true},
		{"regex", Regex(re), "abc", true},
		{"regex whole", Regex(re), "abcd", false},
		{"zero value", String{}, "", false},
	} {
		if got := tc.m.Match(tc.v); got != tc.want {
			t.Errorf("%s: Match(%q) = %v, want %v", tc.name, tc.v, got, tc.want)
		}
	}
}

func TestFoldHelpers(t *testing.T) {
	if !EqualFoldASCII("Host.Example", "host.EXAMPLE") || EqualFoldASCII("é", "É") || EqualFoldASCII("a", "ab") {
		t.Error("EqualFoldASCII")
	}
	if !HasPrefixFold("/API/v1", "/api") || HasPrefixFold("/a", "/api") {
		t.Error("HasPrefixFold")
	}
	if got := ToLowerASCII("Foo.ÉXAMPLE"); got != "foo.Éxample" {
		t.Errorf("ToLowerASCII = %q", got)
	}
	if s := "already.lower"; ToLowerASCII(s) != s {
		t.Error("ToLowerASCII changed a lower-case string")
	}
}
