// Package waypointconfig keeps every waypoint's Envoy configuration current
// and writes the status of GAMMA routes: informers on Gateways, HTTPRoutes,
// GRPCRoutes, ReferenceGrants, Services, EndpointSlices, Pods, Namespaces
// and AuthorizationPolicies trigger a rebuild (debounced) of each waypoint
// Gateway's resources with waypointxds.Build, handed to the xDS server.
//
// A rebuild recomputes every waypoint: waypoints are few and a build is
// pure, and the xDS server pushes only when a waypoint's content changed.
package waypointconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambit-mesh/ambit/istiod-lite/controller"
	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
)

// waypointClass is the GatewayClass of waypoints.
const waypointClass = "istio-waypoint"

// Sink takes each waypoint's configuration; *xds.Server is one.
type Sink interface {
	SetWaypoint(ctx context.Context, node string, res xds.Resources) error
	DeleteWaypoint(node string)
}

// Options configure a Controller.
type Options struct {
	Gateway gatewayclient.Interface
	// Dynamic writes the WaypointAccepted condition of
	// AuthorizationPolicies; nil skips it.
	Dynamic dynamic.Interface
	// Informers and DynamicInformers are shared with the ambient
	// controller (controller.Options); New registers on them, so it must
	// be called before they are started.
	Informers        informers.SharedInformerFactory
	DynamicInformers dynamicinformer.DynamicSharedInformerFactory
	Sink             Sink
	Build            waypointxds.Options
	// Debounce is the quiet period before a rebuild; default 100ms.
	Debounce time.Duration
	Log      *slog.Logger
}

// Controller rebuilds waypoint configurations and route statuses.
type Controller struct {
	opts   Options
	log    *slog.Logger
	state  *listerState
	gwf    gatewayinformers.SharedInformerFactory
	synced []cache.InformerSynced
	kick   chan struct{}

	mu       sync.Mutex
	nodes    map[string]bool // waypoint nodes with a configuration
	statuses map[routeKey][]gamma.RouteStatus
	policies map[types.NamespacedName]policyCondition
	version  uint64 // bumped after each rebuild, for status writers
	changed  chan struct{}

	// written is the last policy condition RunStatus wrote (its goroutine
	// only).
	written map[types.NamespacedName]policyCondition
}

// New registers the informers; Run starts the work.
func New(opts Options) (*Controller, error) {
	switch {
	case opts.Gateway == nil:
		return nil, errors.New("waypointconfig: no Gateway API client")
	case opts.Informers == nil || opts.DynamicInformers == nil:
		return nil, errors.New("waypointconfig: shared informer factories are required")
	case opts.Sink == nil:
		return nil, errors.New("waypointconfig: no sink")
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		opts: opts, log: opts.Log.With("component", "waypoint-config"),
		kick: make(chan struct{}, 1), nodes: map[string]bool{}, changed: make(chan struct{}),
		statuses: map[routeKey][]gamma.RouteStatus{},
		written:  map[types.NamespacedName]policyCondition{},
	}
	c.gwf = gatewayinformers.NewSharedInformerFactoryWithOptions(opts.Gateway, 0,
		gatewayinformers.WithTransform(controller.StripManagedFields))
	kf, gw := opts.Informers, c.gwf.Gateway().V1()
	pods := kf.Core().V1().Pods().Informer()
	if err := pods.AddIndexers(cache.Indexers{podIPIndex: podIPs}); err != nil {
		return nil, fmt.Errorf("waypointconfig: pod index: %w", err)
	}
	policies := opts.DynamicInformers.ForResource(controller.AuthorizationPolicies).Informer()
	c.state = &listerState{
		namespaces: kf.Core().V1().Namespaces().Lister(),
		services:   kf.Core().V1().Services().Lister(),
		slices:     kf.Discovery().V1().EndpointSlices().Lister(),
		pods:       pods.GetIndexer(),
		gateways:   gw.Gateways().Lister(),
		httpRoutes: gw.HTTPRoutes().Lister(),
		grpcRoutes: gw.GRPCRoutes().Lister(),
		grants:     gw.ReferenceGrants().Lister(),
		policies:   policies.GetStore(),
		lastGood:   map[string]lastGoodPolicy{},
	}
	for _, inf := range []cache.SharedIndexInformer{
		kf.Core().V1().Namespaces().Informer(), kf.Core().V1().Services().Informer(),
		kf.Discovery().V1().EndpointSlices().Informer(), pods, policies,
		gw.Gateways().Informer(), gw.HTTPRoutes().Informer(), gw.GRPCRoutes().Informer(), gw.ReferenceGrants().Informer(),
	} {
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.trigger() },
			UpdateFunc: func(_, _ any) { c.trigger() },
			DeleteFunc: func(any) { c.trigger() },
		})
		if err != nil {
			return nil, fmt.Errorf("waypointconfig: add handler: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func (c *Controller) trigger() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run starts the Gateway API informers (the shared ones are started by
// their owner) and rebuilds after changes until ctx ends. It returns an
// error when the informers cannot sync (Gateway API CRDs missing).
func (c *Controller) Run(ctx context.Context) error {
	c.gwf.Start(ctx.Done())
	defer c.gwf.Shutdown()
	if !cache.WaitForNamedCacheSync("waypoint-config", ctx.Done(), c.synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("waypointconfig: informers did not sync (are the Gateway API CRDs installed?)")
	}
	c.log.Info("informers synced")
	c.rebuild(ctx)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
			timer.Reset(c.opts.Debounce)
		case <-timer.C:
			c.rebuild(ctx)
		}
	}
}

