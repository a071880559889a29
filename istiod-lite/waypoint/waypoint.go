// Package waypoint deploys waypoints: for every Gateway of class
// istio-waypoint it creates and owns a ServiceAccount, a Deployment and a
// Service named after the Gateway, and reports the Gateway's status
// (Accepted, Programmed, addresses), as Istio's gateway deployment
// controller does for ambient waypoints. The objects carry an owner
// reference to the Gateway, so garbage collection removes them with it;
// the controller also deletes them itself when it sees the Gateway gone.
//
// It writes, so it runs only on the leader: the caller runs Run under
// leader election.
//
// RBAC: list, watch on gateways (gateway.networking.k8s.io); update on
// gateways/status; get, list, watch, create, patch, update, delete on
// deployments (apps), services and serviceaccounts.
package waypoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// Istio's names, so Istio-ambient YAML and tools work unchanged.
const (
	// ClassName is the GatewayClass of waypoints.
	ClassName = "istio-waypoint"
	// ControllerName is the GatewayClass controllerName Istio uses for it.
	ControllerName = "istio.io/mesh-controller"
	// MeshPort is the HBONE port a waypoint listens on.
	MeshPort = 15008
	// ProtocolHBONE is the listener protocol of that port.
	ProtocolHBONE = "HBONE"

	// LabelGatewayName names the Gateway on every object deployed for it
	// (and selects the waypoint's pods).
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelManaged marks the objects this controller manages (Istio's
	// label and value).
	LabelManaged = "gateway.istio.io/managed"
	managedValue = "istio.io-mesh-controller"
	// LabelDataplaneMode "none" on the waypoint's pods keeps ztunnel from
	// capturing them as ordinary workloads, as Istio labels its waypoints.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// LabelWaypointFor is the Gateway label for which traffic the waypoint
	// handles: service (Istio's default), workload, all, none.
	LabelWaypointFor = "istio.io/waypoint-for"

	fieldManager = "istiod-lite"
)

// Config configures a Controller.
type Config struct {
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
	// Image of the waypoint container; default DefaultImage.
	Image string
	// ControlPlaneAddress is passed to the waypoint as --xds-address;
	// default istiod.istio-system.svc:15012.
	ControlPlaneAddress string
	// DomainSuffix of Service hostnames; default cluster.local.
	DomainSuffix string
	Log          *slog.Logger
}

// DefaultImage is the waypoint image used when Config.Image is empty.
const DefaultImage = "ambit/waypoint:dev"

// Controller reconciles waypoint Gateways.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[key]
	gateways gatewaylisters.GatewayLister
	deploys  func(ns, name string) (*appsv1.Deployment, error)
	services func(ns, name string) (*corev1.Service, error)
	synced   []cache.InformerSynced
	start    func(stop <-chan struct{})
}

type key struct{ namespace, name string }

// New returns a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.Image == "" {
		cfg.Image = DefaultImage
	}
	if cfg.ControlPlaneAddress == "" {
		cfg.ControlPlaneAddress = "istiod.istio-system.svc:15012"
	}
	if cfg.DomainSuffix == "" {
		cfg.DomainSuffix = "cluster.local"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Controller{
		cfg: cfg,
		log: cfg.Log.With("component", "waypoint-deployer"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[key](200*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "waypoint"}),
	}
	gwf := gatewayinformers.NewSharedInformerFactory(cfg.Gateway, 0)
	gwInf := gwf.Gateway().V1().Gateways()
	c.gateways = gwInf.Lister()
	kf := informers.NewSharedInformerFactoryWithOptions(cfg.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = LabelManaged + "=" + managedValue
	}))
	depInf := kf.Apps().V1().Deployments()
	svcInf := kf.Core().V1().Services()
	c.deploys = func(ns, name string) (*appsv1.Deployment, error) { return depInf.Lister().Deployments(ns).Get(name) }
	c.services = func(ns, name string) (*corev1.Service, error) { return svcInf.Lister().Services(ns).Get(name) }

	_, _ = gwInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueObject(obj) },
		UpdateFunc: func(_, obj any) { c.enqueueObject(obj) },
		DeleteFunc: func(obj any) { c.enqueueObject(obj) },
	})
	owned := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueOwner(obj) },
		UpdateFunc: func(_, obj any) { c.enqueueOwner(obj) },
		DeleteFunc: func(obj any) { c.enqueueOwner(obj) },
	}
	_, _ = depInf.Informer().AddEventHandler(owned)
	_, _ = svcInf.Informer().AddEventHandler(owned)
	c.synced = []cache.InformerSynced{gwInf.Informer().HasSynced, depInf.Informer().HasSynced, svcInf.Informer().HasSynced}
	c.start = func(stop <-chan struct{}) { gwf.Start(stop); kf.Start(stop) }
	return c
}

