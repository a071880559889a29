package router

import (
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestWeightedSplitAccuracy(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"split","match":{"prefix":"/"},"route":{"weighted_clusters":{"clusters":[
	  {"name":"a","weight":10},{"name":"zero","weight":0},{"name":"b","weight":25},{"name":"c","weight":65},{"name":"nil-weight"}]}}}`))
	const n = 100_000
	rng := rand.New(rand.NewPCG(42, 1042))
	counts := map[string]int{}
	req := newReq("h", "GET", "/")
	req.Rand = rng
	for range n {
		d, ok := tbl.Route(req)
		if !ok {
			t.Fatal("no route")
		}
		counts[d.Cluster]++
	}
	want := map[string]float64{"a": 0.10, "b": 0.25, "c": 0.65}
	for c, share := range want {
		got := float64(counts[c]) / n
		if math.Abs(got-share) > 0.005 {
			t.Errorf("cluster %s: share %.4f, want %.2f ± 0.005", c, got, share)
		}
	}
	if counts["zero"] != 0 || counts["nil-weight"] != 0 {
		t.Errorf("weight-0 clusters picked: %v", counts)
	}
}

func TestWeightedPickIntervals(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"split","match":{"prefix":"/"},"route":{"weighted_clusters":{"total_weight":100,"clusters":[
	  {"name":"a","weight":1},{"name":"z","weight":0},{"name":"b","weight":99}]}}}`))
	for _, c := range []struct {
		rv   uint64
		want string
	}{{0, "a"}, {1, "b"}, {99, "b"}, {100, "a"}, {math.MaxUint64, "b"}} {
		req := newReq("h", "GET", "/")
		req.Rand = fixedRand(c.rv)
		d, _ := tbl.Route(req)
		if d.Cluster != c.want {
			t.Errorf("random %d: got %s, want %s", c.rv, d.Cluster, c.want)
		}
	}
}

