package waypointxds

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Labels read here, as in Istio ambient (the same as istiod-lite/ambient and
// istiod-lite/waypoint use).
const (
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelWaypointFor          = "istio.io/waypoint-for"
	LabelGatewayName          = "gateway.networking.k8s.io/gateway-name"
	waypointNone              = "none"
	waypointClass             = "istio-waypoint"
)

// ServiceWaypoint returns the waypoint that serves svc, if any: the one its
// own istio.io/use-waypoint label names (with istio.io/use-waypoint-namespace
// from the same object, default the Service's namespace), else its
// namespace's; "none" on the Service opts it out even from its namespace's.
// The waypoint must be a Gateway of class istio-waypoint whose
// istio.io/waypoint-for is service (the default) or all. A waypoint's own
// Service (label gateway.networking.k8s.io/gateway-name) and ExternalName
// Services are never served.
func ServiceWaypoint(st State, svc *corev1.Service) (Waypoint, bool) {
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Labels[LabelGatewayName] != "" {
		return Waypoint{}, false
	}
	wp, set := waypointFromLabels(svc.Labels, svc.Namespace)
	if !set {
		if ns := st.Namespace(svc.Namespace); ns != nil {
			wp, set = waypointFromLabels(ns.Labels, svc.Namespace)
		}
	}
	if !set || wp.Name == "" {
		return Waypoint{}, false
	}
	gw := st.Gateway(wp.Namespace, wp.Name)
	if !isWaypointGateway(gw) {
		return Waypoint{}, false
	}
	switch gw.Labels[LabelWaypointFor] {
	case "", "service", "all":
		return wp, true
	}
	return Waypoint{}, false
}

// waypointFromLabels reads the waypoint labels; set reports whether
// use-waypoint is present at all (so "none" overrides the namespace), and
// "none" gives an empty Waypoint.
func waypointFromLabels(labels map[string]string, defaultNamespace string) (Waypoint, bool) {
	name, ok := labels[LabelUseWaypoint]
	if !ok || strings.TrimSpace(name) == "" {
		return Waypoint{}, false
	}
	if name == waypointNone {
		return Waypoint{}, true
	}
	ns := labels[LabelUseWaypointNamespace]
	if ns == "" {
		ns = defaultNamespace
	}
	return Waypoint{Namespace: ns, Name: name}, true
}

func isWaypointGateway(gw *gatewayv1.Gateway) bool {
	return gw != nil && string(gw.Spec.GatewayClassName) == waypointClass
}

// ServedServices returns the Services waypoint wp serves, sorted by
// namespace and name.
func ServedServices(st State, wp Waypoint) []*corev1.Service {
	var out []*corev1.Service
	for _, svc := range st.Services() {
		if got, ok := ServiceWaypoint(st, svc); ok && got == wp {
			out = append(out, svc)
		}
	}
	sortServices(out)
	return out
}
