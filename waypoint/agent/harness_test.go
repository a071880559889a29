package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
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
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	pb "istio.io/api/security/v1alpha1"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// The mesh the tests build: one Service "echo" with VIP 10.96.0.10 whose
// ports are HTTP (80), TCP (9000), auto-detected (7000) and gRPC (50051);
// backends behind a "ztunnel" HBONE server; a client pod identity.
const (
	vip         = "10.96.0.10"
	echoHost    = "echo.ns.svc.cluster.local"
	clientIP    = "10.244.1.5"
	routeName   = "inbound-vip|80|http|" + echoHost
	clusterV1   = "outbound|80||" + echoHost
	clusterV2   = "outbound|80||echo-v2.ns.svc.cluster.local"
	clusterMir  = "outbound|80||mirror.ns.svc.cluster.local"
	clusterFlk  = "outbound|80||flaky.ns.svc.cluster.local"
	clusterOut  = "outbound|80||outlier.ns.svc.cluster.local"
	clusterTCP  = "outbound|9000||" + echoHost
	clusterAut  = "outbound|7000||" + echoHost
	clusterGRP  = "outbound|50051||" + echoHost
	clusterDead = "outbound|80||dead.ns.svc.cluster.local"
)

var (
	clientID   = identity.Identity{TrustDomain: "cluster.local", Namespace: "client-ns", ServiceAccount: "client-sa"}
	backendID  = identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "backend"}
	waypointID = identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "waypoint"}
)

// controlPlane is an in-process istiod-lite stand-in: go-control-plane's
// delta ADS server over one linear cache per type, and a CA service.
type controlPlane struct {
	caches map[string]*cachev3.LinearCache
	ca     *ca.CA
	addr   string
	// tlsCAPEM is the CA of the server's TLS certificate (TLS mode only).
	tlsCAPEM []byte
	tokens   sync.Map // "method token" -> true

	mu    sync.Mutex
	nacks []string
}

type caService struct {
	pb.UnimplementedIstioCertificateServiceServer
	ca *ca.CA
}

func (s *caService) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	issued, err := s.ca.Sign([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var chain []string
	for _, c := range issued.Chain {
		chain = append(chain, string(pemutil.EncodeCertificates([]*x509.Certificate{c})))
	}
	return &pb.IstioCertificateResponse{CertChain: append(chain, string(s.ca.RootsPEM()))}, nil
}

// startControlPlaneTLS serves over TLS (a server certificate for
// "localhost" from a throwaway CA) and records the bearer tokens it gets,
// as istiod-lite's port 15012 does.
func startControlPlaneTLS(t testing.TB, useTLS bool) *controlPlane {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{caches: map[string]*cachev3.LinearCache{}, ca: authority}
	caches := map[string]cachev3.Cache{}
	for _, tu := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.SecretType, workloadv1.AddressTypeURL} {
		c := cachev3.NewLinearCache(tu)
		cp.caches[tu] = c
		caches[tu] = c
	}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, mux, serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				cp.mu.Lock()
				cp.nacks = append(cp.nacks, d.GetMessage())
				cp.mu.Unlock()
			}
			return nil
		},
	})
	record := func(ctx context.Context, method string) {
		md, _ := metadata.FromIncomingContext(ctx)
		for _, v := range md.Get("authorization") {
			cp.tokens.Store(method+" "+v, true)
		}
	}
	opts := []grpc.ServerOption{
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}),
	}
	if useTLS {
		cert, caPEM := localhostCert(t)
		cp.tlsCAPEM = caPEM
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	}
	g := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(g, srv)
	pb.RegisterIstioCertificateServiceServer(g, &caService{ca: authority})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = ln.Addr().String()
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(func() { g.Stop(); cancel() })
	return cp
}

// localhostCert is a server certificate for "localhost" and its CA's PEM.
func localhostCert(t testing.TB) (tls.Certificate, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pemutil.EncodeCertificates([]*x509.Certificate{leaf})
}

