package router

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"golang.org/x/net/http/httpguts"
)

// appendAction is HeaderValueOption.HeaderAppendAction.
type appendAction uint8

const (
	appendIfExistsOrAdd    appendAction = iota // APPEND_IF_EXISTS_OR_ADD (default)
	addIfAbsent                                // ADD_IF_ABSENT
	overwriteIfExistsOrAdd                     // OVERWRITE_IF_EXISTS_OR_ADD
	overwriteIfExists                          // OVERWRITE_IF_EXISTS
)

type headerOp struct {
	key    string // canonical http.Header key
	value  string
	action appendAction
}

// mutations are one level's headers_to_add and headers_to_remove.
type mutations struct {
	remove []string // canonical keys
	add    []headerOp
}

func (m *mutations) empty() bool { return m == nil || (len(m.remove) == 0 && len(m.add) == 0) }

// apply runs one level the way Envoy's HeaderParser::evaluateHeaders does:
// removals first; then every entry's condition is evaluated against the
// headers as they are before this level adds anything; then all overwrites are
// applied (a later overwrite of the same key wins), then all appends.
func (m *mutations) apply(h http.Header) {
	if m.empty() {
		return
	}
	for _, k := range m.remove {
		delete(h, k)
	}
	var overwrite, add []headerOp
	for _, op := range m.add {
		switch op.action {
		case appendIfExistsOrAdd:
			add = append(add, op)
		case addIfAbsent:
			if len(h[op.key]) == 0 {
				add = append(add, op)
			}
		case overwriteIfExists:
			if len(h[op.key]) > 0 {
				overwrite = append(overwrite, op)
			}
		case overwriteIfExistsOrAdd:
			overwrite = append(overwrite, op)
		}
	}
	for _, op := range overwrite {
		h[op.key] = []string{op.value}
	}
	for _, op := range add {
		h[op.key] = append(h[op.key], op.value)
	}
}

// compileMutations compiles a level's headers_to_add/headers_to_remove. The
// paths name the two fields for error messages.
func compileMutations(addPath string, add []*corev3.HeaderValueOption, removePath string, remove []string) (*mutations, error) {
	if len(add) == 0 && len(remove) == 0 {
		return nil, nil
	}
	m := &mutations{}
	for i, name := range remove {
		p := idx(removePath, i)
		if err := checkModifiable(p, name); err != nil {
			return nil, err
		}
		m.remove = append(m.remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	for i, hvo := range add {
		p := idx(addPath, i)
		hv := hvo.GetHeader()
		if hv == nil {
			return nil, fieldError(joinPath(p, "header"), "header is required")
		}
		if err := checkModifiable(joinPath(p, "header.key"), hv.GetKey()); err != nil {
			return nil, err
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) > 0 {
			return nil, fieldError(joinPath(p, "header"), "only one of value and raw_value may be set")
		}
		var value string
		if len(hv.GetRawValue()) > 0 {
			value = string(hv.GetRawValue())
			if !httpguts.ValidHeaderFieldValue(value) {
				return nil, fieldError(joinPath(p, "header.raw_value"), "invalid header value %q", value)
			}
		} else {
			v, err := unescapeFormat(hv.GetValue())
			if err != nil {
				return nil, fieldError(joinPath(p, "header.value"), "%v", err)
			}
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fieldError(joinPath(p, "header.value"), "invalid header value %q", v)
			}
			value = v
		}
		var action appendAction
		switch hvo.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			action = appendIfExistsOrAdd
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			action = addIfAbsent
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			action = overwriteIfExistsOrAdd
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			action = overwriteIfExists
		default:
			return nil, fieldError(joinPath(p, "append_action"), "unknown append action %d", hvo.GetAppendAction())
		}
		if appendFlag := legacyAppend(hvo); appendFlag != nil {
			// The deprecated append flag, as Envoy: it may not be combined with a
			// non-default append_action, and picks append or overwrite.
			if hvo.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return nil, fieldError(p, "both append and append_action are set")
			}
			if appendFlag.GetValue() {
				action = appendIfExistsOrAdd
			} else {
				action = overwriteIfExistsOrAdd
			}
		}
		if value == "" && !hvo.GetKeepEmptyValue() {
			// Envoy drops custom headers whose value is empty unless
			// keep_empty_value is set.
			continue
		}
		m.add = append(m.add, headerOp{key: textproto.CanonicalMIMEHeaderKey(hv.GetKey()), value: value, action: action})
	}
	if m.empty() {
		return nil, nil
	}
	return m, nil
}

// checkModifiable applies Envoy's rule that pseudo-headers and Host may be
// neither added nor removed, and that the name is a valid header name.
func checkModifiable(path, name string) error {
	if strings.HasPrefix(name, ":") || strings.EqualFold(name, "host") {
		return fieldError(path, "%q: pseudo-headers and host may not be modified", name)
	}
	if !httpguts.ValidHeaderFieldName(name) {
		return fieldError(path, "invalid header name %q", name)
	}
	return nil
}

// unescapeFormat handles Envoy's substitution-format syntax in header values.
// The engine implements no format operators: "%%" is a literal '%', and any
// other '%' (an operator such as %DOWNSTREAM_REMOTE_ADDRESS%) is refused.
func unescapeFormat(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("header value %q uses a substitution format operator, which is not supported (write a literal %% as %%%%)", v)
	}
	return b.String(), nil
}
