package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/waypoint/config"
	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// hopHeaders are connection-level headers a proxy does not forward
// (RFC 9110 7.6.1); "TE: trailers" is kept (gRPC needs it).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	if te := h.Get("Te"); te != "" && !strings.EqualFold(strings.TrimSpace(te), "trailers") {
		h.Del("Te")
	}
}

// attemptResult is one try's outcome.
type attemptResult struct {
	resp    *http.Response
	err     error
	host    *upstream.Host
	timeout bool // the per-try timeout fired
	cancel  context.CancelFunc
	end     func()
}

// forward sends the request to the decision's cluster, with the route's
// timeout, retries and mirrors, and copies the response back. target is
// the stream's original destination (for original-destination clusters).
func (p *Proxy) forward(w *responseWriter, r *http.Request, target netip.AddrPort, d *router.Decision, rec *telemetry.Request, span trace.Span, upgrade string) {
	rec.Cluster = d.Cluster
	if svc := config.ServiceOfCluster(d.Cluster); svc != "" {
		rec.DestinationService = svc
		rec.DestinationServiceName, rec.DestinationServiceNS = serviceLabels(svc)
	}
	cl := p.opts.Upstreams.Cluster(d.Cluster)
	if cl == nil {
		rec.Flags = "NC"
		localReply(w, d.ClusterNotFoundStatus, "")
		return
	}

	// The upstream request's headers: the client's minus hop-by-hop ones,
	// the route's mutations, and the trace context of this hop.
	h := r.Header.Clone()
	removeHopHeaders(h)
	d.ApplyRequestHeaders(h)
	if h.Get("X-Request-Id") == "" {
		h.Set("X-Request-Id", newRequestID())
	}
	h.Set("X-Forwarded-Proto", "http")
	p.opts.Telemetry.Inject(r.Context(), h)
	u, err := url.ParseRequestURI(d.Path)
	if err != nil {
		localReply(w, http.StatusBadRequest, "invalid path")
		return
	}
	if upgrade != "" {
		p.upgrade(w, r, target, d, rec, cl, h, u, upgrade)
		return
	}
	http2 := r.ProtoMajor == 2

	// The body is recorded for retries and mirrors when they may happen.
	var body *replay
	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	if hasBody && (d.Retry != nil || len(d.Mirrors) > 0) {
		body = newReplay(r.Body, p.opts.BodyBufferLimit)
		defer body.finish()
	}
	for _, m := range d.Mirrors {
		p.mirror(r, target, h, u, d, m, body, hasBody)
	}

	ctx := r.Context()
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	newReq := func(actx context.Context, host *upstream.Host) *http.Request {
		out := &http.Request{
			Method: r.Method, URL: &url.URL{Scheme: "http", Host: host.Address().String(), Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery},
			Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
			Header: h.Clone(), Host: d.Authority, ContentLength: r.ContentLength, Trailer: r.Trailer,
		}
		switch {
		case !hasBody:
			out.Body, out.ContentLength = nil, 0
		case body != nil:
			out.Body = body.reader(false)
		default:
			out.Body = r.Body
		}
		return out.WithContext(actx)
	}

	retries := uint32(0)
	if d.Retry != nil {
		retries = d.Retry.NumRetries
	}
	var tried []*upstream.Host
	var res attemptResult
	attempt := 0
	for {
		attempt++
		rec.Attempts = attempt
		res = p.tryOnce(ctx, cl, target, d, tried, newReq, http2)
		if res.host != nil {
			tried = append(tried, res.host)
			rec.UpstreamHost = res.host.Address().String()
			rec.Destination = destination(res.host)
		}
		if ctx.Err() != nil && res.resp == nil {
			break // the route timeout: no more tries
		}
		if uint32(attempt) > retries || !retriable(d.Retry, res, http2) || (hasBody && (body == nil || !body.replayable())) {
			break
		}
		endRetry, ok := cl.BeginRetry()
		if !ok {
			// Retry overflow (Envoy's upstream_rq_retry_overflow): the
			// answer stands.
			p.log.Debug("retry budget of the cluster exhausted", "cluster", cl.Name())
			break
		}
		defer endRetry()
		res.release()
		if !sleepBackoff(ctx, d.Retry, attempt) {
			break
		}
	}
	defer res.release()
	if res.resp == nil {
		p.failLocally(w, r, ctx, res, rec, attempt > 1)
		return
	}
	p.copyResponse(w, r, ctx, res.resp, d, rec)
}

