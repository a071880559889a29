package waypointxds

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	internalupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
)

// Names fixed by the contract.
const (
	mainInternal     = "main_internal"
	connectOriginate = "connect_originate"
	connectTerminate = "connect_terminate"
	// encap takes workload-addressed traffic (direct-http, direct-tcp) to
	// its original destination through connect_originate, as Istio's.
	encap         = "encap"
	rootCASecret  = "ROOTCA"
	defaultSecret = "default"
	sdsCluster    = "sds-grpc"
	hbonePort     = 15008

	// transportSocketMatchKey is Envoy's metadata namespace for
	// transport_socket_matches; tunnel=hbone selects the HBONE socket.
	transportSocketMatchKey = "envoy.transport_socket_match"
	// ambitMetadataKey carries what the Go waypoint needs about an
	// endpoint: identity (HBONE only), workload, namespace.
	ambitMetadataKey = "ambit"

	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// routeClusters lists the clusters rc forwards or mirrors to (gamma's
// outbound clusters; the never-existing invalid-backend cluster is left
// out: it answers 500 by being absent).
func routeClusters(rc *routev3.RouteConfiguration) []string {
	var out []string
	add := func(name string) {
		if strings.HasPrefix(name, "outbound|") {
			out = append(out, name)
		}
	}
	addMirrors := func(ms []*routev3.RouteAction_RequestMirrorPolicy) {
		for _, m := range ms {
			add(m.GetCluster())
		}
	}
	addMirrors(rc.GetRequestMirrorPolicies())
	for _, vh := range rc.GetVirtualHosts() {
		addMirrors(vh.GetRequestMirrorPolicies())
		for _, r := range vh.GetRoutes() {
			ra := r.GetRoute()
			add(ra.GetCluster())
			for _, wc := range ra.GetWeightedClusters().GetClusters() {
				add(wc.GetName())
			}
			addMirrors(ra.GetRequestMirrorPolicies())
		}
	}
	return out
}

// parseOutbound splits "outbound|<port>||<name>.<ns>.svc.<domain>".
func parseOutbound(cluster, domain string) (types.NamespacedName, uint32, bool) {
	rest, ok := strings.CutPrefix(cluster, "outbound|")
	if !ok {
		return types.NamespacedName{}, 0, false
	}
	portStr, host, ok := strings.Cut(rest, "||")
	if !ok {
		return types.NamespacedName{}, 0, false
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return types.NamespacedName{}, 0, false
	}
	nameNs, ok := strings.CutSuffix(host, ".svc."+domain)
	if !ok {
		return types.NamespacedName{}, 0, false
	}
	name, ns, ok := strings.Cut(nameNs, ".")
	if !ok || name == "" || ns == "" || strings.Contains(ns, ".") {
		return types.NamespacedName{}, 0, false
	}
	return types.NamespacedName{Namespace: ns, Name: name}, uint32(port), true
}

// outboundClusters adds every referenced outbound cluster and its
// endpoints, and returns the Services referenced that are not served.
func (b *builder) outboundClusters(served []types.NamespacedName) []types.NamespacedName {
	names := make([]string, 0, len(b.clusters))
	for n := range b.clusters {
		names = append(names, n)
	}
	slices.Sort(names)
	backends := map[types.NamespacedName]bool{}
	for _, name := range names {
		key, port, ok := parseOutbound(name, b.opts.Domain)
		if !ok {
			continue
		}
		if !slices.Contains(served, key) {
			backends[key] = true
		}
		b.res.add(resource.ClusterType, name, b.outboundCluster(name))
		var svc *corev1.Service
		if s := b.st.Service(key.Namespace, key.Name); s != nil {
			svc = s
		}
		b.res.add(resource.EndpointType, name, b.loadAssignment(name, svc, port))
	}
	out := make([]types.NamespacedName, 0, len(backends))
	for k := range backends {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// configSourceADS is {ads: {}, resource_api_version: V3}.
func configSourceADS() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

func (b *builder) outboundCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: configSourceADS(), ServiceName: name},
		LbPolicy:             clusterv3.Cluster_LEAST_REQUEST,
		ConnectTimeout:       durationpb.New(10 * time.Second),
		OutlierDetection: &clusterv3.OutlierDetection{
			Consecutive_5Xx:                    wrapperspb.UInt32(5),
			ConsecutiveGatewayFailure:          wrapperspb.UInt32(5),
			Interval:                           durationpb.New(5 * time.Second),
			BaseEjectionTime:                   durationpb.New(30 * time.Second),
			MaxEjectionPercent:                 wrapperspb.UInt32(50),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(100),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: b.any(&httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
					UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
						HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
					},
				},
			}),
		},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{b.internalUpstream(hboneMatch())},
	}
}

