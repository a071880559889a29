// Package testnet runs small TCP servers on loopback for tests.
package testnet

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

// StartTCP serves each accepted connection with serve until the test ends.
func StartTCP(t testing.TB, serve func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// StartEcho echoes each connection until EOF, then half-closes it.
func StartEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	return StartTCP(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
		_ = c.CloseWrite()
	})
}
