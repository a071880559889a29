// Package agent assembles ztunnel: the mesh state from istiod-lite over
// delta xDS, certificates from its CA, enrollment of the node's pods (CNI
// requests and reconciliation from the Kubernetes API), and the per-pod
// data path.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/controlplane"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/cni/install"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Config is ztunnel's configuration.
type Config struct {
	// Kube is the apiserver connection (pods of this node, namespaces).
	Kube *rest.Config
	// NodeName is this node (the DaemonSet passes spec.nodeName).
	NodeName string
	// NodeIP is the node's address (status.hostIP): the node's network
	// namespace is the one carrying it, where kubelet probes to captured
	// pods are source-NATed so that they bypass capture. Zero disables that.
	NodeIP netip.Addr
	// ControlPlane is istiod-lite's gRPC address (xDS and CA).
	ControlPlane string
	// ControlPlaneName is the TLS server name to verify; default the host
	// of ControlPlane.
	ControlPlaneName string
	// RootCertFile holds the mesh root(s), PEM (istio-ca-root-cert).
	RootCertFile string
	// TokenFile holds the ztunnel's ServiceAccount token for audience
	// istio-ca, re-read for every request (the kubelet rotates it).
	TokenFile string
	// TrustDomain of identities; default cluster.local.
	TrustDomain string
	// Network of this node's workloads; default "".
	Network string
	// CNISocket is where the CNI plugin reaches the ztunnel.
	CNISocket string
	// HostRoot is the node's root seen from the ztunnel ("/proc/1/root"
	// with hostPID), to open pod netns paths not mounted into its container.
	HostRoot string
	// CNIStateFile is where the ambient namespaces are written for the
	// plugin's decisions while the ztunnel is unreachable.
	CNIStateFile string
	// CNIInstall, if set, installs and keeps the CNI plugin in the node's
	// CNI configuration (its SocketPath and StateFile are filled in).
	CNIInstall *install.Config
	// CertTTL requested for workload certificates; zero lets the CA decide.
	CertTTL time.Duration
	// Metrics, if set, receives the data path's metrics.
	Metrics *metrics.Provider
	Log     *slog.Logger
	// DrainTimeout bounds how long running connections may take to end on
	// shutdown; default 10s (below the daemon's shutdown timeout).
	DrainTimeout time.Duration
	// AdminAddr serves the JSON admin view (/config_dump); empty disables.
	// Keep it on loopback: it lists every workload the node knows.
	AdminAddr string
	// Ready, if set, is called once the state is synced and the CNI
	// socket serves.
	Ready func()
}

