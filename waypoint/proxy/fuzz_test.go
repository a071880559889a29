package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzNormalizePath: the result of an absolute path has no dot segment
// left, normalizing twice changes nothing, and the query is untouched.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/a/../b", "/%2e%2E/x?y=/../z", "/./", "/a/b/..", "/...", "*", "/a//b/./c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := normalizePath(in)
		if normalizePath(out) != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, normalizePath(out))
		}
		if !strings.HasPrefix(in, "/") {
			if out != in {
				t.Fatalf("non-absolute %q changed to %q", in, out)
			}
			return
		}
		path, query, hasQ := strings.Cut(out, "?")
		for _, seg := range strings.Split(path, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q -> %q keeps dot segment %q", in, out, seg)
			}
		}
		if decodeUnreserved(path) != path {
			t.Fatalf("%q -> %q keeps an escaped unreserved character", in, out)
		}
		if _, inQ, inHasQ := strings.Cut(in, "?"); inHasQ != hasQ || inQ != query {
			t.Fatalf("query changed: %q -> %q", in, out)
		}
	})
}

// FuzzClassify: classification never panics, is stable once decided, and
// only says h2c for the exact preface.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", h2Preface, "\x16\x03\x01", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nXX", "POST"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		proto, done := classify(b)
		if proto == "h2c" && !strings.HasPrefix(string(b), h2Preface) {
			t.Fatalf("h2c for %q", b)
		}
		if done {
			more := append(append([]byte{}, b...), "more bytes\r\n"...)
			if p2, _ := classify(more); p2 != proto {
				t.Fatalf("decision changed with more bytes: %q then %q", proto, p2)
			}
		}
	})
}

// FuzzForwardedFor never panics and returns an unmapped address or none.
func FuzzForwardedFor(f *testing.F) {
	for _, s := range []string{"for=10.0.0.1", `for="[::1]:80"`, "for=", ";;,for", `for="`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		a := forwardedFor(http.Header{"Forwarded": {v}})
		if a.IsValid() && a.Is4In6() {
			t.Fatalf("mapped address %s from %q", a, v)
		}
	})
}
