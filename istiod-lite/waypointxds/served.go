package waypointxds

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
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
	var nsLabels map[string]string
	if ns := st.Namespace(svc.Namespace); ns != nil {
		nsLabels = ns.Labels
	}
	return labelledWaypoint(st, svc.Labels, nsLabels, svc.Namespace, "", "service", "all")
}

// labelledWaypoint is the waypoint named by an object's own
// istio.io/use-waypoint labels, else by its namespace's, if it is a waypoint
// Gateway whose istio.io/waypoint-for is one of trafficFor.
func labelledWaypoint(st State, labels, nsLabels map[string]string, namespace string, trafficFor ...string) (Waypoint, bool) {
	wp, set := waypointFromLabels(labels, namespace)
	if !set {
		wp, set = waypointFromLabels(nsLabels, namespace)
	}
	if !set || wp.Name == "" {
		return Waypoint{}, false
	}
	gw := st.Gateway(wp.Namespace, wp.Name)
	if !isWaypointGateway(gw) || !slices.Contains(trafficFor, gw.Labels[LabelWaypointFor]) {
		return Waypoint{}, false
	}
	return wp, true
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

// WorkloadWaypoint returns the waypoint that takes traffic addressed to the
// pod itself (its IP): the one its own istio.io/use-waypoint names, else its
// namespace's, whose Gateway's istio.io/waypoint-for is workload or all.
// Only captured, running pods with an address have one (the rules
// istiod-lite/ambient gives ztunnel).
func WorkloadWaypoint(st State, pod *corev1.Pod) (Waypoint, bool) {
	if pod == nil || pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || len(podAddrs(pod)) == 0 {
		return Waypoint{}, false
	}
	var nsLabels map[string]string
	if ns := st.Namespace(pod.Namespace); ns != nil {
		nsLabels = ns.Labels
	}
	if !ambient.IsCaptured(pod, nsLabels) {
		return Waypoint{}, false
	}
	return labelledWaypoint(st, pod.Labels, nsLabels, pod.Namespace, "workload", "all")
}

// ServedWorkloads returns the pods waypoint wp takes workload traffic for,
// sorted by namespace and name.
func ServedWorkloads(st State, wp Waypoint) []*corev1.Pod {
	var out []*corev1.Pod
	for _, pod := range st.Pods() {
		if got, ok := WorkloadWaypoint(st, pod); ok && got == wp {
			out = append(out, pod)
		}
	}
	slices.SortFunc(out, func(a, b *corev1.Pod) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// podAddrs are the pod's addresses, deduplicated.
func podAddrs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	add(pod.Status.PodIP)
	return out
}
