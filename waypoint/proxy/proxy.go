// Package proxy is the waypoint's data path. ServeHBONE takes each CONNECT
// stream ztunnel tunnels to the waypoint, finds main_internal's filter chain
// for the stream's target (destination port and service VIP), detects the
// protocol when the port needs it, and either proxies bytes (TCP chain:
// network RBAC, then tcp_proxy) or serves HTTP/1.1 and h2c (HTTP chain:
// HTTP RBAC, then the route table; see http.go and forward.go).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/config"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// Options configure a Proxy.
type Options struct {
	// Config yields the current configuration snapshot.
	Config func() *config.Snapshot
	// Upstreams are the clusters.
	Upstreams *upstream.Manager
	// Telemetry records requests and connections; required.
	Telemetry *telemetry.Telemetry
	Log       *slog.Logger
	// DetectTimeout bounds protocol detection on ports that need it; a
	// client that sends nothing for this long is proxied as TCP. Default 5s.
	DetectTimeout time.Duration
	// BodyBufferLimit is how much of a request body is kept for retries
	// and mirrors (Envoy's per-connection buffer limit); default 1 MiB.
	BodyBufferLimit int
	// IdleTimeout closes downstream HTTP connections idle this long;
	// default 1h (Envoy's).
	IdleTimeout time.Duration
}

// Proxy serves HBONE streams.
type Proxy struct {
	opts Options
	log  *slog.Logger
	http *http.Server
	ln   *connListener

	// mu guards closing and wg.Add, so no stream starts once Shutdown
	// waits; tcpConns are the TCP-chain connections to close when the
	// drain time is up.
	mu       sync.Mutex
	closing  bool
	wg       sync.WaitGroup
	tcpConns map[net.Conn]struct{}
}

// enter counts a stream in; false once shutting down.
func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.wg.Add(1)
	return true
}

