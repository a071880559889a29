package waypointxds

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestEmptyWaypoint(t *testing.T) {
	st := newState().waypoint("shop", "waypoint", "")
	res, rep := build(t, st, "shop", "waypoint")
	if len(rep.Services) != 0 {
		t.Fatalf("services %v", rep.Services)
	}
	l := listener(t, res, mainInternal)
	if len(l.GetFilterChains()) != 0 || l.GetDefaultFilterChain().GetName() != noServicesChain {
		t.Fatalf("main_internal without services: %v", l)
	}
	// The default chain refuses every connection.
	for _, r := range chainRBAC(t, l.GetDefaultFilterChain()) {
		if r.GetAction().String() != "ALLOW" || len(r.GetPolicies()) != 0 {
			t.Fatalf("default chain rbac %v", r)
		}
	}
	for _, want := range []struct{ typ, name string }{
		{resource.ListenerType, connectTerminate}, {resource.ListenerType, connectOriginate},
		{resource.ClusterType, mainInternal}, {resource.ClusterType, connectOriginate}, {resource.SecretType, rootCASecret},
	} {
		if res[want.typ][want.name] == nil {
			t.Errorf("missing %s %q", want.typ, want.name)
		}
	}
}

func TestRootCASecret(t *testing.T) {
	res, _ := build(t, newState().waypoint("shop", "waypoint", ""), "shop", "waypoint")
	s := res[resource.SecretType][rootCASecret].(*tlsv3.Secret)
	if got := s.GetValidationContext().GetTrustedCa().GetInlineBytes(); string(got) != string(testRoot) {
		t.Fatalf("ROOTCA trusted_ca = %q", got)
	}
	if len(res[resource.SecretType]) != 1 {
		t.Fatalf("secrets: %v", res[resource.SecretType])
	}
}

func TestFixedListenersAndClusters(t *testing.T) {
	res, _ := build(t, newState().waypoint("shop", "waypoint", ""), "shop", "waypoint")
	ct := listener(t, res, connectTerminate)
	if sa := ct.GetAddress().GetSocketAddress(); sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 15008 {
		t.Errorf("connect_terminate address %v", sa)
	}
	fc := ct.GetFilterChains()[0]
	dtls := &tlsv3.DownstreamTlsContext{}
	if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(dtls); err != nil {
		t.Fatal(err)
	}
	ctx := dtls.GetCommonTlsContext()
	if !dtls.GetRequireClientCertificate().GetValue() || ctx.GetTlsParams().GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 ||
		ctx.GetTlsCertificateSdsSecretConfigs()[0].GetName() != "default" ||
		ctx.GetTlsCertificateSdsSecretConfigs()[0].GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "sds-grpc" ||
		ctx.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" || ctx.GetValidationContextSdsSecretConfig().GetSdsConfig().GetAds() == nil {
		t.Errorf("connect_terminate TLS: %v", dtls)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	route := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
	if route.GetMatch().GetConnectMatcher() == nil || route.GetRoute().GetCluster() != mainInternal ||
		route.GetRoute().GetUpgradeConfigs()[0].GetUpgradeType() != "CONNECT" ||
		!hcm.GetHttp2ProtocolOptions().GetAllowConnect() || hcm.GetUpgradeConfigs()[0].GetUpgradeType() != "CONNECT" {
		t.Errorf("connect_terminate HCM: %v", hcm)
	}

	co := listener(t, res, connectOriginate)
	tp := &tcpproxyv3.TcpProxy{}
	if err := co.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	if co.GetInternalListener() == nil || tp.GetCluster() != connectOriginate || tp.GetTunnelingConfig().GetHostname() != "%DOWNSTREAM_LOCAL_ADDRESS%" {
		t.Errorf("connect_originate listener: %v / %v", co, tp)
	}
	cc := res[resource.ClusterType][connectOriginate].(*clusterv3.Cluster)
	utls := &tlsv3.UpstreamTlsContext{}
	if err := cc.GetTransportSocket().GetTypedConfig().UnmarshalTo(utls); err != nil {
		t.Fatal(err)
	}
	if cc.GetType() != clusterv3.Cluster_ORIGINAL_DST || cc.GetOriginalDstLbConfig().GetUpstreamPortOverride().GetValue() != 15008 ||
		!slices.Equal(utls.GetCommonTlsContext().GetAlpnProtocols(), []string{"h2"}) ||
		utls.GetCommonTlsContext().GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
		t.Errorf("connect_originate cluster: %v", cc)
	}
	mi := res[resource.ClusterType][mainInternal].(*clusterv3.Cluster)
	ep := mi.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetEnvoyInternalAddress()
	if mi.GetType() != clusterv3.Cluster_STATIC || ep.GetServerListenerName() != mainInternal {
		t.Errorf("main_internal cluster: %v", mi)
	}
}

