package router

import (
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestCompileErrors(t *testing.T) {
	route := func(r string) string { return oneVhost(r) }
	cases := []struct {
		name string
		cfg  string
		want string // substring of the error
	}{
		// Unsupported fields name their path.
		{"hash policy", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","hash_policy":[{"header":{"header_name":"x"}}]}}`),
			"virtual_hosts[0].routes[0].route.hash_policy: field is not supported"},
		{"cors", `{"virtual_hosts":[{"name":"v","domains":["*"],"cors":{}}]}`, "virtual_hosts[0].cors: field is not supported"},
		{"vhds", `{"vhds":{"config_source":{"ads":{}}}}`, "vhds: field is not supported"},
		{"typed_per_filter_config", route(`{"match":{"prefix":"/"},"route":{"cluster":"c"},"typed_per_filter_config":{"f":{"@type":"type.googleapis.com/google.protobuf.Empty"}}}`),
			"routes[0].typed_per_filter_config: field is not supported"},
		{"cluster_header", route(`{"match":{"prefix":"/"},"route":{"cluster_header":"x-cluster"}}`), "routes[0].route.cluster_header: field is not supported"},
		{"auto_host_rewrite", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","auto_host_rewrite":true}}`), "route.auto_host_rewrite: field is not supported"},
		{"connect_matcher", route(`{"match":{"connect_matcher":{}},"route":{"cluster":"c"}}`), "match.connect_matcher: field is not supported"},
		{"cookies", route(`{"match":{"prefix":"/","cookies":[{"name":"a","string_match":{"exact":"b"}}]},"route":{"cluster":"c"}}`), "match.cookies: field is not supported"},
		{"filter_action", route(`{"match":{"prefix":"/"},"filter_action":{}}`), "routes[0].filter_action: field is not supported"},
		{"custom string matcher", route(`{"match":{"prefix":"/","headers":[{"name":"x","string_match":{"custom":{"name":"n","typed_config":{"@type":"type.googleapis.com/google.protobuf.Empty"}}}}]},"route":{"cluster":"c"}}`),
			"match.headers[0].string_match.custom: field is not supported"},
		{"weighted header", route(`{"match":{"prefix":"/"},"route":{"weighted_clusters":{"header_name":"x","clusters":[{"name":"a","weight":1}]}}}`), "weighted_clusters.header_name: field is not supported"},
		{"mirror trace_sampled", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","request_mirror_policies":[{"cluster":"m","trace_sampled":true}]}}`),
			"request_mirror_policies[0].trace_sampled: field is not supported"},
		{"direct response from file", route(`{"match":{"prefix":"/"},"direct_response":{"status":200,"body":{"filename":"/etc/passwd"}}}`), "direct_response.body.filename: field is not supported"},
		{"retry priority", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","retry_policy":{"retry_priority":{"name":"x"}}}}`), "retry_policy.retry_priority: field is not supported"},
		{"path_rewrite formatter", route(`{"match":{"prefix":"/"},"redirect":{"path_rewrite":"/%REQ(x)%"}}`), "redirect.path_rewrite: field is not supported"},
		{"require_tls", `{"virtual_hosts":[{"name":"v","domains":["*"],"require_tls":"ALL"}]}`, "virtual_hosts[0].require_tls: field is not supported"},

		// Our own semantic checks.
		{"invalid regex", route(`{"match":{"safe_regex":{"regex":"("}},"route":{"cluster":"c"}}`), "match.safe_regex.regex: invalid RE2 regex"},
		{"backreference", route(`{"match":{"safe_regex":{"regex":"(a)\\1"}},"route":{"cluster":"c"}}`), "invalid RE2 regex"},
		{"huge regex", route(`{"match":{"safe_regex":{"regex":"` + strings.Repeat("a{1000}", 6) + `"}},"route":{"cluster":"c"}}`), "more than the limit"},
		{"bad substitution escape", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"a"},"substitution":"\\n"}}}`), "regex_rewrite.substitution: substitution has invalid escape"},
		{"substitution group out of range", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","regex_rewrite":{"pattern":{"regex":"(a)"},"substitution":"\\2"}}}`), "refers to group \\2"},
		{"both rewrites", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","prefix_rewrite":"/x","regex_rewrite":{"pattern":{"regex":"a"},"substitution":"b"}}}`), "only one of prefix_rewrite and regex_rewrite"},
		{"weights sum to zero", route(`{"match":{"prefix":"/"},"route":{"weighted_clusters":{"clusters":[{"name":"a","weight":0},{"name":"b"}]}}}`), "weighted_clusters: the sum of the cluster weights must be greater than 0"},
		{"total weight mismatch", route(`{"match":{"prefix":"/"},"route":{"weighted_clusters":{"total_weight":100,"clusters":[{"name":"a","weight":30}]}}}`), "total_weight: is 100 but the cluster weights add up to 30"},
		{"duplicate domain", `{"virtual_hosts":[{"name":"a","domains":["x"]},{"name":"b","domains":["X"]}]}`, "virtual_hosts[1].domains[0]: domain \"X\" appears more than once"},
		{"duplicate wildcard", `{"virtual_hosts":[{"name":"a","domains":["*.x"]},{"name":"b","domains":["*.x"]}]}`, "appears more than once"},
		{"two stars", `{"virtual_hosts":[{"name":"a","domains":["*"]},{"name":"b","domains":["*"]}]}`, "only one virtual host may have the domain"},
		{"duplicate vhost name", `{"virtual_hosts":[{"name":"a","domains":["x"]},{"name":"a","domains":["y"]}]}`, "virtual_hosts[1].name: virtual host name \"a\" is not unique"},
		{"modify host header", route(`{"match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_add":[{"header":{"key":"Host","value":"x"}}]}`), "request_headers_to_add[0].header.key: \"Host\": pseudo-headers and host may not be modified"},
		{"remove pseudo header", route(`{"match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_remove":[":path"]}`), "request_headers_to_remove[0]"},
		{"format operator", route(`{"match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_add":[{"header":{"key":"x","value":"%DOWNSTREAM_REMOTE_ADDRESS%"}}]}`), "substitution format operator"},
		{"append and append_action", route(`{"match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_add":[{"header":{"key":"x","value":"v"},"append":true,"append_action":"ADD_IF_ABSENT"}]}`), "both append and append_action"},
		{"unknown retry_on", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","retry_policy":{"retry_on":"5xx,sometimes"}}}`), "retry_policy.retry_on: unknown retry condition \"sometimes\""},
		{"unsupported retry host predicate", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","retry_policy":{"retry_host_predicate":[{"name":"envoy.retry_host_predicates.omit_canary_hosts"}]}}}`), "retry_host_predicate[0]: retry host predicate"},
		{"back-off max below base", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","retry_policy":{"retry_back_off":{"base_interval":"1s","max_interval":"0.5s"}}}}`), "max_interval"},
		{"negative timeout", route(`{"match":{"prefix":"/"},"route":{"cluster":"c","timeout":"-1s"}}`), "route.timeout: must not be negative"},
		{"direct response body too big", route(`{"match":{"prefix":"/"},"direct_response":{"status":200,"body":{"inline_string":"` + strings.Repeat("x", 4097) + `"}}}`), "more than max_direct_response_body_size_bytes (4096)"},
		{"unsupported pseudo header", route(`{"match":{"prefix":"/","headers":[{"name":":protocol","present_match":true}]},"route":{"cluster":"c"}}`), "headers[0].name: pseudo-header \":protocol\" is not supported"},
		{"path_separated_prefix with slash", route(`{"match":{"path_separated_prefix":"/a/"},"route":{"cluster":"c"}}`), "PathSeparatedPrefix"},

		// go-control-plane's Validate.
		{"no path specifier", route(`{"match":{},"route":{"cluster":"c"}}`), "invalid"},
		{"no domains", `{"virtual_hosts":[{"name":"a"}]}`, "invalid"},
		{"no action", route(`{"match":{"prefix":"/"}}`), "invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := parseRC(t, c.cfg)
			_, err := Compile(rc)
			if err == nil {
				t.Fatalf("Compile succeeded, want error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\n does not contain %q", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "route configuration ") {
				t.Errorf("error %q lacks the route configuration context", err)
			}
		})
	}
	if _, err := Compile(nil); err == nil {
		t.Error("Compile(nil) succeeded")
	}
}

func TestCompileUnknownFields(t *testing.T) {
	rc := parseRC(t, oneVhost(`{"name":"r","match":{"prefix":"/"},"route":{"cluster":"c"}}`))
	b, err := proto.Marshal(rc)
	if err != nil {
		t.Fatal(err)
	}
	// Field 999 of RouteConfiguration, a varint: a field this schema does not
	// know.
	b = protowire.AppendTag(b, 999, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	rc2 := &routev3.RouteConfiguration{}
	if err := proto.Unmarshal(b, rc2); err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(rc2); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("unknown field: %v", err)
	}
}

// Fields that do not change routing are accepted: metadata, validate_clusters,
// runtime keys (there is no runtime; defaults apply), regex program size.
func TestCompileAcceptsInertFields(t *testing.T) {
	mustCompile(t, `{"name":"rc","validate_clusters":false,"metadata":{"filter_metadata":{"istio":{"config":"x"}}},
	  "virtual_hosts":[{"name":"vh","domains":["*"],"metadata":{"filter_metadata":{"a":{}}},"routes":[
	    {"name":"r","metadata":{"filter_metadata":{"b":{}}},"match":{"safe_regex":{"google_re2":{"max_program_size":1000},"regex":"/.*"},
	      "runtime_fraction":{"default_value":{"numerator":100},"runtime_key":"routing.k"}},"route":{"cluster":"c"}}]}]}`)
}
