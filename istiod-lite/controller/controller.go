// Package controller feeds the workload API from Kubernetes: informers on
// Namespaces, Pods, Services, EndpointSlices and Istio's security policies
// update an ambient.Index, and every change it reports is handed to the xDS
// server. Informer handlers never block on clients: the xDS server's
// Enqueue only records the change.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
)

// Istio's security policy resources, watched as unstructured objects so
// that unknown fields are reported instead of silently dropped.
var (
	AuthorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	PeerAuthentications   = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
	// Gateways are watched (when the Gateway API is installed) for the
	// traffic type of waypoints, which decides whether a Service labelled
	// to use one is sent to it.
	Gateways = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
)

// Sink receives the changes to push; *xds.Server is one.
type Sink interface {
	Enqueue(typeURL string, upserts map[string]proto.Message, deletes []string) error
}

// PolicyObserver hears about every policy event after the Index has taken
// it, to report outcomes (status conditions, events). err is the
// translation error of this version, nil when it was accepted.
type PolicyObserver interface {
	PolicyChanged(ref PolicyRef, err error)
	PolicyDeleted(kind, namespace, name string)
}

// PolicyRef names one version of a policy object.
type PolicyRef struct {
	Kind, Namespace, Name string
	UID                   types.UID
	Generation            int64
}

// Options configure a Controller.
type Options struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	Index   *ambient.Index
	Sink    Sink
	// Policies, if set, is told about policy outcomes.
	Policies PolicyObserver
	Log      *slog.Logger
	// Resync is the informers' resync period; 0 disables resync.
	Resync time.Duration
	// Informers and DynamicInformers, if set, are shared with other
	// controllers (their factories must use StripManagedFields as
	// transform); otherwise Run makes its own.
	Informers        informers.SharedInformerFactory
	DynamicInformers dynamicinformer.DynamicSharedInformerFactory
}

// Controller runs the informers.
type Controller struct {
	opts   Options
	log    *slog.Logger
	synced chan struct{}
}

// New validates opts.
func New(opts Options) (*Controller, error) {
	switch {
	case opts.Kube == nil:
		return nil, errors.New("controller: no Kubernetes client")
	case opts.Dynamic == nil:
		return nil, errors.New("controller: no dynamic client")
	case opts.Index == nil:
		return nil, errors.New("controller: no index")
	case opts.Sink == nil:
		return nil, errors.New("controller: no sink")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Controller{opts: opts, log: opts.Log.With("component", "controller"), synced: make(chan struct{})}, nil
}

// Synced is closed once every informer has listed its objects and their
// changes have been handed to the sink.
func (c *Controller) Synced() <-chan struct{} { return c.synced }

// Run starts the informers and serves until ctx ends. It returns an error
// when the informers cannot sync (for example, the CRDs are not installed).
func (c *Controller) Run(ctx context.Context) error {
	kube, dyn := c.opts.Informers, c.opts.DynamicInformers
	if kube == nil {
		kube = NewInformerFactory(c.opts.Kube, c.opts.Resync)
	}
	if dyn == nil {
		dyn = dynamicinformer.NewDynamicSharedInformerFactory(c.opts.Dynamic, c.opts.Resync)
	}

	handlers := []struct {
		informer cache.SharedIndexInformer
		upsert   func(obj any)
		remove   func(ns, name string)
	}{
		{kube.Core().V1().Namespaces().Informer(), typed(c, (*ambient.Index).UpsertNamespace), func(_, name string) { c.push(c.opts.Index.DeleteNamespace(name)) }},
		{kube.Core().V1().Pods().Informer(), typed(c, (*ambient.Index).UpsertPod), func(ns, name string) { c.push(c.opts.Index.DeletePod(ns, name)) }},
		{kube.Core().V1().Services().Informer(), typed(c, (*ambient.Index).UpsertService), func(ns, name string) { c.push(c.opts.Index.DeleteService(ns, name)) }},
		{kube.Discovery().V1().EndpointSlices().Informer(), typed(c, (*ambient.Index).UpsertEndpointSlice), func(ns, name string) { c.push(c.opts.Index.DeleteEndpointSlice(ns, name)) }},
		{dyn.ForResource(AuthorizationPolicies).Informer(), c.upsertAuthorizationPolicy, c.deleteAuthorizationPolicy},
		{dyn.ForResource(PeerAuthentications).Informer(), c.upsertPeerAuthentication, c.deletePeerAuthentication},
	}
	if c.served(Gateways) {
		handlers = append(handlers, struct {
			informer cache.SharedIndexInformer
			upsert   func(obj any)
			remove   func(ns, name string)
		}{dyn.ForResource(Gateways).Informer(), c.upsertGateway, func(ns, name string) { c.push(c.opts.Index.DeleteWaypoint(ns, name)) }})
	} else {
		c.log.Info("Gateway API not installed: waypoints are assumed to take service traffic (restart istiod-lite after installing it)")
	}
	var syncs []cache.InformerSynced
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    h.upsert,
			UpdateFunc: func(_, obj any) { h.upsert(obj) },
			DeleteFunc: func(obj any) {
				if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = tomb.Obj
				}
				if m, ok := obj.(metav1.Object); ok {
					h.remove(m.GetNamespace(), m.GetName())
				}
			},
		})
		if err != nil {
			return fmt.Errorf("controller: add handler: %w", err)
		}
		syncs = append(syncs, reg.HasSynced)
	}
	kube.Start(ctx.Done())
	dyn.Start(ctx.Done())
	defer kube.Shutdown()
	defer dyn.Shutdown()
	if !cache.WaitForNamedCacheSync("istiod-lite", ctx.Done(), syncs...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("controller: informers did not sync (are the security.istio.io CRDs installed?)")
	}
	c.log.Info("informers synced")
	close(c.synced)
	<-ctx.Done()
	return nil
}