// internalUpstream is the transport socket of endpoints on an internal
// listener (connect_originate) matching match (nil: every endpoint).
func (b *builder) internalUpstream(match *structpb.Struct) *clusterv3.Cluster_TransportSocketMatch {
	return &clusterv3.Cluster_TransportSocketMatch{
		Name:  "hbone",
		Match: match,
		TransportSocket: &corev3.TransportSocket{
			Name: "envoy.transport_sockets.internal_upstream",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&internalupstreamv3.InternalUpstreamTransport{
				TransportSocket: &corev3.TransportSocket{
					Name:       "envoy.transport_sockets.raw_buffer",
					ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&rawbufferv3.RawBuffer{})},
				},
			})},
		},
	}
}

func hboneMatch() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{"tunnel": structpb.NewStringValue("hbone")}}
}

// loadAssignment is the ready endpoints of svc's port (nil svc, or no such
// port: none, so the cluster answers 503).
func (b *builder) loadAssignment(name string, svc *corev1.Service, port uint32) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if svc == nil {
		return cla
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if p := &svc.Spec.Ports[i]; uint32(p.Port) == port && isTCPPort(*p) {
			sp = p
			break
		}
	}
	if sp == nil {
		return cla
	}
	var lbs []*endpointv3.LbEndpoint
	seen := map[netip.AddrPort]bool{}
	// Sorted (a copy: State's objects are read-only) so that the output is
	// stable.
	eps := slices.Clone(b.st.EndpointSlices(svc.Namespace, svc.Name))
	sortSlices(eps)
	for _, es := range eps {
		if es == nil || (es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6) {
			continue
		}
		target, ok := slicePort(es, sp)
		if !ok {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || ip.Zone() != "" {
					continue
				}
				ap := netip.AddrPortFrom(ip.Unmap(), target)
				if seen[ap] {
					continue
				}
				seen[ap] = true
				lbs = append(lbs, b.lbEndpoint(ap, ep.TargetRef))
			}
		}
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

func sortSlices(s []*discoveryv1.EndpointSlice) {
	slices.SortFunc(s, func(a, b *discoveryv1.EndpointSlice) int {
		if a == nil || b == nil {
			return 0
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// slicePort finds the target port of service port sp in a slice: the slice
// port with the same name (EndpointSlices carry the service port's name and
// the port resolved for their endpoints).
func slicePort(es *discoveryv1.EndpointSlice, sp *corev1.ServicePort) (uint16, bool) {
	for _, p := range es.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != sp.Name || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) || p.Port == nil {
			continue
		}
		if *p.Port <= 0 || *p.Port > 65535 {
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// lbEndpoint is one endpoint: over HBONE through connect_originate when
// the workload is captured, else a plain socket address.
func (b *builder) lbEndpoint(ap netip.AddrPort, ref *corev1.ObjectReference) *endpointv3.LbEndpoint {
	w, known := b.st.Workload(ap.Addr())
	if !known && ref != nil && ref.Kind == "Pod" {
		w = Workload{Name: ref.Name, Namespace: ref.Namespace}
	}
	meta := map[string]*structpb.Value{}
	if w.Name != "" {
		meta["workload"] = structpb.NewStringValue(w.Name)
	}
	if w.Namespace != "" {
		meta["namespace"] = structpb.NewStringValue(w.Namespace)
	}
	lb := &endpointv3.LbEndpoint{
		HealthStatus: corev3.HealthStatus_HEALTHY,
		Metadata:     &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{}},
	}
	var addr *corev3.Address
	if known && w.Captured && w.ServiceAccount != "" && w.Namespace != "" {
		meta["identity"] = structpb.NewStringValue(spiffeID(b.opts.TrustDomain, w.Namespace, w.ServiceAccount))
		lb.Metadata.FilterMetadata[transportSocketMatchKey] = hboneMatch()
		addr = &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
			AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: connectOriginate},
			EndpointId:           ap.String(),
		}}}
	} else {
		addr = socketAddress(ap.Addr().String(), uint32(ap.Port()))
	}
	lb.Metadata.FilterMetadata[ambitMetadataKey] = &structpb.Struct{Fields: meta}
	lb.HostIdentifier = &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}}
	return lb
}

