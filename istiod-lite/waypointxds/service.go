package waypointxds

import (
	"fmt"
	"net/netip"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
)

// protocol is how the waypoint treats a Service port.
type protocol uint8

const (
	protoAuto protocol = iota // detected: HTTP and TCP chains
	protoHTTP
	protoTCP
)

// portProtocol classifies a port by appProtocol, else by Istio's port
// naming convention (<protocol>[-<suffix>]); anything else is detected.
func portProtocol(p corev1.ServicePort) protocol {
	if p.AppProtocol != nil && *p.AppProtocol != "" {
		switch strings.ToLower(*p.AppProtocol) {
		case "http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws":
			return protoHTTP
		case "tcp", "tls", "https", "mongo", "mysql", "redis", "kubernetes.io/wss":
			return protoTCP
		}
		return protoAuto
	}
	prefix, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	switch prefix {
	case "http", "http2", "grpc":
		return protoHTTP
	case "tcp", "tls", "https", "mongo", "mysql", "redis":
		return protoTCP
	}
	return protoAuto
}

// servedChain is one served Service port: one or two filter chains of
// main_internal.
type servedChain struct {
	svc     *corev1.Service
	host    string
	port    uint32
	proto   protocol
	vips    []netip.Prefix
	cluster string
}

// serviceVIPs returns the Service's cluster IPs as host prefixes.
func serviceVIPs(svc *corev1.Service) []netip.Prefix {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Prefix
	seen := map[netip.Addr]bool{}
	for _, s := range ips {
		a, err := netip.ParseAddr(s) // "None" (headless): no VIP
		if err != nil || a.Zone() != "" {
			continue
		}
		a = a.Unmap()
		if !seen[a] {
			seen[a] = true
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

func isTCPPort(p corev1.ServicePort) bool {
	return (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) && p.Port > 0 && p.Port <= 65535
}

// service translates one served Service: its route configurations and
// outbound clusters, and the chains main_internal needs for it. A headless
// Service (no VIP) cannot be addressed through the waypoint: it gets no
// chains.
func (b *builder) service(svc *corev1.Service) ([]servedChain, []gamma.RouteStatus) {
	host := gamma.Hostname(svc.Namespace, svc.Name, b.opts.Domain)
	vips := serviceVIPs(svc)
	var chains []servedChain
	seen := map[uint32]bool{}
	for _, p := range svc.Spec.Ports {
		port := uint32(p.Port)
		if !isTCPPort(p) || seen[port] {
			continue
		}
		seen[port] = true
		c := servedChain{svc: svc, host: host, port: port, proto: portProtocol(p), vips: vips, cluster: gamma.ClusterName(port, host)}
		b.clusters[c.cluster] = true
		if len(vips) > 0 {
			chains = append(chains, c)
		}
	}
	rcs, statuses := translateRoutes(b.st, svc, b.opts.Domain)
	for _, rc := range rcs {
		b.res.add(resource.RouteType, rc.GetName(), rc)
		for _, name := range routeClusters(rc) {
			b.clusters[name] = true
		}
	}
	return chains, statuses
}

// gammaService is svc as routes see it: its VIPs and the ports the
// waypoint serves HTTP on (declared or detected). Ports declared opaque TCP
// take no routes, so a parentRef naming one matches no parent.
func gammaService(svc *corev1.Service) gamma.Service {
	gs := gamma.Service{Namespace: svc.Namespace, Name: svc.Name, PortNames: map[string]uint32{}}
	for _, a := range serviceVIPs(svc) {
		gs.VIPs = append(gs.VIPs, a.Addr().String())
	}
	seen := map[uint32]bool{}
	for _, p := range svc.Spec.Ports {
		port := uint32(p.Port)
		if !isTCPPort(p) || seen[port] || portProtocol(p) == protoTCP {
			continue
		}
		seen[port] = true
		gs.Ports = append(gs.Ports, port)
		if p.Name != "" {
			gs.PortNames[p.Name] = port
		}
	}
	return gs
}

// translateRoutes translates the GAMMA routes naming svc: the route
// configurations of its HTTP ports and the status of every parentRef
// naming it.
func translateRoutes(st State, svc *corev1.Service, domain string) ([]*routev3.RouteConfiguration, []gamma.RouteStatus) {
	in := gamma.Routes{HTTP: st.HTTPRoutes(), GRPC: st.GRPCRoutes()}
	gs := gammaService(svc)
	if len(gs.Ports) == 0 {
		return nil, unattachedStatuses(in, svc, fmt.Sprintf("Service %s/%s has no port that carries HTTP (every port is UDP/SCTP or declared opaque TCP)", svc.Namespace, svc.Name))
	}
	rcs, statuses, err := gamma.Translate(gs, in, gamma.Options{Domain: domain, Lookup: lookup{st}})
	if err != nil {
		// gamma refuses only bad ports and VIPs, which gammaService
		// filters; should it happen, the routes cannot attach.
		return nil, unattachedStatuses(in, svc, err.Error())
	}
	return rcs, statuses
}

// RouteStatuses returns the status of every parentRef naming svc, as Build
// computes it for a served Service; for Services no waypoint serves, whose
// routes are still validated.
func RouteStatuses(st State, svc *corev1.Service, domain string) []gamma.RouteStatus {
	if domain == "" {
		domain = Options{}.withDefaults().Domain
	}
	_, statuses := translateRoutes(st, svc, domain)
	return statuses
}

// unattachedStatuses: every parentRef naming svc is not accepted
// (NoMatchingParent), with why.
func unattachedStatuses(in gamma.Routes, svc *corev1.Service, why string) []gamma.RouteStatus {
	var out []gamma.RouteStatus
	visit := func(kind string, m metav1.ObjectMeta, refs []gatewayv1.ParentReference) {
		for _, pr := range refs {
			if pr.Group == nil || *pr.Group != "" || pr.Kind == nil || *pr.Kind != "Service" || string(pr.Name) != svc.Name {
				continue
			}
			ns := m.Namespace
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			if ns != svc.Namespace {
				continue
			}
			out = append(out, gamma.RouteStatus{Kind: kind, Namespace: m.Namespace, Name: m.Name, ParentRef: pr, Conditions: []metav1.Condition{
				{Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionFalse, Reason: string(gatewayv1.RouteReasonNoMatchingParent), Message: why, ObservedGeneration: m.Generation},
				{Type: string(gatewayv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue, Reason: string(gatewayv1.RouteReasonResolvedRefs), ObservedGeneration: m.Generation},
			}})
		}
	}
	for _, r := range in.HTTP {
		visit(gamma.KindHTTPRoute, r.ObjectMeta, r.Spec.ParentRefs)
	}
	for _, r := range in.GRPC {
		visit(gamma.KindGRPCRoute, r.ObjectMeta, r.Spec.ParentRefs)
	}
	return out
}