func (cp *controlPlane) set(t testing.TB, typeURL, name string, m proto.Message) {
	t.Helper()
	if err := cp.caches[typeURL].UpdateResource(name, m.(types.Resource)); err != nil {
		t.Fatal(err)
	}
}

func (cp *controlPlane) nackCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.nacks)
}

func (cp *controlPlane) lastNack() string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if len(cp.nacks) == 0 {
		return ""
	}
	return cp.nacks[len(cp.nacks)-1]
}

func (cp *controlPlane) source(t testing.TB, id identity.Identity) *workloadcert.Source {
	t.Helper()
	src := workloadcert.NewSource(id, cp.ca, workloadcert.Options{TTL: time.Hour, Logger: quietLog()})
	if err := src.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	return src
}

func (cp *controlPlane) bundle(t testing.TB) *mtls.Bundle {
	b, err := mtls.NewBundle("cluster.local", cp.ca.Roots())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ztunnelSide is the destination node's ztunnel: HBONE in, plain TCP to
// the target.
type ztunnelSide struct {
	addr    string
	streams atomic.Int64
	peers   sync.Map // identity string -> true
}

func startZtunnel(t testing.TB, cp *controlPlane, id identity.Identity) *ztunnelSide {
	z := &ztunnelSide{}
	src := cp.source(t, id)
	srv := hbone.NewServer(mtls.ServerConfig(src, cp.bundle(t)), hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) error {
		z.streams.Add(1)
		z.peers.Store(req.Peer.String(), true)
		up, err := net.Dial("tcp", req.Target.String())
		if err != nil {
			return hbone.Errorf(503, "%v", err)
		}
		defer up.Close()
		c, err := req.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		_, _, _ = hbone.Proxy(c, up)
		return nil
	}), hbone.ServerOptions{Logger: quietLog()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Close)
	return z
}

func quietLog() *slog.Logger {
	if os.Getenv("WAYPOINT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backend is an HTTP/1.1 + h2c server that echoes what it received.
type backend struct {
	name  string
	addr  netip.AddrPort
	hits  atomic.Int64
	mu    sync.Mutex
	last  *http.Request
	seen  chan *http.Request
	serve func(w http.ResponseWriter, r *http.Request) bool // true: handled
}

type echoReply struct {
	Backend string      `json:"backend"`
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	Host    string      `json:"host"`
	Proto   string      `json:"proto"`
	Header  http.Header `json:"header"`
	Body    string      `json:"body"`
}

func startBackend(t testing.TB, name string) *backend {
	b := &backend{name: name, seen: make(chan *http.Request, 100)}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{Protocols: protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.last = r
		b.mu.Unlock()
		select {
		case b.seen <- r:
		default:
		}
		if b.serve != nil && b.serve(w, r) {
			return
		}
		if strings.HasPrefix(r.URL.Path, "/drip") {
			for i := range 6 { // a chunk every 100ms: never idle for 250ms
				fmt.Fprintf(w, "chunk %d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		if strings.HasPrefix(r.URL.Path, "/timeout") || strings.HasPrefix(r.URL.Path, "/idle") {
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Backend", name)
		_ = json.NewEncoder(w).Encode(echoReply{Backend: name, Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Proto: r.Proto, Header: r.Header, Body: string(body)})
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = netip.MustParseAddrPort(ln.Addr().String())
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return b
}

// mustAny packs a message.
func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func hboneEndpoint(ap netip.AddrPort, id identity.Identity, workload string) *endpointv3.LbEndpoint {
	md, _ := structpb.NewStruct(map[string]any{"identity": id.String(), "workload": workload, "namespace": "ns"})
	tun, _ := structpb.NewStruct(map[string]any{"tunnel": "hbone"})
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
			EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
				AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: "connect_originate"},
				EndpointId:           ap.String(),
			}}}}},
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md, "envoy.transport_socket_match": tun}},
	}
}

func socketEndpoint(ap netip.AddrPort, workload string) *endpointv3.LbEndpoint {
	md, _ := structpb.NewStruct(map[string]any{"workload": workload, "namespace": "ns"})
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}}},
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md}},
	}
}