func spiffeID(td, ns, sa string) string { return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa }

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// mainInternalCluster sends connect_terminate's tunnels into main_internal.
func mainInternalCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 mainInternal,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: mainInternal,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
						AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: mainInternal},
					}}},
				}},
			}}}},
		},
	}
}

// sdsFromAgent is an SDS source for the workload certificate: the local
// agent's cluster sds-grpc (bootstrap), as Istio's proxies use.
func sdsFromAgent() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: sdsCluster}},
			}},
		}},
	}
}

// meshTLSContext: the waypoint's own certificate (SDS default) and the
// mesh roots (SDS ROOTCA over ADS), ALPN h2.
func meshTLSContext() *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name: defaultSecret, SdsConfig: sdsFromAgent(),
		}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: rootCASecret, SdsConfig: configSourceADS()},
		},
		AlpnProtocols: []string{"h2"},
	}
}

// connectOriginateCluster is Envoy's HBONE origination: the original
// destination (the endpoint's address) on port 15008, mTLS, HTTP/2.
func (b *builder) connectOriginateCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 connectOriginate,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LbConfig: &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{
			UpstreamPortOverride: wrapperspb.UInt32(hbonePort),
		}},
		TransportSocket: &corev3.TransportSocket{
			Name: "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: b.any(&tlsv3.UpstreamTlsContext{
				CommonTlsContext: meshTLSContext(),
			})},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: b.any(&httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{AllowConnect: true},
					},
				}},
			}),
		},
	}
}

// rootCA is the ROOTCA secret: the mesh roots as the validation context.
func rootCA(pem []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: rootCASecret,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: slices.Clone(pem)}},
		}},
	}
}

// encapCluster sends a stream to its original destination (the pod address
// the client dialled) through connect_originate: one internal endpoint
// without endpoint_id, as Istio's "encap". Its ambit metadata lists the
// destinations allowed and the identity each must prove; the Go waypoint
// refuses any other.
func (b *builder) encapCluster(pods []*corev1.Pod) *clusterv3.Cluster {
	var dests []any
	seen := map[netip.Addr]bool{}
	for _, p := range pods {
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		name, _ := ambient.WorkloadNameAndType(p)
		for _, a := range podAddrs(p) {
			if seen[a] {
				continue // two pods claiming one address: the first (the waypoint refuses duplicates)
			}
			seen[a] = true
			dests = append(dests, map[string]any{
				"address": a.String(), "identity": spiffeID(b.opts.TrustDomain, p.Namespace, sa),
				"workload": name, "namespace": p.Namespace,
			})
		}
	}
	md, err := structpb.NewStruct(map[string]any{"destinations": dests})
	if err != nil && b.err == nil {
		b.err = fmt.Errorf("encap metadata: %w", err)
	}
	return &clusterv3.Cluster{
		Name:                   encap,
		ClusterDiscoveryType:   &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:         durationpb.New(10 * time.Second),
		Metadata:               &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ambitMetadataKey: md}},
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{b.internalUpstream(nil)},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: encap,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
						AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: connectOriginate},
					}}},
				}},
			}}}},
		},
	}
}
