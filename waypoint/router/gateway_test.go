package router

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// The Gateway API expectations below are derived from the HTTPRoute spec
// (HTTPPathModifier, HTTPRequestRedirectFilter) and the conformance tests
// HTTPRouteRewritePath, HTTPRouteRedirectPath and
// HTTPRouteRedirectPortAndScheme. The route configurations are written the way
// istiod-lite is to translate those filters (docs/waypoint.md, "Translating
// Gateway API"); the tests pin down that this translation, executed with
// Envoy's semantics, gives the spec's results.

// gwPrefixMatch translates a PathPrefix match: trailing slashes do not
// matter and the prefix matches whole path segments.
func gwPrefixMatch(prefix string) string {
	p := strings.TrimRight(prefix, "/")
	if p == "" {
		return `{"prefix":"/"}`
	}
	return fmt.Sprintf(`{"path_separated_prefix":%q}`, p)
}

// gwReplacePrefix translates ReplacePrefixMatch for a PathPrefix match into
// the fields of a RouteAction (or, identically, a RedirectAction).
func gwReplacePrefix(prefix, replacement string) string {
	p := strings.TrimRight(prefix, "/")
	r := strings.TrimRight(replacement, "/")
	switch {
	case r == "":
		// Replacing by "/" or "": drop the prefix and the slashes after it.
		return fmt.Sprintf(`"regex_rewrite":{"pattern":{"regex":%q},"substitution":"/"}`, "^"+regexp.QuoteMeta(p)+"/*")
	case p == "":
		return fmt.Sprintf(`"prefix_rewrite":%q`, r+"/")
	}
	return fmt.Sprintf(`"prefix_rewrite":%q`, r)
}

// gwReplaceFullPath translates ReplaceFullPath for a URL rewrite.
func gwReplaceFullPath(path string) string {
	return fmt.Sprintf(`"regex_rewrite":{"pattern":{"regex":"^.*$"},"substitution":%q}`, strings.ReplaceAll(path, `\`, `\\`))
}

// The table of HTTPPathModifier.ReplacePrefixMatch in the Gateway API spec.
func TestGatewayReplacePrefixMatch(t *testing.T) {
	cases := []struct{ path, prefix, replacement, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		// Beyond the table: query strings survive, root prefixes.
		{"/foo/bar?a=1", "/foo", "/xyz", "/xyz/bar?a=1"},
		{"/foo/bar?a=1", "/foo", "/", "/bar?a=1"},
		{"/bar", "/", "/xyz", "/xyz/bar"},
		{"/bar", "/", "/", "/bar"},
		// Conformance HTTPRouteRewritePath.
		{"/prefix/one/two", "/prefix/one", "/one", "/one/two"},
		{"/strip-prefix/three", "/strip-prefix", "/", "/three"},
		{"/strip-prefix", "/strip-prefix", "/", "/"},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s match %s replace %q", c.path, c.prefix, c.replacement)
		t.Run(name, func(t *testing.T) {
			tbl := mustCompile(t, oneVhost(`{"name":"r","match":`+gwPrefixMatch(c.prefix)+`,"route":{"cluster":"c",`+gwReplacePrefix(c.prefix, c.replacement)+`}}`))
			d, ok := tbl.Route(newReq("h", "GET", c.path))
			if !ok {
				t.Fatal("no route")
			}
			if d.Path != c.want {
				t.Errorf("rewrite: got %q, want %q", d.Path, c.want)
			}
			// The same modifier on a RequestRedirect.
			tbl = mustCompile(t, oneVhost(`{"name":"r","match":`+gwPrefixMatch(c.prefix)+`,"redirect":{`+gwReplacePrefix(c.prefix, c.replacement)+`,"response_code":"FOUND"}}`))
			req := newReq("h", "GET", c.path)
			d, ok = tbl.Route(req)
			if !ok {
				t.Fatal("no redirect route")
			}
			if got, want := d.RedirectLocation(req), "http://h"+c.want; got != want {
				t.Errorf("redirect: got %q, want %q", got, want)
			}
		})
	}
}

func TestGatewayPathPrefixMatch(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"foo","match":`+gwPrefixMatch("/foo/")+`,"route":{"cluster":"c"}},{"name":"rest","match":{"prefix":"/"},"route":{"cluster":"c"}}`))
	for path, want := range map[string]string{"/foo": "foo", "/foo/": "foo", "/foo/bar": "foo", "/foobar": "rest", "/foo?x": "foo"} {
		if got := routeName(t, tbl, newReq("h", "GET", path)); got != want {
			t.Errorf("%s: got %s, want %s", path, got, want)
		}
	}
}

