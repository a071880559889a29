package proxy

import (
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
)

// serveHTTP handles one request of an HTTP chain: RBAC filters in order,
// then the route table.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		http.Error(w, "no connection information", http.StatusInternalServerError)
		return
	}
	snap := p.opts.Config()
	chain := chainFor(snap, info)
	hc := chain.HTTP
	if hc == nil {
		http.Error(w, "filter chain is no longer HTTP", http.StatusServiceUnavailable)
		return
	}
	ctx, span := p.opts.Telemetry.StartRequest(r.Context(), r)
	defer span.End()
	r = r.WithContext(ctx)

	act := &atomic.Int64{} // last activity, for the stream idle timeout
	act.Store(start.UnixNano())
	rw := &responseWriter{ResponseWriter: w, act: act}
	rec := &telemetry.Request{
		Source: source(snap, info), Protocol: "http", Method: r.Method, Authority: r.Host, Path: r.RequestURI,
		Flags: "-", Chain: chain.Name, TraceID: span.SpanContext().TraceID().String(),
	}
	if info.clientIP.IsValid() {
		rec.ClientIP = info.clientIP.String()
	}
	if isGRPC(r.Header) {
		rec.Protocol = "grpc"
	}
	body := &countingReader{r: r.Body, act: act}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	defer func() {
		rec.Duration = time.Since(start)
		rec.Code = rw.code()
		rec.BytesSent, rec.BytesReceived = rw.n, body.n
		if rec.Protocol == "grpc" && rec.GRPCStatus == "" {
			rec.GRPCStatus = grpcStatus(rw.Header(), nil)
		}
		span.SetAttributes(attribute.Int("http.response.status_code", rec.Code))
		if rec.Code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(rec.Code))
		}
		p.opts.Telemetry.RecordRequest(ctx, rec)
	}()

	if hc.StripAnyHostPort {
		r.Host = router.StripAnyHostPort(r.Host)
	} else if hc.StripMatchingHostPort {
		r.Host = router.StripMatchingHostPort(r.Host, uint32(info.target.Port()))
	}
	// :path as received; an absolute-form target (http://host/p) counts
	// as its path and query, as in Envoy.
	path := r.RequestURI
	if path == "" || (path[0] != '/' && path != "*") {
		path = r.URL.RequestURI()
	}
	if hc.NormalizePath {
		path = normalizePath(path)
	}
	upgrade := upgradeType(r)
	if upgrade != "" && !allowedUpgrade(hc.Upgrades, upgrade) {
		localReply(rw, http.StatusForbidden, "")
		return
	}
	allowed, policy, shadow := evaluate(hc.RBAC, &rbac.Attributes{
		PeerPrincipal: peerString(info.peer), SourceIP: info.clientIP,
		DestinationIP: info.target.Addr(), DestinationPort: info.target.Port(),
		Method: r.Method, Path: path, Host: r.Host, Headers: r.Header,
	})
	rec.RBAC = shadow
	if !allowed {
		rec.Flags, rec.RBAC = "RBAC", "deny:"+policy
		localReply(rw, http.StatusForbidden, "RBAC: access denied")
		return
	}

	table := hc.Inline
	if table == nil {
		table = snap.Routes[hc.RouteName]
	}
	if table == nil {
		// RDS has not arrived (yet): Envoy answers 404 (no route).
		rec.Flags = "NR"
		localReply(rw, http.StatusNotFound, "")
		return
	}
	rreq := &router.Request{Authority: r.Host, Method: r.Method, Path: path, Scheme: "http", Headers: r.Header, FilterState: info.filterState, Rand: newRand()}
	d, ok := table.Route(rreq)
	if !ok {
		rec.Flags = "NR"
		localReply(rw, http.StatusNotFound, "")
		return
	}
	rec.Route = d.RouteName
	switch d.Action {
	case router.Redirect:
		d.ApplyResponseHeaders(rw.Header())
		rw.Header().Set("Location", d.RedirectLocation(rreq))
		rw.WriteHeader(d.RedirectStatus)
		return
	case router.DirectResponse:
		d.ApplyResponseHeaders(rw.Header())
		if len(d.DirectBody) > 0 && rw.Header().Get("Content-Type") == "" {
			rw.Header().Set("Content-Type", "text/plain")
		}
		rw.Header().Set("Content-Length", strconv.Itoa(len(d.DirectBody)))
		rw.WriteHeader(d.DirectStatus)
		_, _ = rw.Write(d.DirectBody)
		return
	}
	idle := hc.StreamIdleTimeout
	if d.IdleTimeout != nil {
		idle = *d.IdleTimeout
	}
	if idle > 0 && upgrade == "" {
		ictx, fired, stop := watchIdle(r.Context(), idle, act)
		defer stop()
		r = r.WithContext(ictx)
		rw.idleFired = fired
	}
	p.forward(rw, r, info.target, d, rec, span, upgrade)
}

// localReply answers with a text body, as Envoy's local replies.
func localReply(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	if body != "" {
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(code)
	if body != "" {
		_, _ = io.WriteString(w, body)
	}
}

func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

// grpcStatus reads grpc-status from trailers, else from headers
// (trailers-only responses).
func grpcStatus(h, trailer http.Header) string {
	if v := trailer.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get("Grpc-Status")
}

// newRand gives a request its own generator (the router's Rand need not be
// goroutine-safe).
func newRand() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// responseWriter records the status and bytes written downstream.
type responseWriter struct {
	http.ResponseWriter
	status int
	n      int64
	act    *atomic.Int64
	// idleFired tells whether the stream idle timeout ended the request.
	idleFired *atomic.Bool
}

func (w *responseWriter) idle() bool { return w.idleFired != nil && w.idleFired.Load() }

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	if n > 0 && w.act != nil {
		w.act.Store(time.Now().UnixNano())
	}
	return n, err
}

func (w *responseWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *responseWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// countingReader counts request body bytes.
type countingReader struct {
	r   io.ReadCloser
	n   int64
	act *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 && c.act != nil {
		c.act.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
