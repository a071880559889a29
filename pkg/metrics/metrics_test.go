package metrics

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

func TestCounterExposedWithIstioName(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Meter("test").Int64Counter("istio_tcp_connections_opened")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3, metric.WithAttributes(attribute.String("reporter", "destination")))
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	want := `istio_tcp_connections_opened_total{reporter="destination"} 3`
	if !strings.Contains(string(body), want) {
		t.Fatalf("metrics output lacks %q:\n%s", want, body)
	}
}
