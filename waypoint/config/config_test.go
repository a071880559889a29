package config

import (
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

func res(t *testing.T, name string, m proto.Message) *discovery.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "1", Resource: a}
}

func anyOf(t *testing.T, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func tcpChain(t *testing.T, name string, port uint32, prefixes ...string) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{}
	if port != 0 {
		m.DestinationPort = wrapperspb.UInt32(port)
	}
	for _, p := range prefixes {
		pfx := netip.MustParsePrefix(p)
		m.PrefixRanges = append(m.PrefixRanges, &corev3.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))})
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{{Name: "tcp",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(t, &tcpproxyv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: name}})}}}}
}

func hcmChain(t *testing.T, name string, port uint32, alpn []string, hcm *hcmv3.HttpConnectionManager) *listenerv3.FilterChain {
	if hcm == nil {
		hcm = &hcmv3.HttpConnectionManager{StatPrefix: name,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: name,
				ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(t, &routerv3.Router{})}}}}
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), ApplicationProtocols: alpn},
		Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(t, hcm)}}}}
}

func listener(chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{Name: MainInternal, ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		FilterChains: chains}
}

func TestChainMatch(t *testing.T) {
	s := NewStore(nil, nil)
	l := listener(
		tcpChain(t, "any-port", 0),
		tcpChain(t, "80-wide", 80, "10.0.0.0/8"),
		tcpChain(t, "80-narrow", 80, "10.96.0.10/32"),
		tcpChain(t, "80-any-ip", 80),
		hcmChain(t, "81-http", 81, []string{"http/1.1", "h2c"}, nil),
		tcpChain(t, "81-tcp", 81),
	)
	l.DefaultFilterChain = &listenerv3.FilterChain{Name: "default", Filters: tcpChain(t, "default", 0).Filters}
	if err := s.Handle(resourcev3.ListenerType, []*discovery.Resource{res(t, MainInternal, l)}, nil); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	names := func(cs []*Chain) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct{ target, want string }{
		{"10.96.0.10:80", "80-narrow"},
		{"10.96.0.11:80", "80-wide"},
		{"192.168.0.1:80", "80-any-ip"},
		{"10.96.0.10:443", "any-port"},
		{"10.96.0.10:81", "81-http,81-tcp"},
	} {
		if got := names(snap.Match(netip.MustParseAddrPort(tc.target))); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.target, got, tc.want)
		}
	}
	auto := snap.Match(netip.MustParseAddrPort("10.96.0.10:81"))
	if !NeedsDetection(auto) || Select(auto, "h2c").Name != "81-http" || Select(auto, "").Name != "81-tcp" {
		t.Error("detection picks the wrong chain")
	}
	// Without the any-port chain, an unknown port falls to the default chain.
	l.FilterChains = l.FilterChains[1:]
	if err := s.Handle(resourcev3.ListenerType, []*discovery.Resource{res(t, MainInternal, l)}, nil); err != nil {
		t.Fatal(err)
	}
	if got := names(s.Snapshot().Match(netip.MustParseAddrPort("10.96.0.10:443"))); got != "default" {
		t.Errorf("unknown port: %s, want the default chain", got)
	}
}

func TestListenerRefusals(t *testing.T) {
	router := &hcmv3.HttpFilter{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(t, &routerv3.Router{})}}
	rds := &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "r",
		ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
	for _, tc := range []struct {
		name  string
		chain *listenerv3.FilterChain
		want  string
	}{
		{"unsupported HCM field", hcmChain(t, "c", 80, nil, &hcmv3.HttpConnectionManager{StatPrefix: "c", RouteSpecifier: rds,
			HttpFilters: []*hcmv3.HttpFilter{router}, LocalReplyConfig: &hcmv3.LocalReplyConfig{}}), "local_reply_config"},
		{"no router", hcmChain(t, "c", 80, nil, &hcmv3.HttpConnectionManager{StatPrefix: "c", RouteSpecifier: rds}), "router"},
		{"unknown HTTP filter", hcmChain(t, "c", 80, nil, &hcmv3.HttpConnectionManager{StatPrefix: "c", RouteSpecifier: rds,
			HttpFilters: []*hcmv3.HttpFilter{{Name: "x", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(t, &tcpproxyv3.TcpProxy{StatPrefix: "x"})}}, router}}), "not supported"},
		{"merge_slashes", hcmChain(t, "c", 80, nil, &hcmv3.HttpConnectionManager{StatPrefix: "c", RouteSpecifier: rds,
			HttpFilters: []*hcmv3.HttpFilter{router}, MergeSlashes: true}), "merge_slashes"},
		{"transport socket", func() *listenerv3.FilterChain {
			c := tcpChain(t, "c", 80)
			c.TransportSocket = &corev3.TransportSocket{Name: "tls"}
			return c
		}(), "transport_socket"},
		{"server names", func() *listenerv3.FilterChain {
			c := tcpChain(t, "c", 80)
			c.FilterChainMatch.ServerNames = []string{"a"}
			return c
		}(), "server_names"},
	} {
		s := NewStore(nil, nil)
		err := s.Handle(resourcev3.ListenerType, []*discovery.Resource{res(t, MainInternal, listener(tc.chain))}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %q", tc.name, err, tc.want)
		}
		if s.Snapshot().Chains != nil {
			t.Errorf("%s: refused listener applied", tc.name)
		}
	}
}

