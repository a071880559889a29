package ambient

import (
	"maps"
	"reflect"
	"slices"
	"sync"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

type nn = types.NamespacedName

type set = map[string]struct{}

// Index holds the Kubernetes objects that the workload API is derived from
// and the resources derived from them. Every Upsert/Delete updates both and
// returns the resources that changed, compared with proto.Equal, so that a
// no-op update returns empty Changes. It is safe for concurrent use.
//
// Objects passed in are kept (not copied) and must not be modified
// afterwards, as with objects from an informer cache. Returned messages are
// shared and must not be modified either.
type Index struct {
	mu   sync.Mutex
	opts Options

	namespaces map[string]map[string]string // name -> labels

	pods     map[nn]*corev1.Pod
	podsByNS map[string]set

	services     map[nn]*corev1.Service
	servicesByNS map[string]set

	slices          map[nn]*sliceState
	slicesByService map[nn]set         // service -> names of its slices
	podSlices       map[nn]map[nn]bool // pod -> slices that list it

	policies         map[nn]*policyState
	selectorPolicies map[string]set // namespace -> accepted WORKLOAD_SELECTOR policies

	peerAuths     map[nn]*peerAuth
	peerAuthsByNS map[string]set
	peerAuthErrs  map[nn]error

	addresses      map[string]*workloadv1.Address
	authorizations map[string]*workloadv1.Authorization

	// waypointFor is the traffic type (istio.io/waypoint-for) of each
	// known waypoint Gateway.
	waypointFor map[nn]string
}

type sliceState struct {
	service string // name of the Service (kubernetes.io/service-name)
	ports   []discoveryv1.EndpointPort
	pods    map[nn]bool
}

type policyState struct {
	result PolicyResult // last valid version; zero if there never was one
	err    error        // error of the latest version, nil if it was valid
}

// NewIndex returns an empty Index.
func NewIndex(opts Options) *Index {
	return &Index{
		opts:             opts.withDefaults(),
		namespaces:       map[string]map[string]string{},
		pods:             map[nn]*corev1.Pod{},
		podsByNS:         map[string]set{},
		services:         map[nn]*corev1.Service{},
		servicesByNS:     map[string]set{},
		slices:           map[nn]*sliceState{},
		slicesByService:  map[nn]set{},
		podSlices:        map[nn]map[nn]bool{},
		policies:         map[nn]*policyState{},
		selectorPolicies: map[string]set{},
		peerAuths:        map[nn]*peerAuth{},
		peerAuthsByNS:    map[string]set{},
		peerAuthErrs:     map[nn]error{},
		addresses:        map[string]*workloadv1.Address{},
		authorizations:   map[string]*workloadv1.Authorization{},
		waypointFor:      map[nn]string{},
	}
}

// Snapshot returns every current resource, as Changes from an empty state
// (for a new client, or the debug endpoint).
func (ix *Index) Snapshot() Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return Changes{Addresses: maps.Clone(ix.addresses), Authorizations: maps.Clone(ix.authorizations)}
}

// Address returns the current Address named name, or nil.
func (ix *Index) Address(name string) *workloadv1.Address {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.addresses[name]
}

// Authorization returns the current Authorization named name, or nil.
func (ix *Index) Authorization(name string) *workloadv1.Authorization {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.authorizations[name]
}

// AuthorizationPolicyStatus returns the outcome of the last valid version
// of an AuthorizationPolicy and the error of the latest version (nil if it
// was valid), for its status condition. ok is false for an unknown policy.
func (ix *Index) AuthorizationPolicyStatus(namespace, name string) (res PolicyResult, err error, ok bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	st := ix.policies[nn{Namespace: namespace, Name: name}]
	if st == nil {
		return PolicyResult{}, nil, false
	}
	return st.result, st.err, true
}

// --- output bookkeeping ---

func (ix *Index) setAddress(b *changeBuilder, name string, a *workloadv1.Address) {
	old, had := ix.addresses[name]
	switch {
	case a == nil && had:
		delete(ix.addresses, name)
		b.removeAddress(name)
	case a != nil && (!had || !proto.Equal(old, a)):
		ix.addresses[name] = a
		b.upsertAddress(name, a)
	}
}