func (c *Controller) enqueueObject(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if m, err := meta.Accessor(obj); err == nil {
		c.queue.Add(key{m.GetNamespace(), m.GetName()})
	}
}

// enqueueOwner queues the Gateway an owned object was deployed for.
func (c *Controller) enqueueOwner(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if m, err := meta.Accessor(obj); err == nil {
		if gw := m.GetLabels()[LabelGatewayName]; gw != "" {
			c.queue.Add(key{m.GetNamespace(), gw})
		}
	}
}

// Run reconciles until ctx ends. Call it on the leader only.
func (c *Controller) Run(ctx context.Context) {
	defer c.queue.ShutDown()
	c.start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	c.log.Info("deploying waypoints", "class", ClassName, "image", c.cfg.Image)
	go c.keepClass(ctx)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		k, quit := c.queue.Get()
		if quit {
			return
		}
		if err := c.reconcile(ctx, k); err != nil && ctx.Err() == nil {
			c.log.Warn("reconcile waypoint", "namespace", k.namespace, "name", k.name, "error", err)
			c.queue.AddRateLimited(k)
		} else {
			c.queue.Forget(k)
		}
		c.queue.Done(k)
	}
}

func (c *Controller) reconcile(ctx context.Context, k key) error {
	gw, err := c.gateways.Gateways(k.namespace).Get(k.name)
	if apierrors.IsNotFound(err) {
		return c.cleanup(ctx, k)
	}
	if err != nil {
		return err
	}
	if string(gw.Spec.GatewayClassName) != ClassName || gw.DeletionTimestamp != nil {
		return nil
	}
	if reason, msg := validate(gw); reason != "" {
		return c.writeStatus(ctx, gw, []metav1.Condition{
			{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionFalse, Reason: reason, Message: msg},
			{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse, Reason: string(gatewayv1.GatewayReasonInvalid), Message: "the Gateway is not accepted: " + msg},
		})
	}
	if err := c.apply(ctx, gw); err != nil {
		return err
	}
	return c.writeStatus(ctx, gw, c.progress(gw))
}

// validate returns a Gateway API reason and message when gw cannot be a
// waypoint: it needs a listener on port 15008 with protocol HBONE.
func validate(gw *gatewayv1.Gateway) (reason, message string) {
	for _, l := range gw.Spec.Listeners {
		if l.Port == MeshPort && l.Protocol == ProtocolHBONE {
			return "", ""
		}
	}
	return string(gatewayv1.GatewayReasonListenersNotValid),
		fmt.Sprintf("a waypoint needs a listener with port %d and protocol %s", MeshPort, ProtocolHBONE)
}

func (c *Controller) labels(gw *gatewayv1.Gateway) map[string]string {
	return map[string]string{LabelGatewayName: gw.Name, LabelManaged: managedValue}
}

func ownerRef(gw *gatewayv1.Gateway) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(gatewayv1.GroupVersion.String()).WithKind("Gateway").
		WithName(gw.Name).WithUID(gw.UID)
}

