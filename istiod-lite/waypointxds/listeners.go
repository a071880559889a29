package waypointxds

import (
	"net/netip"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
)

// Envoy filter names.
const (
	filterHTTPRBAC        = "envoy.filters.http.rbac"
	filterHTTPRouter      = "envoy.filters.http.router"
	filterNetworkRBAC     = "envoy.filters.network.rbac"
	filterTCPProxy        = "envoy.filters.network.tcp_proxy"
	filterHCM             = "envoy.filters.network.http_connection_manager"
	filterOriginalDst     = "envoy.filters.listener.original_dst"
	filterHTTPInspector   = "envoy.filters.listener.http_inspector"
	transportSocketTLS    = "envoy.transport_sockets.tls"
	noServicesChain       = "no-services"
	connectTunnelVHost    = "connect"
	connectTerminateRoute = "connect_terminate"
)

// chainName is "inbound-vip|<port>|<http or tcp>|<host>".
func chainName(port uint32, kind, host string) string {
	return "inbound-vip|" + strconv.FormatUint(uint64(port), 10) + "|" + kind + "|" + host
}

// mainInternalListener holds one or two filter chains per served Service
// port, matched by destination port and the Service's VIPs, and for the
// served workloads direct-http and direct-tcp, matched by their addresses
// on any port.
func (b *builder) mainInternalListener(chains []servedChain, pods []*corev1.Pod) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:              mainInternal,
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		TrafficDirection:  corev3.TrafficDirection_INBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       filterOriginalDst,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: b.any(&originaldstv3.OriginalDst{})},
		}},
	}
	detect := false
	for _, c := range chains {
		key := types.NamespacedName{Namespace: c.svc.Namespace, Name: c.svc.Name}
		match := func(alpn []string) *listenerv3.FilterChainMatch {
			m := &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(c.port), ApplicationProtocols: alpn}
			for _, v := range c.vips {
				m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{
					AddressPrefix: v.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(v.Bits())),
				})
			}
			return m
		}
		switch c.proto {
		case protoHTTP:
			l.FilterChains = append(l.FilterChains, b.httpChain(c, key, match(nil)))
		case protoTCP:
			l.FilterChains = append(l.FilterChains, b.tcpChain(c, key, match(nil)))
		default:
			detect = true
			l.FilterChains = append(l.FilterChains,
				b.httpChain(c, key, match([]string{"http/1.1", "h2c"})),
				b.tcpChain(c, key, match(nil)))
		}
	}
	// Envoy looks at destination_port first and falls back to chains
	// without one only when no chain names the port: the served Service
	// ports get their own copy of the direct chains.
	var ports []uint32
	for _, c := range chains {
		if !slices.Contains(ports, c.port) {
			ports = append(ports, c.port)
		}
	}
	slices.Sort(ports)
	if direct := b.directChains(pods, ports); len(direct) > 0 {
		detect = true
		l.FilterChains = append(l.FilterChains, direct...)
	}
	if detect {
		l.ListenerFilters = append(l.ListenerFilters, &listenerv3.ListenerFilter{
			Name:       filterHTTPInspector,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: b.any(&httpinspectorv3.HttpInspector{})},
		})
	}
	if len(l.FilterChains) == 0 {
		// Envoy refuses a listener without filter chains; with nothing to
		// serve, a default chain refuses every connection.
		l.DefaultFilterChain = &listenerv3.FilterChain{
			Name: noServicesChain,
			Filters: []*listenerv3.Filter{
				b.networkRBAC(&rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}, noServicesChain),
				b.tcpProxy(noServicesChain, mainInternal),
			},
		}
	}
	return l
}

// Chains of workload-addressed traffic (Istio's names).
const (
	directHTTPChain = "direct-http"
	directTCPChain  = "direct-tcp"
)

// directChains take traffic addressed to the served pods, on any port (and
// on each of ports, which VIP chains name): HTTP (detected) gets the
// waypoint's L7 policies and goes to the pod unrouted (routes attach to
// Services); anything else gets the L4 part of them. Only policies for the
// whole waypoint apply (targetRefs Gateway or GatewayClass): a
// Service-targeted one is about that Service's traffic.
func (b *builder) directChains(pods []*corev1.Pod, ports []uint32) []*listenerv3.FilterChain {
	var prefixes []*corev3.CidrRange
	for _, a := range uniqueAddrs(pods) {
		prefixes = append(prefixes, &corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))})
	}
	if len(prefixes) == 0 {
		return nil
	}
	hcm := b.inboundHCM(directHTTPChain, types.NamespacedName{}, 0)
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
		Name: directHTTPChain,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    directHTTPChain,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: encap},
					Timeout:          durationpb.New(0),
				}},
			}},
		}},
	}}
	var tcpFilters []*listenerv3.Filter
	for _, r := range b.rbacConfigs(types.NamespacedName{}, 0, true) {
		tcpFilters = append(tcpFilters, b.networkRBAC(r, directTCPChain))
	}
	tcpFilters = append(tcpFilters, b.tcpProxy(directTCPChain, encap))
	httpFilters := []*listenerv3.Filter{b.hcmFilter(hcm)}
	var out []*listenerv3.FilterChain
	for _, port := range append([]uint32{0}, ports...) {
		suffix := ""
		var dp *wrapperspb.UInt32Value
		if port != 0 {
			suffix, dp = "|"+strconv.FormatUint(uint64(port), 10), wrapperspb.UInt32(port)
		}
		out = append(out,
			&listenerv3.FilterChain{
				Name:             directHTTPChain + suffix,
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: dp, PrefixRanges: prefixes, ApplicationProtocols: []string{"http/1.1", "h2c"}},
				Filters:          httpFilters,
			},
			&listenerv3.FilterChain{
				Name:             directTCPChain + suffix,
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: dp, PrefixRanges: prefixes},
				Filters:          tcpFilters,
			})
	}
	return out
}

