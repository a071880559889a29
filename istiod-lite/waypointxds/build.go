// Package waypointxds generates one waypoint's complete Envoy configuration
// (Listeners, Clusters, ClusterLoadAssignments, RouteConfigurations, Secret)
// as docs/waypoint.md ("Waypoint xDS") specifies, from the cluster state the
// caller supplies through State. It is pure logic: no I/O.
//
//	res, report, err := waypointxds.Build(st, waypointxds.Waypoint{Namespace: "shop", Name: "waypoint"}, opts)
//	server.SetWaypoint(ctx, xds.WaypointNode("shop", "waypoint"), xds.Resources(res))
//	// write report.RouteStatuses on the routes, report.Policies on the policies
//
// Which waypoint serves a Service: ServiceWaypoint (labels
// istio.io/use-waypoint and istio.io/use-waypoint-namespace on the Service,
// else on its namespace; "none" opts out; the waypoint Gateway's
// istio.io/waypoint-for must be service (default) or all; a waypoint's own
// Service is never served). ServedServices lists a waypoint's Services.
// Traffic addressed to a pod itself goes to WorkloadWaypoint (the same
// labels on the pod, else its namespace; the Gateway's waypoint-for must be
// workload or all); ServedWorkloads lists them, and their addresses get the
// direct-http and direct-tcp chains, which send to the encap cluster (the
// original destination through connect_originate).
// Report.Services and Report.Backends name every Service whose change
// (object or EndpointSlices) changes the output, so that the caller can
// rebuild only the waypoints concerned; AuthorizationPolicies, routes,
// namespaces' labels and Gateways are few, rebuild every waypoint for them.
// MissingParents gives the status of route parentRefs naming no Service.
//
// Every generated resource passes go-control-plane's Validate(), including
// the typed configs inside Any fields; the RouteConfigurations come from
// istiod-lite/gamma and compile with waypoint/router, and the RBAC rules
// compile with waypoint/rbac.
package waypointxds

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/gamma"
)

// State is the cluster state a waypoint's configuration is built from. The
// caller implements it (over informer listers); every method must be safe
// to call repeatedly during one Build and return objects Build may read but
// never modifies.
type State interface {
	// Namespace returns the namespace, or nil.
	Namespace(name string) *corev1.Namespace
	// Services returns every Service, in any order.
	Services() []*corev1.Service
	// Service returns one Service, or nil.
	Service(namespace, name string) *corev1.Service
	// EndpointSlices returns the EndpointSlices of a Service (label
	// kubernetes.io/service-name).
	EndpointSlices(namespace, service string) []*discoveryv1.EndpointSlice
	// Workload describes the pod (or other workload) with address ip.
	Workload(ip netip.Addr) (Workload, bool)
	// HTTPRoutes and GRPCRoutes return every route, in any order (GAMMA
	// routes may live in another namespace than their Service).
	HTTPRoutes() []*gatewayv1.HTTPRoute
	GRPCRoutes() []*gatewayv1.GRPCRoute
	// ReferenceGranted reports whether a ReferenceGrant in toNamespace lets
	// routes in fromNamespace refer to the Service toNamespace/toName.
	ReferenceGranted(fromNamespace, toNamespace, toName string) bool
	// AuthorizationPolicies returns every security.istio.io
	// AuthorizationPolicy, decoded strictly (ambient.DecodeAuthorizationPolicy).
	AuthorizationPolicies() []*securityv1.AuthorizationPolicy
	// Gateway returns the Gateway, or nil.
	Gateway(namespace, name string) *gatewayv1.Gateway
	// Pods returns every pod, in any order (for the workloads a waypoint
	// takes traffic for).
	Pods() []*corev1.Pod
}

// Workload is what the endpoints of a waypoint's clusters say about the pod
// behind an address.
type Workload struct {
	Name, Namespace, ServiceAccount string
	// Captured: the pod's traffic is captured by ztunnel, so the waypoint
	// reaches it over HBONE (identity spiffe://<td>/ns/<ns>/sa/<sa>).
	Captured bool
}

// Waypoint names a waypoint Gateway.
type Waypoint struct{ Namespace, Name string }

func (w Waypoint) String() string { return w.Namespace + "/" + w.Name }

// Options configure Build.
type Options struct {
	// TrustDomain of the mesh's SPIFFE ids. Default "cluster.local".
	TrustDomain string
	// Domain is the cluster DNS domain. Default "cluster.local".
	Domain string
	// RootNamespace holds mesh-wide policies. Default "istio-system".
	RootNamespace string
	// RootCerts are the mesh root certificate(s), PEM: the ROOTCA secret.
	// Required (non-empty); see CheckRootCerts.
	RootCerts []byte
}

func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.Domain == "" {
		o.Domain = "cluster.local"
	}
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	return o
}

// Resources are a waypoint's configuration: type URL -> name -> resource,
// the shape istiod-lite/xds.Resources takes (convert with
// xds.Resources(res)).
type Resources map[string]map[string]proto.Message

func (r Resources) add(typeURL, name string, m proto.Message) {
	if r[typeURL] == nil {
		r[typeURL] = map[string]proto.Message{}
	}
	r[typeURL][name] = m
}

