package waypoint

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ensureClass creates GatewayClass istio-waypoint when it is missing and
// marks it Accepted, as istiod does for its classes. It lives here rather
// than only in manifests because `kubectl apply -k` cannot create a CRD and
// an object of it in one go. A class someone else owns (another
// controllerName) is left alone and reported.
func (c *Controller) ensureClass(ctx context.Context) error {
	classes := c.cfg.Gateway.GatewayV1().GatewayClasses()
	gc, err := classes.Get(ctx, ClassName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		gc, err = classes.Create(ctx, &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: ClassName, Labels: map[string]string{"app.kubernetes.io/part-of": "ambit"}},
			Spec: gatewayv1.GatewayClassSpec{
				ControllerName: ControllerName,
				Description:    ptr("The waypoint proxy class for ambient mode (ambit istiod-lite)."),
			},
		}, metav1.CreateOptions{FieldManager: fieldManager})
		if apierrors.IsAlreadyExists(err) {
			gc, err = classes.Get(ctx, ClassName, metav1.GetOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("gateway class %s: %w", ClassName, err)
	}
	if gc.Spec.ControllerName != ControllerName {
		return fmt.Errorf("gateway class %s belongs to controller %q, not %q: waypoints of that class are not deployed by istiod-lite", ClassName, gc.Spec.ControllerName, ControllerName)
	}
	cond := metav1.Condition{
		Type: string(gatewayv1.GatewayClassConditionStatusAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.GatewayClassReasonAccepted), Message: "Handled by istiod-lite", ObservedGeneration: gc.Generation,
	}
	if old := meta.FindStatusCondition(gc.Status.Conditions, cond.Type); old != nil && old.Status == cond.Status && old.ObservedGeneration == cond.ObservedGeneration {
		return nil
	}
	meta.SetStatusCondition(&gc.Status.Conditions, cond)
	if _, err := classes.UpdateStatus(ctx, gc, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("gateway class %s status: %w", ClassName, err)
	}
	return nil
}

// keepClass runs ensureClass until it succeeds once (the CRDs may be
// installed after istiod-lite starts).
func (c *Controller) keepClass(ctx context.Context) {
	_ = wait.PollUntilContextCancel(ctx, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := c.ensureClass(ctx); err != nil {
			c.log.Warn("gateway class not ready", "error", err)
			return false, nil
		}
		return true, nil
	})
}

func ptr[T any](v T) *T { return &v }
