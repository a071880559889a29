package ca

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
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
)

// Istio's names for the root certificate ConfigMap in every namespace
// (what istio-agent and ztunnel read, and what workloads mount).
const (
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// publisherLabels mark the ConfigMap as Istio's does.
var publisherLabels = map[string]string{"istio.io/config": "true"}

// Publisher keeps ConfigMap istio-ca-root-cert (key root-cert.pem) with the
// mesh root in every namespace: created for existing and new namespaces,
// restored when deleted, corrected when edited. Run it in one replica
// (behind leader election); replicas with the same root write the same
// content, so an overlap during failover is harmless.
//
// RBAC: list/watch namespaces; list/watch/create/update configmaps
// cluster-wide.
type Publisher struct {
	client kubernetes.Interface
	log    *slog.Logger

	mu   sync.RWMutex
	root []byte

	queue   workqueue.TypedRateLimitingInterface[string]
	nsList  corev1listers.NamespaceLister
	cmList  corev1listers.ConfigMapLister
	started sync.Once
}

// NewPublisher returns a publisher of rootPEM (the CA's RootsPEM).
func NewPublisher(client kubernetes.Interface, rootPEM []byte, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.Default()
	}
	return &Publisher{
		client: client,
		log:    log,
		root:   bytes.Clone(rootPEM),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "root-cert-publisher"}),
	}
}

// SetRoot changes the published root (root rotation) and rewrites every
// namespace's ConfigMap.
func (p *Publisher) SetRoot(rootPEM []byte) {
	p.mu.Lock()
	p.root = bytes.Clone(rootPEM)
	running := p.nsList != nil
	p.mu.Unlock()
	if running {
		p.enqueueAll()
	}
}

func (p *Publisher) rootPEM() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return string(p.root)
}

// Run publishes until ctx ends. It returns an error if the informers cannot
// sync; it may be called once.
func (p *Publisher) Run(ctx context.Context) error {
	first := false
	p.started.Do(func() { first = true })
	if !first {
		return fmt.Errorf("root cert publisher: Run called twice")
	}
	defer p.queue.ShutDown()

	nsFactory := informers.NewSharedInformerFactory(p.client, 0)
	cmFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootCertConfigMap).String()
		}))
	nsInformer := nsFactory.Core().V1().Namespaces()
	cmInformer := cmFactory.Core().V1().ConfigMaps()
	p.mu.Lock()
	p.nsList, p.cmList = nsInformer.Lister(), cmInformer.Lister()
	p.mu.Unlock()

	if _, err := nsInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.enqueueObject(obj) },
		UpdateFunc: func(_, obj any) { p.enqueueObject(obj) },
	}); err != nil {
		return fmt.Errorf("root cert publisher: namespace handler: %w", err)
	}
	if _, err := cmInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.enqueueNamespaceOf(obj) },
		UpdateFunc: func(_, obj any) { p.enqueueNamespaceOf(obj) },
		DeleteFunc: func(obj any) { p.enqueueNamespaceOf(obj) },
	}); err != nil {
		return fmt.Errorf("root cert publisher: configmap handler: %w", err)
	}
	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	defer nsFactory.Shutdown()
	defer cmFactory.Shutdown()
	for typ, ok := range nsFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("root cert publisher: %v informer did not sync: %w", typ, ctx.Err())
		}
	}
	for typ, ok := range cmFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("root cert publisher: %v informer did not sync: %w", typ, ctx.Err())
		}
	}
	p.log.Info("root cert publisher running", "configmap", RootCertConfigMap)

	const workers = 2
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	p.queue.ShutDown()
	wg.Wait()
	return nil
}

func (p *Publisher) enqueueAll() {
	list, err := p.nsList.List(labels.Everything())
	if err != nil {
		p.log.Error("root cert publisher: list namespaces", "error", err)
		return
	}
	for _, ns := range list {
		p.queue.Add(ns.Name)
	}
}

func (p *Publisher) enqueueObject(obj any) {
	if m, err := metaAccessor(obj); err == nil {
		p.queue.Add(m.GetName())
	}
}

func (p *Publisher) enqueueNamespaceOf(obj any) {
	if m, err := metaAccessor(obj); err == nil {
		p.queue.Add(m.GetNamespace())
	}
}

func metaAccessor(obj any) (metav1.Object, error) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("not an object: %T", obj)
	}
	return m, nil
}

func (p *Publisher) processNext(ctx context.Context) bool {
	ns, quit := p.queue.Get()
	if quit {
		return false
	}
	defer p.queue.Done(ns)
	if err := p.sync(ctx, ns); err != nil {
		if ctx.Err() != nil {
			return false
		}
		p.log.Warn("root cert publisher: sync failed; retrying", "namespace", ns, "error", err, "retries", p.queue.NumRequeues(ns))
		p.queue.AddRateLimited(ns)
		return true
	}
	p.queue.Forget(ns)
	return true
}

// sync makes namespace ns hold the ConfigMap with the current root.
func (p *Publisher) sync(ctx context.Context, ns string) error {
	nsObj, err := p.nsList.Get(ns)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if nsObj.Status.Phase == corev1.NamespaceTerminating || nsObj.DeletionTimestamp != nil {
		return nil
	}
	want := p.rootPEM()
	cms := p.client.CoreV1().ConfigMaps(ns)
	cm, err := p.cmList.ConfigMaps(ns).Get(RootCertConfigMap)
	if apierrors.IsNotFound(err) {
		_, err := cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: maps.Clone(publisherLabels)},
			Data:       map[string]string{RootCertKey: want},
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			p.log.Info("root cert published", "namespace", ns)
			return nil
		case apierrors.IsAlreadyExists(err):
			return fmt.Errorf("configmap created concurrently; cache behind: %w", err)
		case isNamespaceTerminating(err):
			return nil
		default:
			return fmt.Errorf("create configmap %s/%s: %w", ns, RootCertConfigMap, err)
		}
	}
	if err != nil {
		return err
	}
	if cm.Data[RootCertKey] == want && len(cm.Data) == 1 && len(cm.BinaryData) == 0 && hasLabels(cm.Labels) {
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = map[string]string{RootCertKey: want}
	cm.BinaryData = nil
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	maps.Copy(cm.Labels, publisherLabels)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) || isNamespaceTerminating(err) {
			return nil // deleted meanwhile: the delete event requeues it
		}
		return fmt.Errorf("update configmap %s/%s: %w", ns, RootCertConfigMap, err)
	}
	p.log.Info("root cert restored", "namespace", ns)
	return nil
}

func hasLabels(l map[string]string) bool {
	for k, v := range publisherLabels {
		if l[k] != v {
			return false
		}
	}
	return true
}

func isNamespaceTerminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}