func (ix *Index) setAuthorization(b *changeBuilder, name string, a *workloadv1.Authorization) {
	old, had := ix.authorizations[name]
	switch {
	case a == nil && had:
		delete(ix.authorizations, name)
		b.removeAuthorization(name)
	case a != nil && (!had || !proto.Equal(old, a)):
		ix.authorizations[name] = a
		b.upsertAuthorization(name, a)
	}
}

func addToSet[K comparable](m map[K]set, k K, v string) {
	s := m[k]
	if s == nil {
		s = set{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func removeFromSet[K comparable](m map[K]set, k K, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// --- Namespaces ---

// UpsertNamespace records a namespace's labels. A change of its dataplane
// mode or waypoint labels changes every pod and service in it.
func (ix *Index) UpsertNamespace(ns *corev1.Namespace) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	old, had := ix.namespaces[ns.Name]
	labels := ns.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	ix.namespaces[ns.Name] = labels
	if had && maps.Equal(old, labels) {
		return Changes{}
	}
	var b changeBuilder
	ix.recomputeNamespace(&b, ns.Name)
	return b.changes()
}

// DeleteNamespace forgets a namespace's labels (its pods and services go
// with their own deletes).
func (ix *Index) DeleteNamespace(name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if _, had := ix.namespaces[name]; !had {
		return Changes{}
	}
	delete(ix.namespaces, name)
	var b changeBuilder
	ix.recomputeNamespace(&b, name)
	return b.changes()
}

func (ix *Index) recomputeNamespace(b *changeBuilder, ns string) {
	for name := range ix.podsByNS[ns] {
		ix.recomputePod(b, nn{Namespace: ns, Name: name})
	}
	for name := range ix.servicesByNS[ns] {
		ix.recomputeService(b, nn{Namespace: ns, Name: name})
	}
}

// --- Waypoints ---

// Waypoint traffic types (istio.io/waypoint-for on the Gateway).
const (
	WaypointForService  = "service"
	WaypointForWorkload = "workload"
	WaypointForAll      = "all"
	WaypointForNone     = "none"
)

// UpsertWaypoint records a waypoint Gateway and the traffic it handles
// (empty means service, Istio's default). Services whose labels name a
// waypoint that does not handle service traffic get no waypoint; pods get
// one only when it handles workload traffic (see workloadWaypoint).
func (ix *Index) UpsertWaypoint(namespace, name, trafficFor string) Changes {
	if trafficFor == "" {
		trafficFor = WaypointForService
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: namespace, Name: name}
	if old, ok := ix.waypointFor[key]; ok && old == trafficFor {
		return Changes{}
	}
	ix.waypointFor[key] = trafficFor
	return ix.recomputeWaypointUsers()
}

// DeleteWaypoint forgets a waypoint Gateway.
func (ix *Index) DeleteWaypoint(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: namespace, Name: name}
	if _, ok := ix.waypointFor[key]; !ok {
		return Changes{}
	}
	delete(ix.waypointFor, key)
	return ix.recomputeWaypointUsers()
}

// servesServices reports whether the waypoint namespace/name takes service
// traffic. A waypoint not (yet) known is assumed to: traffic is sent to it
// and refused until it exists, rather than silently skipping its policies.
func (ix *Index) servesServices(namespace, name string) bool {
	t, ok := ix.waypointFor[nn{Namespace: namespace, Name: name}]
	return !ok || t == WaypointForService || t == WaypointForAll
}

// waypointTrafficFor returns the traffic type of a known waypoint.
func (ix *Index) waypointTrafficFor(namespace, name string) (string, bool) {
	t, ok := ix.waypointFor[nn{Namespace: namespace, Name: name}]
	return t, ok
}

// recomputeWaypointUsers recomputes every Service and captured pod (their
// waypoint depends on its traffic type); waypoints change rarely.
func (ix *Index) recomputeWaypointUsers() Changes {
	var b changeBuilder
	for key := range ix.services {
		ix.recomputeService(&b, key)
	}
	for key := range ix.pods {
		ix.recomputePod(&b, key)
	}
	return b.changes()
}

// --- Pods ---

// UpsertPod adds or updates a pod; it changes at most that pod's Workload.
func (ix *Index) UpsertPod(pod *corev1.Pod) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: pod.Namespace, Name: pod.Name}
	ix.pods[key] = pod
	addToSet(ix.podsByNS, pod.Namespace, pod.Name)
	var b changeBuilder
	ix.recomputePod(&b, key)
	return b.changes()
}