func (c *Config) defaults() error {
	switch {
	case c.Kube == nil:
		return errors.New("ztunnel: no Kubernetes config")
	case c.NodeName == "":
		return errors.New("ztunnel: no node name (set NODE_NAME)")
	case c.ControlPlane == "":
		return errors.New("ztunnel: no control plane address")
	case c.RootCertFile == "" || c.TokenFile == "":
		return errors.New("ztunnel: root certificate and token files are required")
	case c.CNISocket == "":
		return errors.New("ztunnel: no CNI socket path")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = identity.DefaultTrustDomain
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
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
	roots, err := mtls.LoadRoots(cfg.RootCertFile)
	if err != nil {
		return fmt.Errorf("ztunnel: %w", err)
	}
	bundle, err := mtls.NewBundle(cfg.TrustDomain, roots)
	if err != nil {
		return fmt.Errorf("ztunnel: trust bundle: %w", err)
	}
	conn, err := controlplane.Dial(cfg.ControlPlane, cfg.ControlPlaneName, roots, cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("ztunnel: %w", err)
	}
	defer conn.Close()
	kube, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("ztunnel: kubernetes client: %w", err)
	}

	store := state.NewStore()
	xc, err := xdsclient.New(conn, xdsclient.Options{
		Node: &core.Node{Id: cfg.NodeName}, TypeURLs: state.TypeURLs, Handler: store.Handle, Logger: log,
		// Policy changes must reach the node soon after the control plane
		// returns; the jitter keeps a fleet of ztunnels from reconnecting
		// in lockstep.
		MaxBackoff: 5 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("ztunnel: xDS client: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := xc.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("xDS client stopped", "error", err)
		}
	})

	observe, err := newConnObserver(cfg.Metrics, store, cfg.Network, log.With("component", "access"))
	if err != nil {
		return err
	}
	px, err := proxy.New(proxy.Options{
		Bundle:  bundle,
		Router:  &Router{Store: store, Balancer: state.NewBalancer(store, state.BalancerOptions{Policy: state.LeastRequests}), Network: cfg.Network, TrustDomain: cfg.TrustDomain},
		Authz:   &Authorizer{Store: store, Network: cfg.Network},
		Log:     log.With("component", "proxy"),
		Observe: observe,
	})
	if err != nil {
		return err
	}
	pods := newPodWatch(kube, cfg.NodeName, cfg.CNIStateFile, log)
	served := &servedPods{
		proxy: px, certs: certs.NewManager(ctx, caclient.New(conn), cfg.CertTTL, log.With("component", "certs")),
		serviceAccount: pods.serviceAccount, trustDomain: cfg.TrustDomain, log: log, ctx: ctx, byKey: map[string]*servedPod{},
	}
	probes := newProbeTargets(cfg.NodeIP, log.With("component", "probes"))
	defer probes.close()
	capCfg := capture.DefaultConfig()
	// Always exempted, with or without the node's SNAT, so the pods' rules
	// do not change with it.
	capCfg.ExcludeAddrs = capture.ProbeSources()
	enroller, err := enroll.NewEnroller(enroll.EnrollerOptions{
		Capture: &capCfg,
		OnEnrolled: func(pod enroll.Pod, ns *podns.NS, lns *inpod.Listeners) {
			probes.enrolled(pod)
			served.start(pod, ns, lns)
		},
		HostRoot: cfg.HostRoot,
		OnReleased: func(ref enroll.PodRef) {
			served.stop(ref)
			probes.released(ref)
		},
		Log: log.With("component", "enroll"),
	})
	if err != nil {
		return fmt.Errorf("ztunnel: %w", err)
	}
	defer func() { _ = enroller.Close() }()

	wg.Go(func() { pods.run(ctx) })
	select {
	case <-pods.synced:
	case <-ctx.Done():
		wg.Wait()
		return nil
	}
	// Enrollment does not wait for the control plane: until the state
	// syncs, inbound connections to unknown workloads are refused and
	// outbound ones to unknown addresses pass through, so nothing is
	// allowed that a policy would deny.
	wg.Go(func() {
		select {
		case <-xc.Synced():
			log.Info("control plane state synced", "stats", fmt.Sprintf("%+v", store.Stats()))
		case <-ctx.Done():
		}
	})

	srv, err := enroll.NewServer(enroll.ServerOptions{Handler: enroller, Decider: pods, Log: log.With("component", "cni-server")})
	if err != nil {
		return fmt.Errorf("ztunnel: %w", err)
	}
	fatal := make(chan error, 1)
	wg.Go(func() {
		if err := srv.ListenAndServe(ctx, cfg.CNISocket); err != nil && ctx.Err() == nil {
			fatal <- fmt.Errorf("ztunnel: CNI server: %w", err)
			cancel()
		}
	})
	wg.Go(func() { pods.reconcileLoop(ctx, enroller) })
	if cfg.CNIInstall != nil {
		ic := *cfg.CNIInstall
		ic.Entry.SocketPath, ic.Entry.StateFile = cfg.CNISocket, cfg.CNIStateFile
		if ic.Log == nil {
			ic.Log = log.With("component", "cni-install")
		}
		inst, err := install.New(ic)
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("ztunnel: CNI installer: %w", err)
		}
		wg.Go(func() {
			if err := inst.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("CNI installer stopped", "error", err)
			}
		})
	}
	if cfg.AdminAddr != "" {
		hs := &http.Server{Addr: cfg.AdminAddr, Handler: adminHandler(cfg.NodeName, store, served), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin endpoint", "error", err)
			}
		})
		wg.Go(func() { <-ctx.Done(); _ = hs.Close() })
	}
	log.Info("ztunnel serving", "node", cfg.NodeName, "controlPlane", cfg.ControlPlane, "cniSocket", cfg.CNISocket)
	if cfg.Ready != nil {
		cfg.Ready()
	}
	<-ctx.Done()
	var runErr error
	select {
	case runErr = <-fatal:
	default:
	}
	// Drain: stop taking connections (the pods' rules stay, so new ones
	// are refused, not let through) and give running ones time to end.
	dctx, dcancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	served.drainAll(dctx)
	dcancel()
	wg.Wait()
	return runErr
}