// tryOnce picks a host and sends one attempt, bounded by the per-try
// timeout.
func (p *Proxy) tryOnce(ctx context.Context, cl *upstream.Cluster, target netip.AddrPort, d *router.Decision, tried []*upstream.Host,
	newReq func(context.Context, *upstream.Host) *http.Request, http2 bool) attemptResult {
	var avoid []*upstream.Host
	if d.Retry != nil && d.Retry.AvoidPreviousHosts {
		avoid = tried
	}
	host, err := cl.PickFor(target, avoid)
	if err != nil {
		return attemptResult{err: err}
	}
	actx, cancel := context.WithCancel(ctx)
	var perTry *time.Timer
	timedOut := make(chan struct{})
	if d.Retry != nil && d.Retry.PerTryTimeout > 0 {
		perTry = time.AfterFunc(d.Retry.PerTryTimeout, func() { close(timedOut); cancel() })
	}
	// per_try_idle_timeout: the try ends when no byte has come from the
	// upstream for that long, waiting for headers included.
	var idleFired *atomic.Bool
	var last *atomic.Int64
	stopIdle := func() {}
	if d.Retry != nil && d.Retry.PerTryIdleTimeout > 0 {
		last = &atomic.Int64{}
		last.Store(time.Now().UnixNano())
		actx, idleFired, stopIdle = watchIdle(actx, d.Retry.PerTryIdleTimeout, last)
	}
	end := host.Begin()
	resp, err := host.Transport(http2).RoundTrip(newReq(actx, host))
	if err == nil && last != nil {
		last.Store(time.Now().UnixNano())
		resp.Body = &touchReader{ReadCloser: resp.Body, last: last}
	}
	res := attemptResult{resp: resp, err: err, host: host, cancel: cancel, end: func() { stopIdle(); end() }}
	if err != nil {
		if perTry != nil {
			perTry.Stop()
		}
		select {
		case <-timedOut:
			res.timeout = true
		default:
		}
		if idleFired != nil && idleFired.Load() {
			res.timeout = true
		}
	}
	if perTry != nil && err == nil {
		// The per-try timeout covers the response body too; it is stopped
		// once the response is done (release).
		stop, endTry := perTry.Stop, res.end
		res.end = func() { stop(); endTry() }
	}
	switch {
	case err != nil:
		host.Report(upstream.GatewayFailure)
	default:
		host.Report(upstream.OutcomeOf(resp.StatusCode))
	}
	return res
}

func (a *attemptResult) release() {
	if a.resp != nil {
		_ = a.resp.Body.Close()
	}
	if a.cancel != nil {
		a.cancel()
	}
	if a.end != nil {
		a.end()
	}
	a.resp, a.cancel, a.end = nil, nil, nil
}

// retriable applies the retry policy to an attempt's outcome.
func retriable(rp *router.RetryPolicy, res attemptResult, http2 bool) bool {
	if rp == nil {
		return false
	}
	if res.resp != nil {
		if rp.RetriableStatus(res.resp.StatusCode) {
			return true
		}
		if isGRPC(res.resp.Header) {
			switch grpcStatus(res.resp.Header, nil) {
			case "1":
				return rp.Has(router.RetryOnGRPCCancelled)
			case "4":
				return rp.Has(router.RetryOnGRPCDeadlineExceeded)
			case "13":
				return rp.Has(router.RetryOnGRPCInternal)
			case "8":
				return rp.Has(router.RetryOnGRPCResourceExhaust)
			case "14":
				return rp.Has(router.RetryOnGRPCUnavailable)
			}
		}
		return false
	}
	if errors.Is(res.err, upstream.ErrNoHealthyHost) {
		return false
	}
	if res.timeout {
		// A per-try timeout is a 504 from the upstream's point of view.
		return rp.Has(router.RetryOn5xx) || rp.Has(router.RetryOnGatewayError)
	}
	if rp.Has(router.RetryOn5xx) || rp.Has(router.RetryOnGatewayError) || rp.Has(router.RetryOnReset) {
		return true
	}
	var ce *upstream.ConnectError
	if errors.As(res.err, &ce) {
		return rp.Has(router.RetryOnConnectFailure) || rp.Has(router.RetryOnResetBeforeRequest)
	}
	// net/http does not export its HTTP/2 stream errors; the code name is in
	// the message.
	if http2 && res.err != nil && strings.Contains(res.err.Error(), "REFUSED_STREAM") {
		return rp.Has(router.RetryOnRefusedStream)
	}
	return false
}

