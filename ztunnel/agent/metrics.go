package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// connObserver turns every finished connection into an access log line and
// Istio's TCP metrics (istio_tcp_*, with the labels dashboards built for
// Istio's ztunnel group by), plus ambit's counts of passthrough and denied
// connections.
type connObserver struct {
	store   *state.Store
	network string
	log     *slog.Logger

	opened, closed, sent, received metric.Int64Counter
	passthrough, denied            metric.Int64Counter
}

func newConnObserver(p *metrics.Provider, store *state.Store, network string, log *slog.Logger) (func(proxy.Event), error) {
	o := &connObserver{store: store, network: network, log: log}
	if p != nil {
		m := p.Meter("ztunnel")
		for _, c := range []struct {
			dst  *metric.Int64Counter
			name string
			desc string
		}{
			{&o.opened, "istio_tcp_connections_opened", "TCP connections opened."},
			{&o.closed, "istio_tcp_connections_closed", "TCP connections closed."},
			{&o.sent, "istio_tcp_sent_bytes", "Bytes sent by the connection's initiator."},
			{&o.received, "istio_tcp_received_bytes", "Bytes received by the connection's initiator."},
			{&o.passthrough, "ambit_ztunnel_passthrough_connections", "Outbound connections to destinations outside the mesh, sent as plain TCP."},
			{&o.denied, "ambit_ztunnel_denied_connections", "Connections refused by authorization or PeerAuthentication."},
		} {
			ctr, err := m.Int64Counter(c.name, metric.WithDescription(c.desc))
			if err != nil {
				return nil, fmt.Errorf("ztunnel: metric %s: %w", c.name, err)
			}
			*c.dst = ctr
		}
	}
	return o.observe, nil
}

// peer is one end of a connection as the metrics name it.
type peer struct{ workload, namespace, principal string }

func (o *connObserver) workloadAt(ip netip.Addr) (name, ns string) {
	if w := o.store.WorkloadByIP(o.network, ip); w != nil {
		return workloadName(w), w.GetNamespace()
	}
	return "unknown", "unknown"
}

func workloadName(w *workloadv1.Workload) string {
	if n := w.GetWorkloadName(); n != "" {
		return n
	}
	return w.GetName()
}

func (o *connObserver) ends(ev proxy.Event) (src, dst peer) {
	local := peer{principal: "unknown", namespace: "unknown", workload: "unknown"}
	if ev.Pod != nil {
		local.namespace, local.workload = ev.Pod.Namespace, ev.Pod.Name
		if len(ev.Pod.IPs) > 0 {
			if w := o.store.WorkloadByIP(o.network, ev.Pod.IPs[0]); w != nil {
				local.workload = workloadName(w)
			}
		}
		if ev.Pod.Cert != nil {
			local.principal = ev.Pod.Cert.Identity().String()
		}
	}
	remote := peer{principal: "unknown"}
	if !ev.Peer.IsZero() {
		remote.principal = ev.Peer.String()
	}
	if ev.Direction == "inbound" {
		remote.workload, remote.namespace = o.workloadAt(ev.Source.Addr())
		return remote, local
	}
	remote.workload, remote.namespace = ev.Route.DestinationWorkload, ev.Route.DestinationNS
	if remote.workload == "" {
		target := ev.Route.Target.Addr()
		if !target.IsValid() {
			target = ev.Dest.Addr()
		}
		remote.workload, remote.namespace = o.workloadAt(target)
	}
	return local, remote
}

func (o *connObserver) observe(ev proxy.Event) {
	src, dst := o.ends(ev)
	reporter := "source"
	if ev.Direction == "inbound" {
		reporter = "destination"
	}
	security := "none"
	if ev.MTLS {
		security = "mutual_tls"
	}
	fl := flags(ev)
	attrs := []any{"direction", ev.Direction, "src", ev.Source.String(), "dst", ev.Dest.String(),
		"src_workload", src.namespace + "/" + src.workload, "src_identity", src.principal,
		"dst_workload", dst.namespace + "/" + dst.workload, "dst_identity", dst.principal,
		"service", ev.Route.Service, "security", security, "sent", ev.Sent, "received", ev.Recv,
		"duration_ms", float64(ev.Duration.Microseconds()) / 1000, "outcome", fl}
	if ev.Err != nil {
		attrs = append(attrs, "error", ev.Err.Error())
	}
	o.log.Info("connection", attrs...)
	if o.opened == nil {
		return
	}
	ctx := context.Background()
	set := metric.WithAttributes(
		attribute.String("reporter", reporter),
		attribute.String("source_workload", src.workload),
		attribute.String("source_workload_namespace", src.namespace),
		attribute.String("source_principal", src.principal),
		attribute.String("destination_workload", dst.workload),
		attribute.String("destination_workload_namespace", dst.namespace),
		attribute.String("destination_principal", dst.principal),
		attribute.String("destination_service", ev.Route.Service),
		attribute.String("connection_security_policy", security),
		attribute.String("response_flags", fl),
	)
	if ev.Denied {
		o.denied.Add(ctx, 1, metric.WithAttributes(attribute.String("direction", ev.Direction)))
	}
	if ev.Passthrough {
		o.passthrough.Add(ctx, 1)
	}
	o.opened.Add(ctx, 1, set)
	o.closed.Add(ctx, 1, set)
	o.sent.Add(ctx, ev.Sent, set)
	o.received.Add(ctx, ev.Recv, set)
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
