package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
)

// podWatch knows this node's pods and every namespace's labels: it decides
// enrollment for the CNI plugin and reconciles enrollment when labels flip
// (a namespace gains or loses istio.io/dataplane-mode=ambient, a pod opts
// out) or a ztunnel restarts.
type podWatch struct {
	kube kubernetes.Interface
	node string
	// stateFile, if set, receives the ambient namespaces, which the CNI
	// plugin reads when the ztunnel is unreachable (to fail closed for
	// ambient pods only).
	stateFile string
	nsKick    chan struct{}
	log       *slog.Logger
	synced    chan struct{}

	podLister corev1listers.PodLister
	nsLister  corev1listers.NamespaceLister
	queue     workqueue.TypedRateLimitingInterface[string] // "ns/name"
}

func newPodWatch(kube kubernetes.Interface, node, stateFile string, log *slog.Logger) *podWatch {
	return &podWatch{
		kube: kube, node: node, stateFile: stateFile, nsKick: make(chan struct{}, 1),
		log: log.With("component", "pods"), synced: make(chan struct{}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "enrollment"}),
	}
}

func (w *podWatch) run(ctx context.Context) {
	podFactory := informers.NewSharedInformerFactoryWithOptions(w.kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", w.node).String()
		}))
	nsFactory := informers.NewSharedInformerFactory(w.kube, 0)
	podInf := podFactory.Core().V1().Pods()
	nsInf := nsFactory.Core().V1().Namespaces()
	w.podLister, w.nsLister = podInf.Lister(), nsInf.Lister()
	_, _ = podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.enqueuePod(obj) },
		UpdateFunc: func(_, obj any) { w.enqueuePod(obj) },
		DeleteFunc: func(obj any) { w.enqueuePod(obj) },
	})
	_, _ = nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.kickNamespaces() },
		DeleteFunc: func(any) { w.kickNamespaces() },
		UpdateFunc: func(old, obj any) {
			w.kickNamespaces()
			o, ok1 := old.(*corev1.Namespace)
			n, ok2 := obj.(*corev1.Namespace)
			if ok1 && ok2 && o.Labels[enroll.LabelDataplaneMode] != n.Labels[enroll.LabelDataplaneMode] {
				w.enqueueNamespace(n.Name)
			}
		},
	})
	podFactory.Start(ctx.Done())
	nsFactory.Start(ctx.Done())
	defer podFactory.Shutdown()
	defer nsFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInf.Informer().HasSynced, nsInf.Informer().HasSynced) {
		return
	}
	close(w.synced)
	w.kickNamespaces()
	for {
		select {
		case <-ctx.Done():
			w.queue.ShutDown()
			return
		case <-w.nsKick:
			w.writeNamespaceState()
		}
	}
}

func (w *podWatch) kickNamespaces() {
	select {
	case w.nsKick <- struct{}{}:
	default:
	}
}

// writeNamespaceState records the ambient namespaces for the CNI plugin.
func (w *podWatch) writeNamespaceState() {
	if w.stateFile == "" {
		return
	}
	nss, err := w.nsLister.List(labels.Everything())
	if err != nil {
		return
	}
	var ambient []string
	for _, ns := range nss {
		if ns.Labels[enroll.LabelDataplaneMode] == enroll.ModeAmbient {
			ambient = append(ambient, ns.Name)
		}
	}
	slices.Sort(ambient)
	if err := wire.WriteNamespaceState(w.stateFile, ambient); err != nil {
		w.log.Error("writing the CNI namespace state file", "path", w.stateFile, "error", err)
	}
}

func (w *podWatch) enqueuePod(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		w.queue.Add(p.Namespace + "/" + p.Name)
	}
}

func (w *podWatch) enqueueNamespace(ns string) {
	pods, err := w.podLister.Pods(ns).List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		w.queue.Add(p.Namespace + "/" + p.Name)
	}
}