// New returns a Proxy; Serve must run for HTTP chains to be served.
func New(opts Options) (*Proxy, error) {
	if opts.Config == nil || opts.Upstreams == nil || opts.Telemetry == nil {
		return nil, errors.New("proxy: Config, Upstreams and Telemetry are required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.DetectTimeout <= 0 {
		opts.DetectTimeout = 5 * time.Second
	}
	if opts.BodyBufferLimit <= 0 {
		opts.BodyBufferLimit = 1 << 20
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = time.Hour
	}
	p := &Proxy{opts: opts, log: opts.Log, ln: newConnListener(), tcpConns: map[net.Conn]struct{}{}}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	p.http = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		Protocols:         protos,
		ReadHeaderTimeout: 30 * time.Second,
		// Envoy's default max_request_headers_kb (60 KiB), not net/http's 1 MiB.
		MaxHeaderBytes: 60 << 10,
		IdleTimeout:    opts.IdleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if dc, ok := c.(*downstreamConn); ok {
				return context.WithValue(ctx, connInfoKey{}, dc.info)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

// Serve runs the HTTP server over the streams handed to it; it returns when
// Shutdown is called.
func (p *Proxy) Serve() error {
	err := p.http.Serve(p.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops taking streams, lets HTTP connections finish their
// requests (GOAWAY for HTTP/2, Connection: close for HTTP/1) and waits for
// TCP connections until ctx ends, then closes what is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	err := p.http.Shutdown(ctx)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.mu.Lock()
		for c := range p.tcpConns {
			_ = c.Close()
		}
		p.mu.Unlock()
		_ = p.http.Close()
		<-done
	}
	return err
}

// connInfo is what the stream tells about its client.
type connInfo struct {
	peer     identity.Identity
	clientIP netip.Addr // from Forwarded: for=; invalid when absent
	target   netip.AddrPort
	chain    *config.Chain
	proto    string // detected: http/1.1, h2c, or "" when not detected
	// filterState is what route matchers may read (the peer principal).
	filterState map[string]string
}

type connInfoKey struct{}

// downstreamConn is an accepted stream handed to the HTTP server; closed
// tells ServeHBONE, which owns the stream until it returns, that the
// server is done with it.
type downstreamConn struct {
	hbone.Conn
	info   *connInfo
	once   sync.Once
	closed chan struct{}
}

func (c *downstreamConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// ServeHBONE implements hbone.Handler.
func (p *Proxy) ServeHBONE(ctx context.Context, req *hbone.Request) error {
	if !p.enter() {
		return hbone.Errorf(http.StatusServiceUnavailable, "waypoint is shutting down")
	}
	defer p.wg.Done()
	info := &connInfo{peer: req.Peer, clientIP: forwardedFor(req.Header), target: req.Target}
	if !req.Peer.IsZero() {
		info.filterState = map[string]string{router.PeerPrincipalKey: req.Peer.String()}
	}
	chains := p.opts.Config().Match(req.Target)
	if len(chains) == 0 {
		p.log.Info("stream refused: no filter chain for the target", "target", req.Target.String(), "peer", req.Peer.String())
		return hbone.Errorf(http.StatusNotFound, "no filter chain for %s", req.Target)
	}
	var conn hbone.Conn
	chain := chains[0]
	if config.NeedsDetection(chains) {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		proto, prefix, err := detect(c, p.opts.DetectTimeout)
		if err != nil {
			_ = c.Close()
			return nil
		}
		info.proto = proto
		conn = &prefixConn{Conn: c, prefix: prefix}
		if chain = config.Select(chains, proto); chain == nil {
			p.log.Info("connection closed: no filter chain for the detected protocol", "target", req.Target.String(), "protocol", proto)
			_ = conn.Close()
			return nil
		}
	}
	info.chain = chain
	if chain.TCP != nil {
		return p.serveTCP(ctx, req, conn, info)
	}
	if conn == nil {
		c, err := req.Accept()
		if err != nil {
			return err
		}
		conn = c
	}
	dc := &downstreamConn{Conn: conn, info: info, closed: make(chan struct{})}
	if !p.ln.push(dc) {
		_ = conn.Close()
		return nil
	}
	// The HTTP server serves the stream; returning would end it.
	select {
	case <-dc.closed:
	case <-ctx.Done():
		_ = dc.Close()
	}
	return nil
}

// forwardedFor returns the address in the first for= of a Forwarded
// header (RFC 7239), which ztunnel sets to the client's IP.
func forwardedFor(h http.Header) netip.Addr {
	for _, v := range h.Values("Forwarded") {
		for _, elem := range strings.Split(v, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if !ok || !strings.EqualFold(k, "for") {
					continue
				}
				val = strings.Trim(val, `"`)
				if ap, err := netip.ParseAddrPort(val); err == nil {
					return ap.Addr().Unmap()
				}
				val = strings.TrimSuffix(strings.TrimPrefix(val, "["), "]")
				if a, err := netip.ParseAddr(val); err == nil {
					return a.Unmap()
				}
				return netip.Addr{}
			}
		}
	}
	return netip.Addr{}
}

// source names the client for metrics: the workload at the Forwarded IP,
// and the HBONE peer's identity as principal.
func source(snap *config.Snapshot, info *connInfo) telemetry.Peer {
	src := telemetry.Peer{}
	if !info.peer.IsZero() {
		src.Principal = info.peer.String()
		src.Namespace = info.peer.Namespace
	}
	if info.clientIP.IsValid() {
		if w := snap.Workloads[info.clientIP]; w != nil {
			src.Workload, src.Namespace = w.Name, w.Namespace
			src.CanonicalService, src.CanonicalRevision = w.CanonicalName, w.CanonicalRevision
		}
	}
	return src
}

// destination names the upstream host for metrics.
func destination(h *upstream.Host) telemetry.Peer {
	if h == nil {
		return telemetry.Peer{}
	}
	d := telemetry.Peer{Workload: h.Workload, Namespace: h.Namespace, CanonicalService: h.Workload}
	if id := h.Identity(); !id.IsZero() {
		d.Principal = id.String()
	}
	return d
}

// serviceLabels splits a cluster's service host into name and namespace
// (<name>.<ns>.svc.<domain>).
func serviceLabels(host string) (name, ns string) {
	parts := strings.SplitN(host, ".", 3)
	if len(parts) >= 2 {
		return parts[0], parts[1]
	}
	return host, ""
}

// chainFor returns the current version of the connection's chain (policy
// updates apply to running connections' next requests), or the one the
// connection was matched with if the chain is gone.
func chainFor(snap *config.Snapshot, info *connInfo) *config.Chain {
	for _, c := range snap.Chains {
		if c.Name == info.chain.Name && c.Name != "" {
			return c
		}
	}
	return info.chain
}

// evaluate runs RBAC filters in order; the first denial wins. shadow names
// the policies that matched a LOG filter, for the access log.
func evaluate(filters []config.RBACFilter, a *rbac.Attributes) (allowed bool, policy, shadow string) {
	for _, f := range filters {
		if f.Engine == nil {
			continue
		}
		res := f.Engine.Evaluate(a)
		if !res.Allowed {
			return false, res.Policy, shadow
		}
		if res.Matched && res.Action == rbacv3.RBAC_LOG {
			if shadow != "" {
				shadow += ","
			}
			shadow += "log:" + res.Policy
		}
	}
	return true, "", shadow
}

// serveTCP runs a TCP chain: network RBAC, then tcp_proxy.
func (p *Proxy) serveTCP(ctx context.Context, req *hbone.Request, conn hbone.Conn, info *connInfo) error {
	start := time.Now()
	snap := p.opts.Config()
	tc := info.chain.TCP
	rec := &telemetry.Conn{Source: source(snap, info), Cluster: tc.Cluster, Chain: info.chain.Name, Flags: "-"}
	if info.clientIP.IsValid() {
		rec.ClientIP = info.clientIP.String()
	}
	if svc := config.ServiceOfCluster(tc.Cluster); svc != "" {
		rec.DestinationService = svc
		rec.DestinationServiceName, rec.DestinationServiceNS = serviceLabels(svc)
	}
	finish := func(err error) error {
		rec.Duration, rec.Err = time.Since(start), err
		p.opts.Telemetry.ConnClosed(ctx, rec)
		return nil
	}
	allowed, policy, shadow := evaluate(tc.RBAC, &rbac.Attributes{PeerPrincipal: peerString(info.peer), SourceIP: info.clientIP,
		DestinationIP: info.target.Addr(), DestinationPort: info.target.Port()})
	rec.RBAC = shadow
	if !allowed {
		rec.Flags, rec.RBAC = "RBAC", "deny:"+policy
		p.opts.Telemetry.ConnOpened(ctx, rec)
		if conn == nil {
			_ = finish(nil)
			return hbone.Errorf(http.StatusForbidden, "RBAC: access denied")
		}
		_ = conn.Close()
		return finish(nil)
	}
	cl := p.opts.Upstreams.Cluster(tc.Cluster)
	var host *upstream.Host
	var err error
	if cl == nil {
		rec.Flags, err = "NC", fmt.Errorf("cluster %q not found", tc.Cluster)
	} else if host, err = cl.PickFor(info.target, nil); err != nil {
		rec.Flags = "UH"
	}
	var up net.Conn
	// Up to max_connect_attempts hosts, each a different one when possible.
	var tried []*upstream.Host
	for attempt := uint32(1); err == nil; attempt++ {
		rec.Destination, rec.UpstreamHost = destination(host), host.Address().String()
		end := host.Begin()
		if up, err = host.Dial(ctx); err == nil {
			host.Report(upstream.Success)
			defer end()
			break
		}
		end()
		rec.Flags = "UF"
		host.Report(upstream.GatewayFailure)
		tried = append(tried, host)
		if attempt >= tc.MaxConnectAttempts || ctx.Err() != nil {
			break
		}
		next, perr := cl.PickFor(info.target, tried)
		if perr != nil {
			break
		}
		host, err = next, nil
	}
	if err == nil {
		rec.Flags = "-"
	}
	p.opts.Telemetry.ConnOpened(ctx, rec)
	if err != nil {
		if conn == nil {
			_ = finish(err)
			return hbone.Errorf(http.StatusServiceUnavailable, "%v", err)
		}
		_ = conn.Close()
		return finish(err)
	}
	defer up.Close()
	if conn == nil {
		if conn, err = req.Accept(); err != nil {
			return finish(err)
		}
	}
	defer conn.Close()
	p.track(conn, true)
	defer p.track(conn, false)
	down, upc := net.Conn(conn), up
	if tc.IdleTimeout > 0 {
		stop := closeWhenIdle(tc.IdleTimeout, &down, &upc)
		defer stop()
	}
	sent, received, err := hbone.Proxy(down, upc)
	rec.Sent, rec.Received = sent, received
	return finish(err)
}

func (p *Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.tcpConns[c] = struct{}{}
	} else {
		delete(p.tcpConns, c)
	}
}

func peerString(id identity.Identity) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