func TestForwardDecision(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"full","stat_prefix":"sp","match":{"prefix":"/api"},"route":{"cluster":"api","prefix_rewrite":"/v2","host_rewrite_literal":"api.internal",
	   "timeout":"3s","idle_timeout":"0s","cluster_not_found_response_code":"NOT_FOUND"}},
	  {"name":"defaults","match":{"prefix":"/"},"route":{"cluster":"web"}}`))
	d, ok := tbl.Route(newReq("web.svc:8080", "GET", "/api/x?q=1"))
	if !ok {
		t.Fatal("no route")
	}
	if d.Action != Forward || d.Cluster != "api" || d.RouteName != "full" || d.StatPrefix != "sp" || d.VirtualHost != "vh" {
		t.Errorf("decision %+v", d)
	}
	if d.Path != "/v2/x?q=1" || d.Authority != "api.internal" {
		t.Errorf("rewrites: path %q authority %q", d.Path, d.Authority)
	}
	if d.Timeout != 3*time.Second || d.IdleTimeout == nil || *d.IdleTimeout != 0 || d.ClusterNotFoundStatus != 404 {
		t.Errorf("timeouts %v %v, not-found %d", d.Timeout, d.IdleTimeout, d.ClusterNotFoundStatus)
	}
	d, _ = tbl.Route(newReq("web.svc:8080", "GET", "/x?q=1"))
	if d.Path != "/x?q=1" || d.Authority != "web.svc:8080" || d.Timeout != DefaultRouteTimeout || d.IdleTimeout != nil || d.ClusterNotFoundStatus != 503 || d.Retry != nil {
		t.Errorf("defaults: %+v", d)
	}
	if d.RedirectLocation(newReq("web.svc", "GET", "/")) != "" {
		t.Error("RedirectLocation of a forward decision is not empty")
	}
}

func TestPathRewrites(t *testing.T) {
	cases := []struct {
		name, route, path, want string
	}{
		{"prefix", `{"match":{"prefix":"/old"},"route":{"cluster":"c","prefix_rewrite":"/new"}}`, "/old/x?a=b", "/new/x?a=b"},
		{"prefix to root", `{"match":{"prefix":"/old/"},"route":{"cluster":"c","prefix_rewrite":"/"}}`, "/old/x", "/x"},
		{"prefix case-insensitive", `{"match":{"prefix":"/OLD","case_sensitive":false},"route":{"cluster":"c","prefix_rewrite":"/new"}}`, "/old/x", "/new/x"},
		{"exact path", `{"match":{"path":"/a"},"route":{"cluster":"c","prefix_rewrite":"/b/c"}}`, "/a?x=1", "/b/c?x=1"},
		{"separated prefix", `{"match":{"path_separated_prefix":"/a"},"route":{"cluster":"c","prefix_rewrite":"/z"}}`, "/a/b", "/z/b"},
		{"regex match, prefix rewrite replaces the whole path", `{"match":{"safe_regex":{"regex":"/r/.*"}},"route":{"cluster":"c","prefix_rewrite":"/all"}}`, "/r/x?q", "/all?q"},
		{"regex rewrite with groups", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"^/service/([^/]+)(/.*)$"},"substitution":"\\2/instance/\\1"}}}`, "/service/foo/v1/api?x=1", "/v1/api/instance/foo?x=1"},
		{"regex rewrite replaces all", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"one"},"substitution":"two"}}}`, "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/two/zzz"},
		{"regex rewrite first only", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"^(.*?)one(.*)$"},"substitution":"\\1two\\2"}}}`, "/xxx/one/yyy/one/zzz", "/xxx/two/yyy/one/zzz"},
		{"regex rewrite case-insensitive", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"(?i)/xxx/"},"substitution":"/yyy/"}}}`, "/aaa/XxX/bbb", "/aaa/yyy/bbb"},
		{"regex rewrite literal dollar and backslash", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"a"},"substitution":"$1\\\\"}}}`, "/a", "/$1\\"},
		{"regex rewrite leaves query alone", `{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"q"},"substitution":"Q"}}}`, "/q?q=q", "/Q?q=q"},
		{"no rewrite", `{"match":{"prefix":"/"},"route":{"cluster":"c"}}`, "/a?b", "/a?b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := mustCompile(t, oneVhost(c.route))
			d, ok := tbl.Route(newReq("h", "GET", c.path))
			if !ok {
				t.Fatal("no route")
			}
			if d.Path != c.want {
				t.Errorf("%q → %q, want %q", c.path, d.Path, c.want)
			}
		})
	}
}

