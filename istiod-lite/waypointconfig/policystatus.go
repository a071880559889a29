package waypointconfig

import (
	"context"
	"fmt"
	"slices"
	"strings"

	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"

	"github.com/ambit-mesh/ambit/istiod-lite/controller"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
)

// ConditionWaypointAccepted is the condition Istio writes on policies that
// target waypoints (targetRefs): whether a waypoint enforces them.
const ConditionWaypointAccepted = "WaypointAccepted"

// Reasons of ConditionWaypointAccepted, Istio's.
const (
	ReasonAccepted         = "Accepted"
	ReasonPartiallyInvalid = "PartiallyInvalid"
	ReasonAncestorNotBound = "AncestorNotBound"
	ReasonTargetNotFound   = "TargetNotFound"
)

// policyBinding is what the waypoint builds said about one policy.
type policyBinding struct {
	waypoints []string // "ns/name" of the waypoints enforcing it
	problems  []string
}

type policyCondition struct {
	uid        types.UID
	generation int64
	cond       metav1.Condition
}

// policyConditions computes WaypointAccepted for every AuthorizationPolicy
// with targetRefs: accepted when a waypoint enforces it as written, False
// with the problems when a waypoint enforces it otherwise (fail-closed), or
// why no waypoint does.
func policyConditions(st waypointxds.State, bound map[types.NamespacedName]*policyBinding, rootNS string) map[types.NamespacedName]policyCondition {
	out := map[types.NamespacedName]policyCondition{}
	for _, ap := range st.AuthorizationPolicies() {
		refs := waypointxds.TargetRefs(ap)
		if len(refs) == 0 || ap.Spec.GetSelector() != nil {
			continue
		}
		key := types.NamespacedName{Namespace: ap.Namespace, Name: ap.Name}
		c := metav1.Condition{Type: ConditionWaypointAccepted, ObservedGeneration: ap.Generation}
		switch b := bound[key]; {
		case b != nil && len(b.problems) == 0:
			c.Status, c.Reason = metav1.ConditionTrue, ReasonAccepted
			c.Message = "bound to " + strings.Join(b.waypoints, ", ")
		case b != nil:
			c.Status, c.Reason = metav1.ConditionFalse, ReasonPartiallyInvalid
			c.Message = "bound to " + strings.Join(b.waypoints, ", ") + "; not enforced as written: " + strings.Join(b.problems, "; ")
		default:
			c.Status = metav1.ConditionFalse
			c.Reason, c.Message = unboundReason(st, ap, refs, rootNS)
		}
		out[key] = policyCondition{uid: ap.UID, generation: ap.Generation, cond: c}
	}
	return out
}

// unboundReason says why no waypoint enforces a policy with targetRefs.
func unboundReason(st waypointxds.State, ap *securityv1.AuthorizationPolicy, refs []*typeapi.PolicyTargetReference, rootNS string) (reason, msg string) {
	var notFound, notBound []string
	for _, r := range refs {
		ns := ap.Namespace
		switch {
		case (r.GetGroup() == "" || r.GetGroup() == "core") && r.GetKind() == "Service":
			svc := st.Service(ns, r.GetName())
			if svc == nil {
				notFound = append(notFound, fmt.Sprintf("Service %s/%s was not found", ns, r.GetName()))
				continue
			}
			if _, ok := waypointxds.ServiceWaypoint(st, svc); !ok {
				notBound = append(notBound, fmt.Sprintf("Service %s/%s is not bound to a waypoint", ns, r.GetName()))
			}
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "Gateway":
			if st.Gateway(ns, r.GetName()) == nil {
				notFound = append(notFound, fmt.Sprintf("Gateway %s/%s was not found", ns, r.GetName()))
			} else {
				notBound = append(notBound, fmt.Sprintf("Gateway %s/%s is not a waypoint (class %s)", ns, r.GetName(), "istio-waypoint"))
			}
		case r.GetGroup() == "gateway.networking.k8s.io" && r.GetKind() == "GatewayClass":
			if ns != rootNS || r.GetName() != "istio-waypoint" {
				notBound = append(notBound, fmt.Sprintf("GatewayClass %s applies only from the root namespace %s and only for istio-waypoint", r.GetName(), rootNS))
			} else {
				notBound = append(notBound, "no waypoint is deployed")
			}
		default:
			notFound = append(notFound, fmt.Sprintf("unsupported target %s/%s %s", r.GetGroup(), r.GetKind(), r.GetName()))
		}
	}
	if len(notBound) > 0 {
		return ReasonAncestorNotBound, strings.Join(append(notBound, notFound...), "; ")
	}
	return ReasonTargetNotFound, strings.Join(notFound, "; ")
}

// writePolicyConditions writes WaypointAccepted where it changed.
func (c *Controller) writePolicyConditions(ctx context.Context, conds map[types.NamespacedName]policyCondition) error {
	if c.opts.Dynamic == nil {
		return nil
	}
	keys := make([]types.NamespacedName, 0, len(conds))
	for k := range conds {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	var errs []error
	for _, k := range keys {
		pc := conds[k]
		if prev, ok := c.written[k]; ok && prev == pc {
			continue
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			res := c.opts.Dynamic.Resource(controller.AuthorizationPolicies).Namespace(k.Namespace)
			u, err := res.Get(ctx, k.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if u.GetUID() != pc.uid || u.GetGeneration() != pc.generation {
				return nil // a newer version is on its way
			}
			if !controller.SetCondition(u, pc.cond) {
				return nil
			}
			_, err = res.UpdateStatus(ctx, u, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("AuthorizationPolicy %s: %w", k, err))
			continue
		}
		c.written[k] = pc
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d policy status(es) failed, first: %w", len(errs), errs[0])
	}
	return nil
}
