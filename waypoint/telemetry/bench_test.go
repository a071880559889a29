package telemetry

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/metrics"
)

func benchRequest() *Request {
	return &Request{
		Source:             Peer{Workload: "client", Namespace: "apps", Principal: "spiffe://cluster.local/ns/apps/sa/client", CanonicalService: "client", CanonicalRevision: "latest"},
		Destination:        Peer{Workload: "echo-v1", Namespace: "apps", Principal: "spiffe://cluster.local/ns/apps/sa/echo", CanonicalService: "echo", CanonicalRevision: "v1"},
		DestinationService: "echo.apps.svc.cluster.local", DestinationServiceName: "echo", DestinationServiceNS: "apps",
		Protocol: "http", Method: "GET", Authority: "echo", Path: "/", Code: 200, Flags: "-",
		Duration: 3 * time.Millisecond, BytesReceived: 1024, BytesSent: 1024,
	}
}

// BenchmarkRecordRequest is the per-request telemetry cost: metrics with
// Istio's labels and the access log line (to a discarding text handler).
func BenchmarkRecordRequest(b *testing.B) {
	prov, err := metrics.New()
	if err != nil {
		b.Fatal(err)
	}
	tel, err := New(context.Background(), Options{Metrics: prov, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	r := benchRequest()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tel.RecordRequest(ctx, r)
	}
}

// BenchmarkRequestAttrs is the label set alone, as built for every request.
func BenchmarkRequestAttrs(b *testing.B) {
	r := benchRequest()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.attrs()
	}
}

// BenchmarkRecordRequestNoLog is RecordRequest with the access log off
// (a logger above info), to tell the metrics' share from the log's.
func BenchmarkRecordRequestNoLog(b *testing.B) {
	prov, err := metrics.New()
	if err != nil {
		b.Fatal(err)
	}
	tel, err := New(context.Background(), Options{Metrics: prov, Log: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		b.Fatal(err)
	}
	r := benchRequest()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		tel.RecordRequest(ctx, r)
	}
}
