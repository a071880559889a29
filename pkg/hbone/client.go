//lint:file-ignore SA1019 x/net/http2's ClientConn gives the per-connection pooling HBONE needs; moving to net/http's ClientConn (Go 1.26) is tracked in docs/architecture.md.

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
)

// SourceCert is a local identity able to present its certificate, such as a
// *workloadcert.Source.
type SourceCert interface {
	mtls.CertSource
	Identity() identity.Identity
}

// DialRequest describes one tunnelled connection.
type DialRequest struct {
	Source   SourceCert        // whose certificate the tunnel presents
	Proxy    netip.AddrPort    // the HBONE endpoint, usually <ip>:15008
	Target   netip.AddrPort    // the :authority, the real destination
	Expected identity.Identity // the identity the HBONE endpoint must prove; zero accepts any in the bundle
	Header   http.Header       // extra request headers
}

// ClientOptions tune a Client. Zero values take the defaults.
type ClientOptions struct {
	// IdleTimeout closes pooled connections with no streams; default 5m.
	IdleTimeout time.Duration
	// PingInterval sends a health-check PING after this long without frames; default 30s.
	PingInterval time.Duration
	// DialContext opens the TCP connection; ztunnel uses it to dial from
	// inside a pod's network namespace. Default: net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger      *slog.Logger
}

// Client opens HBONE streams, pooling connections: streams to the same
// (source identity, proxy address, expected identity) share one TLS
// connection while it has stream capacity.
type Client struct {
	bundle *mtls.Bundle
	opts   ClientOptions
	t      *http2.Transport
	log    *slog.Logger

	mu      sync.Mutex
	pool    map[poolKey][]*http2.ClientConn
	dialing map[poolKey]*dialCall
	closed  bool
}

type poolKey struct {
	source   identity.Identity
	proxy    netip.AddrPort
	expected identity.Identity
}

type dialCall struct {
	done chan struct{}
	err  error
}

// NewClient returns a Client verifying servers against bundle.
func NewClient(bundle *mtls.Bundle, opts ClientOptions) *Client {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 30 * time.Second
	}
	if opts.DialContext == nil {
		opts.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Client{
		bundle: bundle, opts: opts, log: opts.Logger.With("component", "hbone-client"),
		t: &http2.Transport{
			IdleConnTimeout: opts.IdleTimeout,
			ReadIdleTimeout: opts.PingInterval,
			PingTimeout:     15 * time.Second,
		},
		pool:    map[poolKey][]*http2.ClientConn{},
		dialing: map[poolKey]*dialCall{},
	}
}

// Dial opens a CONNECT stream to req.Target through req.Proxy. A refusal by
// the server is returned as a *StatusError carrying its status code.
func (c *Client) Dial(ctx context.Context, req DialRequest) (Conn, error) {
	if req.Source == nil {
		return nil, errors.New("hbone: dial without a source certificate")
	}
	if !req.Target.IsValid() || !req.Proxy.IsValid() {
		return nil, fmt.Errorf("hbone: dial needs a proxy and a target address (got %v via %v)", req.Target, req.Proxy)
	}
	key := poolKey{source: req.Source.Identity(), proxy: req.Proxy, expected: req.Expected}
	cc, err := c.conn(ctx, key, req.Source)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	hreq := &http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Scheme: "https", Host: req.Target.String()},
		Host:          req.Target.String(),
		Header:        req.Header.Clone(),
		Body:          pr,
		ContentLength: -1,
	}
	if hreq.Header == nil {
		hreq.Header = http.Header{}
	}
	// The stream outlives ctx: ctx bounds only the setup.
	stop := context.AfterFunc(ctx, func() { pw.CloseWithError(ctx.Err()) })
	resp, err := cc.RoundTrip(hreq)
	stopped := stop()
	if err != nil {
		pw.CloseWithError(err)
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", req.Target, req.Proxy, cerr)
		}
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", req.Target, req.Proxy, err)
	}
	if !stopped {
		pw.CloseWithError(ctx.Err())
		resp.Body.Close()
		return nil, fmt.Errorf("hbone: CONNECT %s via %s: %w", req.Target, req.Proxy, ctx.Err())
	}
	if resp.StatusCode != http.StatusOK {
		pw.Close()
		resp.Body.Close()
		reason := resp.Header.Get("X-Ambit-Reason")
		if reason == "" {
			reason = "refused by peer"
		}
		return nil, &StatusError{Code: resp.StatusCode, Reason: reason}
	}
	return &clientStream{body: resp.Body, pw: pw, local: req.Source.Identity(), proxy: req.Proxy, target: req.Target}, nil
}