// Conformance HTTPRouteRewritePath and HTTPRouteRewriteHost.
func TestGatewayURLRewrite(t *testing.T) {
	tbl := mustCompile(t, oneVhost(
		`{"name":"full","match":`+gwPrefixMatch("/full/one")+`,"route":{"cluster":"c",`+gwReplaceFullPath("/one")+`}},`+
			`{"name":"full-and-host","match":`+gwPrefixMatch("/full/rewrite-path-and-modify-headers")+`,"route":{"cluster":"c","host_rewrite_literal":"one.example.org",`+gwReplaceFullPath("/test")+`}},`+
			`{"name":"host","match":`+gwPrefixMatch("/one")+`,"route":{"cluster":"c","host_rewrite_literal":"one.example.org"}}`))
	for _, c := range []struct{ path, wantPath, wantHost string }{
		{"/full/one/two", "/one", "rewrite.example"},
		{"/full/one?q=1", "/one?q=1", "rewrite.example"},
		{"/full/rewrite-path-and-modify-headers/test", "/test", "one.example.org"},
		{"/one", "/one", "one.example.org"},
	} {
		d, ok := tbl.Route(newReq("rewrite.example", "GET", c.path))
		if !ok {
			t.Fatalf("%s: no route", c.path)
		}
		if d.Path != c.wantPath || d.Authority != c.wantHost {
			t.Errorf("%s: path %q authority %q, want %q %q", c.path, d.Path, d.Authority, c.wantPath, c.wantHost)
		}
	}
}

// Conformance HTTPRouteRedirectPath.
func TestGatewayRedirectPath(t *testing.T) {
	tbl := mustCompile(t, oneVhost(
		`{"name":"prefix","match":`+gwPrefixMatch("/original-prefix")+`,"redirect":{`+gwReplacePrefix("/original-prefix", "/replacement-prefix")+`,"response_code":"FOUND"}},`+
			`{"name":"full","match":`+gwPrefixMatch("/full-path-original")+`,"redirect":{"path_redirect":"/full-path-replacement","response_code":"FOUND"}},`+
			`{"name":"path-and-host","match":`+gwPrefixMatch("/path-and-host")+`,"redirect":{"host_redirect":"example.org",`+gwReplacePrefix("/path-and-host", "/replacement-prefix")+`,"response_code":"FOUND"}},`+
			`{"name":"path-and-status","match":`+gwPrefixMatch("/path-and-status")+`,"redirect":{`+gwReplacePrefix("/path-and-status", "/replacement-prefix")+`}},`+
			`{"name":"full-and-host","match":`+gwPrefixMatch("/full-path-and-host")+`,"redirect":{"host_redirect":"example.org","path_redirect":"/replacement-full"}}`))
	for _, c := range []struct {
		path, want string
		status     int
	}{
		{"/original-prefix/lemon", "http://gw/replacement-prefix/lemon", 302},
		{"/full-path-original", "http://gw/full-path-replacement", 302},
		{"/path-and-host", "http://example.org/replacement-prefix", 302},
		{"/path-and-status", "http://gw/replacement-prefix", 301},
		{"/full-path-and-host", "http://example.org/replacement-full", 301},
	} {
		req := newReq("gw", "GET", c.path)
		d, ok := tbl.Route(req)
		if !ok {
			t.Fatalf("%s: no route", c.path)
		}
		if got := d.RedirectLocation(req); got != c.want || d.RedirectStatus != c.status {
			t.Errorf("%s: %d %q, want %d %q", c.path, d.RedirectStatus, got, c.status, c.want)
		}
	}
}

// gwRedirectPort translates RequestRedirect's port rules: an explicit port;
// else the scheme's well-known port when a scheme is set; else the listener
// (or Service) port.
func gwRedirectPort(scheme string, port, listenerPort int) int {
	switch {
	case port != 0:
		return port
	case scheme == "http":
		return 80
	case scheme == "https":
		return 443
	}
	return listenerPort
}