func TestNACKKeepsPreviousState(t *testing.T) {
	s := NewStore(nil, nil)
	good := &routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}}}}}}}
	if err := s.Handle(resourcev3.RouteType, []*discovery.Resource{res(t, "r", good)}, nil); err != nil {
		t.Fatal(err)
	}
	bad := proto.Clone(good).(*routev3.RouteConfiguration)
	bad.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
		ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
	other := proto.Clone(good).(*routev3.RouteConfiguration)
	other.Name = "other"
	// One bad resource refuses the whole update: "other" is not applied either.
	if err := s.Handle(resourcev3.RouteType, []*discovery.Resource{res(t, "other", other), res(t, "r", bad)}, nil); err == nil || !strings.Contains(err.Error(), "hash_policy") {
		t.Fatalf("bad route accepted: %v", err)
	}
	snap := s.Snapshot()
	if snap.Routes["r"] == nil || snap.Routes["other"] != nil {
		t.Fatalf("state after NACK: %v", snap.Routes)
	}
	if err := s.Handle(resourcev3.RouteType, nil, []string{"r"}); err != nil || s.Snapshot().Routes["r"] != nil {
		t.Fatalf("removal: %v", err)
	}
}

func TestClustersAndEndpoints(t *testing.T) {
	s := NewStore(nil, nil)
	c := &clusterv3.Cluster{Name: "outbound|80||a.ns.svc.cluster.local", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: "svc-a", EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		LbPolicy:         clusterv3.Cluster_ROUND_ROBIN, ConnectTimeout: durationpb.New(2 * time.Second),
		OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3)}}
	if err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, c.Name, c)}, nil); err != nil {
		t.Fatal(err)
	}
	got := s.Snapshot().Clusters[c.Name]
	if got.ServiceName != "svc-a" || got.LeastRequest || got.ConnectTimeout != 2*time.Second || got.Service != "a.ns.svc.cluster.local" {
		t.Errorf("cluster: %+v", got)
	}
	if got.MaxRetries != 3 {
		t.Errorf("max_retries default %d, want Envoy's 3", got.MaxRetries)
	}
	if o := got.Outlier; o == nil || o.Consecutive5xx != 3 || o.EnforcingConsecutive5xx != 100 || o.BaseEjectionTime != 30*time.Second || o.MaxEjectionPercent != 10 || o.EnforcingConsecutiveGatewayFailure != 0 {
		t.Errorf("outlier defaults: %+v", got.Outlier)
	}
	ringHash := proto.Clone(c).(*clusterv3.Cluster)
	ringHash.LbPolicy = clusterv3.Cluster_RING_HASH
	if err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, c.Name, ringHash)}, nil); err == nil || !strings.Contains(err.Error(), "lb_policy") {
		t.Errorf("RING_HASH accepted: %v", err)
	}

	md, _ := structpb.NewStruct(map[string]any{"identity": "spiffe://cluster.local/ns/ns/sa/a", "workload": "a-v1", "namespace": "ns"})
	hb := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
		EnvoyInternalAddress: &corev3.EnvoyInternalAddress{AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: ConnectOriginate}, EndpointId: "10.244.0.5:8080"}}}}},
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md}}}
	plain := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}}}}
	sick := proto.Clone(plain).(*endpointv3.LbEndpoint)
	sick.HealthStatus = corev3.HealthStatus_UNHEALTHY
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "svc-a", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{hb, plain, sick}}}}
	if err := s.Handle(resourcev3.EndpointType, []*discovery.Resource{res(t, "svc-a", cla)}, nil); err != nil {
		t.Fatal(err)
	}
	eps := s.Snapshot().Assignments["svc-a"]
	if len(eps) != 2 || !eps[0].HBONE || eps[0].Address.String() != "10.244.0.5:8080" || eps[0].Identity.ServiceAccount != "a" || eps[0].Workload != "a-v1" ||
		eps[1].HBONE || eps[1].Address.String() != "10.0.0.9:80" {
		t.Errorf("endpoints: %+v", eps)
	}
	hb.GetEndpoint().GetAddress().GetEnvoyInternalAddress().EndpointId = "not-an-address"
	if err := s.Handle(resourcev3.EndpointType, []*discovery.Resource{res(t, "svc-a", cla)}, nil); err == nil {
		t.Error("bad endpoint_id accepted")
	}
}