func cla(name string, eps ...*endpointv3.LbEndpoint) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

// edsCluster follows the contract: EDS over ADS, LEAST_REQUEST, 10s
// connect timeout, outlier detection.
func edsCluster(name string, od *clusterv3.OutlierDetection) *clusterv3.Cluster {
	if od == nil {
		od = &clusterv3.OutlierDetection{
			Consecutive_5Xx: wrapperspb.UInt32(5), ConsecutiveGatewayFailure: wrapperspb.UInt32(5),
			Interval: durationpb.New(5 * time.Second), BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50),
		}
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}},
		LbPolicy:         clusterv3.Cluster_LEAST_REQUEST,
		ConnectTimeout:   durationpb.New(10 * time.Second),
		OutlierDetection: od,
	}
}

func principalExact(id string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key: "io.istio.peer_principal", Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}}}}}
}

func principalNamespace(ns string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_FilterState{FilterState: &matcherv3.FilterStateMatcher{
		Key: "io.istio.peer_principal", Matcher: &matcherv3.FilterStateMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: "spiffe://[^/]+/ns/" + ns + "/sa/[^/]+"}}}}}}}
}

func pathPermission(prefix string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{
		Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}}}}}}
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

// httpRBAC is one envoy.filters.http.rbac filter.
func httpRBAC(t testing.TB, action rbacv3.RBAC_Action, policies map[string]*rbacv3.Policy) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{
		TypedConfig: mustAny(t, &rbachttpv3.RBAC{Rules: &rbacv3.RBAC{Action: action, Policies: policies}})}}
}

func httpChain(t testing.TB, name string, port uint32, protos []string, route string, rbacs ...*hcmv3.HttpFilter) *listenerv3.FilterChain {
	return httpChainWS(t, name, port, protos, route, false, rbacs...)
}

func httpChainWS(t testing.TB, name string, port uint32, protos []string, route string, websocket bool, rbacs ...*hcmv3.HttpFilter) *listenerv3.FilterChain {
	filters := append(append([]*hcmv3.HttpFilter{}, rbacs...), &hcmv3.HttpFilter{Name: "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}})
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route, ConfigSource: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}}},
		HttpFilters:      filters,
		NormalizePath:    wrapperspb.Bool(true),
		MergeSlashes:     false,
		UseRemoteAddress: wrapperspb.Bool(false),
	}
	if websocket {
		hcm.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
	}
	return &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port),
			PrefixRanges: []*corev3.CidrRange{{AddressPrefix: vip, PrefixLen: wrapperspb.UInt32(32)}}, ApplicationProtocols: protos},
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}},
	}
}

func tcpChain(t testing.TB, name string, port uint32, cluster string, rbacs ...*rbacv3.RBAC) *listenerv3.FilterChain {
	var filters []*listenerv3.Filter
	for _, r := range rbacs {
		filters = append(filters, &listenerv3.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{
			TypedConfig: mustAny(t, &rbacnetv3.RBAC{Rules: r, StatPrefix: "tcp."})}})
	}
	filters = append(filters, &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{
		TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})}})
	return &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port),
			PrefixRanges: []*corev3.CidrRange{{AddressPrefix: vip, PrefixLen: wrapperspb.UInt32(32)}}},
		Filters: filters,
	}
}

// listenerOpts vary main_internal per test.
type listenerOpts struct {
	httpRBAC  []*hcmv3.HttpFilter
	tcpRBAC   []*rbacv3.RBAC
	websocket bool
}

func mainInternal(t testing.TB, o listenerOpts) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:              "main_internal",
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: "envoy.filters.listener.original_dst", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(t, &originaldstv3.OriginalDst{})}},
			{Name: "envoy.filters.listener.http_inspector", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(t, &httpinspectorv3.HttpInspector{})}},
		},
		FilterChains: []*listenerv3.FilterChain{
			httpChainWS(t, "inbound-vip|80|http|"+echoHost, 80, nil, routeName, o.websocket, o.httpRBAC...),
			tcpChain(t, "inbound-vip|9000|tcp|"+echoHost, 9000, clusterTCP, o.tcpRBAC...),
			httpChain(t, "inbound-vip|7000|http|"+echoHost, 7000, []string{"http/1.1", "h2c"}, "inbound-vip|7000|http|"+echoHost),
			tcpChain(t, "inbound-vip|7000|tcp|"+echoHost, 7000, clusterTCP),
			httpChain(t, "inbound-vip|50051|http|"+echoHost, 50051, nil, "inbound-vip|50051|http|"+echoHost),
		},
	}
}