// DeletePod removes a pod's Workload.
func (ix *Index) DeletePod(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: namespace, Name: name}
	delete(ix.pods, key)
	removeFromSet(ix.podsByNS, namespace, name)
	var b changeBuilder
	ix.recomputePod(&b, key)
	return b.changes()
}

func (ix *Index) recomputePod(b *changeBuilder, key nn) {
	uid := WorkloadUID(ix.opts.ClusterID, key.Namespace, key.Name)
	pod := ix.pods[key]
	if pod == nil {
		ix.setAddress(b, uid, nil)
		return
	}
	nsLabels := ix.namespaces[pod.Namespace]
	in := workloadInputs{namespaceLabels: nsLabels, services: ix.podServices(key), waypointFor: ix.waypointTrafficFor}
	if IsCaptured(pod, nsLabels) {
		in.policies = ix.podPolicies(pod)
	}
	w := buildWorkload(ix.opts, pod, in)
	if w == nil {
		ix.setAddress(b, uid, nil)
		return
	}
	ix.setAddress(b, uid, &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}})
}

// podServices resolves the services a pod backs, from the EndpointSlices
// that list it.
func (ix *Index) podServices(pod nn) map[string]*workloadv1.PortList {
	var out map[string]*workloadv1.PortList
	for sk := range ix.podSlices[pod] {
		st := ix.slices[sk]
		if st == nil {
			continue
		}
		svc := ix.services[nn{Namespace: sk.Namespace, Name: st.service}]
		if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		key := ServiceResourceName(svc.Namespace, ServiceHostname(svc.Name, svc.Namespace, ix.opts.DomainSuffix))
		if out == nil {
			out = map[string]*workloadv1.PortList{}
		}
		pl := out[key]
		if pl == nil {
			pl = &workloadv1.PortList{}
			out[key] = pl
		}
		pl.Ports = mergePorts(pl.Ports, servicePortsFor(svc, st.ports))
	}
	return out
}

// podPolicies lists, sorted, the WORKLOAD_SELECTOR Authorizations that
// apply to a pod: selecting AuthorizationPolicies of its namespace and of
// the root namespace, and the PeerAuthentication-derived ones.
func (ix *Index) podPolicies(pod *corev1.Pod) []string {
	var out []string
	add := func(ns string) {
		for name := range ix.selectorPolicies[ns] {
			st := ix.policies[nn{Namespace: ns, Name: name}]
			if st != nil && st.result.Authorization != nil && selects(st.result.Selector, pod.Labels) {
				out = append(out, AuthorizationResourceName(ns, name))
			}
		}
	}
	add(pod.Namespace)
	if pod.Namespace != ix.opts.RootNamespace {
		add(ix.opts.RootNamespace)
	}
	out = append(out, ix.peerAuthPolicies(pod)...)
	slices.Sort(out)
	return out
}

// --- Services ---

// UpsertService adds or updates a Service. A change of its ports also
// changes the Workloads that back it (their resolved ports).
func (ix *Index) UpsertService(svc *corev1.Service) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: svc.Namespace, Name: svc.Name}
	old := ix.services[key]
	ix.services[key] = svc
	addToSet(ix.servicesByNS, svc.Namespace, svc.Name)
	var b changeBuilder
	ix.recomputeService(&b, key)
	if old == nil || old.Spec.Type != svc.Spec.Type || !reflect.DeepEqual(old.Spec.Ports, svc.Spec.Ports) {
		ix.recomputeServicePods(&b, key)
	}
	return b.changes()
}

// DeleteService removes a Service and its entry from its Workloads.
func (ix *Index) DeleteService(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: namespace, Name: name}
	if ix.services[key] == nil {
		return Changes{}
	}
	delete(ix.services, key)
	removeFromSet(ix.servicesByNS, namespace, name)
	var b changeBuilder
	ix.setAddress(&b, ServiceResourceName(namespace, ServiceHostname(name, namespace, ix.opts.DomainSuffix)), nil)
	ix.recomputeServicePods(&b, key)
	return b.changes()
}

