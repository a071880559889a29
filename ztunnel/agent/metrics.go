package agent

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
)

// connMetrics are Istio's TCP metrics (istio_tcp_*), with the labels
// dashboards built for Istio's ztunnel group by, plus ambit's counts of
// passthrough and denied connections.
type connMetrics struct {
	opened, closed, sent, received metric.Int64Counter
	passthrough, denied            metric.Int64Counter
}

func newConnMetrics(p *metrics.Provider) (func(proxy.Event), error) {
	if p == nil {
		return nil, nil
	}
	m := p.Meter("ztunnel")
	var cm connMetrics
	for _, c := range []struct {
		dst  *metric.Int64Counter
		name string
		desc string
	}{
		{&cm.opened, "istio_tcp_connections_opened", "TCP connections opened."},
		{&cm.closed, "istio_tcp_connections_closed", "TCP connections closed."},
		{&cm.sent, "istio_tcp_sent_bytes", "Bytes sent by the connection's initiator."},
		{&cm.received, "istio_tcp_received_bytes", "Bytes received by the connection's initiator."},
		{&cm.passthrough, "ambit_ztunnel_passthrough_connections", "Outbound connections to destinations outside the mesh, sent as plain TCP."},
		{&cm.denied, "ambit_ztunnel_denied_connections", "Connections refused by authorization or PeerAuthentication."},
	} {
		ctr, err := m.Int64Counter(c.name, metric.WithDescription(c.desc))
		if err != nil {
			return nil, fmt.Errorf("ztunnel: metric %s: %w", c.name, err)
		}
		*c.dst = ctr
	}
	return cm.observe, nil
}

func (m *connMetrics) observe(ev proxy.Event) {
	ctx := context.Background()
	reporter := "source"
	if ev.Direction == "inbound" {
		reporter = "destination"
	}
	security := "none"
	if ev.MTLS {
		security = "mutual_tls"
	}
	attrs := metric.WithAttributes(
		attribute.String("reporter", reporter),
		attribute.String("source_principal", principal(ev, "source")),
		attribute.String("destination_principal", principal(ev, "destination")),
		attribute.String("destination_service", ev.Route.Service),
		attribute.String("destination_workload_namespace", destNamespace(ev)),
		attribute.String("connection_security_policy", security),
		attribute.String("response_flags", flags(ev)),
	)
	if ev.Denied {
		m.denied.Add(ctx, 1, metric.WithAttributes(attribute.String("direction", ev.Direction)))
	}
	if ev.Passthrough {
		m.passthrough.Add(ctx, 1)
	}
	m.opened.Add(ctx, 1, attrs)
	m.closed.Add(ctx, 1, attrs)
	m.sent.Add(ctx, ev.Sent, attrs)
	m.received.Add(ctx, ev.Recv, attrs)
}

func principal(ev proxy.Event, side string) string {
	switch {
	case ev.Direction == "outbound" && side == "source", ev.Direction == "inbound" && side == "destination":
		if ev.Pod != nil && ev.Pod.Cert != nil {
			return ev.Pod.Cert.Identity().String()
		}
		return "unknown"
	default:
		if ev.Peer.IsZero() {
			return "unknown"
		}
		return ev.Peer.String()
	}
}

func destNamespace(ev proxy.Event) string {
	if ev.Direction == "inbound" && ev.Pod != nil {
		return ev.Pod.Namespace
	}
	if ev.Route.DestinationNS != "" {
		return ev.Route.DestinationNS
	}
	return "unknown"
}

// flags follow Envoy's response flags: DENY for policy, UF for an upstream
// failure, "-" otherwise.
func flags(ev proxy.Event) string {
	switch {
	case ev.Denied:
		return "DENY"
	case ev.Err != nil:
		return "UF"
	default:
		return "-"
	}
}
