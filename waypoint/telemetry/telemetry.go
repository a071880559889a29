// Package telemetry is the waypoint's observability: Istio's standard
// metrics (istio_requests_total, istio_request_duration_milliseconds and the
// istio_tcp_* counters, reporter="waypoint") through OpenTelemetry, one
// server span per request (W3C trace context extracted from the request and
// injected upstream; spans exported over OTLP only when an endpoint is
// configured), and one access log line per request or connection.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/pkg/metrics"
)

// Options configure telemetry.
type Options struct {
	// Metrics receives the instruments; nil disables metrics.
	Metrics *metrics.Provider
	// OTLPEndpoint is the OTLP/gRPC collector (host:port or URL); empty
	// exports no spans (trace context is still propagated).
	OTLPEndpoint string
	// ServiceName names the waypoint in spans (service.name).
	ServiceName string
	Log         *slog.Logger
	// SpanExporter overrides the OTLP exporter (tests).
	SpanExporter sdktrace.SpanExporter
}

// Telemetry records requests and connections.
type Telemetry struct {
	log        *slog.Logger
	tp         *sdktrace.TracerProvider
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator

	requests             metric.Int64Counter
	duration             metric.Float64Histogram
	reqBytes, respBytes  metric.Int64Histogram
	tcpOpened, tcpClosed metric.Int64Counter
	tcpSent, tcpReceived metric.Int64Counter
	metricsOn            bool

	sets     sync.Map // requestLabels -> attribute.Set
	setCount atomic.Int64
}

// New sets up the instruments and the tracer.
func New(ctx context.Context, opts Options) (*Telemetry, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	t := &Telemetry{log: opts.Log, propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	if opts.Metrics != nil {
		m := opts.Metrics.Meter("waypoint")
		var err error
		if t.requests, err = m.Int64Counter("istio_requests", metric.WithDescription("Requests served by the waypoint.")); err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
		// Istio's buckets, in milliseconds.
		if t.duration, err = m.Float64Histogram("istio_request_duration_milliseconds", metric.WithUnit("ms"),
			metric.WithDescription("Request duration, in milliseconds."),
			metric.WithExplicitBucketBoundaries(0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)); err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
		// Istio's size buckets: 1 B to 100 MB, ×10.
		sizeBuckets := metric.WithExplicitBucketBoundaries(1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)
		if t.reqBytes, err = m.Int64Histogram("istio_request_bytes", metric.WithUnit("By"), metric.WithDescription("Request body sizes."), sizeBuckets); err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
		if t.respBytes, err = m.Int64Histogram("istio_response_bytes", metric.WithUnit("By"), metric.WithDescription("Response body sizes."), sizeBuckets); err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
		for _, c := range []struct {
			dst        *metric.Int64Counter
			name, desc string
		}{
			{&t.tcpOpened, "istio_tcp_connections_opened", "TCP connections opened."},
			{&t.tcpClosed, "istio_tcp_connections_closed", "TCP connections closed."},
			{&t.tcpSent, "istio_tcp_sent_bytes", "Bytes sent by the connection's initiator."},
			{&t.tcpReceived, "istio_tcp_received_bytes", "Bytes received by the connection's initiator."},
		} {
			if *c.dst, err = m.Int64Counter(c.name, metric.WithDescription(c.desc)); err != nil {
				return nil, fmt.Errorf("telemetry: %w", err)
			}
		}
		t.metricsOn = true
	}
	exp := opts.SpanExporter
	if exp == nil && opts.OTLPEndpoint != "" {
		var eopts []otlptracegrpc.Option
		if u := opts.OTLPEndpoint; strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") {
			eopts = append(eopts, otlptracegrpc.WithEndpointURL(u))
		} else {
			eopts = append(eopts, otlptracegrpc.WithEndpoint(u), otlptracegrpc.WithInsecure())
		}
		var err error
		if exp, err = otlptracegrpc.New(ctx, eopts...); err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
		}
	}
	res := resource.NewSchemaless(attribute.String("service.name", opts.ServiceName))
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample()))}
	if exp != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	t.tp = sdktrace.NewTracerProvider(tpOpts...)
	t.tracer = t.tp.Tracer("github.com/ambit-mesh/ambit/waypoint")
	return t, nil
}

