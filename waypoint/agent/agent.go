// Package agent assembles the waypoint: its certificate from istiod-lite's
// CA, its configuration over delta xDS, the HBONE server on 15008 in front
// of the data path (waypoint/proxy), metrics on the monitoring port, and a
// graceful drain on shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/controlplane"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
	"github.com/ambit-mesh/ambit/waypoint/config"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// Config is the waypoint's configuration.
type Config struct {
	// Namespace and Name are the waypoint's Gateway; its ServiceAccount,
	// hence its identity, carries the Gateway's name.
	Namespace, Name string
	// ServiceAccount overrides the identity's ServiceAccount (default Name).
	ServiceAccount string
	// XDSAddress is istiod-lite's gRPC address (xDS and CA).
	XDSAddress string
	// XDSServerName is the TLS name to verify; default the host of XDSAddress.
	XDSServerName string
	// RootCertFile holds the mesh root(s), PEM.
	RootCertFile string
	// TokenFile holds the ServiceAccount token for audience istio-ca,
	// re-read for every request (the kubelet rotates it).
	TokenFile   string
	TrustDomain string
	// HBONEAddr is where HBONE is served; default ":15008".
	HBONEAddr string
	// MonitoringAddr serves /metrics; empty disables.
	MonitoringAddr string
	// AdminAddr serves the JSON admin view (/config_dump); empty disables.
	// Keep it on loopback.
	AdminAddr string
	// OTLPEndpoint receives spans over OTLP/gRPC; empty exports none.
	OTLPEndpoint string
	CertTTL      time.Duration
	// DrainTimeout bounds the drain on shutdown; default 10s.
	DrainTimeout time.Duration
	Log          *slog.Logger
	// Ready is called with true once the configuration is synced and the
	// certificate obtained, and with false when draining starts.
	Ready func(bool)

	// Conn, if set, replaces the connection to istiod-lite (tests).
	Conn grpc.ClientConnInterface
	// Listening, if set, is called with the HBONE, monitoring and admin
	// listeners (tests bind port 0); an unset address is nil.
	Listening func(hbone, monitoring, admin net.Addr)
	// HBONEDial overrides how upstream HBONE connections are dialled (tests).
	HBONEDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (c *Config) defaults() error {
	switch {
	case c.Namespace == "" || c.Name == "":
		return errors.New("waypoint: --namespace and --name are required")
	case c.Conn == nil && c.XDSAddress == "":
		return errors.New("waypoint: no --xds-address")
	case c.RootCertFile == "":
		return errors.New("waypoint: no --root-cert")
	case c.Conn == nil && c.TokenFile == "":
		return errors.New("waypoint: no --token")
	}
	if c.ServiceAccount == "" {
		c.ServiceAccount = c.Name
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.HBONEAddr == "" {
		c.HBONEAddr = ":15008"
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Ready == nil {
		c.Ready = func(bool) {}
	}
	return nil
}

// Run serves until ctx ends, then drains.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	log := cfg.Log
	id, err := identity.New(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount)
	if err != nil {
		return fmt.Errorf("waypoint: identity: %w", err)
	}
	roots, err := mtls.LoadRoots(cfg.RootCertFile)
	if err != nil {
		return fmt.Errorf("waypoint: %w", err)
	}
	bundle, err := mtls.NewBundle(cfg.TrustDomain, roots)
	if err != nil {
		return fmt.Errorf("waypoint: trust bundle: %w", err)
	}
	conn := cfg.Conn
	if conn == nil {
		cc, err := controlplane.Dial(cfg.XDSAddress, cfg.XDSServerName, roots, cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("waypoint: %w", err)
		}
		defer cc.Close()
		conn = cc
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// The certificate: requested at start, renewed at half-life.
	cert := workloadcert.NewSource(id, caclient.New(conn).Signer(id), workloadcert.Options{TTL: cfg.CertTTL, Logger: log.With("component", "cert")})
	wg.Go(func() {
		if err := cert.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("certificate source stopped", "identity", id.String(), "error", err)
		}
	})

	prov, err := metrics.New()
	if err != nil {
		return fmt.Errorf("waypoint: metrics: %w", err)
	}
	tel, err := telemetry.New(ctx, telemetry.Options{Metrics: prov, OTLPEndpoint: cfg.OTLPEndpoint,
		ServiceName: cfg.Name + "." + cfg.Namespace, Log: log.With("component", "access")})
	if err != nil {
		return fmt.Errorf("waypoint: %w", err)
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = tel.Shutdown(sctx)
	}()

	hbClient := hbone.NewClient(bundle, hbone.ClientOptions{Logger: log, DialContext: cfg.HBONEDial})
	defer hbClient.Close()
	ups := upstream.NewManager(upstream.Options{HBONE: hbClient, Source: cert, Log: log.With("component", "upstream")})
	defer ups.Close()
	store := config.NewStore(log, func(s *config.Snapshot) {
		ups.Update(s)
		// ROOTCA from xDS replaces the file's roots (root rotation).
		if len(s.Roots) > 0 {
			if err := bundle.SetRoots(cfg.TrustDomain, s.Roots); err != nil {
				log.Warn("mesh roots from xDS refused", "error", err)
			}
		}
	})
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": cfg.Namespace, "WAYPOINT": cfg.Name})
	xc, err := xdsclient.New(conn, xdsclient.Options{
		Node:     &core.Node{Id: "waypoint/" + cfg.Namespace + "/" + cfg.Name, Cluster: cfg.Name + "." + cfg.Namespace, Metadata: md},
		TypeURLs: config.TypeURLs, Handler: store.Handle, Logger: log, MaxBackoff: 5 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("waypoint: xDS client: %w", err)
	}
	wg.Go(func() {
		if err := xc.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("xDS client stopped", "error", err)
		}
	})

	px, err := proxy.New(proxy.Options{Config: store.Snapshot, Upstreams: ups, Telemetry: tel, Log: log.With("component", "proxy")})
	if err != nil {
		return fmt.Errorf("waypoint: %w", err)
	}
	// On an early return (stopped before ready, a listener failing) the HTTP
	// server must end too, or wg.Wait would never return.
	defer func() {
		done, stop := context.WithCancel(context.Background())
		stop()
		_ = px.Shutdown(done)
	}()
	wg.Go(func() {
		if err := px.Serve(); err != nil {
			log.Error("HTTP server stopped", "error", err)
		}
	})

	var monAddr net.Addr
	if cfg.MonitoringAddr != "" {
		ln, err := net.Listen("tcp", cfg.MonitoringAddr)
		if err != nil {
			return fmt.Errorf("waypoint: monitoring listener: %w", err)
		}
		monAddr = ln.Addr()
		mux := http.NewServeMux()
		mux.Handle("/metrics", prov.Handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("monitoring server", "error", err)
			}
		})
		defer hs.Close()
	}

	var adminAddr net.Addr
	if cfg.AdminAddr != "" {
		ln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("waypoint: admin listener: %w", err)
		}
		adminAddr = ln.Addr()
		as := &http.Server{Handler: adminHandler(id.String(), cert, xc, store, ups), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := as.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server", "error", err)
			}
		})
		defer as.Close()
	}

	// Ready (and serving HBONE) only with a certificate and the whole
	// configuration: before that every stream would fail.
	select {
	case <-cert.Ready():
	case <-ctx.Done():
		return nil
	}
	select {
	case <-xc.Synced():
	case <-ctx.Done():
		return nil
	}
	hs := hbone.NewServer(mtls.ServerConfig(cert, bundle), px, hbone.ServerOptions{Logger: log.With("component", "hbone")})
	ln, err := net.Listen("tcp", cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("waypoint: HBONE listener: %w", err)
	}
	wg.Go(func() {
		if err := hs.Serve(ln); err != nil && ctx.Err() == nil {
			log.Error("HBONE server stopped", "error", err)
		}
	})
	if cfg.Listening != nil {
		cfg.Listening(ln.Addr(), monAddr, adminAddr)
	}
	log.Info("waypoint serving", "identity", id.String(), "hbone", ln.Addr().String(), "xds", cfg.XDSAddress)
	cfg.Ready(true)
	<-ctx.Done()

	// Drain: refuse new streams, let in-flight requests and connections
	// finish within the drain timeout.
	cfg.Ready(false)
	dctx, dcancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer dcancel()
	var dwg sync.WaitGroup
	dwg.Go(func() { _ = hs.Shutdown(dctx) })
	dwg.Go(func() { _ = px.Shutdown(dctx) })
	dwg.Wait()
	hs.Close()
	return nil
}