// conn returns a pooled connection with a reserved stream slot, dialing one
// if none has capacity. Concurrent callers for one key share a single dial.
func (c *Client) conn(ctx context.Context, key poolKey, src SourceCert) (*http2.ClientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, errors.New("hbone: client closed")
		}
		live := c.pool[key][:0]
		var picked *http2.ClientConn
		for _, cc := range c.pool[key] {
			st := cc.State()
			if st.Closed || st.Closing {
				continue // evict broken and idle-closed connections
			}
			live = append(live, cc)
			if picked == nil && cc.ReserveNewRequest() {
				picked = cc
			}
		}
		if len(live) == 0 {
			delete(c.pool, key)
		} else {
			c.pool[key] = live
		}
		if picked != nil {
			c.mu.Unlock()
			return picked, nil
		}
		if call := c.dialing[key]; call != nil {
			c.mu.Unlock()
			select {
			case <-call.done:
				if call.err != nil {
					return nil, call.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		call := &dialCall{done: make(chan struct{})}
		c.dialing[key] = call
		c.mu.Unlock()

		cc, err := c.dial(ctx, key, src)
		c.mu.Lock()
		delete(c.dialing, key)
		if err == nil {
			c.pool[key] = append(c.pool[key], cc)
		}
		c.mu.Unlock()
		call.err = err
		close(call.done)
		if err != nil {
			return nil, err
		}
	}
}

func (c *Client) dial(ctx context.Context, key poolKey, src SourceCert) (*http2.ClientConn, error) {
	raw, err := c.opts.DialContext(ctx, "tcp", key.proxy.String())
	if err != nil {
		return nil, fmt.Errorf("hbone: dial %s: %w", key.proxy, err)
	}
	tc := tls.Client(raw, mtls.ClientConfig(src, c.bundle, key.expected))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", key.proxy, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != mtls.ALPN {
		_ = tc.Close()
		return nil, fmt.Errorf("hbone: %s negotiated ALPN %q, want %q", key.proxy, p, mtls.ALPN)
	}
	cc, err := c.t.NewClientConn(tc)
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 with %s: %w", key.proxy, err)
	}
	// One round trip makes sure the server's SETTINGS (its stream limit) are
	// applied before streams are reserved on this connection.
	if err := cc.Ping(ctx); err != nil {
		_ = cc.Close()
		return nil, fmt.Errorf("hbone: HTTP/2 with %s: %w", key.proxy, err)
	}
	c.log.Debug("connection established", "proxy", key.proxy.String(), "source", key.source.String(), "expected", key.expected.String())
	return cc, nil
}

// PoolStats reports pooled connections, for tests and debug views.
type PoolStats struct {
	Connections   int
	ActiveStreams int
}

// Stats counts live pooled connections and their streams.
func (c *Client) Stats() PoolStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s PoolStats
	for _, conns := range c.pool {
		for _, cc := range conns {
			st := cc.State()
			if st.Closed || st.Closing {
				continue
			}
			s.Connections++
			s.ActiveStreams += st.StreamsActive
		}
	}
	return s
}

// Close closes every pooled connection; streams on them fail.
func (c *Client) Close() {
	c.mu.Lock()
	c.closed = true
	pool := c.pool
	c.pool = map[poolKey][]*http2.ClientConn{}
	c.mu.Unlock()
	for _, conns := range pool {
		for _, cc := range conns {
			_ = cc.Close()
		}
	}
}

// clientStream adapts a CONNECT round trip to net.Conn: reads come from the
// response body, writes go through a pipe into the request body.
type clientStream struct {
	body   io.ReadCloser
	pw     *io.PipeWriter
	local  identity.Identity
	proxy  netip.AddrPort
	target netip.AddrPort

	closeOnce sync.Once
}

func (s *clientStream) Read(p []byte) (int, error)  { return s.body.Read(p) }
func (s *clientStream) Write(p []byte) (int, error) { return s.pw.Write(p) }

// CloseWrite ends the request body: END_STREAM, the tunnelled FIN.
func (s *clientStream) CloseWrite() error { return s.pw.Close() }

// Close aborts whatever direction is still open.
func (s *clientStream) Close() error {
	s.closeOnce.Do(func() {
		s.pw.CloseWithError(net.ErrClosed)
		_ = s.body.Close()
	})
	return nil
}

func (s *clientStream) LocalAddr() net.Addr  { return streamAddr{s.local.String()} }
func (s *clientStream) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.target) }

// Deadlines are not supported on client streams: the transport offers no way
// to interrupt a blocked read without resetting the stream.
func (s *clientStream) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (s *clientStream) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (s *clientStream) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

type streamAddr struct{ id string }

func (a streamAddr) Network() string { return "hbone" }
func (a streamAddr) String() string  { return a.id }