// Shutdown flushes and stops span export.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil || t.tp == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// StartRequest extracts the request's trace context and starts its server
// span; the returned context carries it.
func (t *Telemetry) StartRequest(ctx context.Context, r *http.Request) (context.Context, trace.Span) {
	ctx = t.propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
	return t.tracer.Start(ctx, r.Host+r.URL.Path, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path),
			attribute.String("server.address", r.Host), attribute.String("network.protocol.name", "http"),
			attribute.String("network.protocol.version", strconv.Itoa(r.ProtoMajor)+"."+strconv.Itoa(r.ProtoMinor))))
}

// Inject writes ctx's trace context into upstream request headers.
func (t *Telemetry) Inject(ctx context.Context, h http.Header) {
	t.propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// Peer is one end of a request as the metrics name it.
type Peer struct {
	Workload, Namespace, Principal, CanonicalService, CanonicalRevision string
}

// Unknown fills empty names with "unknown", as Istio does.
func (p Peer) Unknown() Peer {
	for _, s := range []*string{&p.Workload, &p.Namespace, &p.Principal, &p.CanonicalService, &p.CanonicalRevision} {
		if *s == "" {
			*s = "unknown"
		}
	}
	return p
}

// Request is the record of one HTTP request.
type Request struct {
	Source, Destination                          Peer
	DestinationService                           string // host, e.g. reviews.bookinfo.svc.cluster.local
	DestinationServiceName, DestinationServiceNS string
	Protocol                                     string // http or grpc
	Method, Authority, Path                      string
	Code                                         int
	GRPCStatus                                   string
	Flags                                        string // Envoy response flags, "-" for none
	Route, Cluster, UpstreamHost                 string
	Duration                                     time.Duration
	BytesReceived, BytesSent                     int64
	Attempts                                     int
	RBAC                                         string // the matched shadow (LOG) or deny policy, for the log
	ClientIP                                     string
	TraceID                                      string
	Chain                                        string
}

func (p Peer) attrs(prefix string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String(prefix+"_workload", p.Workload),
		attribute.String(prefix+"_workload_namespace", p.Namespace),
		attribute.String(prefix+"_principal", p.Principal),
		attribute.String(prefix+"_canonical_service", p.CanonicalService),
		attribute.String(prefix+"_canonical_revision", p.CanonicalRevision),
	}
}

// requestLabels are the label values of a request's metrics: a comparable
// key for the cache of attribute sets.
type requestLabels struct {
	protocol, code, grpcStatus, flags string
	service, serviceName, serviceNS   string
	src, dst                          Peer
}

// maxCachedSets bounds the attribute set cache; label combinations beyond
// it are built per request (as the metrics' own cardinality grows with them
// anyway).
const maxCachedSets = 4096

// requestSet returns r's attribute set, built once per label combination:
// building a set (19 labels, sorted) was a third of the per-request
// telemetry cost.
func (t *Telemetry) requestSet(r *Request) attribute.Set {
	k := requestLabels{
		protocol: r.Protocol, grpcStatus: r.GRPCStatus, flags: r.Flags,
		service: r.DestinationService, serviceName: r.DestinationServiceName, serviceNS: r.DestinationServiceNS,
		src: r.Source, dst: r.Destination,
	}
	if r.Code >= 0 && r.Code < len(statusText) {
		k.code = statusText[r.Code]
	} else {
		k.code = strconv.Itoa(r.Code)
	}
	if v, ok := t.sets.Load(k); ok {
		return v.(attribute.Set)
	}
	set := r.attrs()
	if t.setCount.Load() < maxCachedSets {
		if _, loaded := t.sets.LoadOrStore(k, set); !loaded {
			t.setCount.Add(1)
		}
	}
	return set
}