func TestRedirects(t *testing.T) {
	cases := []struct {
		name     string
		redirect string
		match    string // RouteMatch JSON; default prefix "/"
		req      *Request
		want     string
		status   int
	}{
		{"path only keeps query", `{"path_redirect":"/new"}`, "", newReq("h", "GET", "/old?x=1"), "http://h/new?x=1", 301},
		{"path with query overrides", `{"path_redirect":"/new?y=2","strip_query":true}`, "", newReq("h", "GET", "/old?x=1"), "http://h/new?y=2", 301},
		{"strip query", `{"path_redirect":"/new","strip_query":true}`, "", newReq("h", "GET", "/old?x=1"), "http://h/new", 301},
		{"strip query keeps path", `{"strip_query":true}`, "", newReq("h", "GET", "/old?x=1"), "http://h/old", 301},
		{"path without slash", `{"path_redirect":"new"}`, "", newReq("h", "GET", "/old"), "http://h/new", 301},
		{"https redirect", `{"https_redirect":true}`, "", newReq("h", "GET", "/a"), "https://h/a", 301},
		{"https drops :80", `{"https_redirect":true}`, "", newReq("h:80", "GET", "/a"), "https://h/a", 301},
		{"https keeps other port", `{"https_redirect":true}`, "", newReq("h:8080", "GET", "/a"), "https://h:8080/a", 301},
		{"same scheme keeps :80", `{"path_redirect":"/b"}`, "", newReq("h:80", "GET", "/a"), "http://h:80/b", 301},
		{"scheme redirect", `{"scheme_redirect":"ftp"}`, "", newReq("h", "GET", "/a"), "ftp://h/a", 301},
		{"host redirect drops request port", `{"host_redirect":"other"}`, "", newReq("h:8080", "GET", "/a"), "http://other/a", 301},
		{"port redirect replaces port", `{"port_redirect":8443}`, "", newReq("h:8080", "GET", "/a"), "http://h:8443/a", 301},
		{"port redirect IPv6", `{"port_redirect":8443}`, "", newReq("[::1]:8080", "GET", "/a"), "http://[::1]:8443/a", 301},
		{"IPv6 without port", `{"https_redirect":true}`, "", newReq("[::1]", "GET", "/a"), "https://[::1]/a", 301},
		{"host and port", `{"host_redirect":"x.org","port_redirect":9000}`, "", newReq("h", "GET", "/a"), "http://x.org:9000/a", 301},
		{"https request to http", `{"scheme_redirect":"http"}`, "", &Request{Authority: "h:443", Scheme: "https", Path: "/a"}, "http://h/a", 301},
		{"302", `{"response_code":"FOUND"}`, "", newReq("h", "GET", "/a"), "http://h/a", 302},
		{"303", `{"response_code":"SEE_OTHER"}`, "", newReq("h", "GET", "/a"), "http://h/a", 303},
		{"307", `{"response_code":"TEMPORARY_REDIRECT"}`, "", newReq("h", "GET", "/a"), "http://h/a", 307},
		{"308", `{"response_code":"PERMANENT_REDIRECT"}`, "", newReq("h", "GET", "/a"), "http://h/a", 308},
		{"prefix rewrite", `{"prefix_rewrite":"/new"}`, `{"prefix":"/old"}`, newReq("h", "GET", "/old/x?q=1"), "http://h/new/x?q=1", 301},
		{"prefix rewrite strip query", `{"prefix_rewrite":"/new","strip_query":true}`, `{"prefix":"/old"}`, newReq("h", "GET", "/old/x?q=1"), "http://h/new/x", 301},
		{"regex rewrite", `{"regex_rewrite":{"pattern":{"regex":"^/old/(.*)$"},"substitution":"/new/\\1"}}`, "", newReq("h", "GET", "/old/x?q=1"), "http://h/new/x?q=1", 301},
		// Deviation: a port_redirect equal to the scheme's default port is
		// omitted (Envoy would write ":80" / ":443").
		{"port 80 with http omitted", `{"port_redirect":80}`, "", newReq("h:8080", "GET", "/a"), "http://h/a", 301},
		{"port 443 with https omitted", `{"https_redirect":true,"port_redirect":443}`, "", newReq("h:8080", "GET", "/a"), "https://h/a", 301},
		{"port 443 with http kept", `{"port_redirect":443}`, "", newReq("h", "GET", "/a"), "http://h:443/a", 301},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			match := c.match
			if match == "" {
				match = `{"prefix":"/"}`
			}
			tbl := mustCompile(t, oneVhost(`{"name":"r","match":`+match+`,"redirect":`+c.redirect+`}`))
			d, ok := tbl.Route(c.req)
			if !ok {
				t.Fatal("no route")
			}
			if d.Action != Redirect || d.RedirectStatus != c.status {
				t.Errorf("action %v status %d, want redirect %d", d.Action, d.RedirectStatus, c.status)
			}
			if got := d.RedirectLocation(c.req); got != c.want {
				t.Errorf("Location %q, want %q", got, c.want)
			}
		})
	}
}

func TestDirectResponse(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`
	  {"name":"s","match":{"path":"/s"},"direct_response":{"status":503,"body":{"inline_string":"down"}}},
	  {"name":"b","match":{"path":"/b"},"direct_response":{"status":200,"body":{"inline_bytes":"aGk="}}},
	  {"name":"n","match":{"path":"/n"},"direct_response":{"status":204}}`))
	for _, c := range []struct {
		path   string
		status int
		body   string
	}{{"/s", 503, "down"}, {"/b", 200, "hi"}, {"/n", 204, ""}} {
		d, ok := tbl.Route(newReq("h", "GET", c.path))
		if !ok || d.Action != DirectResponse || d.DirectStatus != c.status || string(d.DirectBody) != c.body {
			t.Errorf("%s: %+v", c.path, d)
		}
	}
}

