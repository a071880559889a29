package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
)

// Handler decides on one CONNECT stream. It either returns an error before
// calling req.Accept (the client gets the error's status: a *StatusError's
// code, 503 otherwise) or accepts and then owns the stream until it returns.
type Handler interface {
	ServeHBONE(ctx context.Context, req *Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) error

// ServeHBONE implements Handler.
func (f HandlerFunc) ServeHBONE(ctx context.Context, req *Request) error { return f(ctx, req) }

// StatusError is a refusal with an HTTP status, such as 403 for a peer that
// policy denies or 503 for an unreachable target.
type StatusError struct {
	Code   int
	Reason string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Code, http.StatusText(e.Code), e.Reason)
}

// Errorf returns a *StatusError with a formatted reason.
func Errorf(code int, format string, args ...any) error {
	return &StatusError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// Request is one CONNECT stream awaiting a decision.
type Request struct {
	Peer       identity.Identity // the client's verified identity
	Target     netip.AddrPort    // the parsed :authority
	Header     http.Header       // regular request headers (baggage, forwarded, traceparent, ...)
	RemoteAddr net.Addr          // the client's transport address
	LocalAddr  net.Addr

	stream *serverStream
}

// Accept answers 200 and returns the stream. It may be called once.
func (r *Request) Accept() (Conn, error) {
	if err := r.stream.respond(http.StatusOK, ""); err != nil {
		return nil, err
	}
	return r.stream, nil
}

// Conn is a tunnelled stream: a net.Conn whose CloseWrite sends END_STREAM
// (the tunnelled FIN) while reading continues.
type Conn interface {
	net.Conn
	CloseWrite() error
}

// ServerOptions tune a Server. Zero values take the defaults.
type ServerOptions struct {
	// MaxConcurrentStreams per connection; default 1000.
	MaxConcurrentStreams uint32
	// HandshakeTimeout bounds the TLS handshake and the HTTP/2 preface; default 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds one write to the socket; a peer that stops reading
	// for this long loses its connection. Default 1m.
	WriteTimeout time.Duration
	// IdleTimeout closes a connection that has carried no stream for this
	// long (GOAWAY, then close). Default 10m, above the client's 5m, so the
	// client normally closes first.
	IdleTimeout time.Duration
	// StreamWindow is the receive window per stream; default 4 MiB.
	StreamWindow int32
	// ConnWindow is the receive window per connection; default 16 MiB.
	ConnWindow int32
	// MaxFrameSize is the largest DATA frame we accept; default 64 KiB.
	MaxFrameSize uint32
	Logger       *slog.Logger
}

func (o *ServerOptions) setDefaults() {
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 1000
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = time.Minute
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.StreamWindow <= 0 {
		o.StreamWindow = 4 << 20
	}
	if o.ConnWindow < o.StreamWindow {
		o.ConnWindow = max(16<<20, o.StreamWindow)
	}
	if o.MaxFrameSize < 16<<10 || o.MaxFrameSize > 1<<24-1 {
		o.MaxFrameSize = 64 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Server accepts HBONE connections.
type Server struct {
	handler Handler
	tls     *tls.Config
	opts    ServerOptions
	log     *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	closing   bool
	wg        sync.WaitGroup
}

// NewServer returns a Server using tlsConfig (see mtls.ServerConfig) and handler.
func NewServer(tlsConfig *tls.Config, handler Handler, opts ServerOptions) *Server {
	opts.setDefaults()
	cfg := tlsConfig.Clone()
	cfg.NextProtos = []string{mtls.ALPN}
	return &Server{
		handler: handler, tls: cfg, opts: opts, log: opts.Logger.With("component", "hbone-server"),
		listeners: map[net.Listener]struct{}{}, conns: map[*serverConn]struct{}{},
	}
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// Serve accepts connections on ln until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("hbone: accept: %w", err)
		}
		backoff = 0
		go s.ServeConn(c)
	}
}

// ServeConn runs the HBONE protocol on one accepted connection, returning
// when it closes. Serve calls it; callers that accept connections themselves
// (listeners inside pod network namespaces) may call it directly.
func (s *Server) ServeConn(c net.Conn) {
	log := s.log.With("remote", c.RemoteAddr().String())
	tc := tls.Server(c, s.tls)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		log.Warn("refused connection: TLS handshake failed", "err", err)
		_ = c.Close()
		return
	}
	peer, err := mtls.PeerIdentity(tc.ConnectionState())
	if err != nil {
		log.Warn("refused connection: no usable peer identity", "err", err)
		_ = c.Close()
		return
	}
	sc := newServerConn(s, tc, peer, log.With("peer", peer.String()))
	if !s.track(sc, true) {
		_ = c.Close()
		return
	}
	defer s.track(sc, false)
	sc.serve()
}

func (s *Server) track(sc *serverConn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.conns[sc] = struct{}{}
		s.wg.Add(1)
		return true
	}
	delete(s.conns, sc)
	s.wg.Done()
	return true
}

// Shutdown stops accepting, sends GOAWAY on every connection so clients open
// new streams elsewhere, and waits for in-flight streams to finish or ctx to
// end, after which remaining connections are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for sc := range s.conns {
		sc.goAway(false)
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes listeners and every connection immediately.
func (s *Server) Close() {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.close(ErrServerClosed)
	}
}