func TestChainsPerProtocol(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	st.service("shop", "svc", "10.96.0.10", nil,
		port("http", 80, ""), port("http-web", 81, ""), port("grpc-api", 82, ""), port("anything", 83, "http2"),
		port("x", 84, "kubernetes.io/h2c"),
		port("tcp-db", 90, ""), port("tls", 91, ""), port("mongo", 92, ""), port("y", 93, "mysql"),
		port("", 100, ""), port("web", 101, ""), port("z", 102, "custom"))
	udp := port("udp", 53, "")
	udp.Protocol = corev1.ProtocolUDP
	st.services[len(st.services)-1].Spec.Ports = append(st.services[len(st.services)-1].Spec.Ports, udp)
	res, _ := build(t, st, "shop", "waypoint")
	host := "svc.shop.svc.cluster.local"
	var want []string
	for _, p := range []string{"80", "81", "82", "83", "84"} {
		want = append(want, "inbound-vip|"+p+"|http|"+host)
	}
	for _, p := range []string{"90", "91", "92", "93"} {
		want = append(want, "inbound-vip|"+p+"|tcp|"+host)
	}
	for _, p := range []string{"100", "101", "102"} {
		want = append(want, "inbound-vip|"+p+"|http|"+host, "inbound-vip|"+p+"|tcp|"+host)
	}
	if got := chainNames(t, res); !slices.Equal(got, want) {
		t.Fatalf("chains\n got %v\nwant %v", got, want)
	}
	l := listener(t, res, mainInternal)
	var lf []string
	for _, f := range l.GetListenerFilters() {
		lf = append(lf, f.GetName())
	}
	if !slices.Equal(lf, []string{filterOriginalDst, filterHTTPInspector}) {
		t.Errorf("listener filters %v", lf)
	}
	// HTTP chain: match, HCM with RDS and the contract's settings.
	fc := chain(t, res, "inbound-vip|80|http|"+host)
	m := fc.GetFilterChainMatch()
	if m.GetDestinationPort().GetValue() != 80 || len(m.GetPrefixRanges()) != 1 || m.GetPrefixRanges()[0].GetAddressPrefix() != "10.96.0.10" ||
		m.GetPrefixRanges()[0].GetPrefixLen().GetValue() != 32 || len(m.GetApplicationProtocols()) != 0 {
		t.Errorf("http chain match %v", m)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if hcm.GetRds().GetRouteConfigName() != "inbound-vip|80|http|"+host || hcm.GetRds().GetConfigSource().GetAds() == nil ||
		!hcm.GetNormalizePath().GetValue() || hcm.GetMergeSlashes() || hcm.GetUseRemoteAddress().GetValue() ||
		hcm.GetStatPrefix() != fc.GetName() || len(hcm.GetHttpFilters()) != 1 || hcm.GetHttpFilters()[0].GetName() != filterHTTPRouter {
		t.Errorf("http chain HCM %v", hcm)
	}
	if res[resource.RouteType][hcm.GetRds().GetRouteConfigName()] == nil {
		t.Errorf("no route configuration for %s", fc.GetName())
	}
	// TCP chain: tcp_proxy to the port's cluster; no route configuration.
	fc = chain(t, res, "inbound-vip|90|tcp|"+host)
	tp := &tcpproxyv3.TcpProxy{}
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
		t.Fatal(err)
	}
	if tp.GetCluster() != "outbound|90||"+host || tp.GetStatPrefix() != fc.GetName() {
		t.Errorf("tcp chain %v", tp)
	}
	if res[resource.RouteType]["inbound-vip|90|http|"+host] != nil {
		t.Error("route configuration for a TCP port")
	}
	// Auto: an HTTP chain for the detected protocols, a TCP chain without.
	if alpn := chain(t, res, "inbound-vip|100|http|"+host).GetFilterChainMatch().GetApplicationProtocols(); !slices.Equal(alpn, []string{"http/1.1", "h2c"}) {
		t.Errorf("auto http chain ALPN %v", alpn)
	}
	if alpn := chain(t, res, "inbound-vip|100|tcp|"+host).GetFilterChainMatch().GetApplicationProtocols(); len(alpn) != 0 {
		t.Errorf("auto tcp chain ALPN %v", alpn)
	}
	// Every TCP port has a cluster; UDP none.
	for _, p := range []string{"80", "90", "100", "102"} {
		if res[resource.ClusterType]["outbound|"+p+"||"+host] == nil || res[resource.EndpointType]["outbound|"+p+"||"+host] == nil {
			t.Errorf("no cluster/endpoints for port %s", p)
		}
	}
	if res[resource.ClusterType]["outbound|53||"+host] != nil {
		t.Error("cluster for a UDP port")
	}
}