// encapCluster is the original-destination cluster istiod-lite sends for
// workload-addressed traffic (Istio's "encap").
func encapCluster(t *testing.T, dests ...any) *clusterv3.Cluster {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{"destinations": dests})
	if err != nil {
		t.Fatal(err)
	}
	orig := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
		EnvoyInternalAddress: &corev3.EnvoyInternalAddress{AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: ConnectOriginate}}}}}}}
	return &clusterv3.Cluster{Name: "encap", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(10 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "encap", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{orig}}}},
		Metadata:       &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md}}}
}

func dest(addr, id string) map[string]any {
	return map[string]any{"address": addr, "identity": id, "workload": "echo", "namespace": "x"}
}

func TestOriginalDstCluster(t *testing.T) {
	s := NewStore(nil, nil)
	c := encapCluster(t, dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/y"), dest("fd00::8", "spiffe://cluster.local/ns/x/sa/z"),
		map[string]any{"address": "::ffff:10.244.1.9", "workload": "no-identity"})
	if err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, "encap", c)}, nil); err != nil {
		t.Fatal(err)
	}
	got := s.Snapshot().Clusters["encap"]
	if got == nil || got.EDS || len(got.Static) != 1 || !got.Static[0].OriginalDst || !got.Static[0].HBONE || got.Static[0].Address.IsValid() ||
		got.LeastRequest || got.ConnectTimeout != 10*time.Second {
		t.Fatalf("encap cluster: %+v", got)
	}
	want := map[netip.Addr]Destination{
		netip.MustParseAddr("10.244.1.8"): {Identity: identity.Identity{TrustDomain: "cluster.local", Namespace: "x", ServiceAccount: "y"}, Workload: "echo", Namespace: "x"},
		netip.MustParseAddr("fd00::8"):    {Identity: identity.Identity{TrustDomain: "cluster.local", Namespace: "x", ServiceAccount: "z"}, Workload: "echo", Namespace: "x"},
		netip.MustParseAddr("10.244.1.9"): {Workload: "no-identity"},
	}
	if !maps.Equal(got.Destinations, want) {
		t.Errorf("destinations: %v, want %v", got.Destinations, want)
	}

	mixed := proto.Clone(c).(*clusterv3.Cluster)
	lle := mixed.GetLoadAssignment().GetEndpoints()[0]
	lle.LbEndpoints = append(lle.LbEndpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}}}}})
	for _, tc := range []struct {
		name string
		c    *clusterv3.Cluster
		want string
	}{
		{"bad address", encapCluster(t, dest("10.244.1.300", "spiffe://cluster.local/ns/x/sa/y")), `destinations[0].address: "10.244.1.300" is not an IP address`},
		{"address with a port", encapCluster(t, dest("10.244.1.8:80", "spiffe://cluster.local/ns/x/sa/y")), `destinations[0].address`},
		{"no address", encapCluster(t, map[string]any{"identity": "spiffe://cluster.local/ns/x/sa/y"}), `destinations[0].address: "" is not an IP address`},
		{"bad identity", encapCluster(t, dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/y"), dest("10.244.1.9", "spiffe://cluster.local/x/y")), `destinations[1].identity`},
		{"address not a string", encapCluster(t, map[string]any{"address": 10}), `destinations[0].address: not a string`},
		{"workload not a string", encapCluster(t, map[string]any{"address": "10.244.1.8", "workload": true}), `destinations[0].workload: not a string`},
		{"entry not a struct", encapCluster(t, "10.244.1.8"), `destinations[0]: not a struct`},
		{"conflicting duplicate", encapCluster(t, dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/y"), dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/z")), `destinations[1]: 10.244.1.8 is listed twice`},
		{"mixed endpoints", mixed, `load_assignment: endpoints[0].lb_endpoints[0]: an original-destination endpoint`},
	} {
		err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, "encap", tc.c)}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `cluster "encap"`) {
			t.Errorf("%s: error %v, want one naming %q", tc.name, err, tc.want)
		}
	}
	if !maps.Equal(s.Snapshot().Clusters["encap"].Destinations, want) {
		t.Error("a refused update changed the cluster")
	}
	notList := encapCluster(t)
	notList.GetMetadata().GetFilterMetadata()["ambit"].GetFields()["destinations"] = structpb.NewStringValue("10.244.1.8")
	if err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, "encap", notList)}, nil); err == nil || !strings.Contains(err.Error(), "destinations: not a list") {
		t.Errorf("destinations not a list: %v", err)
	}
	// An identical duplicate is harmless.
	dup := encapCluster(t, dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/y"), dest("10.244.1.8", "spiffe://cluster.local/ns/x/sa/y"))
	if err := s.Handle(resourcev3.ClusterType, []*discovery.Resource{res(t, "encap", dup)}, nil); err != nil || len(s.Snapshot().Clusters["encap"].Destinations) != 1 {
		t.Errorf("identical duplicate: %v", err)
	}
}

