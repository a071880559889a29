package identity

import (
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseValid(t *testing.T) {
	t.Parallel()
	long63 := strings.Repeat("n", 63)
	sa253 := strings.Repeat("s", 63) + "." + strings.Repeat("s", 63) + "." + strings.Repeat("s", 63) + "." + strings.Repeat("s", 61)
	if len(sa253) != 253 {
		t.Fatalf("test setup: sa253 has %d bytes", len(sa253))
	}
	tests := []struct {
		in   string
		want Identity
	}{
		{"spiffe://cluster.local/ns/default/sa/default", Identity{"cluster.local", "default", "default"}},
		{"spiffe://cluster.local/ns/kube-system/sa/coredns", Identity{"cluster.local", "kube-system", "coredns"}},
		{"spiffe://example.org/ns/a/sa/b", Identity{"example.org", "a", "b"}},
		{"spiffe://td/ns/0/sa/9", Identity{"td", "0", "9"}},
		{"spiffe://my_td-1.example/ns/n-1/sa/s-1", Identity{"my_td-1.example", "n-1", "s-1"}},
		{"spiffe://cluster.local/ns/default/sa/svc.acct.v2", Identity{"cluster.local", "default", "svc.acct.v2"}},
		{"spiffe://cluster.local/ns/" + long63 + "/sa/x", Identity{"cluster.local", long63, "x"}},
		{"spiffe://cluster.local/ns/x/sa/" + sa253, Identity{"cluster.local", "x", sa253}},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 60)], func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if s := got.String(); s != tt.in {
				t.Fatalf("String() = %q, want %q", s, tt.in)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip: Parse(String()) = %+v, %v; want %+v", again, err, got)
			}
			if u := got.URL().String(); u != tt.in {
				t.Fatalf("URL().String() = %q, want %q", u, tt.in)
			}
			viaNew, err := New(tt.want.TrustDomain, tt.want.Namespace, tt.want.ServiceAccount)
			if err != nil || viaNew != got {
				t.Fatalf("New = %+v, %v; want %+v", viaNew, err, got)
			}
			if got.IsZero() {
				t.Fatal("IsZero() on a valid identity")
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	const ok = "spiffe://cluster.local/ns/default/sa/default"
	tests := []struct {
		name, in string
		wantErr  string // substring the error must contain
	}{
		{"empty", "", "SPIFFE ID"},
		{"http scheme", "http://cluster.local/ns/default/sa/default", "scheme"},
		{"https scheme", "https://cluster.local/ns/default/sa/default", "scheme"},
		{"uppercase scheme", "SPIFFE://cluster.local/ns/default/sa/default", "scheme"},
		{"no scheme", "cluster.local/ns/default/sa/default", "scheme"},
		{"single slash", "spiffe:/cluster.local/ns/default/sa/default", "scheme"},
		{"uppercase trust domain", "spiffe://Cluster.local/ns/default/sa/default", "trust domain"},
		{"empty trust domain", "spiffe:///ns/default/sa/default", "trust domain"},
		{"port", "spiffe://cluster.local:443/ns/default/sa/default", "trust domain"},
		{"user info", "spiffe://user@cluster.local/ns/default/sa/default", "trust domain"},
		{"user:password", "spiffe://u:p@cluster.local/ns/default/sa/default", "trust domain"},
		{"trust domain double dot", "spiffe://cluster..local/ns/default/sa/default", "trust domain"},
		{"trust domain leading dot", "spiffe://.cluster.local/ns/default/sa/default", "trust domain"},
		{"trust domain trailing dot", "spiffe://cluster.local./ns/default/sa/default", "trust domain"},
		{"trust domain only dot", "spiffe://./ns/default/sa/default", "trust domain"},
		{"query", ok + "?x=1", "path"},
		{"empty query", ok + "?", "path"},
		{"fragment", ok + "#frag", "path"},
		{"percent-encoded namespace", "spiffe://cluster.local/ns/%64efault/sa/default", "path"},
		{"percent-encoded slash", "spiffe://cluster.local/ns/default%2Fsa/sa/default", "path"},
		{"dotdot segment", "spiffe://cluster.local/ns/../sa/default", "dot segment"},
		{"dot segment", "spiffe://cluster.local/ns/./sa/default", "dot segment"},
		{"dotdot traversal", "spiffe://cluster.local/ns/default/sa/default/../../ns/x/sa/y", "dot segment"},
		{"trailing slash", ok + "/", "trailing slash"},
		{"empty segment", "spiffe://cluster.local/ns//sa/default", "empty segment"},
		{"double slash prefix", "spiffe://cluster.local//ns/default/sa/default", "empty segment"},
		{"no path", "spiffe://cluster.local", "path must be"},
		{"root path", "spiffe://cluster.local/", "trailing slash"},
		{"missing sa", "spiffe://cluster.local/ns/default", "path must be"},
		{"missing sa value", "spiffe://cluster.local/ns/default/sa", "path must be"},
		{"extra segment", ok + "/extra", "path must be"},
		{"extra pair", ok + "/ns/x", "path must be"},
		{"namespace keyword", "spiffe://cluster.local/namespace/default/sa/default", "path must be"},
		{"serviceaccount keyword", "spiffe://cluster.local/ns/default/serviceaccount/default", "path must be"},
		{"swapped keywords", "spiffe://cluster.local/sa/default/ns/default", "path must be"},
		{"uppercase keyword", "spiffe://cluster.local/NS/default/sa/default", "path must be"},
		{"leading dash namespace", "spiffe://cluster.local/ns/-default/sa/default", "namespace"},
		{"trailing dash namespace", "spiffe://cluster.local/ns/default-/sa/default", "namespace"},
		{"leading dash sa", "spiffe://cluster.local/ns/default/sa/-default", "service account"},
		{"trailing dash sa", "spiffe://cluster.local/ns/default/sa/default-", "service account"},
		{"namespace too long", "spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/default", "namespace"},
		{"sa too long", "spiffe://cluster.local/ns/default/sa/" + strings.Repeat("a", 254), "service account"},
		{"namespace with dot", "spiffe://cluster.local/ns/a.b/sa/default", "namespace"},
		{"namespace underscore", "spiffe://cluster.local/ns/a_b/sa/default", "namespace"},
		{"namespace uppercase", "spiffe://cluster.local/ns/Default/sa/default", "namespace"},
		{"sa uppercase", "spiffe://cluster.local/ns/default/sa/Default", "service account"},
		{"sa underscore", "spiffe://cluster.local/ns/default/sa/a_b", "service account"},
		{"sa double dot", "spiffe://cluster.local/ns/default/sa/a..b", "service account"},
		{"sa leading dot", "spiffe://cluster.local/ns/default/sa/.ab", "service account"},
		{"sa trailing dot", "spiffe://cluster.local/ns/default/sa/ab.", "service account"},
		{"sa label leading dash", "spiffe://cluster.local/ns/default/sa/a.-b", "service account"},
		{"NUL", "spiffe://cluster.local/ns/def\x00ault/sa/default", "path"},
		{"NUL in trust domain", "spiffe://cluster.local\x00/ns/default/sa/default", "trust domain"},
		{"newline", "spiffe://cluster.local/ns/default/sa/default\n", "path"},
		{"CRLF injection", "spiffe://cluster.local/ns/default/sa/x\r\nX-Injected: 1", "path"},
		{"space", "spiffe://cluster.local/ns/default/sa/de fault", "path"},
		{"leading space", " " + ok, "scheme"},
		{"cyrillic a in namespace", "spiffe://cluster.local/ns/def\u0430ult/sa/default", "path"},
		{"cyrillic o in trust domain", "spiffe://cluster.l\u043ecal/ns/default/sa/default", "trust domain"},
		{"fullwidth slash", "spiffe://cluster.local/ns/default\uff0fsa/default", "path"},
		{"zero width space", "spiffe://cluster.local/ns/default\u200b/sa/default", "path"},
		{"invalid utf8", "spiffe://cluster.local/ns/\xff\xfe/sa/default", "path"},
		{"nested scheme", "spiffe://spiffe://cluster.local/ns/default/sa/default", "trust domain"},
		{"backslash", "spiffe://cluster.local\\ns\\default\\sa\\default", "trust domain"},
		{"very long", "spiffe://cluster.local/ns/default/sa/" + strings.Repeat("a.", 1100) + "a", "longer than 2048"},
		{"very long trust domain", "spiffe://" + strings.Repeat("a", 3000) + "/ns/default/sa/default", "longer than 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tt.in, got)
			}
			if !got.IsZero() {
				t.Errorf("Parse(%q) returned non-zero identity %+v alongside error", tt.in, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) error %q does not mention %q", tt.in, err, tt.wantErr)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long; hostile input should be truncated", len(err.Error()))
			}
		})
	}
}

func TestNewAndValidateRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		td, ns, sa string
		wantErr    string
	}{
		{"zero", "", "", "", "trust domain"},
		{"empty trust domain", "", "default", "default", "trust domain"},
		{"uppercase trust domain", "Cluster.local", "default", "default", "trust domain"},
		{"trust domain as URI", "spiffe://cluster.local", "default", "default", "trust domain"},
		{"trust domain with port", "cluster.local:80", "default", "default", "trust domain"},
		{"trust domain with path", "cluster.local/x", "default", "default", "trust domain"},
		{"trust domain double dot", "a..b", "default", "default", "trust domain"},
		{"empty namespace", "cluster.local", "", "default", "namespace"},
		{"empty service account", "cluster.local", "default", "", "service account"},
		{"namespace 64 chars", "cluster.local", strings.Repeat("a", 64), "default", "namespace"},
		{"namespace with slash", "cluster.local", "a/sa/b", "default", "namespace"},
		{"sa with slash", "cluster.local", "default", "a/b", "service account"},
		{"sa a..b", "cluster.local", "default", "a..b", "service account"},
		{"sa 254 chars", "cluster.local", "default", strings.Repeat("a", 254), "service account"},
		{"whole ID too long", strings.Repeat("t", 1900), "default", strings.Repeat("s", 63) + "." + strings.Repeat("s", 63) + "." + strings.Repeat("s", 63), "longer than 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := Identity{TrustDomain: tt.td, Namespace: tt.ns, ServiceAccount: tt.sa}
			err := id.Validate()
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want error", id)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate error %q does not mention %q", err, tt.wantErr)
			}
			got, err := New(tt.td, tt.ns, tt.sa)
			if err == nil || !got.IsZero() {
				t.Fatalf("New = %+v, %v; want zero identity and error", got, err)
			}
		})
	}
}

