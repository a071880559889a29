package hbone

import (
	"testing"
)

func TestParseAuthority(t *testing.T) {
	good := map[string]string{
		"10.0.0.1:8080":          "10.0.0.1:8080",
		"[fd00::1]:15008":        "[fd00::1]:15008",
		"[::ffff:10.1.2.3]:80":   "10.1.2.3:80",
		"255.255.255.255:65535":  "255.255.255.255:65535",
		"[2001:db8::a:b:c]:4431": "[2001:db8::a:b:c]:4431",
	}
	for in, want := range good {
		got, err := ParseAuthority(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseAuthority(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	bad := []string{
		"", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1",
		"example.com:80", "localhost:80", "[fe80::1%eth0]:80", "fd00::1:80", "10.0.0.1:80/path",
		"http://10.0.0.1:80", " 10.0.0.1:80", "10.0.0.1:80 ", "10.0.0.01:80", "10.0.0.1:0x50",
		"user@10.0.0.1:80", "[::1]:80\x00", "10.0.0.1:8080:1",
	}
	for _, in := range bad {
		if got, err := ParseAuthority(in); err == nil {
			t.Errorf("ParseAuthority(%q) = %v, want an error", in, got)
		}
	}
}

// FuzzParseAuthority checks the parser never panics and that whatever it
// accepts is a usable, canonical remote endpoint.
func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:15008", "[::ffff:1.2.3.4]:1", "a:1", "[fe80::1%25x]:1", ":", "1.2.3.4:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() {
			t.Fatalf("ParseAuthority(%q) accepted unusable %v", s, ap)
		}
		again, err := ParseAuthority(ap.String())
		if err != nil || again != ap {
			t.Fatalf("canonical form %q of %q does not parse back: %v, %v", ap.String(), s, again, err)
		}
	})
}