// statusText holds the decimal strings of the HTTP status codes.
var statusText = func() []string {
	out := make([]string, 600)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

func (r *Request) attrs() attribute.Set {
	src, dst := r.Source.Unknown(), r.Destination.Unknown()
	kv := []attribute.KeyValue{
		attribute.String("reporter", "waypoint"),
		attribute.String("request_protocol", r.Protocol),
		attribute.String("response_code", strconv.Itoa(r.Code)),
		attribute.String("grpc_response_status", r.GRPCStatus),
		attribute.String("response_flags", r.Flags),
		attribute.String("connection_security_policy", "mutual_tls"),
		attribute.String("destination_service", orUnknown(r.DestinationService)),
		attribute.String("destination_service_name", orUnknown(r.DestinationServiceName)),
		attribute.String("destination_service_namespace", orUnknown(r.DestinationServiceNS)),
	}
	kv = append(kv, src.attrs("source")...)
	kv = append(kv, dst.attrs("destination")...)
	return attribute.NewSet(kv...)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// RecordRequest counts r and writes its access log line.
func (t *Telemetry) RecordRequest(ctx context.Context, r *Request) {
	if t.metricsOn {
		set := metric.WithAttributeSet(t.requestSet(r))
		t.requests.Add(ctx, 1, set)
		t.duration.Record(ctx, float64(r.Duration)/float64(time.Millisecond), set)
		t.reqBytes.Record(ctx, r.BytesReceived, set)
		t.respBytes.Record(ctx, r.BytesSent, set)
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "request",
		slog.String("src.ip", r.ClientIP), slog.String("src.principal", r.Source.Principal), slog.String("src.workload", r.Source.Workload),
		slog.String("method", r.Method), slog.String("authority", r.Authority), slog.String("path", r.Path), slog.String("protocol", r.Protocol),
		slog.Int("code", r.Code), slog.String("grpc_status", r.GRPCStatus), slog.String("flags", r.Flags),
		slog.String("chain", r.Chain), slog.String("route", r.Route), slog.String("cluster", r.Cluster), slog.String("upstream", r.UpstreamHost),
		slog.String("dst.workload", r.Destination.Workload), slog.Int("attempts", r.Attempts), slog.String("rbac", r.RBAC),
		slog.Int64("bytes_received", r.BytesReceived), slog.Int64("bytes_sent", r.BytesSent),
		slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000), slog.String("trace_id", r.TraceID))
}

// Conn is the record of one TCP connection through a TCP chain.
type Conn struct {
	Source, Destination                          Peer
	DestinationService                           string
	DestinationServiceName, DestinationServiceNS string
	Flags                                        string
	Sent, Received                               int64 // by the initiator
	Duration                                     time.Duration
	ClientIP, UpstreamHost, Cluster, Chain, RBAC string
	Err                                          error
}

func (c *Conn) attrs() attribute.Set {
	src, dst := c.Source.Unknown(), c.Destination.Unknown()
	kv := []attribute.KeyValue{
		attribute.String("reporter", "waypoint"),
		attribute.String("request_protocol", "tcp"),
		attribute.String("response_flags", c.Flags),
		attribute.String("connection_security_policy", "mutual_tls"),
		attribute.String("destination_service", orUnknown(c.DestinationService)),
		attribute.String("destination_service_name", orUnknown(c.DestinationServiceName)),
		attribute.String("destination_service_namespace", orUnknown(c.DestinationServiceNS)),
	}
	kv = append(kv, src.attrs("source")...)
	kv = append(kv, dst.attrs("destination")...)
	return attribute.NewSet(kv...)
}

// ConnOpened counts an opened TCP connection.
func (t *Telemetry) ConnOpened(ctx context.Context, c *Conn) {
	if t.metricsOn {
		t.tcpOpened.Add(ctx, 1, metric.WithAttributeSet(c.attrs()))
	}
}

// ConnClosed counts a closed TCP connection and its bytes, and logs it.
func (t *Telemetry) ConnClosed(ctx context.Context, c *Conn) {
	if t.metricsOn {
		set := metric.WithAttributeSet(c.attrs())
		t.tcpClosed.Add(ctx, 1, set)
		t.tcpSent.Add(ctx, c.Sent, set)
		t.tcpReceived.Add(ctx, c.Received, set)
	}
	errStr := ""
	if c.Err != nil && !errors.Is(c.Err, context.Canceled) {
		errStr = c.Err.Error()
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "connection",
		slog.String("src.ip", c.ClientIP), slog.String("src.principal", c.Source.Principal), slog.String("src.workload", c.Source.Workload),
		slog.String("chain", c.Chain), slog.String("cluster", c.Cluster), slog.String("upstream", c.UpstreamHost),
		slog.String("dst.workload", c.Destination.Workload), slog.String("flags", c.Flags), slog.String("rbac", c.RBAC),
		slog.Int64("bytes_sent", c.Sent), slog.Int64("bytes_received", c.Received),
		slog.Float64("duration_ms", float64(c.Duration.Microseconds())/1000), slog.String("error", errStr))
}