// Anything New accepts must survive formatting and parsing.
func TestNewRoundTrip(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ td, ns, sa string }{
		{"cluster.local", "default", "default"},
		{"a", "b", "c"},
		{"x_y.z-1", "n1", "a.b.c"},
		// Near the 2048-byte bound: must still parse.
		{strings.Repeat("t", 2048-len("spiffe:///ns/n/sa/s")), "n", "s"},
	} {
		id, err := New(c.td, c.ns, c.sa)
		if err != nil {
			t.Fatalf("New(%q, %q, %q): %v", c.td, c.ns, c.sa, err)
		}
		got, err := Parse(id.String())
		if err != nil || got != id {
			t.Fatalf("Parse(%q) = %+v, %v; want %+v", id.String(), got, err, id)
		}
	}
}

func TestFromURIs(t *testing.T) {
	t.Parallel()
	good, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b")
	other, _ := url.Parse("spiffe://cluster.local/ns/c/sa/d")
	web, _ := url.Parse("https://cluster.local/ns/a/sa/b")
	encoded, _ := url.Parse("spiffe://cluster.local/ns/%61/sa/b")
	query, _ := url.Parse("spiffe://cluster.local/ns/a/sa/b?x=y")

	id, err := FromURIs([]*url.URL{good})
	if err != nil || id != (Identity{"cluster.local", "a", "b"}) {
		t.Fatalf("FromURIs(one good) = %+v, %v", id, err)
	}
	for _, tt := range []struct {
		name    string
		uris    []*url.URL
		wantErr string
	}{
		{"none", nil, "exactly one URI SAN, has 0"},
		{"two", []*url.URL{good, other}, "exactly one URI SAN, has 2"},
		{"same twice", []*url.URL{good, good}, "has 2"},
		{"https", []*url.URL{web}, "scheme"},
		{"percent-encoded", []*url.URL{encoded}, "path"},
		{"query", []*url.URL{query}, "path"},
	} {
		if _, err := FromURIs(tt.uris); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: FromURIs error = %v, want one mentioning %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestFromSPIFFEID(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id, err := FromSPIFFEID(spiffeid.RequireFromPath(td, "/ns/web/sa/frontend"))
	if err != nil || id != (Identity{"example.org", "web", "frontend"}) {
		t.Fatalf("FromSPIFFEID = %+v, %v", id, err)
	}
	for _, path := range []string{"", "/ns/web", "/ns/web/sa/frontend/x", "/workload/x/sa/y", "/ns/Web/sa/frontend", "/ns/web/sa/front_end"} {
		sid := spiffeid.RequireFromPath(td, path)
		if got, err := FromSPIFFEID(sid); err == nil {
			t.Errorf("FromSPIFFEID(%s) = %+v, want error", sid, got)
		}
	}
	if _, err := FromSPIFFEID(spiffeid.ID{}); err == nil {
		t.Error("FromSPIFFEID(zero ID) succeeded")
	}
}

func TestURL(t *testing.T) {
	t.Parallel()
	id := Identity{"cluster.local", "ns1", "sa.one"}
	u := id.URL()
	if u.Scheme != "spiffe" || u.Host != "cluster.local" || u.Path != "/ns/ns1/sa/sa.one" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		t.Fatalf("URL() = %#v", u)
	}
	if got, err := FromURIs([]*url.URL{u}); err != nil || got != id {
		t.Fatalf("FromURIs(URL()) = %+v, %v", got, err)
	}
	if (Identity{}).IsZero() != true {
		t.Fatal("zero value must report IsZero")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/default",
		"spiffe://td/ns/a/sa/b.c",
		"spiffe://a.b_c-d/ns/x-y/sa/z.z-z",
		"spiffe://cluster.local/ns/default/sa/a..b",
		"spiffe://cluster..local/ns/default/sa/default",
		"spiffe://cluster.local:1/ns/a/sa/b",
		"spiffe://u@cluster.local/ns/a/sa/b",
		"spiffe://cluster.local/ns/a/sa/b?q#f",
		"spiffe://cluster.local/ns/%61/sa/b",
		"spiffe://cluster.local/ns/../sa/b",
		"spiffe://spiffe://x/ns/a/sa/b",
		"SPIFFE://cluster.local/ns/a/sa/b",
		"spiffe://cluster.local/ns/\u0430/sa/b",
		"spiffe://cluster.local/ns/a/sa/b\x00",
		"",
		"spiffe://",
		"spiffe:///",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("Parse(%q) returned %+v with error %v", s, id, err)
			}
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %+v, but Validate: %v", s, id, err)
		}
		if got := id.String(); got != s {
			t.Fatalf("Parse(%q).String() = %q; parsing must be canonical", s, got)
		}
		again, err := Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("Parse(String()) = %+v, %v; want %+v", again, err, id)
		}
		if u := id.URL().String(); u != s {
			t.Fatalf("URL().String() = %q, want %q", u, s)
		}
	})
}