// apply creates or updates the ServiceAccount, Deployment and Service by
// server-side apply: unchanged objects are not rewritten, and fields
// other managers own (an autoscaler's replicas excepted) are kept.
func (c *Controller) apply(ctx context.Context, gw *gatewayv1.Gateway) error {
	ns, name := gw.Namespace, gw.Name
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	lbl := c.labels(gw)

	sa := corev1ac.ServiceAccount(name, ns).WithLabels(lbl).WithOwnerReferences(ownerRef(gw))
	if _, err := c.cfg.Kube.CoreV1().ServiceAccounts(ns).Apply(ctx, sa, opts); err != nil {
		return fmt.Errorf("service account: %w", err)
	}

	podLabels := map[string]string{LabelGatewayName: name, LabelDataplaneMode: "none"}
	if v := gw.Labels[LabelWaypointFor]; v != "" {
		podLabels[LabelWaypointFor] = v
	}
	dep := appsv1ac.Deployment(name, ns).WithLabels(lbl).WithOwnerReferences(ownerRef(gw)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{LabelGatewayName: name})).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).
				// Istio's scrape annotations, for Prometheus setups that
				// honour them.
				WithAnnotations(map[string]string{
					"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/metrics",
				}).
				WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(name).
					WithTerminationGracePeriodSeconds(30).
					// Istio's proxy uid; set at pod level so the kubelet
					// makes the projected token readable by it.
					WithSecurityContext(corev1ac.PodSecurityContext().
						WithRunAsUser(1337).WithRunAsGroup(1337).WithFSGroup(1337).WithRunAsNonRoot(true)).
					// The waypoint authenticates to the CA and xDS with a
					// pod-bound token for istio-ca, and trusts the mesh root
					// istiod-lite publishes in every namespace.
					WithVolumes(
						corev1ac.Volume().WithName("istio-token").WithProjected(corev1ac.ProjectedVolumeSource().
							WithSources(corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
								WithPath("istio-token").WithAudience("istio-ca").WithExpirationSeconds(43200)))),
						corev1ac.Volume().WithName("istio-ca-root-cert").WithConfigMap(corev1ac.ConfigMapVolumeSource().
							WithName("istio-ca-root-cert")),
					).
					WithContainers(corev1ac.Container().
						WithName("waypoint").
						WithImage(c.cfg.Image).
						WithArgs(
							"--namespace="+ns,
							"--name="+name,
							"--xds-address="+c.cfg.ControlPlaneAddress,
							"--root-cert=/var/run/secrets/istio/root-cert.pem",
							"--token=/var/run/secrets/tokens/istio-token",
						).
						WithEnv(
							corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().
								WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.name"))),
							corev1ac.EnvVar().WithName("POD_IP").WithValueFrom(corev1ac.EnvVarSource().
								WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("status.podIP"))),
						).
						WithVolumeMounts(
							corev1ac.VolumeMount().WithName("istio-token").WithMountPath("/var/run/secrets/tokens").WithReadOnly(true),
							corev1ac.VolumeMount().WithName("istio-ca-root-cert").WithMountPath("/var/run/secrets/istio").WithReadOnly(true),
						).
						WithPorts(
							corev1ac.ContainerPort().WithName("mesh").WithContainerPort(MeshPort).WithProtocol(corev1.ProtocolTCP),
							corev1ac.ContainerPort().WithName("health").WithContainerPort(15021).WithProtocol(corev1.ProtocolTCP),
							corev1ac.ContainerPort().WithName("metrics").WithContainerPort(15020).WithProtocol(corev1.ProtocolTCP),
						).
						// Probed every second: a replacement waypoint takes
						// traffic as soon as it has its configuration, not at
						// the next 10 s default tick after a first failure.
						WithReadinessProbe(corev1ac.Probe().WithHTTPGet(
							corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("health"))).
							WithPeriodSeconds(1).WithFailureThreshold(3).WithTimeoutSeconds(1)).
						WithSecurityContext(corev1ac.SecurityContext().
							WithAllowPrivilegeEscalation(false).
							WithRunAsNonRoot(true).
							WithReadOnlyRootFilesystem(true).
							WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))),
					))))
	if _, err := c.cfg.Kube.AppsV1().Deployments(ns).Apply(ctx, dep, opts); err != nil {
		return fmt.Errorf("deployment: %w", err)
	}

	svc := corev1ac.Service(name, ns).WithLabels(lbl).WithOwnerReferences(ownerRef(gw)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(map[string]string{LabelGatewayName: name}).
			WithPorts(corev1ac.ServicePort().WithName("mesh").WithPort(MeshPort).
				WithTargetPort(intstr.FromInt32(MeshPort)).WithProtocol(corev1.ProtocolTCP).WithAppProtocol("all")))
	if _, err := c.cfg.Kube.CoreV1().Services(ns).Apply(ctx, svc, opts); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	return nil
}

// progress reports Accepted and, from the informers' view of the
// Deployment and Service, Programmed: True once the Deployment has an
// available replica and the Service an address.
func (c *Controller) progress(gw *gatewayv1.Gateway) []metav1.Condition {
	accepted := metav1.Condition{Type: string(gatewayv1.GatewayConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayReasonAccepted), Message: "deployed by istiod-lite"}
	programmed := metav1.Condition{Type: string(gatewayv1.GatewayConditionProgrammed), Status: metav1.ConditionFalse,
		Reason: string(gatewayv1.GatewayReasonPending)}
	dep, derr := c.deploys(gw.Namespace, gw.Name)
	svc, serr := c.services(gw.Namespace, gw.Name)
	switch {
	case derr != nil || serr != nil:
		programmed.Message = "waiting for the waypoint Deployment and Service"
	case svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone:
		programmed.Reason = string(gatewayv1.GatewayReasonAddressNotAssigned)
		programmed.Message = "the waypoint Service has no cluster IP yet"
	case dep.Status.AvailableReplicas < 1:
		programmed.Message = fmt.Sprintf("waiting for the waypoint Deployment to have an available replica (%d/%d ready)",
			dep.Status.ReadyReplicas, ptrOr(dep.Spec.Replicas, 1))
	default:
		programmed.Status = metav1.ConditionTrue
		programmed.Reason = string(gatewayv1.GatewayReasonProgrammed)
		programmed.Message = fmt.Sprintf("%d of %d waypoint replicas available", dep.Status.AvailableReplicas, ptrOr(dep.Spec.Replicas, 1))
	}
	return []metav1.Condition{accepted, programmed}
}

