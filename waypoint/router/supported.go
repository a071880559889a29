package router

import (
	"fmt"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ambit-mesh/ambit/waypoint/internal/protoschema"
)

// supportedFields lists, per message type, the fields the route engine
// implements. Any other field that is set (proto3 presence: a non-default
// scalar, a set message, a non-empty list or map, a chosen oneof member) makes
// Compile fail with the field's path, so the waypoint NACKs a configuration it
// would otherwise silently mis-route. A field of message type listed here is
// walked recursively; its message type must be in this table or in leafTypes.
var supportedFields = map[protoreflect.FullName][]protoreflect.Name{
	"envoy.config.route.v3.RouteConfiguration": {
		"name", "virtual_hosts",
		"request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
		"most_specific_header_mutations_wins", "validate_clusters",
		"max_direct_response_body_size_bytes", "request_mirror_policies",
		"ignore_port_in_host_matching", "ignore_path_parameters_in_path_matching",
		"vhost_header", "metadata",
	},
	"envoy.config.route.v3.VirtualHost": {
		"name", "domains", "routes",
		"request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
		"retry_policy", "request_mirror_policies", "metadata",
	},
	"envoy.config.route.v3.Route": {
		"name", "match", "route", "redirect", "direct_response", "metadata", "stat_prefix",
		"request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
	},
	"envoy.config.route.v3.RouteMatch": {
		"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
		"runtime_fraction", "headers", "query_parameters", "grpc", "filter_state",
	},
	"envoy.type.matcher.v3.FilterStateMatcher":               {"key", "string_match"},
	"envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": {},
	"envoy.config.core.v3.RuntimeFractionalPercent":          {"default_value", "runtime_key"},
	"envoy.type.v3.FractionalPercent":                        {"numerator", "denominator"},
	"envoy.config.route.v3.HeaderMatcher": {
		"name", "exact_match", "safe_regex_match", "range_match", "present_match",
		"prefix_match", "suffix_match", "contains_match", "string_match",
		"invert_match", "treat_missing_header_as_empty",
	},
	"envoy.type.v3.Int64Range":                      {"start", "end"},
	"envoy.type.matcher.v3.StringMatcher":           {"exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"},
	"envoy.type.matcher.v3.RegexMatcher":            {"google_re2", "regex"},
	"envoy.type.matcher.v3.RegexMatcher.GoogleRE2":  {"max_program_size"},
	"envoy.type.matcher.v3.RegexMatchAndSubstitute": {"pattern", "substitution"},
	"envoy.config.route.v3.QueryParameterMatcher":   {"name", "string_match", "present_match"},
	"envoy.config.route.v3.RouteAction": {
		"cluster", "weighted_clusters", "cluster_not_found_response_code",
		"prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
		"timeout", "idle_timeout", "retry_policy", "request_mirror_policies",
	},
	"envoy.config.route.v3.WeightedCluster": {"clusters", "total_weight"},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": {
		"name", "weight", "host_rewrite_literal",
		"request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
	},
	"envoy.config.route.v3.RetryPolicy": {
		"retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
		"retry_host_predicate", "host_selection_retry_max_attempts",
		"retriable_status_codes", "retry_back_off",
	},
	"envoy.config.route.v3.RetryPolicy.RetryHostPredicate": {"name", "typed_config"},
	"envoy.config.route.v3.RetryPolicy.RetryBackOff":       {"base_interval", "max_interval"},
	"envoy.config.route.v3.RouteAction.RequestMirrorPolicy": {
		"cluster", "runtime_fraction", "disable_shadow_host_suffix_append",
	},
	"envoy.config.route.v3.RedirectAction": {
		"https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query",
	},
	"envoy.config.route.v3.DirectResponseAction": {"status", "body"},
	"envoy.config.core.v3.DataSource":            {"inline_bytes", "inline_string"},
	"envoy.config.core.v3.HeaderValueOption":     {"header", "append", "append_action", "keep_empty_value"},
	"envoy.config.core.v3.HeaderValue":           {"key", "value", "raw_value"},
}

// leafTypes are message types accepted whole: plain values, or opaque data the
// engine does not interpret (metadata; the retry host predicate's typed_config,
// whose type is checked by the compiler).
var leafTypes = map[protoreflect.FullName]bool{
	"google.protobuf.Duration":      true,
	"google.protobuf.BoolValue":     true,
	"google.protobuf.UInt32Value":   true,
	"google.protobuf.UInt64Value":   true,
	"google.protobuf.Any":           true,
	"envoy.config.core.v3.Metadata": true,
}

// maxDepth bounds the walk; the supported schema is about ten levels deep,
// so anything deeper is already unsupported.
const maxDepth = 32

var schema = protoschema.New(protoschema.Options{
	Engine: "route engine", Root: "(route configuration)", Fields: supportedFields, Leaves: leafTypes, MaxDepth: maxDepth,
})

func joinPath(parent, child string) string { return protoschema.JoinPath(parent, child) }

// fieldError is a configuration error at a field path.
func fieldError(path string, format string, args ...any) error {
	return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
}

// idx formats a list element path.
func idx(path string, i int) string { return protoschema.Index(path, i) }