// served reports whether the apiserver serves gvr (an optional CRD).
func (c *Controller) served(gvr schema.GroupVersionResource) bool {
	list, err := c.opts.Kube.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return true
		}
	}
	return false
}

// upsertGateway records a waypoint Gateway's traffic type; a Gateway of
// another class (or one that stopped being a waypoint) is forgotten.
func (c *Controller) upsertGateway(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	class, _, _ := unstructured.NestedString(u.Object, "spec", "gatewayClassName")
	if class != WaypointClass || u.GetDeletionTimestamp() != nil {
		c.push(c.opts.Index.DeleteWaypoint(u.GetNamespace(), u.GetName()))
		return
	}
	c.push(c.opts.Index.UpsertWaypoint(u.GetNamespace(), u.GetName(), u.GetLabels()[LabelWaypointFor]))
}

// WaypointClass and LabelWaypointFor: Istio's waypoint GatewayClass and
// traffic-type label.
const (
	WaypointClass    = "istio-waypoint"
	LabelWaypointFor = "istio.io/waypoint-for"
)

// typed adapts an Index upsert method to an informer callback.
func typed[T any](c *Controller, upsert func(*ambient.Index, T) ambient.Changes) func(obj any) {
	return func(obj any) {
		t, ok := obj.(T)
		if !ok {
			c.log.Error("informer delivered an unexpected type", "type", fmt.Sprintf("%T", obj))
			return
		}
		c.push(upsert(c.opts.Index, t))
	}
}

// push hands a change set to the sink.
func (c *Controller) push(ch ambient.Changes) {
	if ch.Empty() {
		return
	}
	if len(ch.Addresses) > 0 || len(ch.RemovedAddresses) > 0 {
		ups := make(map[string]proto.Message, len(ch.Addresses))
		for name, a := range ch.Addresses {
			ups[name] = a
		}
		if err := c.opts.Sink.Enqueue(workloadv1.AddressTypeURL, ups, ch.RemovedAddresses); err != nil {
			c.log.Error("enqueue addresses", "error", err)
		}
	}
	if len(ch.Authorizations) > 0 || len(ch.RemovedAuthorizations) > 0 {
		ups := make(map[string]proto.Message, len(ch.Authorizations))
		for name, a := range ch.Authorizations {
			ups[name] = a
		}
		if err := c.opts.Sink.Enqueue(workloadv1.AuthorizationTypeURL, ups, ch.RemovedAuthorizations); err != nil {
			c.log.Error("enqueue authorizations", "error", err)
		}
	}
}

func (c *Controller) upsertAuthorizationPolicy(obj any) {
	upsertPolicy(c, "AuthorizationPolicy", obj, ambient.DecodeAuthorizationPolicy, c.opts.Index.UpsertAuthorizationPolicy)
}

func (c *Controller) deleteAuthorizationPolicy(ns, name string) {
	c.deletePolicy("AuthorizationPolicy", c.opts.Index.DeleteAuthorizationPolicy(ns, name), ns, name)
}

func (c *Controller) upsertPeerAuthentication(obj any) {
	upsertPolicy(c, "PeerAuthentication", obj, ambient.DecodePeerAuthentication, c.opts.Index.UpsertPeerAuthentication)
}

func (c *Controller) deletePeerAuthentication(ns, name string) {
	c.deletePolicy("PeerAuthentication", c.opts.Index.DeletePeerAuthentication(ns, name), ns, name)
}

// upsertPolicy decodes a policy strictly and hands it to the index; a
// version that cannot be decoded or translated is reported, and the index
// keeps what it had for that policy, so nothing else changes.
func upsertPolicy[T any](c *Controller, kind string, obj any, decode func([]byte) (T, error), upsert func(T) (ambient.Changes, error)) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	data, err := json.Marshal(u.Object)
	if err != nil {
		c.policyOutcome(kind, u, fmt.Errorf("encode: %w", err))
		return
	}
	p, err := decode(data)
	if err != nil {
		c.policyOutcome(kind, u, err)
		return
	}
	ch, err := upsert(p)
	c.push(ch)
	c.policyOutcome(kind, u, err)
}

func (c *Controller) deletePolicy(kind string, ch ambient.Changes, ns, name string) {
	c.push(ch)
	if c.opts.Policies != nil {
		c.opts.Policies.PolicyDeleted(kind, ns, name)
	}
}

func (c *Controller) policyOutcome(kind string, u *unstructured.Unstructured, err error) {
	if err != nil {
		c.log.Warn("policy skipped; its last valid version (if any) stays in force", "kind", kind, "namespace", u.GetNamespace(), "name", u.GetName(), "error", err)
	}
	if c.opts.Policies != nil {
		c.opts.Policies.PolicyChanged(PolicyRef{Kind: kind, Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(), Generation: u.GetGeneration()}, err)
	}
}

// NewInformerFactory returns the Kubernetes informer factory the controller
// uses, with StripManagedFields as transform.
func NewInformerFactory(kube kubernetes.Interface, resync time.Duration) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactoryWithOptions(kube, resync, informers.WithTransform(StripManagedFields))
}

// StripManagedFields drops what the translation never reads, to keep the
// informer caches small (10,000 pods carry megabytes of managed fields).
func StripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		// Volumes and container details are not part of the workload API.
		pod.Spec.Volumes = nil
		for i := range pod.Spec.Containers {
			pod.Spec.Containers[i].Env = nil
			pod.Spec.Containers[i].VolumeMounts = nil
		}
	}
	return obj, nil
}
