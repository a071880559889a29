package waypointconfig

import (
	"encoding/json"
	"net/netip"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
)

// podIPIndex indexes pods by their IPs, for State.Workload.
const podIPIndex = "podIP"

func podIPs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.HostNetwork {
		// Host-network pods share the node's address: not a workload of
		// their own.
		return nil, nil
	}
	var out []string
	for _, ip := range pod.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		out = append(out, pod.Status.PodIP)
	}
	return out, nil
}

// listerState is waypointxds.State over informer caches.
type listerState struct {
	namespaces corelisters.NamespaceLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	pods       cache.Indexer
	gateways   gatewaylisters.GatewayLister
	httpRoutes gatewaylisters.HTTPRouteLister
	grpcRoutes gatewaylisters.GRPCRouteLister
	grants     gatewaylisters.ReferenceGrantLister
	policies   cache.Store // unstructured AuthorizationPolicies

	// lastGood keeps each policy's last version that decoded, by uid, so
	// that a bad edit leaves the previous rules in force (as the ambient
	// controller does for ztunnel) instead of dropping a DENY.
	lastGood map[string]lastGoodPolicy
}

type lastGoodPolicy struct {
	resourceVersion string
	policy          *securityv1.AuthorizationPolicy
}

var _ waypointxds.State = (*listerState)(nil)

func (s *listerState) Namespace(name string) *corev1.Namespace {
	ns, err := s.namespaces.Get(name)
	if err != nil {
		return nil
	}
	return ns
}

func (s *listerState) Services() []*corev1.Service {
	out, _ := s.services.List(labels.Everything())
	return out
}

func (s *listerState) Service(namespace, name string) *corev1.Service {
	svc, err := s.services.Services(namespace).Get(name)
	if err != nil {
		return nil
	}
	return svc
}

func (s *listerState) EndpointSlices(namespace, service string) []*discoveryv1.EndpointSlice {
	out, _ := s.slices.EndpointSlices(namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service}))
	return out
}

func (s *listerState) Workload(ip netip.Addr) (waypointxds.Workload, bool) {
	objs, err := s.pods.ByIndex(podIPIndex, ip.Unmap().String())
	if err != nil {
		return waypointxds.Workload{}, false
	}
	// Completed pods keep their IP in status; a running pod with the same
	// address is the one traffic reaches.
	var pod *corev1.Pod
	for _, o := range objs {
		p, ok := o.(*corev1.Pod)
		if !ok || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		pod = p
		break
	}
	if pod == nil {
		return waypointxds.Workload{}, false
	}
	var nsLabels map[string]string
	if ns := s.Namespace(pod.Namespace); ns != nil {
		nsLabels = ns.Labels
	}
	name, _ := ambient.WorkloadNameAndType(pod)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return waypointxds.Workload{Name: name, Namespace: pod.Namespace, ServiceAccount: sa, Captured: ambient.IsCaptured(pod, nsLabels)}, true
}

func (s *listerState) Pods() []*corev1.Pod {
	var out []*corev1.Pod
	for _, o := range s.pods.List() {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, p)
		}
	}
	return out
}

func (s *listerState) HTTPRoutes() []*gatewayv1.HTTPRoute {
	out, _ := s.httpRoutes.List(labels.Everything())
	return out
}

func (s *listerState) GRPCRoutes() []*gatewayv1.GRPCRoute {
	out, _ := s.grpcRoutes.List(labels.Everything())
	return out
}

// ReferenceGranted: a ReferenceGrant in toNamespace from HTTPRoutes or
// GRPCRoutes in fromNamespace to Services (all, or toName).
func (s *listerState) ReferenceGranted(fromNamespace, toNamespace, toName string) bool {
	grants, err := s.grants.ReferenceGrants(toNamespace).List(labels.Everything())
	if err != nil {
		return false
	}
	for _, g := range grants {
		from := false
		for _, f := range g.Spec.From {
			if string(f.Group) == gatewayv1.GroupName && (f.Kind == "HTTPRoute" || f.Kind == "GRPCRoute") && string(f.Namespace) == fromNamespace {
				from = true
				break
			}
		}
		if !from {
			continue
		}
		for _, t := range g.Spec.To {
			if t.Group == "" && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == toName) {
				return true
			}
		}
	}
	return false
}

// AuthorizationPolicies decodes every policy strictly. A version that does
// not decode (the ambient controller reports it on the object) is replaced
// by the policy's last version that did; a policy that never decoded is
// left out. Not safe for concurrent use (one build loop calls it).
func (s *listerState) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	var out []*securityv1.AuthorizationPolicy
	seen := map[string]bool{}
	for _, o := range s.policies.List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		uid := string(u.GetUID())
		seen[uid] = true
		if lg, ok := s.lastGood[uid]; ok && lg.resourceVersion == u.GetResourceVersion() {
			out = append(out, lg.policy)
			continue
		}
		p, err := decodePolicy(u)
		if err != nil {
			if lg, ok := s.lastGood[uid]; ok {
				out = append(out, lg.policy)
			}
			continue
		}
		s.lastGood[uid] = lastGoodPolicy{resourceVersion: u.GetResourceVersion(), policy: p}
		out = append(out, p)
	}
	for uid := range s.lastGood {
		if !seen[uid] {
			delete(s.lastGood, uid)
		}
	}
	return out
}

func decodePolicy(u *unstructured.Unstructured) (*securityv1.AuthorizationPolicy, error) {
	data, err := json.Marshal(u.Object)
	if err != nil {
		return nil, err
	}
	return ambient.DecodeAuthorizationPolicy(data)
}

func (s *listerState) Gateway(namespace, name string) *gatewayv1.Gateway {
	g, err := s.gateways.Gateways(namespace).Get(name)
	if err != nil {
		return nil
	}
	return g
}