func TestTimeoutsAndRetries(t *testing.T) {
	tbl := mustCompile(t, `{"virtual_hosts":[{"name":"vh","domains":["*"],
	  "retry_policy":{"retry_on":"connect-failure","num_retries":5},
	  "routes":[
	    {"name":"own","match":{"path":"/own"},"route":{"cluster":"c","timeout":"0s","retry_policy":{
	      "retry_on":"5xx, gateway-error,retriable-status-codes,reset,retriable-4xx","num_retries":3,"per_try_timeout":"0.250s","per_try_idle_timeout":"1s",
	      "retriable_status_codes":[418],"retry_back_off":{"base_interval":"0.1s"},
	      "retry_host_predicate":[{"name":"envoy.retry_host_predicates.previous_hosts","typed_config":{"@type":"type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
	      "host_selection_retry_max_attempts":"5"}}},
	    {"name":"inherit","match":{"path":"/inherit"},"route":{"cluster":"c","timeout":"10s"}},
	    {"name":"defaults","match":{"path":"/defaults"},"route":{"cluster":"c","retry_policy":{"retry_on":"unavailable"}}}]}]}`)
	d, _ := tbl.Route(newReq("h", "GET", "/own"))
	want := &RetryPolicy{
		RetryOn:                       []string{"5xx", "gateway-error", "retriable-status-codes", "reset", "retriable-4xx"},
		NumRetries:                    3,
		PerTryTimeout:                 250 * time.Millisecond,
		PerTryIdleTimeout:             time.Second,
		RetriableStatusCodes:          []uint32{418},
		BaseInterval:                  100 * time.Millisecond,
		MaxInterval:                   time.Second,
		AvoidPreviousHosts:            true,
		HostSelectionRetryMaxAttempts: 5,
	}
	if d.Timeout != 0 {
		t.Errorf("timeout 0s: got %v", d.Timeout)
	}
	if !reflect.DeepEqual(d.Retry, want) {
		t.Errorf("retry policy\n got %+v\nwant %+v", d.Retry, want)
	}
	for status, retry := range map[int]bool{500: true, 503: true, 599: true, 409: true, 418: true, 404: false, 200: false} {
		if got := d.Retry.RetriableStatus(status); got != retry {
			t.Errorf("RetriableStatus(%d) = %v", status, got)
		}
	}
	d, _ = tbl.Route(newReq("h", "GET", "/inherit"))
	if d.Timeout != 10*time.Second || d.Retry == nil || d.Retry.NumRetries != 5 || !d.Retry.Has(RetryOnConnectFailure) || d.Retry.RetriableStatus(503) {
		t.Errorf("virtual host retry policy: %+v", d.Retry)
	}
	d, _ = tbl.Route(newReq("h", "GET", "/defaults"))
	if d.Retry.NumRetries != 1 || d.Retry.BaseInterval != 25*time.Millisecond || d.Retry.MaxInterval != 250*time.Millisecond || !d.Retry.Has("unavailable") || d.Retry.Has("5xx") {
		t.Errorf("retry defaults: %+v", d.Retry)
	}
}

