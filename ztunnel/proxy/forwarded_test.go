package proxy

import (
	"net/netip"
	"testing"
)

func TestForwardedFor(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.1.5":        "for=10.244.1.5",
		"::ffff:10.244.1.5": "for=10.244.1.5",
		"fd00:10:244::5":    `for="[fd00:10:244::5]"`,
	} {
		if got := forwardedFor(netip.MustParseAddr(in)); got != want {
			t.Errorf("forwardedFor(%s) = %s, want %s", in, got, want)
		}
	}
}
