package waypointxds

import (
	"net/netip"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"

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
	gs := gamma.Service{Namespace: svc.Namespace, Name: svc.Name, PortNames: map[string]uint32{}}
	for _, a := range vips {
		gs.VIPs = append(gs.VIPs, a.Addr().String())
	}
	seen := map[uint32]bool{}
	for _, p := range svc.Spec.Ports {
		port := uint32(p.Port)
		if !isTCPPort(p) || seen[port] {
			continue
		}
		seen[port] = true
		c := servedChain{svc: svc, host: host, port: port, proto: portProtocol(p), vips: vips, cluster: gamma.ClusterName(port, host)}
		b.clusters[c.cluster] = true
		if c.proto != protoTCP {
			gs.Ports = append(gs.Ports, port)
			if p.Name != "" {
				gs.PortNames[p.Name] = port
			}
		}
		if len(vips) > 0 {
			chains = append(chains, c)
		}
	}
	if len(gs.Ports) == 0 {
		return chains, nil
	}
	rcs, statuses, err := gamma.Translate(gs, gamma.Routes{HTTP: b.st.HTTPRoutes(), GRPC: b.st.GRPCRoutes()},
		gamma.Options{Domain: b.opts.Domain, Lookup: lookup{b.st}})
	if err != nil {
		// Unreachable: gamma refuses only bad ports and VIPs, filtered
		// above. Without route configurations the HTTP chains answer 404.
		return chains, nil
	}
	for _, rc := range rcs {
		b.res.add(resource.RouteType, rc.GetName(), rc)
		for _, name := range routeClusters(rc) {
			b.clusters[name] = true
		}
	}
	return chains, statuses
}