// uniqueAddrs are the pods' addresses, each once (an address two pods
// claim, briefly, is listed for the first).
func uniqueAddrs(pods []*corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, p := range pods {
		for _, a := range podAddrs(p) {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

func (b *builder) httpChain(c servedChain, key types.NamespacedName, m *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
	name := chainName(c.port, "http", c.host)
	hcm := b.inboundHCM(name, key, c.port)
	hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
		ConfigSource:    configSourceADS(),
		RouteConfigName: gamma.RouteConfigName(c.port, c.host),
	}}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{b.hcmFilter(hcm)}}
}

// inboundHCM is the HTTP connection manager of an HTTP chain, without its
// routes: the RBAC filters of the policies for Service key (zero: the whole
// waypoint's) then the router.
func (b *builder) inboundHCM(statPrefix string, key types.NamespacedName, port uint32) *hcmv3.HttpConnectionManager {
	var filters []*hcmv3.HttpFilter
	for _, r := range b.rbacConfigs(key, port, false) {
		filters = append(filters, &hcmv3.HttpFilter{
			Name:       filterHTTPRBAC,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&rbachttpv3.RBAC{Rules: r})},
		})
	}
	filters = append(filters, b.routerFilter())
	return &hcmv3.HttpConnectionManager{
		StatPrefix:       statPrefix,
		NormalizePath:    wrapperspb.Bool(true),
		MergeSlashes:     false,
		UseRemoteAddress: wrapperspb.Bool(false),
		HttpFilters:      filters,
		// As Istio: websockets pass, and long-lived (gRPC) streams are not
		// reset by Envoy's 5 minute stream idle default; routes' own
		// idle_timeout still applies.
		UpgradeConfigs:    []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		StreamIdleTimeout: durationpb.New(0),
	}
}

func (b *builder) hcmFilter(hcm *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{Name: filterHCM, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(hcm)}}
}

func (b *builder) tcpChain(c servedChain, key types.NamespacedName, m *listenerv3.FilterChainMatch) *listenerv3.FilterChain {
	name := chainName(c.port, "tcp", c.host)
	var filters []*listenerv3.Filter
	for _, r := range b.rbacConfigs(key, c.port, true) {
		filters = append(filters, b.networkRBAC(r, name))
	}
	filters = append(filters, b.tcpProxy(name, c.cluster))
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: filters}
}

func (b *builder) networkRBAC(r *rbacv3.RBAC, statPrefix string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       filterNetworkRBAC,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(&rbacnetv3.RBAC{Rules: r, StatPrefix: statPrefix})},
	}
}

func (b *builder) tcpProxy(statPrefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: filterTCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		})},
	}
}

func (b *builder) routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       filterHTTPRouter,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: b.any(&routerv3.Router{})},
	}
}

// connectTerminateListener accepts HBONE: mTLS with a client certificate
// from the mesh, HTTP/2 CONNECT, each tunnel handed to main_internal.
func (b *builder) connectTerminateListener() *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: connectTerminate,
		CodecType:  hcmv3.HttpConnectionManager_HTTP2,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: connectTerminateRoute,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    connectTunnelVHost,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_ConnectMatcher_{ConnectMatcher: &routev3.RouteMatch_ConnectMatcher{}}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: mainInternal},
						UpgradeConfigs: []*routev3.RouteAction_UpgradeConfig{{
							UpgradeType:   "CONNECT",
							ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
						}},
					}},
				}},
			}},
		}},
		HttpFilters:          []*hcmv3.HttpFilter{b.routerFilter()},
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{AllowConnect: true},
		UpgradeConfigs:       []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "CONNECT"}},
	}
	return &listenerv3.Listener{
		Name:    connectTerminate,
		Address: socketAddress("0.0.0.0", hbonePort),
		FilterChains: []*listenerv3.FilterChain{{
			Name: connectTerminate,
			TransportSocket: &corev3.TransportSocket{
				Name: transportSocketTLS,
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&tlsv3.DownstreamTlsContext{
					RequireClientCertificate: wrapperspb.Bool(true),
					CommonTlsContext:         meshTLSContext(),
				})},
			},
			Filters: []*listenerv3.Filter{{
				Name: filterHCM, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(hcm)},
			}},
		}},
	}
}

// connectOriginateListener is Envoy's HBONE origination: each connection
// to an endpoint addressed to it is tunnelled by CONNECT to its original
// destination through the connect_originate cluster.
func (b *builder) connectOriginateListener() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:              connectOriginate,
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       filterOriginalDst,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: b.any(&originaldstv3.OriginalDst{})},
		}},
		FilterChains: []*listenerv3.FilterChain{{
			Name: connectOriginate,
			Filters: []*listenerv3.Filter{{
				Name: filterTCPProxy,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: b.any(&tcpproxyv3.TcpProxy{
					StatPrefix:       connectOriginate,
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: connectOriginate},
					TunnelingConfig:  &tcpproxyv3.TcpProxy_TunnelingConfig{Hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"},
				})},
			}},
		}},
	}
}