// Report says what the caller should write back or watch.
type Report struct {
	// Services are the Services the waypoint serves, sorted.
	Services []types.NamespacedName
	// Workloads are the pods whose own traffic (addressed to their IP) the
	// waypoint takes, sorted.
	Workloads []types.NamespacedName
	// Backends are the other Services the waypoint has clusters for (route
	// backends and mirrors), sorted.
	Backends []types.NamespacedName
	// RouteStatuses are the statuses of the parentRefs of HTTPRoutes and
	// GRPCRoutes that name a served Service (gamma.Translate's).
	RouteStatuses []gamma.RouteStatus
	// Policies are the AuthorizationPolicies applied to the waypoint, with
	// what was not enforced as written.
	Policies []PolicyReport
}

// PolicyReport is the outcome of one AuthorizationPolicy on one waypoint.
type PolicyReport struct {
	Namespace, Name string
	// Problems is empty when the policy is enforced as written; otherwise
	// each entry says what was not and how it was handled (fail-closed).
	Problems []string
}

// Build generates the configuration of waypoint wp. The error is for an
// unusable call (no such waypoint Gateway, no root certificates); problems
// with individual objects are in the Report and never fail the build.
func Build(st State, wp Waypoint, opts Options) (Resources, Report, error) {
	opts = opts.withDefaults()
	var rep Report
	if st == nil {
		return nil, rep, errors.New("waypointxds: nil State")
	}
	if len(opts.RootCerts) == 0 {
		return nil, rep, errors.New("waypointxds: Options.RootCerts is required")
	}
	gw := st.Gateway(wp.Namespace, wp.Name)
	if !isWaypointGateway(gw) {
		return nil, rep, fmt.Errorf("waypointxds: %s is not a waypoint Gateway (class %s)", wp, waypointClass)
	}
	b := &builder{st: st, wp: wp, opts: opts, res: Resources{}, clusters: map[string]bool{}}
	svcs := ServedServices(st, wp)
	for _, s := range svcs {
		rep.Services = append(rep.Services, types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
	}
	b.policies = b.applicablePolicies(svcs)

	var chains []servedChain
	for _, svc := range svcs {
		c, statuses := b.service(svc)
		chains = append(chains, c...)
		rep.RouteStatuses = append(rep.RouteStatuses, statuses...)
	}
	pods := ServedWorkloads(st, wp)
	for _, p := range pods {
		rep.Workloads = append(rep.Workloads, types.NamespacedName{Namespace: p.Namespace, Name: p.Name})
	}
	b.res.add(resource.ListenerType, mainInternal, b.mainInternalListener(chains, pods))
	b.res.add(resource.ClusterType, encap, b.encapCluster(pods))
	b.res.add(resource.ListenerType, connectTerminate, b.connectTerminateListener())
	b.res.add(resource.ListenerType, connectOriginate, b.connectOriginateListener())
	b.res.add(resource.ClusterType, mainInternal, mainInternalCluster())
	b.res.add(resource.ClusterType, connectOriginate, b.connectOriginateCluster())
	b.res.add(resource.SecretType, rootCASecret, rootCA(opts.RootCerts))
	rep.Backends = b.outboundClusters(rep.Services)
	rep.Policies = b.policyReports()
	if b.err != nil {
		return nil, rep, fmt.Errorf("waypointxds: %s: %w", wp, b.err)
	}
	return b.res, rep, nil
}

// CheckRootCerts reports whether data is what the waypoint accepts as
// ROOTCA: PEM with at least one certificate, every block a parseable
// certificate. Build only requires RootCerts to be non-empty; check the
// roots with this once where they are loaded, since a waypoint refuses a
// ROOTCA it cannot use (and keeps its previous roots).
func CheckRootCerts(data []byte) error {
	n := 0
	for rest := data; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a certificate", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// builder holds one Build.
type builder struct {
	st       State
	wp       Waypoint
	opts     Options
	res      Resources
	clusters map[string]bool // outbound cluster names referenced
	policies []*policy
	// err is the first failure to pack a typed config (not expected: the
	// messages are built here from valid strings).
	err error
}

// any packs m into an Any, deterministically (RBAC policies are a map) so
// that an unchanged configuration is byte-identical, recording a failure in
// b.err.
func (b *builder) any(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil && b.err == nil {
		b.err = fmt.Errorf("pack %T: %w", m, err)
	}
	return a
}

// MissingParents returns the status of every route parentRef that names a
// Service that does not exist (gamma.MissingParents over State).
func MissingParents(st State) []gamma.RouteStatus {
	return gamma.MissingParents(gamma.Routes{HTTP: st.HTTPRoutes(), GRPC: st.GRPCRoutes()}, lookup{st})
}

// Lookup is st as the gamma.Lookup route translation asks.
func Lookup(st State) gamma.Lookup { return lookup{st} }

// lookup adapts State to gamma.Lookup.
type lookup struct{ st State }

func (l lookup) ServiceExists(namespace, name string) bool {
	return l.st.Service(namespace, name) != nil
}

func (l lookup) ReferenceGranted(from, toNamespace, toName string) bool {
	return l.st.ReferenceGranted(from, toNamespace, toName)
}

func sortServices(svcs []*corev1.Service) {
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}
