// Package proxy is ztunnel's data path for one enrolled pod: it serves the
// three listeners opened in the pod's network namespace.
//
//   - Outbound (15001): the pod's own outbound TCP. The original destination
//     is routed (Router): to a captured destination over HBONE with the pod's
//     own certificate, the destination's identity checked; to anything else
//     as plain TCP (passthrough).
//   - HBONE (15008): mTLS from other ztunnels. The peer's identity is checked
//     against the pod's policies (Authorizer); an allowed stream is delivered
//     to the application from inside the pod with the original source IP.
//   - Inbound plaintext (15006): TCP that arrived without the mesh. Allowed
//     only where PeerAuthentication permits plaintext, and then checked
//     against policy with no identity.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
)

// Pod is one enrolled pod on this node.
type Pod struct {
	UID       string
	Namespace string
	Name      string
	IPs       []netip.Addr
	// Cert is the pod's identity certificate (rotating).
	Cert hbone.SourceCert
	// Dialer connects from inside the pod's network namespace with the
	// ztunnel's mark (outbound and transparent delivery).
	Dialer *inpod.Dialer
	// Listeners opened in the pod's network namespace.
	Listeners *inpod.Listeners
}

func (p *Pod) hasIP(a netip.Addr) bool {
	for _, ip := range p.IPs {
		if ip == a.Unmap() {
			return true
		}
	}
	return false
}

// Route is where an outbound connection goes.
type Route struct {
	// HBONE tunnels to Proxy (an endpoint's or waypoint's ip:15008) with
	// :authority Target, requiring the peer to prove Identity. Otherwise
	// the connection is plain TCP to Target.
	HBONE bool
	Proxy netip.AddrPort
	// Waypoint marks a tunnel to a waypoint, which is told the client's
	// address (Forwarded: for=) for its policies and metrics.
	Waypoint bool
	Target   netip.AddrPort
	Identity identity.Identity
	// Labels for logs and metrics.
	Service             string // "<namespace>/<hostname>", empty for a direct workload
	DestinationWorkload string
	DestinationNS       string
	// Done, if set, is called when the connection ends (load balancer
	// accounting).
	Done func()
}

// Router resolves an outbound connection of pod to dst.
type Router interface {
	Route(pod *Pod, dst netip.AddrPort) (Route, error)
}

// Inbound describes an inbound connection for authorization.
type Inbound struct {
	Pod    *Pod
	Peer   identity.Identity // zero for plaintext
	MTLS   bool
	Source netip.AddrPort
	Dest   netip.AddrPort
}

// Authorizer decides inbound connections; reason is logged.
type Authorizer interface {
	Authorize(in Inbound) (allow bool, reason string)
}

// Options configure a Proxy.
type Options struct {
	Bundle *mtls.Bundle
	Router Router
	Authz  Authorizer
	Log    *slog.Logger
	// Observe, if set, is told about every connection when it ends (metrics).
	Observe func(Event)
	// ConnectTimeout bounds upstream connection setup; default 10s.
	ConnectTimeout time.Duration
}

// Event reports one finished (or refused) connection.
type Event struct {
	Direction   string // "outbound", "inbound"
	Pod         *Pod
	Peer        identity.Identity
	MTLS        bool
	Route       Route // outbound
	Source      netip.AddrPort
	Dest        netip.AddrPort
	Sent, Recv  int64 // bytes from and to the connection's initiator
	Denied      bool
	Err         error
	Passthrough bool
	Start       time.Time
	Duration    time.Duration
}

// Proxy serves enrolled pods.
type Proxy struct {
	opts Options
	log  *slog.Logger
}

