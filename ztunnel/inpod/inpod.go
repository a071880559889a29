//go:build linux

// Package inpod opens the ztunnel's sockets inside an enrolled pod's network
// namespace: the three listeners the capture rules divert traffic to (15001
// outbound, 15006 inbound plaintext, 15008 HBONE), and dialers that connect
// from inside the pod either with the ztunnel's socket mark (so the pod's
// capture rules let the connection through) or transparently with the
// original client's source address (so the application sees the real peer).
//
// Each socket is created on a thread that has entered the pod's namespace
// (podns.NS.Do) and is bound to that namespace for its life; everything after
// creation (accept, read, write, close) works from any goroutine.
package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// Config is the ports and mark of the in-pod sockets; it must agree with the
// capture.Config the pod's rules were programmed with.
type Config struct {
	OutboundPort uint16
	InboundPort  uint16
	HBONEPort    uint16
	// Mark is set (SO_MARK) on every socket the ztunnel dials from inside the
	// pod, so the capture rules do not divert it back to the ztunnel.
	Mark uint32
}

// DefaultConfig matches capture.DefaultConfig.
func DefaultConfig() Config {
	return Config{
		OutboundPort: capture.OutboundPort,
		InboundPort:  capture.InboundPort,
		HBONEPort:    capture.HBONEPort,
		Mark:         capture.Mark,
	}
}

// SocketOptions are the options a socket gets before it is bound.
type SocketOptions struct {
	// Transparent sets IP_TRANSPARENT (IPV6_TRANSPARENT on IPv6 sockets): a
	// listener accepts TPROXY-diverted connections for any destination; a
	// dialing socket may bind a non-local source address.
	Transparent bool
	// Mark, when non-zero, is the socket's SO_MARK.
	Mark uint32
}

// control returns a net.ListenConfig/net.Dialer Control function applying o.
func (o SocketOptions) control() func(network, address string, c syscall.RawConn) error {
	if !o.Transparent && o.Mark == 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if o.Transparent {
				if isIPv6Socket(network) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
				if serr != nil {
					serr = fmt.Errorf("set transparent: %w", serr)
					return
				}
			}
			if o.Mark != 0 {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
					serr = fmt.Errorf("set SO_MARK %#x: %w", o.Mark, err)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// isIPv6Socket: Control sees "tcp6" for AF_INET6 sockets (dual-stack
// included) and "tcp4" for AF_INET.
func isIPv6Socket(network string) bool {
	return len(network) > 0 && network[len(network)-1] == '6'
}

// Listen opens a TCP listener on address (for example ":15006", which is
// dual-stack where IPv6 is available) inside ns.
func Listen(ctx context.Context, ns *podns.NS, address string, opts SocketOptions) (net.Listener, error) {
	if ns == nil {
		return nil, errors.New("inpod: listen: network namespace is nil")
	}
	lc := net.ListenConfig{Control: opts.control()}
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = lc.Listen(ctx, "tcp", address)
		return err
	})
	if err != nil {
		if ln != nil {
			_ = ln.Close()
		}
		return nil, fmt.Errorf("inpod: listen on %s in %s: %w", address, ns.Name(), err)
	}
	return ln, nil
}

// Listeners are the ztunnel's three listeners inside one pod.
type Listeners struct {
	// Outbound (15001) receives the pod's outbound TCP, redirected in the
	// output hook; the original destination is OriginalDst(conn).
	Outbound net.Listener
	// Inbound (15006, IP_TRANSPARENT) receives plaintext inbound TCP diverted
	// by TPROXY; the original destination is TProxyDst(conn), the peer's
	// address is conn.RemoteAddr().
	Inbound net.Listener
	// HBONE (15008) receives HBONE (mTLS) connections, not diverted.
	HBONE net.Listener
}