func (ix *Index) recomputeService(b *changeBuilder, key nn) {
	name := ServiceResourceName(key.Namespace, ServiceHostname(key.Name, key.Namespace, ix.opts.DomainSuffix))
	svc := ix.services[key]
	if svc == nil {
		ix.setAddress(b, name, nil)
		return
	}
	s := buildService(ix.opts, svc, ix.namespaces[key.Namespace], ix.servesServices)
	if s == nil {
		ix.setAddress(b, name, nil)
		return
	}
	ix.setAddress(b, name, &workloadv1.Address{Type: &workloadv1.Address_Service{Service: s}})
}

func (ix *Index) recomputeServicePods(b *changeBuilder, svc nn) {
	seen := map[nn]bool{}
	for sliceName := range ix.slicesByService[svc] {
		st := ix.slices[nn{Namespace: svc.Namespace, Name: sliceName}]
		if st == nil {
			continue
		}
		for p := range st.pods {
			if !seen[p] {
				seen[p] = true
				ix.recomputePod(b, p)
			}
		}
	}
}

// --- EndpointSlices ---

// UpsertEndpointSlice adds or updates an EndpointSlice. Only the Workloads
// of pods that joined or left it change, or all of its pods if its ports or
// service changed.
func (ix *Index) UpsertEndpointSlice(es *discoveryv1.EndpointSlice) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: es.Namespace, Name: es.Name}
	st := &sliceState{service: es.Labels[discoveryv1.LabelServiceName], ports: es.Ports, pods: map[nn]bool{}}
	if st.service != "" {
		for _, ep := range es.Endpoints {
			ref := ep.TargetRef
			if ref == nil || ref.Kind != "Pod" || ref.Name == "" || (ref.Namespace != "" && ref.Namespace != es.Namespace) {
				continue
			}
			st.pods[nn{Namespace: es.Namespace, Name: ref.Name}] = true
		}
	}
	var b changeBuilder
	ix.replaceSlice(&b, key, st)
	return b.changes()
}

// DeleteEndpointSlice removes an EndpointSlice.
func (ix *Index) DeleteEndpointSlice(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var b changeBuilder
	ix.replaceSlice(&b, nn{Namespace: namespace, Name: name}, nil)
	return b.changes()
}

func (ix *Index) replaceSlice(b *changeBuilder, key nn, st *sliceState) {
	old := ix.slices[key]
	if old != nil {
		removeFromSet(ix.slicesByService, nn{Namespace: key.Namespace, Name: old.service}, key.Name)
		for p := range old.pods {
			if s := ix.podSlices[p]; s != nil {
				delete(s, key)
				if len(s) == 0 {
					delete(ix.podSlices, p)
				}
			}
		}
		delete(ix.slices, key)
	}
	if st != nil && st.service != "" {
		ix.slices[key] = st
		addToSet(ix.slicesByService, nn{Namespace: key.Namespace, Name: st.service}, key.Name)
		for p := range st.pods {
			s := ix.podSlices[p]
			if s == nil {
				s = map[nn]bool{}
				ix.podSlices[p] = s
			}
			s[key] = true
		}
	}
	// Affected pods: those that joined or left; all of them when what they
	// resolve to (service, ports) changed.
	same := old != nil && st != nil && old.service == st.service && reflect.DeepEqual(old.ports, st.ports)
	affected := map[nn]bool{}
	if old != nil {
		for p := range old.pods {
			if !same || st == nil || !st.pods[p] {
				affected[p] = true
			}
		}
	}
	if st != nil {
		for p := range st.pods {
			if !same || !old.pods[p] {
				affected[p] = true
			}
		}
	}
	for p := range affected {
		ix.recomputePod(b, p)
	}
}

// --- AuthorizationPolicies ---

