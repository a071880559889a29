package rbac

import (
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ambit-mesh/ambit/waypoint/internal/protoschema"
)

// supportedFields lists, per message type, the fields the engine implements.
// Any other field that is set (a condition, metadata, a matcher tree, ...)
// makes Compile fail with the field's path: enforcing a policy with part of
// it ignored could allow what it denies. Fields of message type are walked;
// their type must be listed here or in leafTypes.
var supportedFields = map[protoreflect.FullName][]protoreflect.Name{
	"envoy.config.rbac.v3.RBAC":   {"action", "policies"},
	"envoy.config.rbac.v3.Policy": {"permissions", "principals"},
	"envoy.config.rbac.v3.Permission": {
		"any", "and_rules", "or_rules", "not_rule", "header", "url_path",
		"destination_port", "destination_ip",
	},
	"envoy.config.rbac.v3.Permission.Set": {"rules"},
	"envoy.config.rbac.v3.Principal": {
		"any", "and_ids", "or_ids", "not_id", "authenticated", "filter_state",
		"direct_remote_ip", "remote_ip", "source_ip", "header", "url_path",
	},
	"envoy.config.rbac.v3.Principal.Set":           {"ids"},
	"envoy.config.rbac.v3.Principal.Authenticated": {"principal_name"},
	"envoy.type.matcher.v3.FilterStateMatcher":     {"key", "string_match"},
	"envoy.config.route.v3.HeaderMatcher": {
		"name", "present_match", "string_match", "invert_match", "treat_missing_header_as_empty",
	},
	"envoy.type.matcher.v3.PathMatcher":            {"path"},
	"envoy.type.matcher.v3.StringMatcher":          {"exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"},
	"envoy.type.matcher.v3.RegexMatcher":           {"google_re2", "regex"},
	"envoy.type.matcher.v3.RegexMatcher.GoogleRE2": {"max_program_size"},
	"envoy.config.core.v3.CidrRange":               {"address_prefix", "prefix_len"},
}

// leafTypes are plain values accepted whole.
var leafTypes = map[protoreflect.FullName]bool{
	"google.protobuf.UInt32Value": true,
}

// maxDepth bounds nesting (and so the recursion of Compile and Evaluate);
// Istio's policies are four or five levels deep.
const maxDepth = 32

// schema is the supported subset. Each Permission level is up to three
// message levels (Set, list), hence the walk's larger bound.
var schema = protoschema.New(protoschema.Options{
	Engine: "RBAC engine", Root: "(rbac)", Fields: supportedFields, Leaves: leafTypes,
	MaxDepth: 3 * maxDepth, Levels: maxDepth,
})

func joinPath(parent, child string) string { return protoschema.JoinPath(parent, child) }

func idx(path string, i int) string { return protoschema.Index(path, i) }
