package router

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Every field the allowlist names must exist: a typo would silently refuse a
// supported field.
func TestSupportedFieldsExist(t *testing.T) {
	for msg, fields := range supportedFields {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(msg)
		if err != nil {
			t.Errorf("%s: %v", msg, err)
			continue
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok {
			t.Errorf("%s is not a message", msg)
			continue
		}
		for _, f := range fields {
			fd := md.Fields().ByName(f)
			if fd == nil {
				t.Errorf("%s has no field %s", msg, f)
				continue
			}
			if m := fd.Message(); m != nil && !fd.IsMap() {
				if _, ok := supportedFields[m.FullName()]; !ok && !leafTypes[m.FullName()] {
					t.Errorf("%s.%s: message type %s is neither walked nor a leaf", msg, f, m.FullName())
				}
			}
		}
	}
}

func TestVirtualHostSelection(t *testing.T) {
	cfg := `{"name":"rc","virtual_hosts":[
	  {"name":"exact","domains":["foo.example.com","Mixed.Example.com","bar.example.com:8080","[::1]"],"routes":[{"name":"exact","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"suffix","domains":["*.example.com"],"routes":[{"name":"suffix","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"longsuffix","domains":["*-bar.example.com"],"routes":[{"name":"longsuffix","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"prefix","domains":["api.*"],"routes":[{"name":"prefix","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"star","domains":["*"],"routes":[{"name":"star","match":{"prefix":"/"},"route":{"cluster":"c"}}]}
	]}`
	tbl := mustCompile(t, cfg)
	cases := []struct{ authority, want string }{
		{"foo.example.com", "exact"},
		{"FOO.Example.COM", "exact"},        // host is lower-cased, as Envoy
		{"mixed.example.com", "exact"},      // domains are lower-cased too
		{"foo.example.com:80", "star"},      // the port is part of the host: neither exact nor suffix
		{"bar.example.com:8080", "exact"},   // a domain with a port matches that port only
		{"bar.example.com", "suffix"},       //
		{"x-bar.example.com", "longsuffix"}, // longest suffix wins
		{"x.example.com", "suffix"},
		{".example.com", "star"},       // the wildcard must match at least one character
		{"-bar.example.com", "suffix"}, // likewise for the longer one
		{"api.other.org", "prefix"},    // prefix wildcard after suffix
		{"api.example.com", "suffix"},  // suffix wildcards come before prefix wildcards
		{"api.", "star"},
		{"[::1]", "exact"},
		{"", "star"},
		{"unknown.org", "star"},
	}
	for _, c := range cases {
		if got := routeName(t, tbl, newReq(c.authority, "GET", "/")); got != c.want {
			t.Errorf("authority %q: got %s, want %s", c.authority, got, c.want)
		}
	}

	// Without a "*" virtual host an unknown authority has no route.
	tbl = mustCompile(t, `{"virtual_hosts":[{"name":"a","domains":["a"],"routes":[{"name":"a","match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`)
	if got := routeName(t, tbl, newReq("b", "GET", "/")); got != "<none>" {
		t.Errorf("unknown authority without \"*\": got %s", got)
	}
}

func TestIgnorePortInHostMatching(t *testing.T) {
	tbl := mustCompile(t, `{"ignore_port_in_host_matching":true,"virtual_hosts":[
	  {"name":"a","domains":["a.svc"],"routes":[{"name":"a","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"v6","domains":["[fd00::1]"],"routes":[{"name":"v6","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"star","domains":["*"],"routes":[{"name":"star","match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`)
	for _, c := range []struct{ authority, want string }{
		{"a.svc", "a"},
		{"a.svc:80", "a"},
		{"a.svc:9999", "a"},
		{"a.svc:", "star"},     // no port digits: not stripped
		{"a.svc:http", "star"}, // not a numeric port
		{"[fd00::1]:80", "v6"}, // IPv6 literal
		{"[fd00::1]", "v6"},    // colons inside brackets are not a port
		{"fd00::1", "star"},    // unbracketed: the last group looks like a port
		{"A.SVC:8080", "a"},    // case and port
		{"b.svc:80", "star"},   // no such host
		{"a.svc:99999999999", "star"},
	} {
		if got := routeName(t, tbl, newReq(c.authority, "GET", "/")); got != c.want {
			t.Errorf("authority %q: got %s, want %s", c.authority, got, c.want)
		}
	}
	// The HCM-level helpers for the proxy.
	if got := StripMatchingHostPort("a.svc:8080", 8080); got != "a.svc" {
		t.Errorf("StripMatchingHostPort same port: %q", got)
	}
	if got := StripMatchingHostPort("a.svc:8080", 80); got != "a.svc:8080" {
		t.Errorf("StripMatchingHostPort other port: %q", got)
	}
	if got := StripAnyHostPort("[::1]:443"); got != "[::1]" {
		t.Errorf("StripAnyHostPort v6: %q", got)
	}
}

func TestVhostHeader(t *testing.T) {
	tbl := mustCompile(t, `{"vhost_header":"x-vhost","virtual_hosts":[
	  {"name":"a","domains":["a"],"routes":[{"name":"a","match":{"prefix":"/"},"route":{"cluster":"c"}}]},
	  {"name":"star","domains":["*"],"routes":[{"name":"star","match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`)
	if got := routeName(t, tbl, newReq("b", "GET", "/", "X-Vhost", "a")); got != "a" {
		t.Errorf("vhost_header: got %s", got)
	}
	if got := routeName(t, tbl, newReq("a", "GET", "/")); got != "star" {
		t.Errorf("vhost_header absent: got %s", got)
	}
}

func TestPathMatching(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"exact","match":{"path":"/exact"},"route":{"cluster":"c"}},
	  {"name":"exact-ci","match":{"path":"/CaseLess","case_sensitive":false},"route":{"cluster":"c"}},
	  {"name":"regex","match":{"safe_regex":{"regex":"/re/[0-9]+"}},"route":{"cluster":"c"}},
	  {"name":"sep","match":{"path_separated_prefix":"/sep"},"route":{"cluster":"c"}},
	  {"name":"sep-ci","match":{"path_separated_prefix":"/Sci","case_sensitive":false},"route":{"cluster":"c"}},
	  {"name":"prefix-ci","match":{"prefix":"/PRE","case_sensitive":false},"route":{"cluster":"c"}},
	  {"name":"prefix","match":{"prefix":"/p"},"route":{"cluster":"c"}},
	  {"name":"empty-prefix","match":{"prefix":""},"route":{"cluster":"c"}}`))
	for _, c := range []struct{ path, want string }{
		{"/exact", "exact"},
		{"/exact?x=1", "exact"},  // query ignored
		{"/exact#frag", "exact"}, // fragment ignored
		{"/exact/", "empty-prefix"},
		{"/Exact", "empty-prefix"}, // case-sensitive by default
		{"/caseless", "exact-ci"},
		{"/CASELESS?q", "exact-ci"},
		{"/re/123", "regex"},
		{"/re/123?x=abc", "regex"},      // regex sees the path without query
		{"/re/123/x", "empty-prefix"},   // regex must match the whole path
		{"/xx/re/123", "empty-prefix"},  // not a substring search
		{"/sep", "sep"},                 // path_separated_prefix: equal
		{"/sep/", "sep"},                // or followed by '/'
		{"/sep/a/b", "sep"},             //
		{"/sep?x", "sep"},               // query stripped first
		{"/separate", "empty-prefix"},   // not at a segment boundary
		{"/SCI/x", "sep-ci"},            //
		{"/pre/x", "prefix-ci"},         //
		{"/Prefix", "prefix-ci"},        // case-insensitive prefix
		{"/p", "prefix"},                //
		{"/pq", "prefix"},               // plain prefix: no segment rule
		{"/", "empty-prefix"},           //
		{"", "empty-prefix"},            //
		{"/\u00c9xact", "empty-prefix"}, // non-ASCII is not folded
	} {
		if got := routeName(t, tbl, newReq("h", "GET", c.path)); got != c.want {
			t.Errorf("path %q: got %s, want %s", c.path, got, c.want)
		}
	}
}

func TestIgnorePathParameters(t *testing.T) {
	js := `{"ignore_path_parameters_in_path_matching":true,"virtual_hosts":[{"name":"vh","domains":["*"],"routes":[
	  {"name":"a","match":{"path":"/a"},"route":{"cluster":"c"}},
	  {"name":"other","match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`
	tbl := mustCompile(t, js)
	if got := routeName(t, tbl, newReq("h", "GET", "/a;jsessionid=1?x")); got != "a" {
		t.Errorf("path parameters ignored: got %s", got)
	}
	tbl = mustCompile(t, strings.Replace(js, `"ignore_path_parameters_in_path_matching":true,`, "", 1))
	if got := routeName(t, tbl, newReq("h", "GET", "/a;jsessionid=1")); got != "other" {
		t.Errorf("path parameters kept: got %s", got)
	}
}

// The first matching route wins, whatever a later route's specificity;
// istiod-lite orders routes by Gateway API precedence.
func TestFirstMatchWins(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"header","match":{"prefix":"/api","headers":[{"name":"x-canary","string_match":{"exact":"1"}}]},"route":{"cluster":"canary"}},
	  {"name":"broad","match":{"prefix":"/"},"route":{"cluster":"all"}},
	  {"name":"never","match":{"path":"/api/exact"},"route":{"cluster":"shadowed"}}`))
	for _, c := range []struct {
		req  *Request
		want string
	}{
		{newReq("h", "GET", "/api/exact", "X-Canary", "1"), "header"},
		{newReq("h", "GET", "/api/exact"), "broad"},
		{newReq("h", "GET", "/other", "X-Canary", "1"), "broad"},
	} {
		if got := routeName(t, tbl, c.req); got != c.want {
			t.Errorf("%s %v: got %s, want %s", c.req.Path, c.req.Headers, got, c.want)
		}
	}
}

func TestHeaderMatching(t *testing.T) {
	cases := []struct {
		name    string
		matcher string
		hdr     []string
		want    bool
	}{
		{"exact", `{"name":"x-a","string_match":{"exact":"v"}}`, []string{"X-A", "v"}, true},
		{"exact other", `{"name":"x-a","string_match":{"exact":"v"}}`, []string{"X-A", "V"}, false},
		{"exact ignore_case", `{"name":"x-a","string_match":{"exact":"v","ignore_case":true}}`, []string{"X-A", "V"}, true},
		{"exact absent", `{"name":"x-a","string_match":{"exact":"v"}}`, nil, false},
		{"name case-insensitive", `{"name":"X-A","string_match":{"exact":"v"}}`, []string{"x-a", "v"}, true},
		{"prefix", `{"name":"x-a","string_match":{"prefix":"ab"}}`, []string{"X-A", "abc"}, true},
		{"prefix ignore_case", `{"name":"x-a","string_match":{"prefix":"AB","ignore_case":true}}`, []string{"X-A", "abc"}, true},
		{"suffix", `{"name":"x-a","string_match":{"suffix":"bc"}}`, []string{"X-A", "abc"}, true},
		{"suffix no", `{"name":"x-a","string_match":{"suffix":"bc"}}`, []string{"X-A", "abd"}, false},
		{"contains", `{"name":"x-a","string_match":{"contains":"b"}}`, []string{"X-A", "abc"}, true},
		{"contains ignore_case", `{"name":"x-a","string_match":{"contains":"B","ignore_case":true}}`, []string{"X-A", "abc"}, true},
		{"regex full", `{"name":"x-a","string_match":{"safe_regex":{"regex":"\\d{3}"}}}`, []string{"X-A", "123"}, true},
		{"regex not partial", `{"name":"x-a","string_match":{"safe_regex":{"regex":"\\d{3}"}}}`, []string{"X-A", "1234"}, false},
		{"regex inverted", `{"name":"x-a","string_match":{"safe_regex":{"regex":"\\d{3}"}},"invert_match":true}`, []string{"X-A", "1234"}, true},
		{"regex alternation anchored as a whole", `{"name":"x-a","safe_regex_match":{"regex":"a|b"}}`, []string{"X-A", "ab"}, false},
		{"regex ignore_case has no effect", `{"name":"x-a","string_match":{"safe_regex":{"regex":"abc"},"ignore_case":true}}`, []string{"X-A", "ABC"}, false},
		{"regex inline flag", `{"name":"x-a","safe_regex_match":{"regex":"(?i)abc"}}`, []string{"X-A", "ABC"}, true},
		{"multi-valued joined with comma", `{"name":"x-a","string_match":{"exact":"1,2"}}`, []string{"X-A", "1", "X-A", "2"}, true},
		{"multi-valued first alone does not match", `{"name":"x-a","string_match":{"exact":"1"}}`, []string{"X-A", "1", "X-A", "2"}, false},
		{"present", `{"name":"x-a","present_match":true}`, []string{"X-A", ""}, true},
		{"present absent", `{"name":"x-a","present_match":true}`, nil, false},
		{"present false absent", `{"name":"x-a","present_match":false}`, nil, true},
		{"present false present", `{"name":"x-a","present_match":false}`, []string{"X-A", "v"}, false},
		{"present inverted absent", `{"name":"x-a","present_match":true,"invert_match":true}`, nil, true},
		{"present inverted present", `{"name":"x-a","present_match":true,"invert_match":true}`, []string{"X-A", "v"}, false},
		{"no specifier is presence", `{"name":"x-a"}`, []string{"X-A", "v"}, true},
		{"no specifier absent", `{"name":"x-a"}`, nil, false},
		{"invert absent is no match", `{"name":"x-a","string_match":{"exact":"v"},"invert_match":true}`, nil, false},
		{"invert other value", `{"name":"x-a","string_match":{"exact":"v"},"invert_match":true}`, []string{"X-A", "w"}, true},
		{"treat missing as empty", `{"name":"x-a","string_match":{"safe_regex":{"regex":"^$"}},"treat_missing_header_as_empty":true}`, nil, true},
		{"treat missing, inverted", `{"name":"x-a","range_match":{"start":0,"end":10},"invert_match":true,"treat_missing_header_as_empty":true}`, nil, true},
		{"deprecated exact", `{"name":"x-a","exact_match":"v"}`, []string{"X-A", "v"}, true},
		{"deprecated exact empty matches any value", `{"name":"x-a","exact_match":""}`, []string{"X-A", "anything"}, true},
		{"deprecated prefix", `{"name":"x-a","prefix_match":"a"}`, []string{"X-A", "abc"}, true},
		{"deprecated suffix", `{"name":"x-a","suffix_match":"c"}`, []string{"X-A", "abc"}, true},
		{"deprecated contains", `{"name":"x-a","contains_match":"b"}`, []string{"X-A", "abc"}, true},
		{"deprecated regex", `{"name":"x-a","safe_regex_match":{"regex":"a.c"}}`, []string{"X-A", "abc"}, true},
		{"range in", `{"name":"x-a","range_match":{"start":-10,"end":0}}`, []string{"X-A", "-1"}, true},
		{"range end exclusive", `{"name":"x-a","range_match":{"start":-10,"end":0}}`, []string{"X-A", "0"}, false},
		{"range inverted", `{"name":"x-a","range_match":{"start":-10,"end":0},"invert_match":true}`, []string{"X-A", "-1"}, false},
		{"range not a number", `{"name":"x-a","range_match":{"start":0,"end":10}}`, []string{"X-A", "5x"}, false},
		{"range whitespace", `{"name":"x-a","range_match":{"start":0,"end":10}}`, []string{"X-A", " 5 "}, true},
		{":method", `{"name":":method","string_match":{"exact":"GET"}}`, nil, true},
		{":method other", `{"name":":method","string_match":{"exact":"POST"}}`, nil, false},
		{":authority", `{"name":":authority","string_match":{"exact":"h"}}`, nil, true},
		{":path with query", `{"name":":path","string_match":{"exact":"/p?q=1"}}`, nil, true},
		{":scheme defaults to http", `{"name":":scheme","string_match":{"exact":"http"}}`, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := mustCompile(t, oneVhost(`{"name":"m","match":{"prefix":"/","headers":[`+c.matcher+`]},"route":{"cluster":"c"}}`))
			_, got := tbl.Route(newReq("h", "GET", "/p?q=1", c.hdr...))
			if got != c.want {
				t.Errorf("matcher %s with headers %v: got %v, want %v", c.matcher, c.hdr, got, c.want)
			}
		})
	}
}

// All header matchers of a route must match (AND).
func TestHeaderMatchersAreANDed(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"m","match":{"prefix":"/","headers":[
	  {"name":"x-a","string_match":{"exact":"1"}},{"name":":method","string_match":{"exact":"POST"}}]},"route":{"cluster":"c"}}`))
	if _, ok := tbl.Route(newReq("h", "POST", "/", "X-A", "1")); !ok {
		t.Error("both match: no route")
	}
	if _, ok := tbl.Route(newReq("h", "GET", "/", "X-A", "1")); ok {
		t.Error("method differs: routed")
	}
}

func TestQueryParameterMatching(t *testing.T) {
	cases := []struct {
		name, matcher, path string
		want                bool
	}{
		{"exact", `{"name":"a","string_match":{"exact":"1"}}`, "/?a=1", true},
		{"exact other", `{"name":"a","string_match":{"exact":"1"}}`, "/?a=2", false},
		{"first value only", `{"name":"a","string_match":{"exact":"2"}}`, "/?a=1&a=2", false},
		{"later parameter", `{"name":"b","string_match":{"exact":"2"}}`, "/?a=1&b=2", true},
		{"not decoded", `{"name":"a","string_match":{"exact":"x y"}}`, "/?a=x%20y", false},
		{"raw encoded", `{"name":"a","string_match":{"exact":"x%20y"}}`, "/?a=x%20y", true},
		{"no value is empty", `{"name":"a","string_match":{"exact":""}}`, "/?a", true},
		{"name is case-sensitive", `{"name":"A","string_match":{"exact":"1"}}`, "/?a=1", false},
		{"regex", `{"name":"a","string_match":{"safe_regex":{"regex":"[0-9]+"}}}`, "/?a=123", true},
		{"prefix ignore_case", `{"name":"a","string_match":{"prefix":"AB","ignore_case":true}}`, "/?a=abc", true},
		{"absent", `{"name":"a","string_match":{"exact":"1"}}`, "/", false},
		{"present", `{"name":"a","present_match":true}`, "/?a=", true},
		{"present absent", `{"name":"a","present_match":true}`, "/?b=1", false},
		{"present false absent", `{"name":"a","present_match":false}`, "/?b=1", true},
		{"present false present", `{"name":"a","present_match":false}`, "/?a=1", false},
		{"no specifier is presence", `{"name":"a"}`, "/?a=1", true},
		{"value with =", `{"name":"a","string_match":{"exact":"b=c"}}`, "/?a=b=c", true},
		{"empty pairs skipped", `{"name":"a","string_match":{"exact":"1"}}`, "/?&&a=1", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := mustCompile(t, oneVhost(`{"name":"m","match":{"prefix":"/","query_parameters":[`+c.matcher+`]},"route":{"cluster":"c"}}`))
			if _, got := tbl.Route(newReq("h", "GET", c.path)); got != c.want {
				t.Errorf("matcher %s on %q: got %v, want %v", c.matcher, c.path, got, c.want)
			}
		})
	}
}

func TestGRPCMatch(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"grpc","match":{"prefix":"/","grpc":{}},"route":{"cluster":"c"}}`))
	for _, c := range []struct {
		ct   string
		want bool
	}{
		{"application/grpc", true},
		{"application/grpc+proto", true},
		{"application/grpc+json", true},
		{"application/grpc-web", false},
		{"application/grpc-web+proto", false},
		{"application/json", false},
		{"", false},
	} {
		var hdr []string
		if c.ct != "" {
			hdr = []string{"Content-Type", c.ct}
		}
		if _, got := tbl.Route(newReq("h", "POST", "/pkg.Svc/Method", hdr...)); got != c.want {
			t.Errorf("content-type %q: got %v, want %v", c.ct, got, c.want)
		}
	}
}

// A GRPCRoute method match translates to a path match on /service/method.
func TestGRPCRouteShape(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"method","match":{"path":"/echo.Echo/Say","grpc":{}},"route":{"cluster":"say"}},
	  {"name":"service","match":{"safe_regex":{"regex":"/echo\\.Echo/[^/]+"},"grpc":{}},"route":{"cluster":"svc"}},
	  {"name":"rest","match":{"prefix":"/"},"route":{"cluster":"rest"}}`))
	for _, c := range []struct{ path, want string }{
		{"/echo.Echo/Say", "method"},
		{"/echo.Echo/Other", "service"},
		{"/echoxEcho/Other", "rest"},
	} {
		if got := routeName(t, tbl, newReq("h", "POST", c.path, "Content-Type", "application/grpc")); got != c.want {
			t.Errorf("%s: got %s, want %s", c.path, got, c.want)
		}
	}
}

