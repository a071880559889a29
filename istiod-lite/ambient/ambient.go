// Package ambient translates Kubernetes objects (Namespaces, Pods, Services,
// EndpointSlices, security.istio.io AuthorizationPolicy and
// PeerAuthentication) into ambit's workload discovery API
// (github.com/ambit-mesh/ambit/apis/workload/v1): Address resources
// (Workload, Service) and Authorization resources.
//
// It is pure logic, without I/O. The translation functions
// (ConvertAuthorizationPolicy, ...) are stateless; Index keeps the objects it
// is fed and, for every Upsert/Delete, returns exactly the resources that
// changed (Changes), so that one pod update is one small xDS delta.
//
// See docs/workload-api.md ("Translation from Kubernetes") for the rules.
package ambient

import (
	"net/netip"
	"strings"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// Labels and well-known values read by the translation, as in Istio ambient.
const (
	// LabelDataplaneMode on a namespace ("ambient") enrolls its pods; on a
	// pod, "none" opts that pod out and "ambient" opts it in.
	LabelDataplaneMode   = "istio.io/dataplane-mode"
	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"

	// LabelUseWaypoint names the waypoint (a Gateway in the same namespace
	// unless LabelUseWaypointNamespace says otherwise). "none" opts out.
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	WaypointNone              = "none"

	// Labels on the objects deployed for a waypoint Gateway.
	labelGatewayName    = "gateway.networking.k8s.io/gateway-name"
	labelGatewayManaged = "gateway.istio.io/managed"

	// HBONEPort is the port a waypoint accepts HBONE on.
	HBONEPort = 15008

	// StaticStrictPolicyName is the Authorization (in the root namespace)
	// that every workload under an effective STRICT PeerAuthentication lists
	// in Workload.authorization_policies. The underscore cannot occur in a
	// Kubernetes name, so it never collides with a user policy.
	StaticStrictPolicyName = "istio_converted_static_strict"
	// peerAuthPolicyPrefix prefixes the Authorization converted from a
	// workload-level PeerAuthentication with port-level mTLS.
	peerAuthPolicyPrefix = "converted_peer_authentication_"
)

// Options configure the translation. The zero value is usable: every empty
// field takes the default shown.
type Options struct {
	// RootNamespace holds mesh-wide policies. Default "istio-system".
	RootNamespace string
	// DomainSuffix is the cluster DNS domain. Default "cluster.local".
	DomainSuffix string
	// TrustDomain is copied into Workload.trust_domain. Default empty, which
	// means the mesh default.
	TrustDomain string
	// ClusterID is copied into Workload.cluster_id and prefixes workload
	// uids. Default "Kubernetes".
	ClusterID string
	// Network is the network of every address. Default empty (the default
	// network).
	Network string
	// RemoteIPAsSourceIP makes remoteIpBlocks/notRemoteIpBlocks and the
	// remote.ip condition match the connection's source IP at L4. By default
	// (false) they are treated as L7 attributes, as Istio does: the remote IP
	// comes from X-Forwarded-For or PROXY protocol, which ztunnel does not
	// see, and the peer IP of a connection that crossed a proxy is the
	// proxy's, so matching it against remote IP blocks can allow or fail to
	// deny traffic the policy meant otherwise. Turn on only where no proxy
	// sits in front of the workloads.
	RemoteIPAsSourceIP bool
}

func (o Options) withDefaults() Options {
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.DomainSuffix == "" {
		o.DomainSuffix = "cluster.local"
	}
	if o.ClusterID == "" {
		o.ClusterID = "Kubernetes"
	}
	return o
}

// WorkloadUID is the resource name of a pod's Workload:
// "<cluster>//Pod/<namespace>/<name>".
func WorkloadUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// ServiceHostname is the FQDN of a Kubernetes Service.
func ServiceHostname(name, namespace, domainSuffix string) string {
	return name + "." + namespace + ".svc." + domainSuffix
}

// ServiceResourceName is the resource name of a Service Address:
// "<namespace>/<hostname>".
func ServiceResourceName(namespace, hostname string) string {
	return namespace + "/" + hostname
}

// AuthorizationResourceName is the resource name of an Authorization:
// "<namespace>/<name>".
func AuthorizationResourceName(namespace, name string) string {
	return namespace + "/" + name
}

// AddressResourceName is the primary resource name of an Address: the
// workload uid, or "<namespace>/<hostname>" for a service. Empty for an
// Address that is neither.
func AddressResourceName(a *workloadv1.Address) string {
	switch t := a.GetType().(type) {
	case *workloadv1.Address_Workload:
		return t.Workload.GetUid()
	case *workloadv1.Address_Service:
		return ServiceResourceName(t.Service.GetNamespace(), t.Service.GetHostname())
	}
	return ""
}

// AddressAliases returns the alias resource names of an Address,
// "<network>/<ip>", one per workload address or service VIP, in order.
// Note that an alias is not always unique: hostNetwork pods share their
// node's IP, so the xDS server must map an alias to a set of resources.
func AddressAliases(a *workloadv1.Address) []string {
	var out []string
	switch t := a.GetType().(type) {
	case *workloadv1.Address_Workload:
		for _, b := range t.Workload.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(b); ok {
				out = append(out, t.Workload.GetNetwork()+"/"+ip.String())
			}
		}
	case *workloadv1.Address_Service:
		for _, na := range t.Service.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
				out = append(out, na.GetNetwork()+"/"+ip.String())
			}
		}
	}
	return out
}

// waypointAddress returns the GatewayAddress of waypoint name in namespace.
func waypointAddress(name, namespace, domainSuffix string) *workloadv1.GatewayAddress {
	return &workloadv1.GatewayAddress{
		Destination: &workloadv1.GatewayAddress_Hostname{Hostname: &workloadv1.NamespacedHostname{
			Namespace: namespace,
			Hostname:  ServiceHostname(name, namespace, domainSuffix),
		}},
		HboneMtlsPort: HBONEPort,
	}
}

// waypointFromLabels reads istio.io/use-waypoint(-namespace) from labels.
// set reports whether the label is present at all (so that "none" on a
// service can override its namespace); gw is nil for "none".
func waypointFromLabels(labels map[string]string, defaultNamespace, domainSuffix string) (gw *workloadv1.GatewayAddress, set bool) {
	name, ok := labels[LabelUseWaypoint]
	if !ok || strings.TrimSpace(name) == "" {
		return nil, false
	}
	if name == WaypointNone {
		return nil, true
	}
	ns := labels[LabelUseWaypointNamespace]
	if ns == "" {
		ns = defaultNamespace
	}
	return waypointAddress(name, ns, domainSuffix), true
}
