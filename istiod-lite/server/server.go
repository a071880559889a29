// Package server assembles istiod-lite: the Kubernetes controller feeding
// the workload API, the delta xDS server, the mesh CA service on the same
// TLS gRPC port, the root certificate publisher and policy status writer
// (under leader election), metrics and the debug view.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	casvc "github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/ca/certmanager"
	"github.com/ambit-mesh/ambit/istiod-lite/controller"
	"github.com/ambit-mesh/ambit/istiod-lite/debug"
	"github.com/ambit-mesh/ambit/istiod-lite/waypoint"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointconfig"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// Config is istiod-lite's configuration.
type Config struct {
	// Kube is the apiserver connection.
	Kube *rest.Config
	// Namespace is where istiod-lite runs: the root Secret, the leader
	// lease and the node agents' ServiceAccount live there.
	Namespace string
	// TrustDomain of workload identities; default cluster.local.
	TrustDomain string
	// DomainSuffix of Service hostnames; default cluster.local.
	DomainSuffix string
	// ClusterID prefixes workload uids; default Kubernetes.
	ClusterID string
	// NodeAgentServiceAccount is ztunnel's ServiceAccount in Namespace.
	NodeAgentServiceAccount string
	// TokenAudiences accepted on callers' tokens; default istio-ca.
	TokenAudiences []string
	// GRPCListener serves xDS and the CA (TLS); GRPCAddr is used when nil.
	GRPCListener net.Listener
	GRPCAddr     string
	// MonitoringAddr serves /metrics and /debug/ambient; empty disables.
	MonitoringAddr string
	// ServingDNSNames of the gRPC certificate; default ca.DefaultServingDNSNames.
	ServingDNSNames []string
	// LeaderElection makes only the lease holder write (root ConfigMaps,
	// policy status); off runs the writers in this process unconditionally.
	LeaderElection bool
	// Identity of this replica in the lease; default the hostname.
	Identity string
	// CertManager, if set, has cert-manager sign workload certificates
	// instead of the built-in root (which still signs istiod-lite's own
	// serving certificate).
	CertManager *certmanager.Config
	// WaypointImage runs the waypoints deployed for Gateways of class
	// istio-waypoint; default waypoint.DefaultImage.
	WaypointImage string
	// Debounce of xDS pushes; default 100ms.
	Debounce time.Duration
	Log      *slog.Logger
	// Ready, if set, is called once istiod-lite serves a complete view.
	Ready func()
}