// UpsertAuthorizationPolicy translates and records an AuthorizationPolicy.
// An invalid policy returns a *PolicyError and is skipped: a new one is not
// added; for an update, the last valid version stays in force (and its
// status says why). Other policies are never affected.
func (ix *Index) UpsertAuthorizationPolicy(p *securityv1.AuthorizationPolicy) (Changes, error) {
	res, err := ConvertAuthorizationPolicy(ix.opts, p)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: p.Namespace, Name: p.Name}
	st := ix.policies[key]
	if err != nil {
		if st == nil {
			ix.policies[key] = &policyState{err: err}
		} else {
			st.err = err
		}
		return Changes{}, err
	}
	var b changeBuilder
	ix.replacePolicy(&b, key, &policyState{result: res})
	return b.changes(), nil
}

// DeleteAuthorizationPolicy removes an AuthorizationPolicy.
func (ix *Index) DeleteAuthorizationPolicy(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var b changeBuilder
	ix.replacePolicy(&b, nn{Namespace: namespace, Name: name}, nil)
	return b.changes()
}

func (ix *Index) replacePolicy(b *changeBuilder, key nn, st *policyState) {
	var old PolicyResult
	if o := ix.policies[key]; o != nil {
		old = o.result
	}
	if st == nil {
		delete(ix.policies, key)
		st = &policyState{}
	} else {
		ix.policies[key] = st
	}
	name := AuthorizationResourceName(key.Namespace, key.Name)
	ix.setAuthorization(b, name, st.result.Authorization)

	oldSel := old.Authorization != nil && old.Selector != nil
	newSel := st.result.Authorization != nil && st.result.Selector != nil
	if newSel {
		addToSet(ix.selectorPolicies, key.Namespace, key.Name)
	} else {
		removeFromSet(ix.selectorPolicies, key.Namespace, key.Name)
	}
	if (!oldSel && !newSel) || (oldSel && newSel && maps.Equal(old.Selector, st.result.Selector)) {
		return // no workload's policy list changes
	}
	ix.forPodsIn(key.Namespace, func(pod *corev1.Pod) {
		if (oldSel && selects(old.Selector, pod.Labels)) || (newSel && selects(st.result.Selector, pod.Labels)) {
			ix.recomputePod(b, nn{Namespace: pod.Namespace, Name: pod.Name})
		}
	})
}

// forPodsIn calls f for the pods a policy in namespace ns can apply to:
// those of ns, or all of them for the root namespace.
func (ix *Index) forPodsIn(ns string, f func(*corev1.Pod)) {
	if ns == ix.opts.RootNamespace {
		for _, p := range ix.pods {
			f(p)
		}
		return
	}
	for name := range ix.podsByNS[ns] {
		if p := ix.pods[nn{Namespace: ns, Name: name}]; p != nil {
			f(p)
		}
	}
}

// --- PeerAuthentications ---

// UpsertPeerAuthentication records a PeerAuthentication. An invalid one
// returns a *PolicyError and is skipped (an update keeps the last valid
// version).
func (ix *Index) UpsertPeerAuthentication(p *securityv1.PeerAuthentication) (Changes, error) {
	pa, err := parsePeerAuthentication(p)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: p.Namespace, Name: p.Name}
	if err != nil {
		ix.peerAuthErrs[key] = err
		return Changes{}, err
	}
	delete(ix.peerAuthErrs, key)
	if old := ix.peerAuths[key]; old != nil && reflect.DeepEqual(old, pa) {
		return Changes{}, nil
	}
	ix.peerAuths[key] = pa
	addToSet(ix.peerAuthsByNS, key.Namespace, key.Name)
	var b changeBuilder
	ix.peerAuthChanged(&b, key.Namespace)
	return b.changes(), nil
}

// PeerAuthenticationError returns the error of the latest version of a
// PeerAuthentication, nil if it was valid or is unknown.
func (ix *Index) PeerAuthenticationError(namespace, name string) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.peerAuthErrs[nn{Namespace: namespace, Name: name}]
}

// DeletePeerAuthentication removes a PeerAuthentication.
func (ix *Index) DeletePeerAuthentication(namespace, name string) Changes {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	key := nn{Namespace: namespace, Name: name}
	delete(ix.peerAuthErrs, key)
	pa := ix.peerAuths[key]
	if pa == nil {
		return Changes{}
	}
	delete(ix.peerAuths, key)
	removeFromSet(ix.peerAuthsByNS, namespace, name)
	var b changeBuilder
	ix.setAuthorization(&b, pa.resourceName(), nil)
	ix.peerAuthChanged(&b, namespace)
	return b.changes()
}

