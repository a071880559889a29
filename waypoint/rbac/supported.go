package rbac

import (
	"fmt"
	"strconv"

	"google.golang.org/protobuf/reflect/protoreflect"
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

var supportedIndex = func() map[protoreflect.FullName]map[protoreflect.Name]bool {
	out := make(map[protoreflect.FullName]map[protoreflect.Name]bool, len(supportedFields))
	for msg, fields := range supportedFields {
		set := make(map[protoreflect.Name]bool, len(fields))
		for _, f := range fields {
			set[f] = true
		}
		out[msg] = set
	}
	return out
}()

// maxDepth bounds nesting (and so the recursion of Compile and Evaluate);
// Istio's policies are four or five levels deep.
const maxDepth = 32

// checkSupported reports the first set field the engine does not implement,
// or unknown fields (from a newer schema), with its path.
func checkSupported(m protoreflect.Message, path string, depth int) error {
	name := m.Descriptor().FullName()
	if leafTypes[name] {
		return nil
	}
	if depth > 3*maxDepth {
		// Each Permission level is up to three message levels (Set, list).
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
			err = fmt.Errorf("%s: field is not supported by the waypoint RBAC engine", fpath)
			return false
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = checkSupported(l.Get(i).Message(), idx(fpath, i), depth+1)
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
		return "(rbac)"
	}
	return p
}

func idx(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }
