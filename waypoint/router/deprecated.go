package router

//lint:file-ignore SA1019 Envoy's deprecated fields are still valid configuration; the engine implements them.

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// compileLegacyHeaderSpecifier handles HeaderMatcher's deprecated
// specifiers; ok is false for any other specifier.
func compileLegacyHeaderSpecifier(path string, spec any, m *headerMatcher) (ok bool, err error) {
	switch s := spec.(type) {
	case *routev3.HeaderMatcher_ExactMatch:
		if s.ExactMatch == "" {
			// Envoy: an empty exact_match matches any value.
			m.kind = hdrAnyValue
		} else {
			m.kind, m.str = hdrString, envoymatch.Exact(s.ExactMatch)
		}
	case *routev3.HeaderMatcher_PrefixMatch:
		m.kind, m.str = hdrString, envoymatch.Prefix(s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		m.kind, m.str = hdrString, envoymatch.Suffix(s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		m.kind, m.str = hdrString, envoymatch.Contains(s.ContainsMatch)
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := envoymatch.CompileFullRegex(joinPath(path, "safe_regex_match"), s.SafeRegexMatch)
		if err != nil {
			return true, err
		}
		m.kind, m.str = hdrString, envoymatch.Regex(re)
	case *routev3.HeaderMatcher_RangeMatch:
		if s.RangeMatch == nil {
			return true, fieldError(joinPath(path, "range_match"), "range is required")
		}
		m.kind, m.start, m.end = hdrRange, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd()
		if m.start >= m.end {
			return true, fieldError(joinPath(path, "range_match"), "start %d must be below end %d", m.start, m.end)
		}
	default:
		return false, nil
	}
	return true, nil
}

// legacyAppend is HeaderValueOption.append (superseded by append_action).
func legacyAppend(hvo *corev3.HeaderValueOption) *wrapperspb.BoolValue { return hvo.GetAppend() }

// legacyTotalWeight is WeightedCluster.total_weight.
func legacyTotalWeight(wc *routev3.WeightedCluster) *wrapperspb.UInt32Value {
	return wc.GetTotalWeight()
}