// peerAuthChanged recomputes what depends on the PeerAuthentications of ns
// (all namespaces for the root namespace): the derived Authorizations and
// the pods' policy lists.
func (ix *Index) peerAuthChanged(b *changeBuilder, ns string) {
	static := AuthorizationResourceName(ix.opts.RootNamespace, StaticStrictPolicyName)
	if len(ix.peerAuths) > 0 {
		ix.setAuthorization(b, static, staticStrictPolicy(ix.opts.RootNamespace))
	} else {
		ix.setAuthorization(b, static, nil)
	}
	namespaces := []string{ns}
	if ns == ix.opts.RootNamespace {
		namespaces = slices.Collect(maps.Keys(ix.peerAuthsByNS))
	}
	for _, n := range namespaces {
		for name := range ix.peerAuthsByNS[n] {
			pa := ix.peerAuths[nn{Namespace: n, Name: name}]
			if pa == nil || pa.selector == nil || pa.namespace == ix.opts.RootNamespace {
				continue
			}
			var pol *workloadv1.Authorization
			if len(pa.portModes) > 0 {
				pol = portLevelPolicy(pa, ix.workloadStrict(pa))
			}
			ix.setAuthorization(b, pa.resourceName(), pol)
		}
	}
	ix.forPodsIn(ns, func(pod *corev1.Pod) {
		ix.recomputePod(b, nn{Namespace: pod.Namespace, Name: pod.Name})
	})
}

// oldestPeerAuth returns the oldest namespace-wide (selector == nil) or,
// with labels, the oldest selecting PeerAuthentication of ns.
func (ix *Index) oldestPeerAuth(ns string, labels map[string]string, workload bool) *peerAuth {
	var best *peerAuth
	for name := range ix.peerAuthsByNS[ns] {
		pa := ix.peerAuths[nn{Namespace: ns, Name: name}]
		if pa == nil {
			continue
		}
		if workload {
			if !selects(pa.selector, labels) {
				continue
			}
		} else if pa.selector != nil {
			continue
		}
		if best == nil || pa.olderThan(best) {
			best = pa
		}
	}
	return best
}

// inheritedStrict reports whether the mesh-wide and namespace-wide
// PeerAuthentications make ns STRICT (a namespace policy that is not UNSET
// overrides the mesh).
func (ix *Index) inheritedStrict(ns string) bool {
	strict := false
	if mesh := ix.oldestPeerAuth(ix.opts.RootNamespace, nil, false); mesh != nil {
		strict = mesh.mode == mtlsStrict
	}
	if ns != ix.opts.RootNamespace {
		if nsPA := ix.oldestPeerAuth(ns, nil, false); nsPA != nil && nsPA.mode != mtlsUnset {
			strict = nsPA.mode == mtlsStrict
		}
	}
	return strict
}

// workloadStrict is the top-level mode a workload-level PeerAuthentication
// gives: its own mode, or the inherited one when UNSET.
func (ix *Index) workloadStrict(pa *peerAuth) bool {
	if pa.mode != mtlsUnset {
		return pa.mode == mtlsStrict
	}
	return ix.inheritedStrict(pa.namespace)
}

// peerAuthPolicies lists the PeerAuthentication-derived Authorizations a
// pod must list: the static STRICT policy when its effective mode is
// STRICT, or its workload policy's port-level conversion.
func (ix *Index) peerAuthPolicies(pod *corev1.Pod) []string {
	if len(ix.peerAuths) == 0 {
		return nil
	}
	var strict bool
	var wpa *peerAuth
	if pod.Namespace != ix.opts.RootNamespace {
		wpa = ix.oldestPeerAuth(pod.Namespace, pod.Labels, true)
	}
	if wpa != nil {
		strict = ix.workloadStrict(wpa)
		if len(wpa.portModes) > 0 && portLevelPolicy(wpa, strict) != nil {
			return []string{wpa.resourceName()}
		}
	} else {
		strict = ix.inheritedStrict(pod.Namespace)
	}
	if strict {
		return []string{AuthorizationResourceName(ix.opts.RootNamespace, StaticStrictPolicyName)}
	}
	return nil
}
