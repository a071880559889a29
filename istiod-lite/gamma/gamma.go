// Package gamma translates Gateway API HTTPRoutes attached to a Service
// (GAMMA: a parentRef with group "" and kind Service) into the Envoy
// RouteConfigurations a waypoint serves for that Service, one per service
// port, and computes the routes' status for those parentRefs.
//
// It is pure logic: no I/O. The output follows docs/waypoint.md
// ("Translating Gateway API", "Translating GAMMA routes"); every generated
// RouteConfiguration passes go-control-plane's Validate() and compiles with
// waypoint/router.
package gamma

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Service is the Service the routes are translated for.
type Service struct {
	Namespace, Name string
	// VIPs are the Service's cluster IPs (validated; the virtual host takes
	// any authority, as the listener chain selects by VIP).
	VIPs []string
	// Ports are the Service's HTTP ports; one RouteConfiguration each.
	Ports []uint32
	// PortNames maps the Service's port names to their numbers, for
	// parentRefs with a sectionName (GAMMA: the port's name).
	PortNames map[string]uint32
}

// Lookup answers the questions the translation asks about other objects.
type Lookup interface {
	// ServiceExists reports whether the Service namespace/name exists.
	ServiceExists(namespace, name string) bool
	// ReferenceGranted reports whether a ReferenceGrant in toNamespace lets
	// HTTPRoutes in fromNamespace refer to the Service toNamespace/toName.
	ReferenceGranted(fromNamespace, toNamespace, toName string) bool
}

// Options tune the translation.
type Options struct {
	// Domain is the cluster's DNS domain; "cluster.local" when empty.
	Domain string
	// Lookup resolves backendRefs; required.
	Lookup Lookup
}

// RouteStatus is the status of one HTTPRoute for one of its parentRefs that
// names the translated Service.
type RouteStatus struct {
	// Kind is KindHTTPRoute or KindGRPCRoute.
	Kind            string
	Namespace, Name string
	ParentRef       gatewayv1.ParentReference
	// Conditions are Accepted, ResolvedRefs and, when some rules were
	// dropped, PartiallyInvalid, with ObservedGeneration set.
	Conditions []metav1.Condition
}

// Condition returns the condition of type t, or nil.
func (s *RouteStatus) Condition(t string) *metav1.Condition {
	for i := range s.Conditions {
		if s.Conditions[i].Type == t {
			return &s.Conditions[i]
		}
	}
	return nil
}

// Hostname is the Service's cluster-local name, <name>.<ns>.svc.<domain>.
func Hostname(namespace, name, domain string) string {
	if domain == "" {
		domain = "cluster.local"
	}
	return name + "." + namespace + ".svc." + domain
}

// RouteConfigName is the name of the RouteConfiguration for one Service
// port: Istio's name of a waypoint's inbound VIP chain,
// "inbound-vip|<port>|http|<hostname>".
func RouteConfigName(port uint32, hostname string) string {
	return "inbound-vip|" + strconv.FormatUint(uint64(port), 10) + "|http|" + hostname
}

// ClusterName is Istio's name of the outbound cluster of a Service port,
// "outbound|<port>||<hostname>".
func ClusterName(port uint32, hostname string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + hostname
}

// RoutesForService translates the HTTPRoutes among routes whose parentRefs
// name svc into one RouteConfiguration per port of svc (in the order of
// svc.Ports), and returns the status of every such route and parentRef.
// Routes not attached to svc are ignored. Invalid rules never break other
// rules or routes: they are dropped or answered with a 500, and reported in
// the status. The error is only for an unusable svc or opts.
func RoutesForService(svc Service, routes []*gatewayv1.HTTPRoute, opts Options) ([]*routev3.RouteConfiguration, []RouteStatus, error) {
	return Translate(svc, Routes{HTTP: routes}, opts)
}