// rebuild recomputes every waypoint and every route status.
func (c *Controller) rebuild(ctx context.Context) {
	start := time.Now()
	gws, err := c.state.gateways.List(labels.Everything())
	if err != nil {
		c.log.Error("list gateways", "error", err)
		return
	}
	want := map[string]bool{}
	bound := map[types.NamespacedName]*policyBinding{}
	served := map[types.NamespacedName]bool{}
	var built []gamma.RouteStatus
	for _, gw := range gws {
		if string(gw.Spec.GatewayClassName) != waypointClass || gw.DeletionTimestamp != nil {
			continue
		}
		node := xds.WaypointNode(gw.Namespace, gw.Name)
		res, rep, err := waypointxds.Build(c.state, waypointxds.Waypoint{Namespace: gw.Namespace, Name: gw.Name}, c.opts.Build)
		if err != nil {
			c.log.Error("waypoint configuration not built; the previous one stays", "namespace", gw.Namespace, "name", gw.Name, "error", err)
			want[node] = c.hasNode(node)
			continue
		}
		if err := c.opts.Sink.SetWaypoint(ctx, node, xds.Resources(res)); err != nil {
			c.log.Error("waypoint configuration not set", "namespace", gw.Namespace, "name", gw.Name, "error", err)
		}
		want[node] = true
		for _, svc := range rep.Services {
			served[svc] = true
		}
		built = append(built, rep.RouteStatuses...)
		for _, p := range rep.Policies {
			k := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
			b := bound[k]
			if b == nil {
				b = &policyBinding{}
				bound[k] = b
			}
			b.waypoints = append(b.waypoints, gw.Namespace+"/"+gw.Name)
			for _, problem := range p.Problems {
				if !slices.Contains(b.problems, problem) {
					b.problems = append(b.problems, problem)
				}
			}
		}
	}
	c.mu.Lock()
	for node := range c.nodes {
		if !want[node] {
			c.opts.Sink.DeleteWaypoint(node)
		}
	}
	c.nodes = want
	c.mu.Unlock()

	statuses := routeStatuses(c.state, c.opts.Build.Domain, served, built)
	rootNS := c.opts.Build.RootNamespace
	if rootNS == "" {
		rootNS = "istio-system"
	}
	policies := policyConditions(c.state, bound, rootNS)
	c.mu.Lock()
	c.statuses = statuses
	c.policies = policies
	c.version++
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.log.Debug("waypoints rebuilt", "waypoints", len(want), "routes", len(statuses), "took", time.Since(start))
}

func (c *Controller) hasNode(node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[node]
}

// Statuses returns the latest route statuses and policy conditions, and a
// channel closed at the next rebuild.
func (c *Controller) Statuses() (map[routeKey][]gamma.RouteStatus, map[types.NamespacedName]policyCondition, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statuses, c.policies, c.changed
}

// Waypoints returns the nodes that have a configuration, sorted.
func (c *Controller) Waypoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.nodes {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
