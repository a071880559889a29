package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/istiod-lite/debug"
)

// ConditionZtunnelAccepted is the status condition Istio ambient writes on
// policies for how ztunnel takes them; tools that read Istio's read ours.
const ConditionZtunnelAccepted = "ZtunnelAccepted"

// StatusWriter reports each policy's outcome as a status condition (and,
// for problems, a Warning Event). It records outcomes from the informers at
// any time but writes only while Run runs, which the caller does under
// leader election, so replicas do not fight over the same status.
//
// RBAC: get, update on authorizationpolicies/status and
// peerauthentications/status; create, patch on events.
type StatusWriter struct {
	dyn    dynamic.Interface
	index  *ambient.Index
	events record.EventRecorder
	stop   func()
	log    *slog.Logger

	mu       sync.Mutex
	outcomes map[statusKey]outcome

	queue workqueue.TypedRateLimitingInterface[statusKey]
}

type statusKey struct{ kind, namespace, name string }

type outcome struct {
	ref PolicyRef
	err error // decode or translation error of this version
}

// NewStatusWriter returns a writer; kube is used for Events.
func NewStatusWriter(kube kubernetes.Interface, dyn dynamic.Interface, index *ambient.Index, log *slog.Logger) *StatusWriter {
	if log == nil {
		log = slog.Default()
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	return &StatusWriter{
		dyn:      dyn,
		index:    index,
		events:   b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "istiod-lite"}),
		stop:     b.Shutdown,
		log:      log.With("component", "policy-status"),
		outcomes: map[statusKey]outcome{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[statusKey](200*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[statusKey]{Name: "policy-status"}),
	}
}

// PolicyChanged implements PolicyObserver.
func (w *StatusWriter) PolicyChanged(ref PolicyRef, err error) {
	k := statusKey{ref.Kind, ref.Namespace, ref.Name}
	w.mu.Lock()
	w.outcomes[k] = outcome{ref: ref, err: err}
	w.mu.Unlock()
	w.queue.Add(k)
}

// PolicyDeleted implements PolicyObserver.
func (w *StatusWriter) PolicyDeleted(kind, namespace, name string) {
	w.mu.Lock()
	delete(w.outcomes, statusKey{kind, namespace, name})
	w.mu.Unlock()
}

// Run writes statuses until ctx ends.
func (w *StatusWriter) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
	// Outcomes recorded before this replica led were not written by it.
	w.mu.Lock()
	for k := range w.outcomes {
		w.queue.Add(k)
	}
	w.mu.Unlock()
	for {
		k, quit := w.queue.Get()
		if quit {
			return
		}
		if err := w.write(ctx, k); err != nil && ctx.Err() == nil {
			w.log.Warn("writing policy status failed; retrying", "kind", k.kind, "namespace", k.namespace, "name", k.name, "error", err)
			w.queue.AddRateLimited(k)
		} else {
			w.queue.Forget(k)
		}
		w.queue.Done(k)
	}
}

// Close stops the event broadcaster.
func (w *StatusWriter) Close() { w.stop() }

// condition computes the condition for a policy's latest version.
func (w *StatusWriter) condition(k statusKey, o outcome) (status metav1.ConditionStatus, reason, message string) {
	if o.err != nil {
		var pe *ambient.PolicyError
		msg := o.err.Error()
		if errors.As(o.err, &pe) {
			msg = pe.Err.Error()
		}
		return metav1.ConditionFalse, ambient.ReasonInvalid, "not applied; the last valid version, if any, stays in force: " + msg
	}
	if k.kind == "PeerAuthentication" {
		return metav1.ConditionTrue, ambient.ReasonAccepted, "applied by ztunnel"
	}
	res, _, ok := w.index.AuthorizationPolicyStatus(k.namespace, k.name)
	if !ok {
		return metav1.ConditionUnknown, "Pending", "not yet processed"
	}
	st := metav1.ConditionTrue
	if res.Reason != ambient.ReasonAccepted {
		st = metav1.ConditionFalse
	}
	return st, res.Reason, res.Message
}