// servedPods are the enrolled pods the proxy serves: enrollment hands over
// the listeners, a certificate of the pod's identity is obtained, then the
// proxy serves them until the pod is released.
type servedPods struct {
	proxy *proxy.Proxy
	certs *certs.Manager
	// serviceAccount names a pod's ServiceAccount (from the pod informer).
	serviceAccount func(ctx context.Context, ns, name string) (string, error)
	trustDomain    string
	log            *slog.Logger
	ctx            context.Context

	mu    sync.Mutex
	byKey map[string]*servedPod
}

type servedPod struct {
	name    string // namespace/name
	ips     []netip.Addr
	cancel  context.CancelFunc
	done    chan struct{}
	id      identity.Identity
	serving *proxy.Serving
}

// start is the Enroller's OnEnrolled: it must not block, so the certificate
// is obtained in the background; until then the listeners accept nothing
// (connections wait in the backlog, or time out and fail closed).
func (s *servedPods) start(pod enroll.Pod, ns *podns.NS, lns *inpod.Listeners) {
	ctx, cancel := context.WithCancel(s.ctx)
	sp := &servedPod{name: pod.Namespace + "/" + pod.Name, ips: pod.IPs, cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	if old := s.byKey[pod.Key()]; old != nil {
		s.mu.Unlock()
		cancel()
		s.log.Warn("pod enrolled twice without a release; keeping the first", "pod", pod.String())
		return
	}
	s.byKey[pod.Key()] = sp
	s.mu.Unlock()
	go func() {
		defer close(sp.done)
		sa, err := s.serviceAccount(ctx, pod.Namespace, pod.Name)
		if err != nil {
			s.log.Error("enrolled pod's service account unknown; not serving it", "pod", pod.String(), "error", err)
			return
		}
		id, err := identity.New(s.trustDomain, pod.Namespace, sa)
		if err != nil {
			s.log.Error("enrolled pod's identity", "pod", pod.String(), "error", err)
			return
		}
		src, err := s.certs.Acquire(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("no certificate for enrolled pod", "pod", pod.String(), "identity", id.String(), "error", err)
			}
			return
		}
		serving, err := s.proxy.Serve(&proxy.Pod{
			UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, IPs: pod.IPs, Cert: src,
			Dialer: &inpod.Dialer{NS: ns, Mark: capture.Mark, Timeout: 10 * time.Second}, Listeners: lns,
		})
		if err != nil {
			s.certs.Release(id)
			s.log.Error("serving enrolled pod", "pod", pod.String(), "error", err)
			return
		}
		s.mu.Lock()
		sp.id, sp.serving = id, serving
		s.mu.Unlock()
		s.log.Info("pod served", "pod", pod.String(), "identity", id.String(), "ips", fmt.Sprint(pod.IPs))
		<-ctx.Done()
	}()
}

// drainAll drains every served pod in parallel within ctx.
func (s *servedPods) drainAll(ctx context.Context) {
	s.mu.Lock()
	var servings []*proxy.Serving
	for _, sp := range s.byKey {
		if sp.serving != nil {
			servings = append(servings, sp.serving)
		}
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, sv := range servings {
		wg.Go(func() { sv.Drain(ctx) })
	}
	wg.Wait()
}

// stop is the Enroller's OnReleased.
func (s *servedPods) stop(ref enroll.PodRef) {
	s.mu.Lock()
	sp := s.byKey[ref.Key()]
	delete(s.byKey, ref.Key())
	s.mu.Unlock()
	if sp == nil {
		return
	}
	sp.cancel()
	<-sp.done
	if sp.serving != nil {
		sp.serving.Stop()
		s.certs.Release(sp.id)
	}
}