func ptrOr(p *int32, d int32) int32 {
	if p == nil {
		return d
	}
	return *p
}

// addresses are the Service's cluster IPs and its hostname, as Istio
// reports them for a waypoint.
func (c *Controller) addresses(gw *gatewayv1.Gateway) []gatewayv1.GatewayStatusAddress {
	svc, err := c.services(gw.Namespace, gw.Name)
	if err != nil {
		return nil
	}
	var out []gatewayv1.GatewayStatusAddress
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, gatewayv1.GatewayStatusAddress{Type: new(gatewayv1.IPAddressType), Value: ip})
		}
	}
	if len(out) == 0 {
		return nil
	}
	host := fmt.Sprintf("%s.%s.svc.%s", svc.Name, svc.Namespace, c.cfg.DomainSuffix)
	return append(out, gatewayv1.GatewayStatusAddress{Type: new(gatewayv1.HostnameAddressType), Value: host})
}

// writeStatus sets conds (keeping transition times of unchanged ones) and
// the addresses (of an accepted waypoint), and updates the status only when it changed.
func (c *Controller) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, conds []metav1.Condition) error {
	var addrs []gatewayv1.GatewayStatusAddress
	if conds[0].Status == metav1.ConditionTrue {
		addrs = c.addresses(gw)
	}
	next := gw.DeepCopy()
	for _, cond := range conds {
		cond.ObservedGeneration = gw.Generation
		meta.SetStatusCondition(&next.Status.Conditions, cond)
	}
	next.Status.Addresses = addrs
	if statusEqual(gw.Status, next.Status) {
		return nil
	}
	_, err := c.cfg.Gateway.GatewayV1().Gateways(gw.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: fieldManager})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		// The informer brings the newer version (or the delete) and
		// requeues; a retry from the stale copy would conflict again.
		return nil
	}
	return err
}

func statusEqual(a, b gatewayv1.GatewayStatus) bool {
	if !slices.EqualFunc(a.Addresses, b.Addresses, func(x, y gatewayv1.GatewayStatusAddress) bool {
		return x.Value == y.Value && ptrEq(x.Type, y.Type)
	}) {
		return false
	}
	return slices.EqualFunc(a.Conditions, b.Conditions, func(x, y metav1.Condition) bool {
		return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message &&
			x.ObservedGeneration == y.ObservedGeneration
	})
}

func ptrEq[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// cleanup deletes what was deployed for a Gateway that is gone, for
// clusters where garbage collection is not running (or is slow): only
// objects labelled as ours for that Gateway and owned by a Gateway.
func (c *Controller) cleanup(ctx context.Context, k key) error {
	sel := labels.SelectorFromSet(map[string]string{LabelGatewayName: k.name, LabelManaged: managedValue})
	owned := func(m metav1.Object) bool {
		return m.GetName() == k.name && sel.Matches(labels.Set(m.GetLabels())) &&
			slices.ContainsFunc(m.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
				return r.Kind == "Gateway" && r.Name == k.name
			})
	}
	var errs []error
	del := func(kind string, get func() (metav1.Object, error), remove func() error) {
		m, err := get()
		if apierrors.IsNotFound(err) {
			return
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", kind, err))
			return
		}
		if !owned(m) {
			return
		}
		if err := remove(); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", kind, err))
			return
		}
		c.log.Info("deleted for removed waypoint", "kind", kind, "namespace", k.namespace, "name", k.name)
	}
	bg := metav1.DeletePropagationBackground
	dopts := metav1.DeleteOptions{PropagationPolicy: &bg}
	core, apps := c.cfg.Kube.CoreV1(), c.cfg.Kube.AppsV1()
	del("Deployment", func() (metav1.Object, error) {
		return apps.Deployments(k.namespace).Get(ctx, k.name, metav1.GetOptions{})
	},
		func() error { return apps.Deployments(k.namespace).Delete(ctx, k.name, dopts) })
	del("Service", func() (metav1.Object, error) { return core.Services(k.namespace).Get(ctx, k.name, metav1.GetOptions{}) },
		func() error { return core.Services(k.namespace).Delete(ctx, k.name, dopts) })
	del("ServiceAccount", func() (metav1.Object, error) {
		return core.ServiceAccounts(k.namespace).Get(ctx, k.name, metav1.GetOptions{})
	}, func() error { return core.ServiceAccounts(k.namespace).Delete(ctx, k.name, dopts) })
	return errors.Join(errs...)
}