func (w *StatusWriter) write(ctx context.Context, k statusKey) error {
	w.mu.Lock()
	o, ok := w.outcomes[k]
	w.mu.Unlock()
	if !ok {
		return nil // deleted
	}
	st, reason, message := w.condition(k, o)
	gvr := AuthorizationPolicies
	if k.kind == "PeerAuthentication" {
		gvr = PeerAuthentications
	}
	changed := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := w.dyn.Resource(gvr).Namespace(k.namespace).Get(ctx, k.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if u.GetUID() != o.ref.UID || u.GetGeneration() != o.ref.Generation {
			return nil // a newer version is on its way through the informer
		}
		if !SetCondition(u, metav1.Condition{
			Type: ConditionZtunnelAccepted, Status: st, Reason: reason, Message: message, ObservedGeneration: o.ref.Generation,
		}) {
			return nil
		}
		_, err = w.dyn.Resource(gvr).Namespace(k.namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{})
		changed = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	if changed && st != metav1.ConditionTrue {
		ref := &corev1.ObjectReference{APIVersion: gvr.GroupVersion().String(), Kind: k.kind, Namespace: k.namespace, Name: k.name, UID: o.ref.UID}
		w.events.Event(ref, corev1.EventTypeWarning, reason, message)
	}
	return nil
}

// SetCondition sets cond in u's status.conditions, keeping other
// conditions and the transition time when the status is unchanged. It
// reports whether anything changed.
func SetCondition(u *unstructured.Unstructured, cond metav1.Condition) bool {
	raw, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	now := metav1.Now().UTC().Format(time.RFC3339)
	out := make([]any, 0, len(raw)+1)
	found := false
	for _, item := range raw {
		m, ok := item.(map[string]any)
		if !ok || m["type"] != cond.Type {
			out = append(out, item)
			continue
		}
		found = true
		if m["status"] == string(cond.Status) && m["reason"] == cond.Reason && m["message"] == cond.Message &&
			fmt.Sprint(m["observedGeneration"]) == fmt.Sprint(cond.ObservedGeneration) {
			return false
		}
		ltt := now
		if m["status"] == string(cond.Status) {
			if s, ok := m["lastTransitionTime"].(string); ok {
				ltt = s
			}
		}
		out = append(out, conditionMap(cond, ltt))
	}
	if !found {
		out = append(out, conditionMap(cond, now))
	}
	if err := unstructured.SetNestedSlice(u.Object, out, "status", "conditions"); err != nil {
		return false
	}
	return true
}

func conditionMap(c metav1.Condition, ltt string) map[string]any {
	return map[string]any{
		"type":               c.Type,
		"status":             string(c.Status),
		"reason":             c.Reason,
		"message":            c.Message,
		"observedGeneration": c.ObservedGeneration,
		"lastTransitionTime": ltt,
	}
}

// Problems lists the policies whose latest version was not applied as
// written, for the debug view.
func (w *StatusWriter) Problems() []debug.PolicyProblem {
	w.mu.Lock()
	outcomes := make(map[statusKey]outcome, len(w.outcomes))
	maps.Copy(outcomes, w.outcomes)
	w.mu.Unlock()
	var out []debug.PolicyProblem
	for k, o := range outcomes {
		st, reason, message := w.condition(k, o)
		if st == metav1.ConditionTrue {
			continue
		}
		out = append(out, debug.PolicyProblem{Kind: k.kind, Namespace: k.namespace, Name: k.name, Reason: reason, Message: message})
	}
	slices.SortFunc(out, func(a, b debug.PolicyProblem) int {
		return strings.Compare(a.Kind+"/"+a.Namespace+"/"+a.Name, b.Kind+"/"+b.Namespace+"/"+b.Name)
	})
	return out
}
