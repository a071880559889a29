package hbone

import (
	"fmt"
	"net/netip"
)

// ParseAuthority parses a CONNECT :authority. HBONE targets are literal
// addresses, "ip:port" or "[ipv6]:port", never host names; port 0 and IPv6
// zones are refused because they cannot name a remote endpoint.
func ParseAuthority(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, fmt.Errorf("empty authority")
	}
	if len(s) > 64 {
		return netip.AddrPort{}, fmt.Errorf("authority too long (%d bytes)", len(s))
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("authority %q is not ip:port: %w", s, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("authority %q has port 0", s)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("authority %q has an IPv6 zone", s)
	}
	// Canonical form: ::ffff:a.b.c.d targets are the IPv4 address.
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
