package proxy

import "strings"

// normalizePath normalizes the path part of a request target as Envoy's
// normalize_path does (RFC 3986 6.2.2, through Chromium's canonicalizer)
// before RBAC and routing, so neither "/public/../admin" nor "/%61dmin"
// slips past a policy on "/admin": percent-encoded unreserved characters
// are decoded (other escapes, such as %2F, are kept), then dot segments
// are removed (5.2.4), repeated until stable. The query is kept as is; a path that is not
// absolute is returned unchanged.
func normalizePath(target string) string {
	path, query, hasQuery := strings.Cut(target, "?")
	if !strings.HasPrefix(path, "/") || (!strings.Contains(path, "/.") && !strings.Contains(path, "%")) {
		return target
	}
	// Until nothing changes: a decoded escape may complete another one
	// ("%6%61" -> "%6a" -> "j"), which the backend would decode in turn;
	// Envoy stops after one pass, the waypoint does not let that through.
	for {
		next := decodeUnreserved(path)
		if strings.Contains(next, "/.") {
			next = removeDotSegments(next)
		}
		if next == path {
			break
		}
		path = next
	}
	if hasQuery {
		return path + "?" + query
	}
	return path
}

// decodeUnreserved decodes %XX escapes of ALPHA, DIGIT, "-", ".", "_", "~".
func decodeUnreserved(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if c, ok := unhex2(p[i+1], p[i+2]); ok && unreserved(c) {
				b.WriteByte(c)
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// removeDotSegments removes "." and ".." segments of an absolute path.
func removeDotSegments(path string) string {
	segs := strings.Split(path[1:], "/")
	out := make([]string, 0, len(segs))
	for i, seg := range segs {
		last := i == len(segs)-1
		switch seg {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
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
	return "/" + strings.Join(out, "/")
}
