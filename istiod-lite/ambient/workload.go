package ambient

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// IsCaptured reports whether ambit captures the pod's traffic: the pod is
// not on the host network, and either it is labelled
// istio.io/dataplane-mode=ambient or its namespace is and the pod does not
// opt out with istio.io/dataplane-mode=none.
func IsCaptured(pod *corev1.Pod, namespaceLabels map[string]string) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	switch pod.Labels[LabelDataplaneMode] {
	case DataplaneModeNone:
		return false
	case DataplaneModeAmbient:
		return true
	}
	return namespaceLabels[LabelDataplaneMode] == DataplaneModeAmbient
}

// isTerminal reports whether the pod has finished for good: it is no
// workload any more.
func isTerminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func isReady(pod *corev1.Pod) bool {
	if pod.DeletionTimestamp != nil {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podIPs returns the pod's IPs (status.podIPs, else status.podIP) as bytes,
// skipping values that do not parse.
func podIPs(pod *corev1.Pod) [][]byte {
	var raw []string
	for _, p := range pod.Status.PodIPs {
		raw = append(raw, p.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = []string{pod.Status.PodIP}
	}
	var out [][]byte
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			continue
		}
		out = append(out, ip.Unmap().AsSlice())
	}
	return out
}

// cronJobName matches a Job created by a CronJob: "<cronjob>-<scheduled
// time in minutes>" (8 to 11 digits), as Istio's heuristic.
var cronJobName = regexp.MustCompile(`^(.+)-\d{8,11}$`)

// WorkloadNameAndType derives the owning controller of a pod from its
// controller owner reference, as Istio does: a ReplicaSet whose name ends in
// the pod-template-hash label is its Deployment; a Job named like a
// CronJob's is that CronJob; other controllers (StatefulSet, DaemonSet, ...)
// give their own name with type POD; a pod without a controller is itself.
func WorkloadNameAndType(pod *corev1.Pod) (string, workloadv1.WorkloadType) {
	var ref *struct{ kind, name string }
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			ref = &struct{ kind, name string }{o.Kind, o.Name}
			break
		}
	}
	if ref == nil {
		return pod.Name, workloadv1.WorkloadType_POD
	}
	switch ref.kind {
	case "ReplicaSet":
		if h := pod.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.name, "-"+h) {
			return strings.TrimSuffix(ref.name, "-"+h), workloadv1.WorkloadType_DEPLOYMENT
		}
		return ref.name, workloadv1.WorkloadType_POD
	case "Job":
		if m := cronJobName.FindStringSubmatch(ref.name); m != nil {
			return m[1], workloadv1.WorkloadType_CRONJOB
		}
		return ref.name, workloadv1.WorkloadType_JOB
	}
	return ref.name, workloadv1.WorkloadType_POD
}