// TestDirectChains: the chains for workload-addressed traffic (Istio's
// direct-http and direct-tcp: the served pods' IPs, no port, an inline
// route to "encap") serve a pod IP on a port without port-specific
// chains. On a port that has some, Envoy does not fall back to chains
// without a port (FilterChainManagerImpl::findFilterChain: the default
// chain), and neither does the waypoint.
func TestDirectChains(t *testing.T) {
	routerF := &hcmv3.HttpFilter{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(t, &routerv3.Router{})}}
	inline := &hcmv3.HttpConnectionManager{StatPrefix: "direct-http", HttpFilters: []*hcmv3.HttpFilter{routerF},
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "encap", VirtualHosts: []*routev3.VirtualHost{{
			Name: "encap", Domains: []string{"*"}, Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "encap"}, Timeout: durationpb.New(0)}}}}}}}}}
	pods := []*corev3.CidrRange{{AddressPrefix: "10.244.1.8", PrefixLen: wrapperspb.UInt32(32)}, {AddressPrefix: "fd00::8", PrefixLen: wrapperspb.UInt32(128)}}
	directHTTP := hcmChain(t, "direct-http", 0, []string{"http/1.1", "h2c"}, inline)
	directHTTP.FilterChainMatch.DestinationPort = nil
	directHTTP.FilterChainMatch.PrefixRanges = pods
	directTCP := tcpChain(t, "direct-tcp", 0)
	directTCP.FilterChainMatch.PrefixRanges = pods
	l := listener(tcpChain(t, "vip-80", 80, "10.96.0.10/32"), directHTTP, directTCP)
	l.DefaultFilterChain = &listenerv3.FilterChain{Name: "default", Filters: tcpChain(t, "default", 0).Filters}
	s := NewStore(nil, nil)
	if err := s.Handle(resourcev3.ListenerType, []*discovery.Resource{res(t, MainInternal, l)}, nil); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	for _, target := range []string{"10.244.1.8:8080", "[fd00::8]:9090", "10.244.1.8:1"} {
		chains := snap.Match(netip.MustParseAddrPort(target))
		if len(chains) != 2 || !NeedsDetection(chains) {
			t.Fatalf("%s: %d chains", target, len(chains))
		}
		h, tcp := Select(chains, "http/1.1"), Select(chains, "")
		if h.Name != "direct-http" || h.HTTP == nil || tcp.Name != "direct-tcp" || tcp.TCP == nil || tcp.TCP.Cluster != "direct-tcp" {
			t.Fatalf("%s: %s, %s", target, h.Name, tcp.Name)
		}
		d, ok := h.HTTP.Inline.Route(&router.Request{Authority: "10.244.1.8:8080", Method: "GET", Path: "/x", Scheme: "http"})
		if !ok || d.Cluster != "encap" || d.Timeout != 0 {
			t.Errorf("%s: inline route: %+v %v", target, d, ok)
		}
	}
	for target, want := range map[string]string{"10.244.1.9:8080": "default", "10.244.1.8:80": "default", "10.96.0.10:80": "vip-80"} {
		if got := snap.Match(netip.MustParseAddrPort(target)); len(got) != 1 || got[0].Name != want {
			t.Errorf("%s: %d chains, want %s", target, len(got), want)
		}
	}
}
