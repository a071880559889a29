package waypointconfig

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
)

// ControllerName is written in the route status entries istiod-lite owns:
// the controller of GatewayClass istio-waypoint, as Istio writes it for
// GAMMA routes.
const ControllerName gatewayv1.GatewayController = "istio.io/mesh-controller"

type routeKey struct{ Kind, Namespace, Name string }

// routeStatuses gathers the status of every GAMMA parentRef of every
// route: built holds the statuses Build reported for the Services in
// served; every other parent Service is translated here (a route's
// validity does not depend on a waypoint serving its parent), and parents
// that do not exist get NoMatchingParent.
func routeStatuses(st waypointxds.State, domain string, served map[types.NamespacedName]bool, built []gamma.RouteStatus) map[routeKey][]gamma.RouteStatus {
	in := gamma.Routes{HTTP: st.HTTPRoutes(), GRPC: st.GRPCRoutes()}
	parents := map[types.NamespacedName]bool{}
	collect := func(ns string, refs []gatewayv1.ParentReference) {
		for _, pr := range refs {
			if pr.Group == nil || *pr.Group != "" || pr.Kind == nil || *pr.Kind != "Service" {
				continue
			}
			pns := ns
			if pr.Namespace != nil {
				pns = string(*pr.Namespace)
			}
			parents[types.NamespacedName{Namespace: pns, Name: string(pr.Name)}] = true
		}
	}
	for _, r := range in.HTTP {
		collect(r.Namespace, r.Spec.ParentRefs)
	}
	for _, r := range in.GRPC {
		collect(r.Namespace, r.Spec.ParentRefs)
	}
	out := map[routeKey][]gamma.RouteStatus{}
	add := func(list []gamma.RouteStatus) {
		for _, s := range list {
			k := routeKey{s.Kind, s.Namespace, s.Name}
			out[k] = append(out[k], s)
		}
	}
	add(built)
	for p := range parents {
		if served[p] {
			continue
		}
		if svc := st.Service(p.Namespace, p.Name); svc != nil {
			add(waypointxds.RouteStatuses(st, svc, domain))
		} // else MissingParents reports it
	}
	add(gamma.MissingParents(in, waypointxds.Lookup(st)))
	return out
}

// RunStatus writes route statuses after every rebuild until ctx ends; run
// it on the leader only. Routes are read from the informers and written
// only when the entries istiod-lite owns change; other controllers'
// entries are kept.
func (c *Controller) RunStatus(ctx context.Context) {
	for {
		statuses, policies, changed := c.Statuses()
		failed := false
		for _, kind := range []string{gamma.KindHTTPRoute, gamma.KindGRPCRoute} {
			if err := c.writeStatuses(ctx, kind, statuses); err != nil {
				if ctx.Err() != nil {
					return
				}
				c.log.Warn("route status not written; retrying", "kind", kind, "error", err)
				failed = true
			}
		}
		if err := c.writePolicyConditions(ctx, policies); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("policy status not written; retrying", "error", err)
			failed = true
		}
		retry := time.After(time.Hour)
		if failed {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry:
		}
	}
}