// Conformance HTTPRouteRedirectPortAndScheme: the Location carries no port
// when it is the scheme's default.
func TestGatewayRedirectPortAndScheme(t *testing.T) {
	cases := []struct {
		listenerPort int
		reqScheme    string
		scheme       string
		port         int
		want         string
	}{
		{80, "http", "", 0, "http://example.org/"},
		{80, "http", "", 80, "http://example.org/"},
		{80, "http", "", 8080, "http://example.org:8080/"},
		{80, "http", "https", 0, "https://example.org/"},
		{80, "http", "https", 443, "https://example.org/"},
		{80, "http", "https", 8443, "https://example.org:8443/"},
		{8080, "http", "", 0, "http://example.org:8080/"},
		{8080, "http", "", 80, "http://example.org/"},
		{8080, "http", "https", 0, "https://example.org/"},
		{443, "https", "", 0, "https://example.org/"},
		{443, "https", "", 443, "https://example.org/"},
		{443, "https", "", 8443, "https://example.org:8443/"},
		{443, "https", "http", 0, "http://example.org/"},
		{443, "https", "http", 80, "http://example.org/"},
		{443, "https", "http", 8080, "http://example.org:8080/"},
	}
	for _, c := range cases {
		name := fmt.Sprintf("listener %d scheme %q port %d", c.listenerPort, c.scheme, c.port)
		t.Run(name, func(t *testing.T) {
			redirect := fmt.Sprintf(`"host_redirect":"example.org","port_redirect":%d,"response_code":"FOUND"`, gwRedirectPort(c.scheme, c.port, c.listenerPort))
			if c.scheme != "" {
				redirect += fmt.Sprintf(`,"scheme_redirect":%q`, c.scheme)
			}
			tbl := mustCompile(t, oneVhost(`{"name":"r","match":{"prefix":"/"},"redirect":{`+redirect+`}}`))
			req := &Request{Authority: fmt.Sprintf("gw.example:%d", c.listenerPort), Scheme: c.reqScheme, Method: "GET", Path: "/"}
			d, ok := tbl.Route(req)
			if !ok {
				t.Fatal("no route")
			}
			if got := d.RedirectLocation(req); got != c.want {
				t.Errorf("Location %q, want %q", got, c.want)
			}
		})
	}
}

// Gateway API orders matches: exact path, longest prefix, method, most
// headers, most query parameters. istiod-lite emits routes in that order; the
// engine's first-match rule then gives the spec's winner.
func TestGatewayPrecedenceOrder(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"exact","match":{"path":"/a/b"},"route":{"cluster":"c"}},
	  {"name":"long-prefix","match":{"path_separated_prefix":"/a/b"},"route":{"cluster":"c"}},
	  {"name":"method","match":{"path_separated_prefix":"/a","headers":[{"name":":method","string_match":{"exact":"POST"}}]},"route":{"cluster":"c"}},
	  {"name":"two-headers","match":{"path_separated_prefix":"/a","headers":[{"name":"x-1","string_match":{"exact":"1"}},{"name":"x-2","string_match":{"exact":"2"}}]},"route":{"cluster":"c"}},
	  {"name":"one-header","match":{"path_separated_prefix":"/a","headers":[{"name":"x-1","string_match":{"exact":"1"}}]},"route":{"cluster":"c"}},
	  {"name":"query","match":{"path_separated_prefix":"/a","query_parameters":[{"name":"q","string_match":{"exact":"1"}}]},"route":{"cluster":"c"}},
	  {"name":"short-prefix","match":{"path_separated_prefix":"/a"},"route":{"cluster":"c"}}`))
	for _, c := range []struct {
		req  *Request
		want string
	}{
		{newReq("h", "POST", "/a/b", "X-1", "1"), "exact"},
		{newReq("h", "POST", "/a/b/c", "X-1", "1"), "long-prefix"},
		{newReq("h", "POST", "/a/x", "X-1", "1", "X-2", "2"), "method"},
		{newReq("h", "GET", "/a/x?q=1", "X-1", "1", "X-2", "2"), "two-headers"},
		{newReq("h", "GET", "/a/x?q=1", "X-1", "1"), "one-header"},
		{newReq("h", "GET", "/a/x?q=1"), "query"},
		{newReq("h", "GET", "/a/x"), "short-prefix"},
		{newReq("h", "GET", "/ab"), "<none>"},
	} {
		if got := routeName(t, tbl, c.req); got != c.want {
			t.Errorf("%s %s %v: got %s, want %s", c.req.Method, c.req.Path, c.req.Headers, got, c.want)
		}
	}
}
