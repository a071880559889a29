//go:build linux

package inpod_test

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
)

func sockoptInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func TestListenAllInsideNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewT(t)
	other := netnstest.NewT(t)
	ctx := context.Background()
	lns, err := inpod.ListenAll(ctx, pod, inpod.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer lns.Close()
	for _, ln := range []net.Listener{lns.Outbound, lns.Inbound, lns.HBONE} {
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(ln.Addr().(*net.TCPAddr).Port))
		c, err := (&inpod.Dialer{NS: pod}).DialContext(ctx, "tcp", addr.String())
		if err != nil {
			t.Fatalf("dial %s inside the pod: %v", addr, err)
		}
		_ = c.Close()
		// The same port in another namespace has no listener.
		if c, err := (&inpod.Dialer{NS: other}).DialContext(ctx, "tcp", addr.String()); err == nil {
			_ = c.Close()
			t.Fatalf("listener on %s is visible from another namespace", addr)
		}
	}
	if v := sockoptInt(t, lns.Inbound.(*net.TCPListener), unix.SOL_IPV6, unix.IPV6_TRANSPARENT); v != 1 {
		t.Errorf("inbound listener IPV6_TRANSPARENT = %d, want 1", v)
	}
	if v := sockoptInt(t, lns.Outbound.(*net.TCPListener), unix.SOL_IPV6, unix.IPV6_TRANSPARENT); v != 0 {
		t.Errorf("outbound listener IPV6_TRANSPARENT = %d, want 0", v)
	}
	if err := lns.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lns.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Closed: the ports are free again.
	again, err := inpod.ListenAll(ctx, pod, inpod.DefaultConfig())
	if err != nil {
		t.Fatalf("listen again after Close: %v", err)
	}
	_ = again.Close()
}

func TestListenAllFailureClosesEverything(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewT(t)
	ctx := context.Background()
	busy, err := inpod.Listen(ctx, pod, ":15008", inpod.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := inpod.ListenAll(ctx, pod, inpod.DefaultConfig()); err == nil {
		t.Fatal("ListenAll succeeded with 15008 taken")
	}
	for _, addr := range []string{":15001", ":15006"} {
		ln, err := inpod.Listen(ctx, pod, addr, inpod.SocketOptions{})
		if err != nil {
			t.Fatalf("%s still held after the failed ListenAll: %v", addr, err)
		}
		_ = ln.Close()
	}
	if _, err := inpod.ListenAll(ctx, nil, inpod.DefaultConfig()); err == nil {
		t.Fatal("ListenAll(nil) succeeded")
	}
	bad := inpod.DefaultConfig()
	bad.HBONEPort = 0
	if _, err := inpod.ListenAll(ctx, pod, bad); err == nil {
		t.Fatal("ListenAll with port 0 succeeded")
	}
}

func TestDialerSetsMark(t *testing.T) {
	netnstest.RequireRoot(t)
	pod := netnstest.NewT(t)
	ctx := context.Background()
	ln, err := inpod.Listen(ctx, pod, "127.0.0.1:7000", inpod.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	c, err := (&inpod.Dialer{NS: pod, Mark: capture.Mark, Timeout: 5 * time.Second}).DialContext(ctx, "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := sockoptInt(t, c.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_MARK); uint32(v) != capture.Mark {
		t.Errorf("SO_MARK = %#x, want %#x", v, capture.Mark)
	}
	// Not redirected, so no original destination.
	if _, err := inpod.OriginalDst(c); err == nil {
		t.Error("OriginalDst succeeded on a connection that was not redirected")
	}
	if dst, err := inpod.TProxyDst(c); err != nil || dst.String() != c.LocalAddr().String() {
		t.Errorf("TProxyDst = %s, %v", dst, err)
	}
}

func TestInvalidInput(t *testing.T) {
	ctx := context.Background()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := inpod.OriginalDst(a); err == nil {
		t.Error("OriginalDst on a pipe succeeded")
	}
	if _, err := inpod.TProxyDst(a); err == nil {
		t.Error("TProxyDst on a pipe succeeded")
	}
	if _, err := (&inpod.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:1"); err == nil {
		t.Error("dial without a namespace succeeded")
	}
	var nilDialer *inpod.Dialer
	if _, err := nilDialer.DialTransparent(ctx, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddrPort("10.0.0.2:80")); err == nil {
		t.Error("nil dialer succeeded")
	}
	if _, err := inpod.Listen(ctx, nil, ":1", inpod.SocketOptions{}); err == nil {
		t.Error("Listen(nil) succeeded")
	}
	netnstest.RequireRoot(t)
	pod := netnstest.NewT(t)
	d := &inpod.Dialer{NS: pod}
	for _, tc := range []struct {
		src string
		dst string
	}{
		{"10.0.0.1", "[fd00::1]:80"},
		{"fd00::2", "10.0.0.1:80"},
		{"10.0.0.1", "10.0.0.2:0"},
	} {
		if _, err := d.DialTransparent(ctx, netip.MustParseAddr(tc.src), netip.MustParseAddrPort(tc.dst)); err == nil {
			t.Errorf("DialTransparent(%s, %s) succeeded", tc.src, tc.dst)
		}
	}
	if _, err := d.DialTransparent(ctx, netip.Addr{}, netip.MustParseAddrPort("10.0.0.2:80")); err == nil {
		t.Error("DialTransparent with no source succeeded")
	}
}

func TestDialHonoursContext(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.NewPair(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (&inpod.Dialer{NS: p.NS}).DialContext(ctx, "tcp", netip.AddrPortFrom(p.PeerIP4, 9).String()); err == nil {
		t.Fatal("dial with a cancelled context succeeded")
	}
}
