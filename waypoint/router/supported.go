package router

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
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

var supportedIndex = func() map[protoreflect.FullName]map[protoreflect.Name]bool {
	idx := make(map[protoreflect.FullName]map[protoreflect.Name]bool, len(supportedFields))
	for msg, fields := range supportedFields {
		set := make(map[protoreflect.Name]bool, len(fields))
		for _, f := range fields {
			set[f] = true
		}
		idx[msg] = set
	}
	return idx
}()

// maxDepth bounds the recursion of checkSupported; the supported schema is
// about ten levels deep, so anything deeper is already unsupported.
const maxDepth = 32

// checkSupported reports the first field set in m that the engine does not
// implement, or unknown fields (set by a newer schema), with its path.
func checkSupported(m protoreflect.Message, path string, depth int) error {
	name := m.Descriptor().FullName()
	if leafTypes[name] {
		return nil
	}
	if depth > maxDepth {
		return fmt.Errorf("%s: nesting deeper than %d levels", pathOrRoot(path), maxDepth)
	}
	allowed, ok := supportedIndex[name]
	if !ok {
		return fmt.Errorf("%s: message type %s is not supported", pathOrRoot(path), name)
	}
	if unk := m.GetUnknown(); len(unk) > 0 {
		return fmt.Errorf("%s: unknown field(s) in %s (%d bytes): not supported", pathOrRoot(path), name, len(unk))
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fpath := joinPath(path, string(fd.Name()))
		if !allowed[fd.Name()] {
			err = fmt.Errorf("%s: field is not supported by the waypoint route engine", fpath)
			return false
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = checkSupported(l.Get(i).Message(), fpath+"["+strconv.Itoa(i)+"]", depth+1)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = checkSupported(mv.Message(), fpath+"["+strconv.Quote(k.String())+"]", depth+1)
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = checkSupported(v.Message(), fpath, depth+1)
		}
		return err == nil
	})
	return err
}

func joinPath(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

func pathOrRoot(p string) string {
	if p == "" {
		return "(route configuration)"
	}
	return p
}

// fieldError is a configuration error at a field path.
func fieldError(path string, format string, args ...any) error {
	return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
}

// idx formats a list element path.
func idx(path string, i int) string {
	var b strings.Builder
	b.Grow(len(path) + 6)
	b.WriteString(path)
	b.WriteByte('[')
	b.WriteString(strconv.Itoa(i))
	b.WriteByte(']')
	return b.String()
}
