package main

// The two helper processes of the waypoint runs, started by the parent as
// `l7bench -role waypoint|adapter`:
//
//   - waypoint: an in-process control plane (go-control-plane's delta ADS
//     over one linear cache per type, and the CA service, on loopback
//     without TLS, as the waypoint's own tests run it) and the waypoint
//     itself, waypoint/agent.Run, exactly as the binary runs it, serving
//     HBONE on loopback. Its configuration is the route table of routes.go
//     as istiod-lite would send it for a Service VIP: an HTTP chain on
//     VIP:80 and a TCP chain (tcp_proxy) on VIP:9000, both to plain TCP
//     endpoints (the backends on loopback).
//   - adapter: what a client's ztunnel does, reduced to the HBONE client:
//     a plain TCP listener per target whose every accepted connection is
//     tunnelled as one HBONE CONNECT stream (mTLS, HTTP/2, pooled) to the
//     waypoint, with a client pod's certificate and Forwarded: for=.

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // the waypoint role's -pprof listener
	"net/netip"
	"os"
	"path/filepath"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	pb "istio.io/api/security/v1alpha1"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
	"github.com/ambit-mesh/ambit/waypoint/agent"
)

const (
	vip       = "10.96.0.10" // the Service VIP: only the CONNECT :authority, never dialled
	clientIP  = "10.244.1.5"
	httpRoute = "inbound-vip|80|http|bench.bench.svc.cluster.local"
	tcpTarget = "outbound|9000||bench.bench.svc.cluster.local"
)

var (
	clientID   = identity.Identity{TrustDomain: "cluster.local", Namespace: "client-ns", ServiceAccount: "client-sa"}
	waypointID = identity.Identity{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "waypoint"}
)

// writeCA creates the mesh CA of a run in dir (ca.pem, ca-key.pem).
func writeCA(dir string) error {
	c, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), c.CertPEM(), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ca-key.pem"), c.KeyPEM(), 0o600)
}

func loadCA(dir string) (*ca.CA, error) {
	cert, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, err
	}
	return ca.Load(cert, key, nil, cert, ca.Options{})
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

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func mainInternal() *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "bench",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: httpRoute, ConfigSource: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}},
		NormalizePath:    wrapperspb.Bool(true),
		UseRemoteAddress: wrapperspb.Bool(false),
	}
	vipRange := []*corev3.CidrRange{{AddressPrefix: vip, PrefixLen: wrapperspb.UInt32(32)}}
	return &listenerv3.Listener{
		Name:              "main_internal",
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: "envoy.filters.listener.original_dst", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldstv3.OriginalDst{})}},
			{Name: "envoy.filters.listener.http_inspector", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&httpinspectorv3.HttpInspector{})}},
		},
		FilterChains: []*listenerv3.FilterChain{
			{
				Name:             "inbound-vip|80|http|bench",
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80), PrefixRanges: vipRange},
				Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
					ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}},
			},
			{
				Name:             "inbound-vip|9000|tcp|bench",
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(9000), PrefixRanges: vipRange},
				Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{
					TypedConfig: mustAny(&tcpproxyv3.TcpProxy{StatPrefix: tcpTarget, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: tcpTarget}})}}},
			},
		},
	}
}