func (c *Config) defaults() error {
	if c.Kube == nil {
		return errors.New("istiod-lite: no Kubernetes config")
	}
	if c.Namespace == "" {
		c.Namespace = casvc.DefaultInstallNamespace
	}
	if c.NodeAgentServiceAccount == "" {
		c.NodeAgentServiceAccount = "ztunnel"
	}
	if len(c.TokenAudiences) == 0 {
		c.TokenAudiences = []string{auth.DefaultAudience}
	}
	if c.GRPCListener == nil && c.GRPCAddr == "" {
		c.GRPCAddr = ":15012"
	}
	if c.Identity == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("istiod-lite: hostname for the leader lease: %w", err)
		}
		c.Identity = h
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return nil
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	log := cfg.Log
	kube, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("istiod-lite: kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("istiod-lite: dynamic client: %w", err)
	}
	prov, err := metrics.New()
	if err != nil {
		return fmt.Errorf("istiod-lite: metrics: %w", err)
	}
	meter := prov.Meter("istiod-lite")

	// The root first: every replica loads the same one (or one creates it).
	authority, _, err := casvc.LoadOrCreateRoot(ctx, kube.CoreV1(), casvc.RootOptions{
		Namespace: cfg.Namespace, CA: ca.Options{TrustDomain: cfg.TrustDomain}, Log: log,
	})
	if err != nil {
		return fmt.Errorf("istiod-lite: %w", err)
	}
	authn := auth.New(kube.AuthenticationV1(), cfg.TokenAudiences...)
	// What workloads and ztunnels trust: the built-in root (it signs the
	// control plane's serving certificate) and, with cert-manager, the
	// issuer's CA (it signs workloads).
	trustPEM := authority.RootsPEM()
	var signer casvc.Signer
	if cfg.CertManager != nil {
		cm := *cfg.CertManager
		if cm.Log == nil {
			cm.Log = log.With("component", "cert-manager")
		}
		cmSigner, err := certmanager.NewForConfig(cfg.Kube, cm)
		if err != nil {
			return fmt.Errorf("istiod-lite: cert-manager: %w", err)
		}
		issuerRoots, err := probeIssuerRoots(ctx, authority, cmSigner, cfg.Namespace)
		if err != nil {
			return fmt.Errorf("istiod-lite: cert-manager issuer %s/%s: %w", cm.IssuerKind, cm.IssuerName, err)
		}
		trustPEM = append(bytes.Clone(trustPEM), issuerRoots...)
		signer = cmSigner
		log.Info("workload certificates signed by cert-manager", "issuerKind", cm.IssuerKind, "issuer", cm.IssuerName)
	}
	certs, err := casvc.NewService(casvc.Options{
		Signer:        signer,
		CA:            authority,
		Authenticator: authn,
		Pods:          casvc.APIPodLookup{Pods: kube.CoreV1()},
		NodeAgents:    []casvc.ServiceAccountRef{{Namespace: cfg.Namespace, Name: cfg.NodeAgentServiceAccount}},
		Log:           log.With("component", "ca"),
		Meter:         meter,
	})
	if err != nil {
		return fmt.Errorf("istiod-lite: %w", err)
	}

	pushMetrics, err := newPushMetrics(meter)
	if err != nil {
		return err
	}
	xdsServer := xds.New(ctx, xds.Options{
		Debounce:     cfg.Debounce,
		OnPush:       pushMetrics.observe,
		Logger:       log,
		Authenticate: nodeOf(authn, cfg.Namespace, cfg.NodeAgentServiceAccount),
		NodeScope:    controller.AuthorizationScope,
	})
	if err := pushMetrics.observeClients(meter, xdsServer); err != nil {
		return err
	}

	index := ambient.NewIndex(ambient.Options{
		RootNamespace: cfg.Namespace, DomainSuffix: cfg.DomainSuffix, TrustDomain: authority.TrustDomain(), ClusterID: cfg.ClusterID,
	})
	status := controller.NewStatusWriter(kube, dyn, index, log)
	defer status.Close()
	// One set of informers feeds both the workload API and the waypoints'
	// configuration.
	kubeInformers := controller.NewInformerFactory(kube, 0)
	dynInformers := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	ctrl, err := controller.New(controller.Options{
		Kube: kube, Dynamic: dyn, Index: index, Sink: xdsServer, Policies: status, Log: log,
		Informers: kubeInformers, DynamicInformers: dynInformers,
	})
	if err != nil {
		return err
	}

	gwClient, err := gatewayclient.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("istiod-lite: gateway API client: %w", err)
	}
	if err := waypointxds.CheckRootCerts(trustPEM); err != nil {
		return fmt.Errorf("istiod-lite: mesh roots for waypoints: %w", err)
	}
	waypoints, err := waypointconfig.New(waypointconfig.Options{
		Gateway: gwClient, Dynamic: dyn, Informers: kubeInformers, DynamicInformers: dynInformers, Sink: xdsServer,
		Build:    waypointxds.Options{TrustDomain: authority.TrustDomain(), Domain: cfg.DomainSuffix, RootNamespace: cfg.Namespace, RootCerts: trustPEM},
		Debounce: cfg.Debounce, Log: log,
	})
	if err != nil {
		return fmt.Errorf("istiod-lite: %w", err)
	}
	deployer := waypoint.New(waypoint.Config{
		Kube: kube, Gateway: gwClient, Image: cfg.WaypointImage, DomainSuffix: cfg.DomainSuffix,
		ControlPlaneAddress: "istiod." + cfg.Namespace + ".svc:15012", Log: log,
	})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Go(func() { xdsServer.Run(ctx) })
	wg.Go(func() {
		if err := ctrl.Run(ctx); err != nil {
			errc <- err
		}
	})
	wg.Go(func() {
		// Without the Gateway API CRDs there are no waypoints; the rest
		// of the mesh keeps working.
		if err := waypoints.Run(ctx); err != nil {
			log.Error("waypoint configuration stopped", "error", err)
		}
	})

	if cfg.MonitoringAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", prov.Handler())
		mux.Handle("/debug/ambient", debug.Handler(xdsServer, status.Problems))
		hs := &http.Server{Addr: cfg.MonitoringAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		ln, err := net.Listen("tcp", cfg.MonitoringAddr)
		if err != nil {
			return fmt.Errorf("istiod-lite: monitoring listener: %w", err)
		}
		wg.Go(func() { _ = hs.Serve(ln) })
		wg.Go(func() {
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			_ = hs.Shutdown(sctx)
		})
	}

	// Serve nothing until the view is complete: a ztunnel that got half
	// the workloads would refuse or misroute traffic.
	select {
	case <-ctrl.Synced():
	case err := <-errc:
		cancel()
		wg.Wait()
		return err
	case <-ctx.Done():
		wg.Wait()
		return nil
	}
	xdsServer.Flush()

	tlsConf, err := casvc.ServingTLSConfig(authority, cfg.ServingDNSNames)
	if err != nil {
		return fmt.Errorf("istiod-lite: %w", err)
	}
	grpcServer := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConf)),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(1000),
	)
	xdsServer.Register(grpcServer)
	certs.Register(grpcServer)
	ln := cfg.GRPCListener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			return fmt.Errorf("istiod-lite: gRPC listener: %w", err)
		}
	}
	wg.Go(func() {
		if err := grpcServer.Serve(ln); err != nil {
			errc <- fmt.Errorf("istiod-lite: gRPC: %w", err)
		}
	})
	log.Info("serving", "grpc", ln.Addr().String(), "trustDomain", authority.TrustDomain())

	writers := func(ctx context.Context) {
		pub := casvc.NewPublisher(kube, trustPEM, log.With("component", "root-publisher"))
		var w sync.WaitGroup
		w.Go(func() {
			if err := pub.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("root publisher stopped", "error", err)
			}
		})
		w.Go(func() { status.Run(ctx) })
		w.Go(func() { deployer.Run(ctx) })
		w.Go(func() { waypoints.RunStatus(ctx) })
		w.Wait()
	}
	if cfg.LeaderElection {
		wg.Go(func() { runElected(ctx, kube, cfg, writers) })
	} else {
		wg.Go(func() { writers(ctx) })
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// Drain: stop taking streams, let unary CA calls finish.
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		grpcServer.Stop()
	}
	cancel()
	wg.Wait()
	return runErr
}