func (c *Controller) writeStatuses(ctx context.Context, kind string, statuses map[routeKey][]gamma.RouteStatus) error {
	var errs []error
	switch kind {
	case gamma.KindHTTPRoute:
		for _, r := range c.state.HTTPRoutes() {
			parents, ok := desiredParents(r.Status.Parents, statuses[routeKey{kind, r.Namespace, r.Name}])
			if !ok {
				continue
			}
			u := r.DeepCopy()
			u.Status.Parents = parents
			if _, err := c.opts.Gateway.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "istiod-lite"}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("HTTPRoute %s/%s: %w", r.Namespace, r.Name, err))
			}
		}
	case gamma.KindGRPCRoute:
		for _, r := range c.state.GRPCRoutes() {
			parents, ok := desiredParents(r.Status.Parents, statuses[routeKey{kind, r.Namespace, r.Name}])
			if !ok {
				continue
			}
			u := r.DeepCopy()
			u.Status.Parents = parents
			if _, err := c.opts.Gateway.GatewayV1().GRPCRoutes(r.Namespace).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "istiod-lite"}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("GRPCRoute %s/%s: %w", r.Namespace, r.Name, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d route(s) failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// desiredParents merges want (istiod-lite's statuses of a route) into the
// route's current parents: entries of other controllers are kept, ours are
// replaced, keeping each condition's lastTransitionTime when its status did
// not change. ok is false when nothing changes.
func desiredParents(current []gatewayv1.RouteParentStatus, want []gamma.RouteStatus) ([]gatewayv1.RouteParentStatus, bool) {
	var out []gatewayv1.RouteParentStatus
	ours := map[string]gatewayv1.RouteParentStatus{}
	for _, p := range current {
		if p.ControllerName == ControllerName {
			ours[parentKey(p.ParentRef)] = p
			continue
		}
		out = append(out, p)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	seen := map[string]bool{}
	var mine []gatewayv1.RouteParentStatus
	for _, w := range want {
		k := parentKey(w.ParentRef)
		if seen[k] {
			continue // one entry per parentRef (a route may repeat one)
		}
		seen[k] = true
		var conds []metav1.Condition
		if old, ok := ours[k]; ok {
			conds = slices.Clone(old.Conditions)
		}
		// Conditions we no longer report are dropped.
		conds = slices.DeleteFunc(conds, func(c metav1.Condition) bool {
			return !slices.ContainsFunc(w.Conditions, func(n metav1.Condition) bool { return n.Type == c.Type })
		})
		for _, n := range w.Conditions {
			n.LastTransitionTime = now
			meta.SetStatusCondition(&conds, n)
		}
		slices.SortFunc(conds, func(a, b metav1.Condition) int { return strings.Compare(a.Type, b.Type) })
		mine = append(mine, gatewayv1.RouteParentStatus{ParentRef: w.ParentRef, ControllerName: ControllerName, Conditions: conds})
	}
	slices.SortFunc(mine, func(a, b gatewayv1.RouteParentStatus) int {
		return strings.Compare(parentKey(a.ParentRef), parentKey(b.ParentRef))
	})
	out = append(out, mine...)
	if len(out) > 32 {
		out = out[:32] // the API's limit; Gateway API allows dropping entries
	}
	var cur []gatewayv1.RouteParentStatus
	for _, p := range current {
		if p.ControllerName == ControllerName {
			cur = append(cur, p)
		}
	}
	if sameParents(cur, mine) {
		return nil, false
	}
	return out, true
}

func sameParents(a, b []gatewayv1.RouteParentStatus) bool {
	if len(a) != len(b) {
		return false
	}
	key := func(ps []gatewayv1.RouteParentStatus) map[string]gatewayv1.RouteParentStatus {
		m := map[string]gatewayv1.RouteParentStatus{}
		for _, p := range ps {
			m[parentKey(p.ParentRef)] = p
		}
		return m
	}
	ma, mb := key(a), key(b)
	for k, pa := range ma {
		pb, ok := mb[k]
		if !ok || len(pa.Conditions) != len(pb.Conditions) {
			return false
		}
		for _, ca := range pa.Conditions {
			cb := meta.FindStatusCondition(pb.Conditions, ca.Type)
			if cb == nil || cb.Status != ca.Status || cb.Reason != ca.Reason || cb.Message != ca.Message || cb.ObservedGeneration != ca.ObservedGeneration {
				return false
			}
		}
		if !reflect.DeepEqual(pa.ParentRef, pb.ParentRef) {
			return false
		}
	}
	return true
}

func parentKey(p gatewayv1.ParentReference) string {
	s := func(v *string) string {
		if v == nil {
			return "<nil>"
		}
		return *v
	}
	var group, kind, ns, section *string
	if p.Group != nil {
		group = (*string)(p.Group)
	}
	if p.Kind != nil {
		kind = (*string)(p.Kind)
	}
	if p.Namespace != nil {
		ns = (*string)(p.Namespace)
	}
	if p.SectionName != nil {
		section = (*string)(p.SectionName)
	}
	port := "<nil>"
	if p.Port != nil {
		port = fmt.Sprint(*p.Port)
	}
	return strings.Join([]string{s(group), s(kind), s(ns), string(p.Name), s(section), port}, "|")
}