// sleepBackoff waits Envoy's fully jittered exponential back-off before
// retry n (1-based): a random time below base×2^(n-1), capped at the max.
func sleepBackoff(ctx context.Context, rp *router.RetryPolicy, n int) bool {
	base, maxI := router.DefaultRetryBaseInterval, 10*router.DefaultRetryBaseInterval
	if rp != nil && rp.BaseInterval > 0 {
		base = rp.BaseInterval
		maxI = 10 * base
		if rp.MaxInterval > 0 {
			maxI = rp.MaxInterval
		}
	}
	ceil := base << min(n-1, 20)
	if ceil > maxI || ceil <= 0 {
		ceil = maxI
	}
	wait := time.Duration(rand.Int64N(int64(ceil) + 1))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// failLocally answers when no upstream response is available, with Envoy's
// status, body and response flag.
func (p *Proxy) failLocally(w *responseWriter, r *http.Request, ctx context.Context, res attemptResult, rec *telemetry.Request, retried bool) {
	var ce *upstream.ConnectError
	switch {
	case w.idle():
		rec.Flags = "SI"
		localReply(w, http.StatusRequestTimeout, "stream timeout")
		return
	case r.Context().Err() != nil:
		rec.Flags = "DC" // the client went away
		w.status = 499
		return
	case ctx.Err() != nil:
		rec.Flags = "UT"
		localReply(w, http.StatusGatewayTimeout, "upstream request timeout")
	case res.timeout:
		rec.Flags = "UT"
		localReply(w, http.StatusGatewayTimeout, "upstream request timeout")
	case errors.Is(res.err, upstream.ErrNoHealthyHost):
		rec.Flags = "UH"
		localReply(w, http.StatusServiceUnavailable, "no healthy upstream")
	case errors.As(res.err, &ce):
		rec.Flags = "UF"
		localReply(w, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
	default:
		rec.Flags = "UC"
		localReply(w, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
	}
	if retried && rec.Flags != "UT" {
		rec.Flags += ",URX"
	}
	p.log.Debug("upstream request failed", "cluster", rec.Cluster, "host", rec.UpstreamHost, "error", res.err)
}

// copyResponse writes the upstream response downstream: headers with the
// route's response mutations, the body (flushed as it comes for streams),
// then trailers (gRPC status).
func (p *Proxy) copyResponse(w *responseWriter, r *http.Request, ctx context.Context, resp *http.Response, d *router.Decision, rec *telemetry.Request) {
	dst := w.Header()
	for k, vs := range resp.Header {
		dst[k] = vs
	}
	removeHopHeaders(dst)
	dst.Del("Content-Length")
	if resp.ContentLength >= 0 && !(r.ProtoMajor == 2 && len(resp.Trailer) > 0) {
		dst.Set("Content-Length", fmt.Sprint(resp.ContentLength))
	}
	// Announce trailers so HTTP/1.1 chunked responses can carry them.
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst.Set("Trailer", strings.Join(names, ", "))
		dst.Del("Content-Length")
	}
	d.ApplyResponseHeaders(dst)
	w.WriteHeader(resp.StatusCode)
	streaming := resp.ContentLength < 0 || isGRPC(resp.Header)
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				rec.Flags = "DC"
				return
			}
			if streaming {
				w.Flush()
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			switch {
			case w.idle():
				rec.Flags = "SI"
			case ctx.Err() != nil && r.Context().Err() == nil:
				rec.Flags = "UT"
			default:
				rec.Flags = "UC"
			}
			// Headers are out: the only way to tell the client is to reset
			// the stream (or close the HTTP/1 connection).
			p.log.Debug("upstream response body failed", "cluster", rec.Cluster, "error", err)
			panic(http.ErrAbortHandler)
		}
	}
	for k, vs := range resp.Trailer {
		w.Header()[http.TrailerPrefix+k] = vs
	}
	if rec.Protocol == "grpc" {
		rec.GRPCStatus = grpcStatus(resp.Header, resp.Trailer)
	}
}

// mirror sends a shadow copy of the request, fire and forget: its own
// context and timeout, the body as recorded for the main request (a body
// larger than the buffer limit is not mirrored), never touching the
// client's response.
func (p *Proxy) mirror(r *http.Request, target netip.AddrPort, h http.Header, u *url.URL, d *router.Decision, m router.Mirror, body *replay, hasBody bool) {
	cl := p.opts.Upstreams.Cluster(m.Cluster)
	if cl == nil {
		return
	}
	host, err := cl.PickFor(target, nil)
	if err != nil {
		return
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = router.DefaultRouteTimeout
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), timeout)
	out := &http.Request{
		Method: r.Method, URL: &url.URL{Scheme: "http", Host: host.Address().String(), Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery},
		Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
		Header: h.Clone(), Host: m.Authority, ContentLength: r.ContentLength,
	}
	if hasBody {
		if body == nil {
			cancel()
			return
		}
		out.Body = body.reader(true)
	}
	out = out.WithContext(ctx)
	http2 := r.ProtoMajor == 2
	go func() {
		defer cancel()
		end := host.Begin()
		defer end()
		resp, err := host.Transport(http2).RoundTrip(out)
		if err != nil {
			p.log.Debug("mirror failed", "cluster", m.Cluster, "error", err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}()
}

// touchReader records when bytes last came from the upstream.
type touchReader struct {
	io.ReadCloser
	last *atomic.Int64
}

func (t *touchReader) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if n > 0 {
		t.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// copyBufs are the response copy buffers (a fresh 32 KiB per request
// showed in profiles as memory clearing).
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func newRequestID() string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