// New validates opts.
func New(opts Options) (*Proxy, error) {
	switch {
	case opts.Bundle == nil:
		return nil, errors.New("proxy: no trust bundle")
	case opts.Router == nil:
		return nil, errors.New("proxy: no router")
	case opts.Authz == nil:
		return nil, errors.New("proxy: no authorizer")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	return &Proxy{opts: opts, log: opts.Log}, nil
}

// Serving is one pod being served; Stop ends it.
type Serving struct {
	pod      *Pod
	stopOnce sync.Once
	cancel   context.CancelFunc
	hsrv     *hbone.Server
	client   *hbone.Client
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Serve starts serving pod's listeners until Stop.
func (p *Proxy) Serve(pod *Pod) (*Serving, error) {
	if pod.Listeners == nil || pod.Dialer == nil || pod.Cert == nil {
		return nil, fmt.Errorf("proxy: pod %s/%s is missing listeners, dialer or certificate", pod.Namespace, pod.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Serving{pod: pod, cancel: cancel, conns: map[net.Conn]struct{}{}}
	log := p.log.With("pod", pod.Namespace+"/"+pod.Name)
	s.client = hbone.NewClient(p.opts.Bundle, hbone.ClientOptions{DialContext: pod.Dialer.DialContext, Logger: log})
	s.hsrv = hbone.NewServer(mtls.ServerConfig(pod.Cert, p.opts.Bundle), hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) error {
		return p.inboundHBONE(ctx, s, req, log)
	}), hbone.ServerOptions{Logger: log})
	s.wg.Go(func() {
		if err := s.hsrv.Serve(pod.Listeners.HBONE); err != nil && !errors.Is(err, hbone.ErrServerClosed) && ctx.Err() == nil {
			log.Error("HBONE listener failed", "error", err)
		}
	})
	s.wg.Go(func() { p.acceptLoop(ctx, s, pod.Listeners.Outbound, log, p.outbound) })
	s.wg.Go(func() { p.acceptLoop(ctx, s, pod.Listeners.Inbound, log, p.inboundPlaintext) })
	return s, nil
}

// Drain stops accepting connections (the pod's new connections are then
// refused, never let through) and waits until its connections end or ctx
// is done, then stops.
func (s *Serving) Drain(ctx context.Context) {
	_ = s.pod.Listeners.Close()
	_ = s.hsrv.Shutdown(ctx) // GOAWAY, then waits for the tunnels' streams
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for s.active() > 0 {
		select {
		case <-ctx.Done():
			s.Stop()
			return
		case <-tick.C:
		}
	}
	s.Stop()
}

func (s *Serving) active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Stop closes the listeners and every connection of the pod and waits for
// its goroutines. It may be called more than once.
func (s *Serving) Stop() {
	s.stopOnce.Do(s.stop)
}

func (s *Serving) stop() {
	s.cancel()
	_ = s.pod.Listeners.Close()
	s.hsrv.Close()
	s.client.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Serving) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Serving) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

type connHandler func(ctx context.Context, s *Serving, c net.Conn, log *slog.Logger)

func (p *Proxy) acceptLoop(ctx context.Context, s *Serving, ln net.Listener, log *slog.Logger, handle connHandler) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accept failed", "listener", ln.Addr().String(), "error", err, "retry in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		s.track(c)
		s.wg.Go(func() {
			defer s.untrack(c)
			defer c.Close()
			handle(ctx, s, c, log)
		})
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// outbound handles a connection the pod opened, diverted to 15001.
func (p *Proxy) outbound(ctx context.Context, s *Serving, c net.Conn, log *slog.Logger) {
	ev := Event{Direction: "outbound", Pod: s.pod, Source: addrPort(c.RemoteAddr()), Start: time.Now()}
	defer p.observe(&ev)
	dst, err := inpod.OriginalDst(c)
	if err != nil {
		ev.Err = fmt.Errorf("original destination: %w", err)
		log.Warn("outbound connection without an original destination", "error", err)
		return
	}
	ev.Dest = dst
	route, err := p.opts.Router.Route(s.pod, dst)
	if err != nil {
		ev.Err = err
		log.Warn("outbound connection not routable", "dst", dst, "error", err)
		return
	}
	ev.Route = route
	if route.Done != nil {
		defer route.Done()
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	defer cancel()
	var up net.Conn
	if route.HBONE {
		req := hbone.DialRequest{Source: s.pod.Cert, Proxy: route.Proxy, Target: route.Target, Expected: route.Identity}
		if route.Waypoint && ev.Source.IsValid() {
			req.Header = http.Header{"Forwarded": {forwardedFor(ev.Source.Addr())}}
		}
		up, err = s.client.Dial(dctx, req)
		ev.MTLS, ev.Peer = true, route.Identity
	} else {
		ev.Passthrough = true
		up, err = s.pod.Dialer.DialContext(dctx, "tcp", route.Target.String())
	}
	cancel()
	if err != nil {
		ev.Err = err
		log.Warn("outbound upstream connection failed", "dst", dst, "hbone", route.HBONE, "via", route.Proxy, "error", err)
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == 403 {
			ev.Denied = true
		}
		return
	}
	if !s.track(up) {
		_ = up.Close()
		return
	}
	defer s.untrack(up)
	ev.Sent, ev.Recv, err = hbone.Proxy(c, up)
	if err != nil && !isClosed(err) {
		ev.Err = err
	}
}

// inboundHBONE decides one CONNECT stream to this pod and, when allowed,
// delivers it to the application with the source's IP.
func (p *Proxy) inboundHBONE(ctx context.Context, s *Serving, req *hbone.Request, log *slog.Logger) error {
	src := addrPort(req.RemoteAddr)
	ev := Event{Direction: "inbound", Pod: s.pod, Peer: req.Peer, MTLS: true, Source: src, Dest: req.Target, Start: time.Now()}
	defer p.observe(&ev)
	if !s.pod.hasIP(req.Target.Addr()) {
		ev.Err = fmt.Errorf("target %s is not this pod", req.Target)
		return hbone.Errorf(400, "target %s is not an address of pod %s/%s", req.Target, s.pod.Namespace, s.pod.Name)
	}
	if allow, reason := p.opts.Authz.Authorize(Inbound{Pod: s.pod, Peer: req.Peer, MTLS: true, Source: src, Dest: req.Target}); !allow {
		ev.Denied = true
		log.Info("connection denied", "peer", req.Peer.String(), "src", src, "dst", req.Target, "reason", reason)
		return hbone.Errorf(403, "denied: %s", reason)
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	app, err := s.pod.Dialer.DialTransparent(dctx, src.Addr(), req.Target)
	cancel()
	if err != nil {
		ev.Err = err
		return hbone.Errorf(503, "connect to the application: %v", err)
	}
	defer app.Close()
	conn, err := req.Accept()
	if err != nil {
		ev.Err = err
		return err
	}
	defer conn.Close()
	if !s.track(app) {
		return nil
	}
	defer s.untrack(app)
	ev.Sent, ev.Recv, err = hbone.Proxy(conn, app)
	if err != nil && !isClosed(err) {
		ev.Err = err
	}
	return nil
}

// inboundPlaintext handles TCP that reached the pod without the mesh.
func (p *Proxy) inboundPlaintext(ctx context.Context, s *Serving, c net.Conn, log *slog.Logger) {
	src := addrPort(c.RemoteAddr())
	ev := Event{Direction: "inbound", Pod: s.pod, Source: src, Start: time.Now()}
	defer p.observe(&ev)
	dst, err := inpod.TProxyDst(c)
	if err != nil {
		ev.Err = err
		return
	}
	ev.Dest = dst
	if allow, reason := p.opts.Authz.Authorize(Inbound{Pod: s.pod, Source: src, Dest: dst}); !allow {
		ev.Denied = true
		log.Info("plaintext connection refused", "src", src, "dst", dst, "reason", reason)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	app, err := s.pod.Dialer.DialTransparent(dctx, src.Addr(), dst)
	cancel()
	if err != nil {
		ev.Err = err
		log.Warn("connect to the application failed", "dst", dst, "error", err)
		return
	}
	if !s.track(app) {
		_ = app.Close()
		return
	}
	defer s.untrack(app)
	defer app.Close()
	ev.Sent, ev.Recv, err = hbone.Proxy(c, app)
	if err != nil && !isClosed(err) {
		ev.Err = err
	}
}

func (p *Proxy) observe(ev *Event) {
	ev.Duration = time.Since(ev.Start)
	if p.opts.Observe != nil {
		p.opts.Observe(*ev)
	}
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}

// forwardedFor is an RFC 7239 "for" element; IPv6 addresses are quoted and
// bracketed as the RFC requires.
func forwardedFor(ip netip.Addr) string {
	if ip.Is6() && !ip.Is4In6() {
		return `for="[` + ip.String() + `]"`
	}
	return "for=" + ip.Unmap().String()
}