func TestMirrors(t *testing.T) {
	tbl := mustCompile(t, `{"request_mirror_policies":[{"cluster":"rc-mirror"}],"virtual_hosts":[
	  {"name":"vh","domains":["*"],"request_mirror_policies":[{"cluster":"vh-mirror"}],"routes":[
	    {"name":"own","match":{"path":"/own"},"route":{"cluster":"c","host_rewrite_literal":"up:8080","request_mirror_policies":[
	      {"cluster":"always"},
	      {"cluster":"half","runtime_fraction":{"default_value":{"numerator":50,"denominator":"HUNDRED"}}},
	      {"cluster":"never","runtime_fraction":{"default_value":{"numerator":0}}},
	      {"cluster":"nosuffix","disable_shadow_host_suffix_append":true}]}},
	    {"name":"vh-level","match":{"path":"/vh"},"route":{"cluster":"c"}}]},
	  {"name":"other","domains":["other"],"routes":[{"name":"rc-level","match":{"prefix":"/"},"route":{"cluster":"c"}}]}]}`)
	req := newReq("h", "GET", "/own")
	req.Rand = rand.New(rand.NewPCG(7, 7))
	counts := map[string]int{}
	const n = 20_000
	for range n {
		d, _ := tbl.Route(req)
		for _, m := range d.Mirrors {
			counts[m.Cluster]++
			want := "up-shadow:8080"
			if m.Cluster == "nosuffix" {
				want = "up:8080"
			}
			if m.Authority != want {
				t.Fatalf("mirror %s authority %q, want %q", m.Cluster, m.Authority, want)
			}
		}
	}
	if counts["always"] != n || counts["nosuffix"] != n || counts["never"] != 0 {
		t.Errorf("mirror counts %v", counts)
	}
	if share := float64(counts["half"]) / n; math.Abs(share-0.5) > 0.02 {
		t.Errorf("50%% mirror: share %.3f", share)
	}
	d, _ := tbl.Route(newReq("h", "GET", "/vh"))
	if len(d.Mirrors) != 1 || d.Mirrors[0] != (Mirror{Cluster: "vh-mirror", Authority: "h-shadow"}) {
		t.Errorf("virtual host mirrors: %+v", d.Mirrors)
	}
	d, _ = tbl.Route(newReq("other", "GET", "/"))
	if len(d.Mirrors) != 1 || d.Mirrors[0].Cluster != "rc-mirror" {
		t.Errorf("route configuration mirrors: %+v", d.Mirrors)
	}
}

