// Package metrics sets up OpenTelemetry metrics exported in Prometheus format,
// so every component's instruments appear on /metrics under the names Istio
// uses (an otel counter "istio_requests" is exposed as istio_requests_total).
package metrics

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Provider owns a meter provider and the Prometheus registry it feeds.
type Provider struct {
	mp       *sdkmetric.MeterProvider
	registry *prometheus.Registry
}

// New returns a Provider whose metrics are served by Handler. Scope and target
// info labels are left out so series match Istio's label sets exactly.
func New() (*Provider, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	return &Provider{mp: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)), registry: reg}, nil
}

// Meter returns a meter for instrumentation scope name.
func (p *Provider) Meter(name string) metric.Meter { return p.mp.Meter(name) }

// Handler serves the Prometheus text format.
func (p *Provider) Handler() http.Handler {
	return promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{})
}
