package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/pkg/hbone"
)

// The pods the waypoint serves directly (workload-addressed traffic):
// podIP is a destination of "encap"; strayIP is in the direct chains'
// prefixes but not a destination.
const (
	podIP   = "127.0.0.1"
	strayIP = "127.0.0.2"
)

// encapCluster is istiod-lite's original-destination cluster (Istio's
// "encap"): STATIC, one internal address for connect_originate without
// endpoint_id, who may be reached in filter_metadata ambit.destinations.
func encapCluster(t testing.TB) *clusterv3.Cluster {
	md, err := structpb.NewStruct(map[string]any{"destinations": []any{
		map[string]any{"address": podIP, "identity": backendID.String(), "workload": "echo-pod", "namespace": "ns"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	orig := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
		EnvoyInternalAddress: &corev3.EnvoyInternalAddress{AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "connect_originate"}}}}}}}
	return &clusterv3.Cluster{
		Name: "encap", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(10 * time.Second),
		LoadAssignment: cla("encap", orig),
		Metadata:       &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md}},
	}
}

// directChains are direct-http (detected HTTP, an inline route to encap,
// RBAC before the router) and direct-tcp, for the pods' IPs on any port.
func directChains(t testing.TB, rbacs ...*hcmv3.HttpFilter) []*listenerv3.FilterChain {
	pods := []*corev3.CidrRange{{AddressPrefix: podIP, PrefixLen: wrapperspb.UInt32(32)}, {AddressPrefix: strayIP, PrefixLen: wrapperspb.UInt32(32)}}
	route := &routev3.RouteConfiguration{Name: "encap", VirtualHosts: []*routev3.VirtualHost{{Name: "encap", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "encap"}, Timeout: durationpb.New(0)}}}}}}}
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "direct-http", RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: route},
		HttpFilters: append(append([]*hcmv3.HttpFilter{}, rbacs...), &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}})}
	return []*listenerv3.FilterChain{
		{Name: "direct-http", FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: pods, ApplicationProtocols: []string{"http/1.1", "h2c"}},
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}}},
		{Name: "direct-tcp", FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: pods},
			Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{
				TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "direct-tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "encap"}})}}}},
	}
}

// dialTarget opens an HBONE stream to the waypoint for a pod's address, as
// a client's ztunnel does for workload-addressed traffic.
func (m *mesh) dialTarget(ctx context.Context, target netip.AddrPort) (net.Conn, error) {
	return m.client.Dial(ctx, hbone.DialRequest{Source: m.clientSrc, Proxy: netip.MustParseAddrPort(m.hboneAddr.String()), Target: target,
		Expected: waypointID, Header: http.Header{"Forwarded": {"for=" + clientIP}}})
}

func (m *mesh) targetClient(target netip.AddrPort, h2c bool) *http.Client {
	c := m.httpClient(0, h2c)
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return m.dialTarget(ctx, target) }
	return c
}

// TestOriginalDestination: traffic addressed to a pod IP is served by the
// direct chains and reaches the pod through the original-destination
// cluster, over HBONE with the pod's identity; a target that is not a
// destination is refused.
func TestOriginalDestination(t *testing.T) {
	m := startMesh(t)
	m.cp.set(t, resourcev3.ClusterType, "encap", encapCluster(t))
	l := mainInternal(t, listenerOpts{})
	l.FilterChains = append(l.FilterChains, directChains(t, httpRBAC(t, rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{
		"ns[ns]-policy[deny-admin]-rule[0]": {Permissions: []*rbacv3.Permission{pathPermission("/admin")}, Principals: []*rbacv3.Principal{principalNamespace("client-ns")}}}))...)
	m.cp.set(t, resourcev3.ListenerType, "main_internal", l)

	pod := netip.AddrPortFrom(netip.MustParseAddr(podIP), m.v1.addr.Port())
	c := m.targetClient(pod, false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get("http://" + pod.String() + "/wait")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("direct chains never served the pod: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	streams := m.zt.streams.Load()
	if r := m.do(t, c, pod.String(), "/hello?x=1", nil); r.code != 200 || r.echo.Backend != "v1" || r.echo.Path != "/hello?x=1" || r.echo.Host != pod.String() {
		t.Fatalf("GET through encap: %+v", r)
	}
	if r := m.do(t, m.targetClient(pod, true), pod.String(), "/h2", nil); r.code != 200 || r.echo.Backend != "v1" || r.echo.Proto != "HTTP/2.0" {
		t.Errorf("h2c through encap: %+v", r)
	}
	if m.zt.streams.Load() == streams {
		t.Error("no HBONE stream reached the pod's ztunnel")
	}
	if _, ok := m.zt.peers.Load(waypointID.String()); !ok {
		t.Error("the pod's ztunnel did not see the waypoint's identity")
	}
	if r := m.do(t, c, pod.String(), "/admin", nil); r.code != 403 {
		t.Errorf("HTTP RBAC on direct-http: %d, want 403", r.code)
	}

	// Opaque TCP to a pod port goes through direct-tcp.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echoTarget := netip.AddrPortFrom(netip.MustParseAddr(podIP), m.tcpEcho.Port())
	conn, err := m.dialTarget(ctx, echoTarget)
	if err != nil {
		t.Fatal(err)
	}
	msg := "\x00\x01 opaque bytes for the pod\r\n"
	expectEcho(t, conn, msg, "TCP through encap")
	conn.Close()

	// A target that is not a destination: 503 for HTTP, closed for TCP;
	// the waypoint dials nothing for it.
	streams = m.zt.streams.Load()
	stray := netip.AddrPortFrom(netip.MustParseAddr(strayIP), m.v1.addr.Port())
	if r := m.do(t, m.targetClient(stray, false), stray.String(), "/", nil); r.code != 503 || !strings.Contains(r.body, "no healthy upstream") {
		t.Errorf("HTTP to a target that is not a destination: %d %q, want 503", r.code, r.body)
	}
	conn, err = m.dialTarget(ctx, netip.AddrPortFrom(netip.MustParseAddr(strayIP), m.tcpEcho.Port()))
	if err == nil {
		_, _ = io.WriteString(conn, msg)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := io.ReadFull(conn, make([]byte, len(msg))); err == nil || n > 0 {
			t.Errorf("TCP to a target that is not a destination: read %d bytes, %v", n, err)
		}
		conn.Close()
	}
	if m.zt.streams.Load() != streams {
		t.Error("the waypoint dialled a target that is not a destination")
	}

	// Metrics name the destination from ambit.destinations.
	m.waitMetrics(t, `destination_workload="echo-pod"`, []string{`destination_principal="spiffe://cluster.local/ns/ns/sa/backend"`,
		`destination_workload_namespace="ns"`, `istio_requests_total{`, `istio_tcp_connections_opened_total{`})
}