// Translate is RoutesForService for HTTPRoutes and GRPCRoutes together:
// a GRPCRoute is translated as the HTTPRoute matching the same gRPC paths,
// and both kinds share one precedence order.
func Translate(svc Service, in Routes, opts Options) ([]*routev3.RouteConfiguration, []RouteStatus, error) {
	if svc.Namespace == "" || svc.Name == "" {
		return nil, nil, errors.New("gamma: service namespace and name are required")
	}
	if len(svc.Ports) == 0 {
		return nil, nil, fmt.Errorf("gamma: service %s/%s has no ports", svc.Namespace, svc.Name)
	}
	if opts.Lookup == nil {
		return nil, nil, errors.New("gamma: Options.Lookup is required")
	}
	for _, p := range svc.Ports {
		if p == 0 || p > 65535 {
			return nil, nil, fmt.Errorf("gamma: service %s/%s: invalid port %d", svc.Namespace, svc.Name, p)
		}
	}
	for _, v := range svc.VIPs {
		if _, err := netip.ParseAddr(v); err != nil {
			return nil, nil, fmt.Errorf("gamma: service %s/%s: VIP: %w", svc.Namespace, svc.Name, err)
		}
	}
	t := &translator{svc: svc, opts: opts, host: Hostname(svc.Namespace, svc.Name, opts.Domain)}

	var statuses []RouteStatus
	perPort := make(map[uint32][]entry)
	kinds := make(map[*gatewayv1.HTTPRoute]string)
	routes := slices.Clone(in.HTTP)
	for _, g := range in.GRPC {
		if g != nil {
			h := grpcAsHTTP(g)
			kinds[h] = KindGRPCRoute
			routes = append(routes, h)
		}
	}
	for _, r := range sortedRoutes(routes) {
		kind := KindHTTPRoute
		if k, ok := kinds[r]; ok {
			kind = k
		}
		for _, pr := range r.Spec.ParentRefs {
			if !t.names(r, pr) {
				continue
			}
			st := RouteStatus{Kind: kind, Namespace: r.Namespace, Name: r.Name, ParentRef: pr}
			ports := svc.Ports
			if pr.SectionName != nil {
				n, ok := svc.PortNames[string(*pr.SectionName)]
				if !ok || !slices.Contains(svc.Ports, n) || (pr.Port != nil && uint32(*pr.Port) != n) {
					st.Conditions = conditions(r, false, string(gatewayv1.RouteReasonNoMatchingParent),
						fmt.Sprintf("service %s/%s has no HTTP port named %q", svc.Namespace, svc.Name, *pr.SectionName), nil)
					statuses = append(statuses, st)
					continue
				}
				ports = []uint32{n}
			}
			if pr.Port != nil {
				if !slices.Contains(svc.Ports, uint32(*pr.Port)) {
					st.Conditions = conditions(r, false, string(gatewayv1.RouteReasonNoMatchingParent),
						fmt.Sprintf("service %s/%s has no port %d", svc.Namespace, svc.Name, *pr.Port), nil)
					statuses = append(statuses, st)
					continue
				}
				ports = []uint32{uint32(*pr.Port)}
			}
			var res routeResult
			for _, port := range ports {
				res = t.translateRoute(r, port)
				if r.Namespace != svc.Namespace {
					for i := range res.entries {
						res.entries[i].consumer = r.Namespace
					}
				}
				perPort[port] = append(perPort[port], res.entries...)
			}
			st.Conditions = res.conditions(r)
			statuses = append(statuses, st)
		}
	}

	rcs := make([]*routev3.RouteConfiguration, 0, len(svc.Ports))
	for _, port := range svc.Ports {
		rcs = append(rcs, t.routeConfig(port, perPort[port]))
	}
	return rcs, statuses, nil
}

// names reports whether the parentRef pr of r names the translated Service.
func (t *translator) names(r *gatewayv1.HTTPRoute, pr gatewayv1.ParentReference) bool {
	if pr.Group == nil || *pr.Group != "" || pr.Kind == nil || *pr.Kind != "Service" {
		return false
	}
	ns := r.Namespace
	if pr.Namespace != nil {
		ns = string(*pr.Namespace)
	}
	return ns == t.svc.Namespace && string(pr.Name) == t.svc.Name
}

// MissingParents returns the status of every parentRef of routes that names
// a Service (group "", kind Service) the lookup does not know: Accepted
// False, NoMatchingParent. RoutesForService reports the others.
func MissingParents(in Routes, lookup Lookup) []RouteStatus {
	type src struct {
		kind string
		meta *metav1.ObjectMeta
		refs []gatewayv1.ParentReference
	}
	var all []src
	for _, r := range in.HTTP {
		if r != nil {
			all = append(all, src{KindHTTPRoute, &r.ObjectMeta, r.Spec.ParentRefs})
		}
	}
	for _, r := range in.GRPC {
		if r != nil {
			all = append(all, src{KindGRPCRoute, &r.ObjectMeta, r.Spec.ParentRefs})
		}
	}
	var out []RouteStatus
	for _, s := range all {
		r := &gatewayv1.HTTPRoute{ObjectMeta: *s.meta}
		for _, pr := range s.refs {
			if pr.Group == nil || *pr.Group != "" || pr.Kind == nil || *pr.Kind != "Service" {
				continue
			}
			ns := r.Namespace
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			if lookup.ServiceExists(ns, string(pr.Name)) {
				continue
			}
			out = append(out, RouteStatus{Kind: s.kind, Namespace: r.Namespace, Name: r.Name, ParentRef: pr,
				Conditions: conditions(r, false, string(gatewayv1.RouteReasonNoMatchingParent),
					fmt.Sprintf("service %s/%s not found", ns, pr.Name), nil)})
		}
	}
	return out
}

// sortedRoutes returns the non-nil routes oldest first, then by
// namespace/name: the Gateway API tie-break across routes.
func sortedRoutes(routes []*gatewayv1.HTTPRoute) []*gatewayv1.HTTPRoute {
	out := make([]*gatewayv1.HTTPRoute, 0, len(routes))
	for _, r := range routes {
		if r != nil {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *gatewayv1.HTTPRoute) int {
		if c := a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// conditions builds Accepted and ResolvedRefs (and PartiallyInvalid when
// partial is not nil).
func conditions(r *gatewayv1.HTTPRoute, accepted bool, reason, msg string, refs *condition) []metav1.Condition {
	gen := r.Generation
	acc := metav1.Condition{Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.RouteReasonAccepted), Message: "Route was valid", ObservedGeneration: gen}
	if !accepted {
		acc.Status, acc.Reason, acc.Message = metav1.ConditionFalse, reason, msg
	}
	res := metav1.Condition{Type: string(gatewayv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue,
		Reason: string(gatewayv1.RouteReasonResolvedRefs), Message: "All references resolved", ObservedGeneration: gen}
	if refs != nil {
		res.Status, res.Reason, res.Message = metav1.ConditionFalse, refs.reason, refs.msg
	}
	return []metav1.Condition{acc, res}
}

type condition struct{ reason, msg string }