func clusterRoute(prefix, cluster string) *routev3.Route {
	return &routev3.Route{Name: prefix, Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}
}

// grpcRoute sends gRPC requests (content-type application/grpc) to cluster.
func grpcRoute(cluster string) *routev3.Route {
	return &routev3.Route{Name: "grpc", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}
}

func vhost(port int, routes ...*routev3.Route) *routev3.VirtualHost {
	p := fmt.Sprint(port)
	return &routev3.VirtualHost{Name: echoHost + ":" + p, Domains: []string{echoHost, echoHost + ":" + p, "echo.ns.svc", "echo.ns", vip, vip + ":" + p}, Routes: routes}
}

// mainRoutes is the route table of port 80.
func mainRoutes() *routev3.RouteConfiguration {
	hv := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	timeout := clusterRoute("/timeout", clusterV1)
	timeout.GetRoute().Timeout = durationpb.New(300 * time.Millisecond)
	retry := clusterRoute("/retry", clusterFlk)
	retry.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(5 * time.Millisecond)}}
	mirror := clusterRoute("/mirror", clusterV1)
	mirror.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: clusterMir}}
	mut := clusterRoute("/mut", clusterV1)
	mut.RequestHeadersToAdd = []*corev3.HeaderValueOption{hv("x-added", "yes")}
	mut.RequestHeadersToRemove = []string{"x-remove-me"}
	mut.ResponseHeadersToAdd = []*corev3.HeaderValueOption{hv("x-resp", "r")}
	split := &routev3.Route{Name: "split", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/split"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
			Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: clusterV1, Weight: wrapperspb.UInt32(50)}, {Name: clusterV2, Weight: wrapperspb.UInt32(50)}}}}}}}
	byHeader := &routev3.Route{Name: "v2-header", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
		Headers: []*routev3.HeaderMatcher{{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "v2"}}}}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterV2}}}}
	redirect := &routev3.Route{Name: "redirect", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/redirect"}},
		Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "example.com", PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/new"},
			ResponseCode: routev3.RedirectAction_MOVED_PERMANENTLY}}}
	direct := &routev3.Route{Name: "direct", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/direct"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 418, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "teapot"}}}}}
	perTry := clusterRoute("/pertry", clusterFlk)
	perTry.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		PerTryTimeout: durationpb.New(150 * time.Millisecond), RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(5 * time.Millisecond)}}
	perTryIdle := clusterRoute("/ptidle", clusterFlk)
	perTryIdle.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2),
		PerTryIdleTimeout: durationpb.New(150 * time.Millisecond), RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(5 * time.Millisecond)}}
	connFail := clusterRoute("/connfail", clusterDead)
	connFail.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "connect-failure", NumRetries: wrapperspb.UInt32(3),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAnyNoT(&previoushostsv3.PreviousHostsPredicate{})}}},
		HostSelectionRetryMaxAttempts: 3,
		RetryBackOff:                  &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	idle := clusterRoute("/idle", clusterV1)
	idle.GetRoute().Timeout = durationpb.New(0)
	idle.GetRoute().IdleTimeout = durationpb.New(250 * time.Millisecond)
	drip := clusterRoute("/drip", clusterV1)
	drip.GetRoute().Timeout = durationpb.New(0)
	drip.GetRoute().IdleTimeout = durationpb.New(250 * time.Millisecond)
	invalid := clusterRoute("/invalid-backend", "gamma-invalid-backend")
	invalid.GetRoute().ClusterNotFoundResponseCode = routev3.RouteAction_INTERNAL_SERVER_ERROR
	exactV2 := &routev3.Route{Name: "exact-v2", Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/v2only"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterV2}}}}
	return &routev3.RouteConfiguration{Name: routeName, VirtualHosts: []*routev3.VirtualHost{vhost(80,
		redirect, direct, exactV2, split, timeout, idle, drip, perTry, perTryIdle, retry, connFail, mirror, mut, invalid,
		clusterRoute("/outlier", clusterOut), byHeader, clusterRoute("/", clusterV1))}}
}

