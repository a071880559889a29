//go:build linux

package inpod

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// OriginalDst is the destination a connection redirected to the outbound
// listener (nat REDIRECT in the output hook) was originally addressed to, read
// from conntrack with SO_ORIGINAL_DST (IPv4, including IPv4 connections on a
// dual-stack socket) or IP6T_SO_ORIGINAL_DST (IPv6). It fails for a
// connection that was not redirected (ENOENT).
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %T has no socket", c)
	}
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %T is not a TCP connection", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination: %w", err)
	}
	v4 := local.IP.To4() != nil
	var (
		dst  netip.AddrPort
		gerr error
	)
	cerr := rc.Control(func(fd uintptr) {
		if v4 {
			dst, gerr = origDst4(int(fd))
		} else {
			dst, gerr = origDst6(int(fd))
		}
	})
	if err := errors.Join(cerr, gerr); err != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original destination of %s: %w", c.LocalAddr(), err)
	}
	return dst, nil
}

// origDst4 reads a struct sockaddr_in. x/sys/unix has no getter for it; an
// IPv6Mreq is 20 bytes, large enough for the 16-byte sockaddr_in.
func origDst4(fd int) (netip.AddrPort, error) {
	m, err := unix.GetsockoptIPv6Mreq(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	sa := m.Multiaddr[:] // sockaddr_in: family (host order), port (network order), addr
	if fam := binary.NativeEndian.Uint16(sa[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST returned address family %d", fam)
	}
	port := binary.BigEndian.Uint16(sa[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}

// origDst6 reads a struct sockaddr_in6 through IPv6MTUInfo, which begins with
// one.
func origDst6(fd int) (netip.AddrPort, error) {
	info, err := unix.GetsockoptIPv6MTUInfo(fd, unix.SOL_IPV6, ip6tSoOriginalDst)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	sa := info.Addr
	if sa.Family != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("IP6T_SO_ORIGINAL_DST returned address family %d", sa.Family)
	}
	// Port holds the network-order bytes as stored in memory.
	var pb [2]byte
	binary.NativeEndian.PutUint16(pb[:], sa.Port)
	port := binary.BigEndian.Uint16(pb[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), nil
}

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h
// (the same number as SO_ORIGINAL_DST, at level SOL_IPV6); x/sys/unix does not
// name it.
const ip6tSoOriginalDst = 80

// TProxyDst is the original destination of a connection diverted by TPROXY
// to the inbound listener: TPROXY does not rewrite the packet, so the
// accepted socket's local address is the destination the client addressed.
func TProxyDst(c net.Conn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: tproxy destination: %T is not a TCP connection", c)
	}
	ap := local.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