func TestHeaderMutations(t *testing.T) {
	cfg := `{
	  "request_headers_to_add":[{"header":{"key":"x-level","value":"rc"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},{"header":{"key":"x-rc","value":"1"}}],
	  "response_headers_to_add":[{"header":{"key":"x-resp","value":"rc"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"}],
	  "response_headers_to_remove":["server"],
	  "virtual_hosts":[{"name":"vh","domains":["*"],
	    "request_headers_to_add":[{"header":{"key":"x-level","value":"vh"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"}],
	    "routes":[{"name":"r","match":{"prefix":"/"},
	      "request_headers_to_add":[
	        {"header":{"key":"x-level","value":"route"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},
	        {"header":{"key":"x-append","value":"b"}},
	        {"header":{"key":"x-append-false","value":"new"},"append":false},
	        {"header":{"key":"x-if-absent","value":"added"},"append_action":"ADD_IF_ABSENT"},
	        {"header":{"key":"x-if-absent-present","value":"added"},"append_action":"ADD_IF_ABSENT"},
	        {"header":{"key":"x-overwrite-if-exists","value":"new"},"append_action":"OVERWRITE_IF_EXISTS"},
	        {"header":{"key":"x-overwrite-if-exists-absent","value":"new"},"append_action":"OVERWRITE_IF_EXISTS"},
	        {"header":{"key":"x-empty","value":""}},
	        {"header":{"key":"x-empty-kept","value":""},"keep_empty_value":true},
	        {"header":{"key":"x-percent","value":"100%%"}},
	        {"header":{"key":"x-raw","raw_value":"cmF3"}},
	        {"header":{"key":"x-removed","value":"re-added"}}],
	      "request_headers_to_remove":["x-removed","x-gone"],
	      "response_headers_to_add":[{"header":{"key":"x-resp","value":"route"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"}],
	      "route":{"weighted_clusters":{"clusters":[{"name":"only","weight":1,
	        "request_headers_to_add":[{"header":{"key":"x-level","value":"cluster"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},{"header":{"key":"x-backend","value":"only"}}],
	        "response_headers_to_remove":["x-internal"]}]}}}]}]}`
	tbl := mustCompile(t, cfg)
	d, ok := tbl.Route(newReq("h", "GET", "/"))
	if !ok {
		t.Fatal("no route")
	}
	h := http.Header{
		"X-Append":              {"a"},
		"X-Append-False":        {"old"},
		"X-If-Absent-Present":   {"orig"},
		"X-Overwrite-If-Exists": {"old"},
		"X-Removed":             {"orig"},
		"X-Gone":                {"orig"},
		"X-Level":               {"client"},
		"X-Unrelated":           {"kept"},
	}
	d.ApplyRequestHeaders(h)
	want := http.Header{
		"X-Level":               {"rc"}, // weighted cluster, route, vhost, then rc: the rc's overwrite wins
		"X-Rc":                  {"1"},
		"X-Backend":             {"only"},
		"X-Append":              {"a", "b"},
		"X-Append-False":        {"new"},
		"X-If-Absent":           {"added"},
		"X-If-Absent-Present":   {"orig"},
		"X-Overwrite-If-Exists": {"new"},
		"X-Empty-Kept":          {""},
		"X-Percent":             {"100%"},
		"X-Raw":                 {"raw"},
		"X-Removed":             {"re-added"}, // removal happens before the level's additions
		"X-Unrelated":           {"kept"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("request headers\n got %v\nwant %v", h, want)
	}
	resp := http.Header{"Server": {"upstream"}, "X-Internal": {"1"}, "X-Resp": {"upstream"}}
	d.ApplyResponseHeaders(resp)
	if want := (http.Header{"X-Resp": {"rc"}}); !reflect.DeepEqual(resp, want) {
		t.Errorf("response headers\n got %v\nwant %v", resp, want)
	}

	// most_specific_header_mutations_wins reverses the order: the weighted
	// cluster's overwrite is applied last.
	tbl = mustCompile(t, `{"most_specific_header_mutations_wins":true,`+cfg[1:])
	d, _ = tbl.Route(newReq("h", "GET", "/"))
	h = http.Header{}
	d.ApplyRequestHeaders(h)
	if got := h.Values("X-Level"); !reflect.DeepEqual(got, []string{"cluster"}) {
		t.Errorf("most specific wins: X-Level %v", got)
	}
}

// Within one level, conditions are evaluated before any of the level's
// additions, overwrites are applied before appends, and a later overwrite of
// the same key wins (Envoy's HeaderParser).
func TestHeaderMutationsWithinLevel(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"r","match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_add":[
	  {"header":{"key":"x-a","value":"1"},"append_action":"ADD_IF_ABSENT"},
	  {"header":{"key":"x-a","value":"2"},"append_action":"ADD_IF_ABSENT"},
	  {"header":{"key":"x-b","value":"app"}},
	  {"header":{"key":"x-b","value":"over"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},
	  {"header":{"key":"x-c","value":"1"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},
	  {"header":{"key":"x-c","value":"2"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},
	  {"header":{"key":"x-d","value":"1"}},
	  {"header":{"key":"x-d","value":"2"},"append_action":"OVERWRITE_IF_EXISTS"}]}`))
	d, _ := tbl.Route(newReq("h", "GET", "/"))
	h := http.Header{}
	d.ApplyRequestHeaders(h)
	want := http.Header{"X-A": {"1", "2"}, "X-B": {"over", "app"}, "X-C": {"2"}, "X-D": {"1"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %v\nwant %v", h, want)
	}
}

func TestRedirectResponseHeaders(t *testing.T) {
	tbl := mustCompile(t, oneVhost(`{"name":"r","match":{"prefix":"/"},"redirect":{"https_redirect":true},
	  "response_headers_to_add":[{"header":{"key":"x-r","value":"1"}}]}`))
	d, _ := tbl.Route(newReq("h", "GET", "/"))
	h := http.Header{}
	d.ApplyResponseHeaders(h)
	d.ApplyRequestHeaders(h)
	if h.Get("X-R") != "1" || len(h) != 1 {
		t.Errorf("redirect response headers: %v", h)
	}
	var nilDecision *Decision
	nilDecision.ApplyRequestHeaders(h) // must not panic
}

func TestRouteNilSafety(t *testing.T) {
	var tbl *Table
	if _, ok := tbl.Route(newReq("h", "GET", "/")); ok {
		t.Error("nil table routed")
	}
	tbl = mustCompile(t, oneVhost(`{"name":"r","match":{"prefix":"/","headers":[{"name":"x","present_match":true}]},"route":{"cluster":"c"}}`))
	if _, ok := tbl.Route(nil); ok {
		t.Error("nil request routed")
	}
	if _, ok := tbl.Route(&Request{Path: "/"}); ok { // nil Headers, nil Rand
		t.Error("absent header matched")
	}
}