// CanonicalService returns the canonical service name and revision of a
// workload from its labels, falling back to the workload name and "latest",
// as Istio does.
func CanonicalService(labels map[string]string, workloadName string) (name, revision string) {
	name = firstLabel(labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	if name == "" {
		name = workloadName
	}
	revision = firstLabel(labels, "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	if revision == "" {
		revision = "latest"
	}
	return name, revision
}

func firstLabel(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}

// workloadInputs is what a pod's Workload depends on besides the pod.
type workloadInputs struct {
	namespaceLabels map[string]string
	// services: service key -> ports this pod serves (already resolved).
	services map[string]*workloadv1.PortList
	// policies: sorted names of the WORKLOAD_SELECTOR Authorizations that
	// apply to the pod.
	policies []string
	// waypointFor returns a waypoint Gateway's traffic type, and whether
	// the Gateway is known; nil: no workload waypoints.
	waypointFor func(namespace, name string) (string, bool)
}

// buildWorkload translates a pod. It returns nil for a pod that is no
// workload: terminated (Succeeded/Failed).
func buildWorkload(o Options, pod *corev1.Pod, in workloadInputs) *workloadv1.Workload {
	if isTerminal(pod) {
		return nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	w := &workloadv1.Workload{
		Uid:            WorkloadUID(o.ClusterID, pod.Namespace, pod.Name),
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Addresses:      podIPs(pod),
		Network:        o.Network,
		TrustDomain:    o.TrustDomain,
		ServiceAccount: sa,
		Node:           pod.Spec.NodeName,
		ClusterId:      o.ClusterID,
		Services:       in.services,
		Status:         workloadv1.WorkloadStatus_UNHEALTHY,
	}
	if isReady(pod) {
		w.Status = workloadv1.WorkloadStatus_HEALTHY
	}
	w.WorkloadName, w.WorkloadType = WorkloadNameAndType(pod)
	w.CanonicalName, w.CanonicalRevision = CanonicalService(pod.Labels, w.WorkloadName)
	if IsCaptured(pod, in.namespaceLabels) {
		w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE
		// Only captured workloads can be sent through a waypoint.
		w.Waypoint = workloadWaypoint(o, pod, in)
		// Policies are enforced by the destination's ztunnel, so they only
		// mean something on captured workloads; listing them on others
		// would only cause churn.
		w.AuthorizationPolicies = in.policies
	}
	return w
}

// workloadWaypoint is the waypoint for traffic addressed to the pod
// itself (its IP, or a Service without a waypoint of its own): the one its
// own istio.io/use-waypoint names, else its namespace's, if that waypoint
// takes workload traffic (istio.io/waypoint-for workload or all). A
// waypoint named on the pod that is not known yet is assumed to, so its
// policies are never skipped; a namespace's is not (most namespace
// waypoints are for services, Istio's default). "none" on the pod opts
// out.
func workloadWaypoint(o Options, pod *corev1.Pod, in workloadInputs) *workloadv1.GatewayAddress {
	gw, set := waypointFromLabels(pod.Labels, pod.Namespace, o.DomainSuffix)
	explicit := set
	if !set {
		gw, _ = waypointFromLabels(in.namespaceLabels, pod.Namespace, o.DomainSuffix)
	}
	h := gw.GetHostname()
	if h == nil {
		return nil
	}
	if in.waypointFor == nil {
		return nil
	}
	name, _, _ := strings.Cut(h.GetHostname(), ".")
	switch t, known := in.waypointFor(h.GetNamespace(), name); {
	case !known && explicit, t == WaypointForWorkload, t == WaypointForAll:
		return gw
	}
	return nil
}

// buildService translates a Service. It returns nil for a Service that is
// not translated: ExternalName.
func buildService(o Options, svc *corev1.Service, namespaceLabels map[string]string, servesServices func(ns, name string) bool) *workloadv1.Service {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	host := ServiceHostname(svc.Name, svc.Namespace, o.DomainSuffix)
	s := &workloadv1.Service{
		Name:      svc.Name,
		Namespace: svc.Namespace,
		Hostname:  host,
	}
	vips := svc.Spec.ClusterIPs
	if len(vips) == 0 && svc.Spec.ClusterIP != "" {
		vips = []string{svc.Spec.ClusterIP}
	}
	for _, v := range vips {
		ip, err := netip.ParseAddr(v)
		if err != nil { // "None" (headless) or garbage: no VIP.
			continue
		}
		s.Addresses = append(s.Addresses, &workloadv1.NetworkAddress{Network: o.Network, Address: ip.Unmap().AsSlice()})
	}
	for _, p := range svc.Spec.Ports {
		if !isTCP(p.Protocol) {
			continue
		}
		port := &workloadv1.Port{ServicePort: uint32(p.Port), AppProtocol: appProtocol(p.AppProtocol, p.Name)}
		switch {
		case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
			port.TargetPort = 0 // named: resolved per workload
		case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
			port.TargetPort = uint32(p.TargetPort.IntVal)
		default:
			port.TargetPort = uint32(p.Port)
		}
		s.Ports = append(s.Ports, port)
	}
	if isWaypointService(svc) {
		// A waypoint's own Service is never sent through a waypoint: its
		// namespace's label would otherwise loop traffic back into it.
		return s
	}
	if gw, set := waypointFromLabels(svc.Labels, svc.Namespace, o.DomainSuffix); set {
		s.Waypoint = gw
	} else {
		s.Waypoint, _ = waypointFromLabels(namespaceLabels, svc.Namespace, o.DomainSuffix)
	}
	// A waypoint for workload traffic only (or none) does not take the
	// Service's traffic: it would refuse it.
	if h := s.GetWaypoint().GetHostname(); h != nil && servesServices != nil {
		name, _, _ := strings.Cut(h.GetHostname(), ".")
		if !servesServices(h.GetNamespace(), name) {
			s.Waypoint = nil
		}
	}
	return s
}

// isWaypointService reports whether svc was deployed for a waypoint Gateway
// (istiod-lite/waypoint's labels, Istio's).
func isWaypointService(svc *corev1.Service) bool {
	return svc.Labels[labelGatewayName] != "" && svc.Labels[labelGatewayManaged] != ""
}

func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

// appProtocol is the port's Kubernetes appProtocol, or else the protocol
// its name announces by Istio's port-naming convention ("http-web" ->
// "http"). Empty means opaque TCP.
func appProtocol(ap *string, name string) string {
	if ap != nil && *ap != "" {
		return *ap
	}
	lower := strings.ToLower(name)
	if lower == "grpc-web" || strings.HasPrefix(lower, "grpc-web-") {
		return "grpc-web"
	}
	prefix, _, _ := strings.Cut(lower, "-")
	switch prefix {
	case "http", "http2", "https", "grpc", "tls", "mongo", "mysql", "redis":
		return prefix
	}
	return ""
}

// servicePortsFor resolves, for one pod in one EndpointSlice of svc, the
// service ports the pod serves: each TCP service port is matched to the
// slice port of the same name (EndpointSlice ports carry the service port's
// name and the port resolved for the endpoints of that slice).
func servicePortsFor(svc *corev1.Service, slicePorts []discoveryv1.EndpointPort) []*workloadv1.Port {
	var out []*workloadv1.Port
	for _, sp := range svc.Spec.Ports {
		if !isTCP(sp.Protocol) {
			continue
		}
		for _, ep := range slicePorts {
			name := ""
			if ep.Name != nil {
				name = *ep.Name
			}
			proto := corev1.ProtocolTCP
			if ep.Protocol != nil {
				proto = *ep.Protocol
			}
			if name != sp.Name || proto != corev1.ProtocolTCP || ep.Port == nil || *ep.Port <= 0 {
				continue
			}
			out = append(out, &workloadv1.Port{
				ServicePort: uint32(sp.Port),
				TargetPort:  uint32(*ep.Port),
				AppProtocol: appProtocol(sp.AppProtocol, sp.Name),
			})
			break
		}
	}
	return out
}

// mergePorts adds ports to list, skipping duplicates (dual-stack services
// have one slice per IP family listing the same pod), and keeps the list
// ordered by service port then target port.
func mergePorts(list []*workloadv1.Port, ports []*workloadv1.Port) []*workloadv1.Port {
	for _, p := range ports {
		dup := false
		for _, q := range list {
			if q.ServicePort == p.ServicePort && q.TargetPort == p.TargetPort {
				dup = true
				break
			}
		}
		if !dup {
			list = append(list, p)
		}
	}
	slices.SortFunc(list, func(a, b *workloadv1.Port) int {
		if a.ServicePort != b.ServicePort {
			return int(a.ServicePort) - int(b.ServicePort)
		}
		return int(a.TargetPort) - int(b.TargetPort)
	})
	return list
}