// decision is the enrollment rule for a pod object.
func (w *podWatch) decision(p *corev1.Pod) enroll.Decision {
	var nsLabels map[string]string
	if ns, err := w.nsLister.Get(p.Namespace); err == nil {
		nsLabels = ns.Labels
	}
	return enroll.AmbientDecision(nsLabels, p.Labels, p.Spec.HostNetwork)
}

// Decide implements enroll.Decider for CNI ADD: the pod was just bound to
// this node, so the informer may lag; ask the apiserver then.
func (w *podWatch) Decide(ctx context.Context, pod enroll.Pod) (enroll.Decision, error) {
	p, err := w.podLister.Pods(pod.Namespace).Get(pod.Name)
	if apierrors.IsNotFound(err) {
		p, err = w.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	}
	if err != nil {
		return enroll.Skip, fmt.Errorf("pod %s: %w", pod.String(), err)
	}
	return w.decision(p), nil
}

// serviceAccount returns the pod's ServiceAccount, waiting for the informer
// (bounded by ctx) when the pod is brand new.
func (w *podWatch) serviceAccount(ctx context.Context, ns, name string) (string, error) {
	for {
		p, err := w.podLister.Pods(ns).Get(name)
		if err == nil {
			if p.Spec.ServiceAccountName == "" {
				return "default", nil
			}
			return p.Spec.ServiceAccountName, nil
		}
		if !apierrors.IsNotFound(err) {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("pod %s/%s: %w", ns, name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// reconcileLoop brings each queued pod's enrollment in line with its
// decision: enroll captured running pods that are not (label added, or
// enrolled before a ztunnel restart), release pods no longer captured.
// Pod deletion is normally handled by CNI DEL; a deleted pod is released
// here too.
func (w *podWatch) reconcileLoop(ctx context.Context, e *enroll.Enroller) {
	// Everything once at start: re-adopt after a restart, and clean the
	// rules an earlier ztunnel left in pods that are no longer captured.
	pods, _ := w.podLister.List(labels.Everything())
	startup := make(map[string]bool, len(pods))
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		startup[key] = true
		w.queue.Add(key)
	}
	for {
		key, quit := w.queue.Get()
		if quit {
			return
		}
		first := startup[key]
		delete(startup, key)
		if err := w.sync(ctx, e, key, first); err != nil && ctx.Err() == nil {
			w.log.Warn("enrollment reconcile failed; retrying", "pod", key, "error", err)
			w.queue.AddRateLimited(key)
		} else {
			w.queue.Forget(key)
		}
		w.queue.Done(key)
	}
}

// sync reconciles one pod. Releasing a pod the enroller does not hold
// means finding its namespace (a /proc scan), so that is done only in the
// startup pass; later, only pods this ztunnel enrolled are released.
func (w *podWatch) sync(ctx context.Context, e *enroll.Enroller, key string, startup bool) error {
	ns, name := splitKey(key)
	p, err := w.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil // CNI DEL releases it; nothing to do for a pod we never saw running
	}
	if err != nil {
		return err
	}
	ref := enroll.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
	terminal := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	if p.DeletionTimestamp != nil || terminal {
		return nil
	}
	ips := podIPs(p)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch w.decision(p) {
	case enroll.Capture:
		if len(ips) == 0 {
			return nil // no sandbox network yet: CNI ADD (or the status update) comes next
		}
		if e.Check(ctx, ref) == nil {
			return nil
		}
		return e.Enroll(ctx, enroll.Pod{PodRef: ref, IPs: ips})
	default:
		if len(ips) == 0 {
			return nil
		}
		if startup {
			return e.ReleasePod(ctx, enroll.Pod{PodRef: ref, IPs: ips})
		}
		if err := e.Check(ctx, ref); errors.Is(err, enroll.ErrNotEnrolled) {
			return nil
		}
		return e.Release(ctx, ref)
	}
}

func splitKey(k string) (string, string) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}