func TestRuntimeFractionMatch(t *testing.T) {
	// Two routes sharing one random value per request: a 30% route before an
	// unconditional one; Envoy's featureEnabled is rv % denominator < numerator.
	tbl := mustCompile(t, oneVhost(`
	  {"name":"thirty","match":{"prefix":"/","runtime_fraction":{"default_value":{"numerator":30,"denominator":"HUNDRED"},"runtime_key":"k"}},"route":{"cluster":"a"}},
	  {"name":"rest","match":{"prefix":"/"},"route":{"cluster":"b"}}`))
	for _, c := range []struct {
		rv   uint64
		want string
	}{{0, "thirty"}, {29, "thirty"}, {30, "rest"}, {99, "rest"}, {129, "thirty"}} {
		req := newReq("h", "GET", "/")
		req.Rand = fixedRand(c.rv)
		if got := routeName(t, tbl, req); got != c.want {
			t.Errorf("random %d: got %s, want %s", c.rv, got, c.want)
		}
	}
}

func TestRegexEdgeCases(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"dollar","match":{"safe_regex":{"regex":"/a$"}},"route":{"cluster":"c"}},
	  {"name":"caret-inside","match":{"safe_regex":{"regex":"^/b.*"}},"route":{"cluster":"c"}},
	  {"name":"multiline","match":{"safe_regex":{"regex":"(?m)/c$"}},"route":{"cluster":"c"}},
	  {"name":"unicode","match":{"safe_regex":{"regex":"/\\p{Greek}+"}},"route":{"cluster":"c"}},
	  {"name":"rest","match":{"prefix":""},"route":{"cluster":"c"}}`))
	for _, c := range []struct{ path, want string }{
		{"/a", "dollar"},
		{"/ab", "rest"},
		{"/b/anything", "caret-inside"},
		{"/c", "multiline"},
		{"/αβγ", "unicode"},
		{"/\xff", "rest"},
	} {
		if got := routeName(t, tbl, newReq("h", "GET", c.path)); got != c.want {
			t.Errorf("%q: got %s, want %s", c.path, got, c.want)
		}
	}
}

// A filter_state matcher selects on the connection's filter state (GAMMA
// consumer routes: the client's namespace in its SPIFFE id); an absent key
// never matches.
func TestFilterStateMatch(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
		{"name":"consumer","match":{"prefix":"/","filter_state":[{"key":"io.istio.peer_principal",
			"string_match":{"safe_regex":{"regex":"spiffe://[^/]+/ns/shop/sa/[^/]+"}}}]},"direct_response":{"status":200}},
		{"name":"producer","match":{"prefix":"/"},"direct_response":{"status":200}}`))
	for principal, want := range map[string]string{
		"spiffe://cluster.local/ns/shop/sa/web":  "consumer",
		"spiffe://cluster.local/ns/other/sa/web": "producer",
		"":                                       "producer",
	} {
		req := newReq("a", "GET", "/x")
		if principal != "" {
			req.FilterState = map[string]string{PeerPrincipalKey: principal}
		}
		if got := routeName(t, tbl, req); got != want {
			t.Errorf("principal %q: route %s, want %s", principal, got, want)
		}
	}
	if _, err := Compile(parseRC(t, oneVhost(`{"name":"r","match":{"prefix":"/","filter_state":[{"key":"k"}]},"direct_response":{"status":200}}`))); err == nil {
		t.Error("a filter_state matcher without a string_match compiled")
	}
}