// ListenAll opens the three listeners inside ns. On error nothing stays open.
func ListenAll(ctx context.Context, ns *podns.NS, cfg Config) (*Listeners, error) {
	if ns == nil {
		return nil, errors.New("inpod: listen: network namespace is nil")
	}
	if cfg.OutboundPort == 0 || cfg.InboundPort == 0 || cfg.HBONEPort == 0 {
		return nil, errors.New("inpod: listen: ports must be non-zero")
	}
	specs := []struct {
		port uint16
		opts SocketOptions
	}{
		{cfg.OutboundPort, SocketOptions{}},
		{cfg.InboundPort, SocketOptions{Transparent: true}},
		{cfg.HBONEPort, SocketOptions{}},
	}
	lns := make([]net.Listener, 0, len(specs))
	// One trip into the namespace for all three.
	err := ns.Do(func() error {
		for _, s := range specs {
			lc := net.ListenConfig{Control: s.opts.control()}
			addr := ":" + strconv.Itoa(int(s.port))
			ln, err := lc.Listen(ctx, "tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		for _, ln := range lns {
			_ = ln.Close()
		}
		return nil, fmt.Errorf("inpod: listeners in %s: %w", ns.Name(), err)
	}
	return &Listeners{Outbound: lns[0], Inbound: lns[1], HBONE: lns[2]}, nil
}

// Close closes every listener; connections already accepted stay open.
func (l *Listeners) Close() error {
	if l == nil {
		return nil
	}
	var errs []error
	for _, ln := range []net.Listener{l.Outbound, l.Inbound, l.HBONE} {
		if ln == nil {
			continue
		}
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("inpod: close listeners: %w", err)
	}
	return nil
}

// Dialer connects from inside a pod's network namespace.
type Dialer struct {
	NS *podns.NS
	// Mark is the SO_MARK of every socket (normally capture.Mark); zero means
	// no mark, and then the pod's capture rules divert the connection.
	Mark uint32
	// Timeout bounds connection setup (in addition to the context); zero
	// means no timeout beyond the context's.
	Timeout time.Duration
	// KeepAlive is passed to net.Dialer (zero: Go's default, negative: off).
	KeepAlive time.Duration
}

// DialContext dials address from inside the pod with the mark. Its signature
// fits hbone.ClientOptions.DialContext.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if d == nil || d.NS == nil {
		return nil, errors.New("inpod: dial: network namespace is nil")
	}
	nd := net.Dialer{
		Timeout:   d.Timeout,
		KeepAlive: d.KeepAlive,
		Control:   SocketOptions{Mark: d.Mark}.control(),
	}
	return d.dial(ctx, &nd, network, address)
}

// DialTransparent connects to dst from inside the pod with src (normally the
// original client's address, which is not local to the pod) as the source
// address, on a transparent socket carrying the mark, so that the
// application sees the real client address. The capture rules route the
// application's replies back to this socket.
func (d *Dialer) DialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if d == nil || d.NS == nil {
		return nil, errors.New("inpod: dial: network namespace is nil")
	}
	src = src.Unmap()
	dstAddr := dst.Addr().Unmap()
	if !src.IsValid() || !dstAddr.IsValid() || dst.Port() == 0 {
		return nil, fmt.Errorf("inpod: transparent dial: invalid source %s or destination %s", src, dst)
	}
	if src.Is4() != dstAddr.Is4() {
		return nil, fmt.Errorf("inpod: transparent dial: source %s and destination %s are of different families", src, dst)
	}
	network := "tcp4"
	if src.Is6() {
		network = "tcp6"
	}
	nd := net.Dialer{
		Timeout:   d.Timeout,
		KeepAlive: d.KeepAlive,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		Control:   SocketOptions{Transparent: true, Mark: d.Mark}.control(),
	}
	return d.dial(ctx, &nd, network, netip.AddrPortFrom(dstAddr, dst.Port()).String())
}

func (d *Dialer) dial(ctx context.Context, nd *net.Dialer, network, address string) (net.Conn, error) {
	var c net.Conn
	err := d.NS.Do(func() error {
		var err error
		c, err = nd.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		if c != nil {
			_ = c.Close()
		}
		return nil, fmt.Errorf("inpod: dial %s from %s: %w", address, d.NS.Name(), err)
	}
	return c, nil
}
