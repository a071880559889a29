package proxy

import "strings"

// normalizePath removes dot segments from the path part of a request
// target (RFC 3986 5.2.4), as Envoy's normalize_path does before RBAC and
// routing, so "/public/../admin" cannot slip past a policy on "/admin".
// "%2e" counts as a dot, as in Envoy's (Chromium's) canonicalizer. The
// query is kept as is; a path that is not absolute is returned unchanged.
func normalizePath(target string) string {
	path, query, hasQuery := strings.Cut(target, "?")
	if !strings.HasPrefix(path, "/") || !needsNormalizing(path) {
		return target
	}
	segs := strings.Split(path[1:], "/")
	out := make([]string, 0, len(segs))
	for i, seg := range segs {
		last := i == len(segs)-1
		switch dotSegment(seg) {
		case 1:
			if last {
				out = append(out, "")
			}
		case 2:
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	p := "/" + strings.Join(out, "/")
	if hasQuery {
		return p + "?" + query
	}
	return p
}

func needsNormalizing(path string) bool {
	return strings.Contains(path, "/.") || strings.Contains(path, "/%2e") || strings.Contains(path, "/%2E")
}

// dotSegment returns 1 for ".", 2 for "..", 0 otherwise (%2e is a dot).
func dotSegment(seg string) int {
	n := 0
	for len(seg) > 0 {
		switch {
		case seg[0] == '.':
			seg = seg[1:]
		case len(seg) >= 3 && seg[0] == '%' && seg[1] == '2' && (seg[2] == 'e' || seg[2] == 'E'):
			seg = seg[3:]
		default:
			return 0
		}
		n++
		if n > 2 {
			return 0
		}
	}
	return n
}