// runWaypointRole serves until ctx ends. It prints "ready" on stdout once
// the waypoint is ready.
func runWaypointRole(ctx context.Context, o roleOpts) error {
	authority, err := loadCA(o.dir)
	if err != nil {
		return err
	}
	caches := map[string]cachev3.Cache{}
	set := func(typeURL, name string, m proto.Message) error {
		return caches[typeURL].(*cachev3.LinearCache).UpdateResource(name, m.(types.Resource))
	}
	for _, tu := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.SecretType, workloadv1.AddressTypeURL} {
		caches[tu] = cachev3.NewLinearCache(tu)
	}
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	xds := serverv3.NewServer(ctx, mux, serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			if d := req.GetErrorDetail(); d != nil {
				fmt.Fprintf(os.Stderr, "waypoint NACK: %s\n", d.GetMessage())
			}
			return nil
		},
	})
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, xds)
	pb.RegisterIstioCertificateServiceServer(g, &caService{ca: authority})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()

	steps := []error{
		set(resourcev3.SecretType, "ROOTCA", &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: authority.RootsPEM()}}}}}),
		set(resourcev3.ClusterType, clusterA, edsCluster(clusterA)),
		set(resourcev3.ClusterType, clusterB, edsCluster(clusterB)),
		set(resourcev3.ClusterType, tcpTarget, edsCluster(tcpTarget)),
		set(resourcev3.EndpointType, clusterA, plainEndpoints(clusterA, "127.0.0.1", o.portA)),
		set(resourcev3.EndpointType, clusterB, plainEndpoints(clusterB, "127.0.0.1", o.portB)),
		set(resourcev3.EndpointType, tcpTarget, plainEndpoints(tcpTarget, "127.0.0.1", o.portB)),
		set(resourcev3.RouteType, httpRoute, envoyRoutes(httpRoute)),
		set(resourcev3.ListenerType, "main_internal", mainInternal()),
		set(workloadv1.AddressTypeURL, "client", &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
			Uid: "Kubernetes//Pod/client-ns/client-abc", Name: "client-abc", Namespace: "client-ns", WorkloadName: "client",
			CanonicalName: "client", ServiceAccount: "client-sa", Addresses: [][]byte{netip.MustParseAddr(clientIP).AsSlice()}}}}),
	}
	for _, err := range steps {
		if err != nil {
			return err
		}
	}
	rootFile := filepath.Join(o.dir, "roots.pem")
	if err := os.WriteFile(rootFile, authority.RootsPEM(), 0o600); err != nil {
		return err
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	if o.pprof != "" {
		go func() { _ = http.ListenAndServe(o.pprof, nil) }()
	}
	return agent.Run(ctx, agent.Config{
		Namespace: "bench", Name: "waypoint", RootCertFile: rootFile, Conn: conn,
		HBONEAddr: o.listen, MonitoringAddr: "127.0.0.1:0", DrainTimeout: time.Second,
		// Warnings only: no access log lines (Istio's waypoint has its
		// access log off by default too). Metrics stay on.
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Ready: func(ok bool) {
			if ok {
				fmt.Println("ready")
			}
		},
	})
}

// runAdapterRole listens on o.listen (HTTP chain, VIP:80) and o.listen2
// (TCP chain, VIP:9000) and tunnels each accepted connection to the
// waypoint at o.waypoint.
func runAdapterRole(ctx context.Context, o roleOpts) error {
	authority, err := loadCA(o.dir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src := workloadcert.NewSource(clientID, authority, workloadcert.Options{TTL: 24 * time.Hour, Logger: log})
	if err := src.Renew(ctx); err != nil {
		return err
	}
	bundle, err := mtls.NewBundle("cluster.local", authority.Roots())
	if err != nil {
		return err
	}
	client := hbone.NewClient(bundle, hbone.ClientOptions{Logger: log})
	defer client.Close()
	proxyAddr, err := netip.ParseAddrPort(o.waypoint)
	if err != nil {
		return err
	}
	serve := func(addr string, port uint16) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); ln.Close() }()
		target := netip.AddrPortFrom(netip.MustParseAddr(vip), port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					up, err := client.Dial(ctx, hbone.DialRequest{Source: src, Proxy: proxyAddr, Target: target, Expected: waypointID,
						Header: http.Header{"Forwarded": {"for=" + clientIP}}})
					if err != nil {
						log.Warn("dial", "err", err)
						return
					}
					defer up.Close()
					_, _, _ = hbone.Proxy(c, up)
				}()
			}
		}()
		return nil
	}
	if err := serve(o.listen, 80); err != nil {
		return err
	}
	if err := serve(o.listen2, 9000); err != nil {
		return err
	}
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}