// mesh is a running waypoint with its control plane, backends and client.
type mesh struct {
	t        testing.TB
	cp       *controlPlane
	zt       *ztunnelSide
	v1, v2   *backend
	mirror   *backend
	flaky    *backend
	bad, ok  *backend
	tcpEcho  netip.AddrPort
	grpcAddr netip.AddrPort

	hboneAddr, monAddr, adminAddr net.Addr
	client                        *hbone.Client
	clientSrc                     *workloadcert.Source
	ready                         atomic.Bool
	cancel                        context.CancelFunc
	done                          chan error
}

func startMesh(t testing.TB) *mesh { return startMeshWith(t, false) }

// startMeshWith runs the waypoint as its Deployment does when
// productionDial is set: TLS to the control plane verified by the root
// file, and the ServiceAccount token file on every RPC.
func startMeshWith(t testing.TB, productionDial bool) *mesh {
	m := &mesh{t: t, cp: startControlPlaneTLS(t, productionDial), done: make(chan error, 1)}
	m.zt = startZtunnel(t, m.cp, backendID)
	m.v1, m.v2, m.mirror, m.flaky = startBackend(t, "v1"), startBackend(t, "v2"), startBackend(t, "mirror"), startBackend(t, "flaky")
	m.bad, m.ok = startBackend(t, "bad"), startBackend(t, "ok")
	m.bad.serve = func(w http.ResponseWriter, r *http.Request) bool { w.WriteHeader(503); return true }
	m.tcpEcho = startTCPEcho(t)
	m.grpcAddr = startGRPC(t)

	cp := m.cp
	cp.set(t, resourcev3.SecretType, "ROOTCA", &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: cp.ca.RootsPEM()}}}}})
	for name, eps := range map[string][]*endpointv3.LbEndpoint{
		clusterV1:  {hboneEndpoint(m.v1.addr, backendID, "echo-v1")},
		clusterV2:  {socketEndpoint(m.v2.addr, "echo-v2")},
		clusterMir: {hboneEndpoint(m.mirror.addr, backendID, "mirror")},
		clusterFlk: {hboneEndpoint(m.flaky.addr, backendID, "flaky")},
		clusterOut: {hboneEndpoint(m.bad.addr, backendID, "bad"), hboneEndpoint(m.ok.addr, backendID, "ok")},
		clusterTCP: {hboneEndpoint(m.tcpEcho, backendID, "tcp-echo")},
		clusterAut: {hboneEndpoint(m.v1.addr, backendID, "echo-v1")},
		clusterGRP: {hboneEndpoint(m.grpcAddr, backendID, "grpc")},
		// One endpoint refuses connections (a closed port), one serves.
		clusterDead: {socketEndpoint(closedPort(t), "dead"), socketEndpoint(m.v2.addr, "echo-v2")},
	} {
		var od *clusterv3.OutlierDetection
		if name == clusterOut {
			od = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), Interval: durationpb.New(time.Second),
				BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50)}
		}
		cp.set(t, resourcev3.ClusterType, name, edsCluster(name, od))
		cp.set(t, resourcev3.EndpointType, name, cla(name, eps...))
	}
	cp.set(t, resourcev3.RouteType, routeName, mainRoutes())
	cp.set(t, resourcev3.RouteType, "inbound-vip|7000|http|"+echoHost, &routev3.RouteConfiguration{Name: "inbound-vip|7000|http|" + echoHost,
		VirtualHosts: []*routev3.VirtualHost{vhost(7000, grpcRoute(clusterGRP), clusterRoute("/", clusterAut))}})
	cp.set(t, resourcev3.RouteType, "inbound-vip|50051|http|"+echoHost, &routev3.RouteConfiguration{Name: "inbound-vip|50051|http|" + echoHost,
		VirtualHosts: []*routev3.VirtualHost{vhost(50051, clusterRoute("/", clusterGRP))}})
	cp.set(t, resourcev3.ListenerType, "main_internal", mainInternal(t, listenerOpts{}))
	cp.set(t, workloadv1.AddressTypeURL, "client", &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
		Uid: "Kubernetes//Pod/client-ns/client-abc", Name: "client-abc", Namespace: "client-ns", WorkloadName: "client",
		CanonicalName: "client", ServiceAccount: "client-sa", Addresses: [][]byte{netip.MustParseAddr(clientIP).AsSlice()}}}})

	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(rootFile, append(cp.ca.RootsPEM(), cp.tlsCAPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "istio-token")
	if err := os.WriteFile(tokenFile, []byte("test-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var conn *grpc.ClientConn
	xdsAddr := ""
	if productionDial {
		xdsAddr = strings.Replace(cp.addr, "127.0.0.1", "localhost", 1)
	} else {
		var err error
		conn, err = grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
	}
	listening := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	ztAddr := m.zt.addr
	go func() {
		cfg := Config{
			Namespace: "ns", Name: "waypoint", RootCertFile: rootFile, XDSAddress: xdsAddr, TokenFile: tokenFile,
			HBONEAddr: "127.0.0.1:0", MonitoringAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", DrainTimeout: 5 * time.Second,
			Log: quietLog(), Ready: m.ready.Store,
			Listening: func(h, mon, adm net.Addr) { m.hboneAddr, m.monAddr, m.adminAddr = h, mon, adm; close(listening) },
			HBONEDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if strings.HasSuffix(addr, ":15008") {
					addr = ztAddr // every captured endpoint's node runs this ztunnel
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		}
		if conn != nil {
			cfg.Conn = conn
		}
		m.done <- Run(ctx, cfg)
	}()
	t.Cleanup(func() { m.stop() })
	select {
	case <-listening:
	case err := <-m.done:
		t.Fatalf("waypoint exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("waypoint did not start")
	}
	m.clientSrc = cp.source(t, clientID)
	m.client = hbone.NewClient(cp.bundle(t), hbone.ClientOptions{Logger: quietLog()})
	t.Cleanup(m.client.Close)
	return m
}

func (m *mesh) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	m.cancel = nil
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		m.t.Error("waypoint did not stop")
	}
}

// dial opens an HBONE stream to the waypoint as the client pod's ztunnel
// does: the client's certificate, the Service VIP as target.
func (m *mesh) dial(ctx context.Context, port uint16) (net.Conn, error) {
	return m.client.Dial(ctx, hbone.DialRequest{
		Source:   m.clientSrc,
		Proxy:    netip.MustParseAddrPort(m.hboneAddr.String()),
		Target:   netip.AddrPortFrom(netip.MustParseAddr(vip), port),
		Expected: waypointID,
		Header:   http.Header{"Forwarded": {"for=" + clientIP}},
	})
}

// httpClient speaks HTTP/1.1 (or h2c) to the Service through the waypoint.
func (m *mesh) httpClient(port uint16, h2c bool) *http.Client {
	p := new(http.Protocols)
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Client{
		Transport:     &http.Transport{Protocols: p, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return m.dial(ctx, port) }},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       20 * time.Second,
	}
}

// closedPort is a loopback address nothing listens on.
func closedPort(t testing.TB) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

func mustAnyNoT(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // a test-only constant message
	}
	return a
}

// expectEcho writes msg on conn (through the waypoint to the TCP echo
// backend) and reads it back.
func expectEcho(t testing.TB, conn net.Conn, msg, what string) {
	t.Helper()
	if _, err := io.WriteString(conn, msg); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("%s: echo %q %v", what, got, err)
	}
}

func startTCPEcho(t testing.TB) netip.AddrPort {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}