// probeIssuerRoots has the issuer sign a short-lived certificate for
// istiod-lite's own identity, which proves the issuer works before any
// workload depends on it, and returns the roots it chains to.
func probeIssuerRoots(ctx context.Context, authority *ca.CA, signer casvc.Signer, ns string) ([]byte, error) {
	id, err := identity.New(authority.TrustDomain(), ns, "istiod-lite")
	if err != nil {
		return nil, err
	}
	key, err := workloadcert.NewKey()
	if err != nil {
		return nil, err
	}
	csrPEM, err := workloadcert.NewCSR(key, id)
	if err != nil {
		return nil, err
	}
	csr, err := authority.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, roots, err := signer.Sign(ctx, csr, time.Hour)
	if err != nil {
		return nil, fmt.Errorf("probe signing: %w", err)
	}
	if len(roots) == 0 {
		return nil, errors.New("probe signing: the issuer reported no CA; configure its roots")
	}
	return pemutil.EncodeCertificates(roots), nil
}

// nodeOf authenticates an xDS stream: the node agent's token names its
// node; any other ServiceAccount is the waypoint of that name (it gets that
// waypoint's configuration, if there is one, and the addresses).
func nodeOf(authn *auth.Authenticator, ns, sa string) func(ctx context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		c, err := authn.AuthenticateGRPC(ctx)
		if err != nil {
			return "", err
		}
		if c.Namespace == ns && c.ServiceAccount == sa {
			return c.NodeName, nil
		}
		return xds.WaypointNode(c.Namespace, c.ServiceAccount), nil
	}
}

// runElected runs fn while this replica holds the lease, campaigning again
// after losing it, until ctx ends.
func runElected(ctx context.Context, kube kubernetes.Interface, cfg Config, fn func(context.Context)) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "istiod-lite-leader", Namespace: cfg.Namespace},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            "istiod-lite",
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: fn,
				OnStoppedLeading: func() { cfg.Log.Info("not leading: status and root ConfigMap writers stopped") },
				OnNewLeader: func(id string) {
					if id != cfg.Identity {
						cfg.Log.Info("leader", "identity", id)
					}
				},
			},
		})
	}
}

// pushMetrics are the xDS metrics, under Istio's names.
type pushMetrics struct {
	pushes      metric.Int64Counter
	convergence metric.Float64Histogram
}

func newPushMetrics(m metric.Meter) (*pushMetrics, error) {
	pushes, err := m.Int64Counter("pilot_xds_pushes", metric.WithDescription("Resources pushed to xDS clients' caches, by type of change."))
	if err != nil {
		return nil, fmt.Errorf("istiod-lite: metric: %w", err)
	}
	conv, err := m.Float64Histogram("pilot_proxy_convergence_time", metric.WithUnit("s"),
		metric.WithDescription("Delay between a Kubernetes change and its push to the xDS caches."),
		metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
	if err != nil {
		return nil, fmt.Errorf("istiod-lite: metric: %w", err)
	}
	return &pushMetrics{pushes: pushes, convergence: conv}, nil
}

func (p *pushMetrics) observe(s xds.PushStats) {
	ctx := context.Background()
	p.pushes.Add(ctx, int64(s.Upserts), metric.WithAttributes(attrType("upsert")))
	p.pushes.Add(ctx, int64(s.Deletes), metric.WithAttributes(attrType("delete")))
	p.convergence.Record(ctx, s.Wait.Seconds())
}

func (p *pushMetrics) observeClients(m metric.Meter, s *xds.Server) error {
	_, err := m.Int64ObservableGauge("pilot_xds", metric.WithDescription("Connected xDS clients."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(s.Clients())
			return nil
		}))
	if err != nil {
		return fmt.Errorf("istiod-lite: metric: %w", err)
	}
	return nil
}