func TestNoHTTPInspectorWithoutAutoPorts(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	st.service("shop", "svc", "10.96.0.10", nil, port("http", 80, ""), port("tcp", 90, ""))
	st.service("shop", "headless", "None", nil, port("http", 80, ""))
	res, rep := build(t, st, "shop", "waypoint")
	for _, f := range listener(t, res, mainInternal).GetListenerFilters() {
		if f.GetName() == filterHTTPInspector {
			t.Error("http_inspector without a port to detect")
		}
	}
	// The headless Service is served (clusters) but has no VIP chain.
	if !slices.Contains(rep.Services, types.NamespacedName{Namespace: "shop", Name: "headless"}) {
		t.Errorf("services %v", rep.Services)
	}
	for _, n := range chainNames(t, res) {
		if strings.Contains(n, "headless") {
			t.Errorf("chain %s for a headless Service", n)
		}
	}
}

func TestDualStackVIPs(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	s := st.service("shop", "svc", "10.96.0.10", nil, port("http", 80, ""))
	s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::10"}
	res, _ := build(t, st, "shop", "waypoint")
	var got []string
	for _, r := range chain(t, res, "inbound-vip|80|http|svc.shop.svc.cluster.local").GetFilterChainMatch().GetPrefixRanges() {
		got = append(got, r.GetAddressPrefix()+"/"+strconv.FormatUint(uint64(r.GetPrefixLen().GetValue()), 10))
	}
	if !slices.Equal(got, []string{"10.96.0.10/32", "fd00::10/128"}) {
		t.Fatalf("prefix ranges %v", got)
	}
}

