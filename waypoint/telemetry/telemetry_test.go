package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/ambit-mesh/ambit/pkg/metrics"
)

func TestSpanPerRequestAndPropagation(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	prov, err := metrics.New()
	if err != nil {
		t.Fatal(err)
	}
	tel, err := New(context.Background(), Options{Metrics: prov, ServiceName: "waypoint.ns", SpanExporter: exp, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	r := httptest.NewRequest(http.MethodGet, "http://a.ns.svc/x", nil)
	r.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	ctx, span := tel.StartRequest(context.Background(), r)
	up := http.Header{}
	tel.Inject(ctx, up)
	span.End()
	tel.RecordRequest(ctx, &Request{Protocol: "grpc", Code: 200, GRPCStatus: "0", Flags: "-"})
	// ForceFlush, not Shutdown: the in-memory exporter forgets on shutdown.
	if err := tel.tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tp := up.Get("Traceparent"); !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Errorf("upstream traceparent %q: want the same trace with the waypoint's span as parent", tp)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans exported, want 1", len(spans))
	}
	s := spans[0]
	if s.SpanContext.TraceID().String() != traceID || s.Parent.SpanID().String() != "00f067aa0ba902b7" || s.SpanKind.String() != "server" {
		t.Errorf("span: trace %s parent %s kind %s", s.SpanContext.TraceID(), s.Parent.SpanID(), s.SpanKind)
	}
	rec := httptest.NewRecorder()
	prov.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{`istio_requests_total{`, `grpc_response_status="0"`, `request_protocol="grpc"`, `source_workload="unknown"`, `istio_request_duration_milliseconds_bucket{`, `istio_request_bytes_bucket{`, `istio_response_bytes_bucket{`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestNoExporterStillPropagates(t *testing.T) {
	tel, err := New(context.Background(), Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	r := httptest.NewRequest(http.MethodGet, "http://a/x", nil)
	ctx, span := tel.StartRequest(context.Background(), r)
	defer span.End()
	up := http.Header{}
	tel.Inject(ctx, up)
	if up.Get("Traceparent") == "" {
		t.Error("no traceparent without an exporter: a trace must start here")
	}
}

// collector is an OTLP/gRPC trace collector that records what it gets.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func TestOTLPExport(t *testing.T) {
	col := &collector{}
	g := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(g, col)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()
	tel, err := New(context.Background(), Options{OTLPEndpoint: ln.Addr().String(), ServiceName: "waypoint.ns", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.StartRequest(context.Background(), httptest.NewRequest(http.MethodGet, "http://a.ns.svc/exported", nil))
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil { // flushes
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.spans) != 1 || col.spans[0].GetName() != "a.ns.svc/exported" {
		t.Fatalf("collector got %v", col.spans)
	}
}