func TestClustersAndEndpoints(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	svc := st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""))
	es := st.endpoints(svc, "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4")
	es.Endpoints[2].Conditions.Ready = ptr(false) // not ready: left out
	es.Endpoints[3].Conditions = discoveryv1.EndpointConditions{}
	es.Endpoints[3].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "reviews-4"}
	st.pod("10.1.0.1", "shop", "reviews-1", "bookinfo-reviews", true)
	st.pod("10.1.0.2", "shop", "reviews-2", "bookinfo-reviews", false)
	res, _ := build(t, st, "shop", "waypoint")
	name := "outbound|9080||reviews.shop.svc.cluster.local"

	c := res[resource.ClusterType][name].(*clusterv3.Cluster)
	if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetServiceName() != name || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil ||
		c.GetLbPolicy() != clusterv3.Cluster_LEAST_REQUEST || c.GetConnectTimeout().AsDuration().Seconds() != 10 ||
		c.GetOutlierDetection().GetConsecutive_5Xx().GetValue() != 5 || c.GetOutlierDetection().GetConsecutiveGatewayFailure().GetValue() != 5 ||
		c.GetOutlierDetection().GetInterval().AsDuration().Seconds() != 5 || c.GetOutlierDetection().GetBaseEjectionTime().AsDuration().Seconds() != 30 ||
		c.GetOutlierDetection().GetMaxEjectionPercent().GetValue() != 50 || c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey] == nil {
		t.Errorf("cluster %v", c)
	}
	tsm := c.GetTransportSocketMatches()
	if len(tsm) != 1 || tsm[0].GetName() != "hbone" || tsm[0].GetMatch().GetFields()["tunnel"].GetStringValue() != "hbone" ||
		tsm[0].GetTransportSocket().GetName() != "envoy.transport_sockets.internal_upstream" {
		t.Errorf("transport socket matches %v", tsm)
	}

	cla := res[resource.EndpointType][name].(*endpointv3.ClusterLoadAssignment)
	lbs := cla.GetEndpoints()[0].GetLbEndpoints()
	if len(lbs) != 3 {
		t.Fatalf("endpoints %v", lbs)
	}
	// Captured: HBONE through connect_originate, with identity.
	hb := lbs[0]
	ia := hb.GetEndpoint().GetAddress().GetEnvoyInternalAddress()
	if ia.GetServerListenerName() != connectOriginate || ia.GetEndpointId() != "10.1.0.1:10080" {
		t.Errorf("hbone endpoint address %v", hb.GetEndpoint().GetAddress())
	}
	fm := hb.GetMetadata().GetFilterMetadata()
	if fm[transportSocketMatchKey].GetFields()["tunnel"].GetStringValue() != "hbone" ||
		fm["ambit"].GetFields()["identity"].GetStringValue() != "spiffe://cluster.local/ns/shop/sa/bookinfo-reviews" ||
		fm["ambit"].GetFields()["workload"].GetStringValue() != "reviews-1" || fm["ambit"].GetFields()["namespace"].GetStringValue() != "shop" {
		t.Errorf("hbone endpoint metadata %v", fm)
	}
	// Not captured: a plain address on the target port, no identity.
	pl := lbs[1]
	sa := pl.GetEndpoint().GetAddress().GetSocketAddress()
	fm = pl.GetMetadata().GetFilterMetadata()
	if sa.GetAddress() != "10.1.0.2" || sa.GetPortValue() != 10080 || fm[transportSocketMatchKey] != nil ||
		fm["ambit"].GetFields()["identity"] != nil || fm["ambit"].GetFields()["workload"].GetStringValue() != "reviews-2" {
		t.Errorf("plain endpoint %v", pl)
	}
	// Unknown to State, ready unset (= ready): plain, named by its target
	// reference.
	un := lbs[2]
	if un.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() != "10.1.0.4" ||
		un.GetMetadata().GetFilterMetadata()["ambit"].GetFields()["workload"].GetStringValue() != "reviews-4" {
		t.Errorf("unknown endpoint %v", un)
	}
}

func TestEndpointTargetPortByName(t *testing.T) {
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").waypoint("shop", "waypoint", "")
	svc := st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""), port("metrics", 9090, ""))
	// Two slices (IPv4, and IPv6 with another target port): each
	// endpoint gets its own slice's target port.
	st.endpoints(svc, "10.1.0.1")
	es := st.endpoints(svc, "fd00::1")
	es.Ports[0].Port = ptr(int32(8080))
	st.pod("fd00::1", "shop", "r6", "sa", true)
	res, _ := build(t, st, "shop", "waypoint")
	cla := res[resource.EndpointType]["outbound|9080||reviews.shop.svc.cluster.local"].(*endpointv3.ClusterLoadAssignment)
	var got []string
	for _, lb := range cla.GetEndpoints()[0].GetLbEndpoints() {
		a := lb.GetEndpoint().GetAddress()
		if ia := a.GetEnvoyInternalAddress(); ia != nil {
			got = append(got, ia.GetEndpointId())
		} else {
			got = append(got, a.GetSocketAddress().GetAddress()+":"+strconv.FormatUint(uint64(a.GetSocketAddress().GetPortValue()), 10))
		}
	}
	if !slices.Equal(got, []string{"10.1.0.1:10080", "[fd00::1]:8080"}) {
		t.Fatalf("endpoints %v", got)
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	st := randomState(7, 20)
	a, ra := build(t, st, "ns0", "waypoint")
	for i := range 3 {
		// Shuffle State's lists: the output must not depend on their order.
		slices.Reverse(st.services)
		slices.Reverse(st.policies)
		slices.Reverse(st.http)
		b, rb := build(t, st, "ns0", "waypoint")
		for typ := range a {
			for name, m := range a[typ] {
				if !proto.Equal(m, b[typ][name]) {
					t.Fatalf("run %d: %s %q differs", i, typ, name)
				}
			}
			if len(a[typ]) != len(b[typ]) {
				t.Fatalf("run %d: %s count differs", i, typ)
			}
		}
		if len(ra.RouteStatuses) != len(rb.RouteStatuses) || !slices.Equal(ra.Services, rb.Services) {
			t.Fatalf("run %d: report differs", i)
		}
	}
}
