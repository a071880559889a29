// Package state is ztunnel's view of the mesh: the workloads, services and
// L4 authorization policies istiod-lite pushes over delta ADS
// (apis/workload/v1), with the indices the data path needs.
//
// Store.Handle is an xdsclient.Handler for the Address and Authorization
// type URLs. Every response is validated in full before anything is
// applied, then applied under the write lock, so readers see either the
// state before a response or after it; a malformed resource makes Handle
// return an error (the client NACKs) and leaves the state untouched.
//
// Lookups take a read lock and return the stored messages, which are shared
// and must not be modified. See docs/ztunnel.md, "State and authorization".
package state

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/ztunnel/authz"
)

// TypeURLs are the resource types Store.Handle accepts, for
// xdsclient.Options.TypeURLs.
var TypeURLs = []string{workloadv1.AddressTypeURL, workloadv1.AuthorizationTypeURL}

// Destination is what an IP is: a service VIP or a workload address. At
// most one of the fields is set.
type Destination struct {
	Service  *workloadv1.Service
	Workload *workloadv1.Workload
}

// Found reports whether the IP is known.
func (d Destination) Found() bool { return d.Service != nil || d.Workload != nil }

// Endpoint is one workload backing a service.
type Endpoint struct {
	Workload *workloadv1.Workload
	// Ports are the workload's ports for this service
	// (Workload.services[service].ports), target ports resolved for it.
	Ports []*workloadv1.Port
}

// Ready reports whether the endpoint may receive new connections: its
// workload is HEALTHY and has an address.
func (e Endpoint) Ready() bool {
	return e.Workload.GetStatus() == workloadv1.WorkloadStatus_HEALTHY && len(e.Workload.GetAddresses()) > 0
}

// TargetPort resolves servicePort for this endpoint: the workload's own
// mapping when it has a non-zero target port, else the Service's numeric
// target port (svc may be nil). ok is false when neither says (a named
// target port the workload does not serve).
func (e Endpoint) TargetPort(svc *workloadv1.Service, servicePort uint16) (port uint16, ok bool) {
	for _, p := range e.Ports {
		if p.GetServicePort() == uint32(servicePort) && p.GetTargetPort() != 0 {
			return uint16(p.GetTargetPort()), true
		}
	}
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(servicePort) && p.GetTargetPort() != 0 {
			return uint16(p.GetTargetPort()), true
		}
	}
	return 0, false
}

// EventType is the kind of a workload Event.
type EventType int

const (
	WorkloadAdded EventType = iota
	WorkloadUpdated
	WorkloadRemoved
)

func (t EventType) String() string {
	switch t {
	case WorkloadAdded:
		return "added"
	case WorkloadUpdated:
		return "updated"
	case WorkloadRemoved:
		return "removed"
	}
	return fmt.Sprintf("event(%d)", int(t))
}

// Event is a change of one workload seen by a subscriber. Workload is the
// new version (the removed one for WorkloadRemoved); Previous is the old
// version for WorkloadUpdated.
type Event struct {
	Type     EventType
	Workload *workloadv1.Workload
	Previous *workloadv1.Workload
}

// Stats counts what the store holds.
type Stats struct {
	Workloads, Services, Authorizations, ServicesWithEndpoints int
}

// netAddr is an IP on a network.
type netAddr struct {
	network string
	ip      netip.Addr
}

// svcEndpoints are the endpoints of one service, kept incrementally; the
// sorted lists are built on the first read after a change.
type svcEndpoints struct {
	members map[string]Endpoint // workload uid -> endpoint
	cache   atomic.Pointer[endpointLists]
}

type endpointLists struct {
	all   []Endpoint // sorted by workload uid
	ready []Endpoint // the Ready ones, same order
}

type subscriber struct {
	node string
	all  bool
	fn   func([]Event)
}

// Store is ztunnel's state. The zero value is not usable; use NewStore.
type Store struct {
	mu sync.RWMutex

	workloads map[string]*workloadv1.Workload // uid
	services  map[string]*workloadv1.Service  // "<namespace>/<hostname>"

	byAddr    map[netAddr]*addrEntry
	endpoints map[string]*svcEndpoints
	byNode    map[string]map[string]*workloadv1.Workload

	policies       map[string]*workloadv1.Authorization // "<namespace>/<name>"
	nsPolicies     map[string][]*workloadv1.Authorization
	globalPolicies []*workloadv1.Authorization

	// notifyMu serializes applying a response and delivering its events
	// with Subscribe's initial replay, so a subscriber sees every change
	// exactly once.
	notifyMu sync.Mutex
	subsMu   sync.Mutex
	subs     map[*subscriber]struct{}
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{
		workloads:  map[string]*workloadv1.Workload{},
		services:   map[string]*workloadv1.Service{},
		byAddr:     map[netAddr]*addrEntry{},
		endpoints:  map[string]*svcEndpoints{},
		byNode:     map[string]map[string]*workloadv1.Workload{},
		policies:   map[string]*workloadv1.Authorization{},
		nsPolicies: map[string][]*workloadv1.Authorization{},
		subs:       map[*subscriber]struct{}{},
	}
}

// Handle applies one delta xDS response; it is an xdsclient.Handler. All
// upserts are decoded and validated first; any error rejects the whole
// response (the client NACKs it) and changes nothing. Removals are applied
// before upserts; removing an unknown name is not an error.
func (s *Store) Handle(typeURL string, upserts []*discovery.Resource, removed []string) error {
	switch typeURL {
	case workloadv1.AddressTypeURL:
		addrs, err := decodeAddresses(upserts)
		if err != nil {
			return fmt.Errorf("state: rejecting Address update: %w", err)
		}
		s.notifyMu.Lock()
		defer s.notifyMu.Unlock()
		s.mu.Lock()
		events := s.applyAddresses(addrs, removed)
		s.mu.Unlock()
		s.deliver(events)
		return nil
	case workloadv1.AuthorizationTypeURL:
		pols, err := decodeAuthorizations(upserts)
		if err != nil {
			return fmt.Errorf("state: rejecting Authorization update: %w", err)
		}
		s.mu.Lock()
		s.applyAuthorizations(pols, removed)
		s.mu.Unlock()
		return nil
	}
	return fmt.Errorf("state: unsupported type %q", typeURL)
}

type namedAddress struct {
	name string
	addr *workloadv1.Address
}

// decodeEach decodes every upsert into a fresh message from newMsg and
// checks it with validate; a name listed twice, a missing or undecodable
// body or a failed check rejects the whole response.
func decodeEach[M proto.Message](upserts []*discovery.Resource, newMsg func() M, validate func(name string, m M) error) ([]M, error) {
	out := make([]M, 0, len(upserts))
	seen := make(map[string]bool, len(upserts))
	for _, r := range upserts {
		name := r.GetName()
		if seen[name] {
			return nil, fmt.Errorf("resource %q: listed twice", name)
		}
		seen[name] = true
		if r.GetResource() == nil {
			return nil, fmt.Errorf("resource %q: no content", name)
		}
		m := newMsg()
		if err := r.GetResource().UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
		if err := validate(name, m); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
		out = append(out, m)
	}
	return out, nil
}

func decodeAddresses(upserts []*discovery.Resource) ([]namedAddress, error) {
	addrs, err := decodeEach(upserts, func() *workloadv1.Address { return &workloadv1.Address{} }, ValidateAddress)
	if err != nil {
		return nil, err
	}
	out := make([]namedAddress, len(addrs))
	for i, a := range addrs {
		out[i] = namedAddress{upserts[i].GetName(), a}
	}
	return out, nil
}

func decodeAuthorizations(upserts []*discovery.Resource) ([]*workloadv1.Authorization, error) {
	return decodeEach(upserts, func() *workloadv1.Authorization { return &workloadv1.Authorization{} },
		func(name string, p *workloadv1.Authorization) error {
			if err := authz.Validate(p); err != nil {
				return err
			}
			if want := p.GetNamespace() + "/" + p.GetName(); name != want {
				return fmt.Errorf("name must be %q", want)
			}
			return nil
		})
}

// ValidateAddress reports what is malformed in an Address resource named
// name, or nil. A Workload must have a uid equal to name, 4- or 16-byte
// addresses, known enum values, services keyed "<namespace>/<hostname>"
// with ports in range, non-empty policy names and a well-formed waypoint.
// A Service must have a namespace and hostname ("<namespace>/<hostname>"
// equal to name), valid VIPs, ports in range and a well-formed waypoint.
func ValidateAddress(name string, a *workloadv1.Address) error {
	switch t := a.GetType().(type) {
	case *workloadv1.Address_Workload:
		return validateWorkload(name, t.Workload)
	case *workloadv1.Address_Service:
		return validateService(name, t.Service)
	}
	return errors.New("address is neither a workload nor a service")
}

func validateWorkload(name string, w *workloadv1.Workload) error {
	if w == nil {
		return errors.New("nil workload")
	}
	if w.GetUid() == "" || w.GetUid() != name {
		return fmt.Errorf("workload uid %q must equal the resource name", w.GetUid())
	}
	for i, b := range w.GetAddresses() {
		if _, ok := netip.AddrFromSlice(b); !ok {
			return fmt.Errorf("workload addresses[%d]: %d bytes, want 4 or 16", i, len(b))
		}
	}
	if _, ok := workloadv1.TunnelProtocol_name[int32(w.GetTunnelProtocol())]; !ok {
		return fmt.Errorf("workload tunnel_protocol: unknown value %d", w.GetTunnelProtocol())
	}
	if _, ok := workloadv1.WorkloadStatus_name[int32(w.GetStatus())]; !ok {
		return fmt.Errorf("workload status: unknown value %d", w.GetStatus())
	}
	for key, pl := range w.GetServices() {
		if ns, host, ok := strings.Cut(key, "/"); !ok || ns == "" || host == "" {
			return fmt.Errorf("workload services: key %q: want <namespace>/<hostname>", key)
		}
		if err := validatePorts(pl.GetPorts()); err != nil {
			return fmt.Errorf("workload services[%q]: %w", key, err)
		}
	}
	for i, p := range w.GetAuthorizationPolicies() {
		if ns, n, ok := strings.Cut(p, "/"); !ok || ns == "" || n == "" {
			return fmt.Errorf("workload authorization_policies[%d]: %q: want <namespace>/<name>", i, p)
		}
	}
	if err := validateGateway(w.GetWaypoint()); err != nil {
		return fmt.Errorf("workload waypoint: %w", err)
	}
	return nil
}

func validateService(name string, s *workloadv1.Service) error {
	if s == nil {
		return errors.New("nil service")
	}
	if s.GetNamespace() == "" || s.GetHostname() == "" {
		return errors.New("service: missing namespace or hostname")
	}
	if want := s.GetNamespace() + "/" + s.GetHostname(); name != want {
		return fmt.Errorf("service: resource name must be %q", want)
	}
	for i, na := range s.GetAddresses() {
		if _, ok := netip.AddrFromSlice(na.GetAddress()); !ok {
			return fmt.Errorf("service addresses[%d]: %d bytes, want 4 or 16", i, len(na.GetAddress()))
		}
	}
	if err := validatePorts(s.GetPorts()); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	if err := validateGateway(s.GetWaypoint()); err != nil {
		return fmt.Errorf("service waypoint: %w", err)
	}
	return nil
}

func validatePorts(ports []*workloadv1.Port) error {
	for i, p := range ports {
		if p.GetServicePort() == 0 || p.GetServicePort() > 65535 || p.GetTargetPort() > 65535 {
			return fmt.Errorf("ports[%d]: service port %d, target port %d out of range", i, p.GetServicePort(), p.GetTargetPort())
		}
	}
	return nil
}

func validateGateway(g *workloadv1.GatewayAddress) error {
	if g == nil {
		return nil
	}
	switch d := g.GetDestination().(type) {
	case *workloadv1.GatewayAddress_Address:
		if _, ok := netip.AddrFromSlice(d.Address.GetAddress()); !ok {
			return errors.New("bad address")
		}
	case *workloadv1.GatewayAddress_Hostname:
		if d.Hostname.GetNamespace() == "" || d.Hostname.GetHostname() == "" {
			return errors.New("missing namespace or hostname")
		}
	default:
		return errors.New("no destination")
	}
	if g.GetHboneMtlsPort() == 0 || g.GetHboneMtlsPort() > 65535 {
		return fmt.Errorf("bad HBONE port %d", g.GetHboneMtlsPort())
	}
	return nil
}

// --- applying (under s.mu) ---

func (s *Store) applyAddresses(upserts []namedAddress, removed []string) []Event {
	var events []Event
	for _, name := range removed {
		if old := s.workloads[name]; old != nil {
			s.removeWorkload(old)
			events = append(events, Event{Type: WorkloadRemoved, Workload: old})
		}
		if old := s.services[name]; old != nil {
			s.removeService(name, old)
		}
	}
	for _, u := range upserts {
		switch t := u.addr.GetType().(type) {
		case *workloadv1.Address_Workload:
			if old := s.services[u.name]; old != nil {
				s.removeService(u.name, old)
			}
			old := s.workloads[u.name]
			if old != nil && proto.Equal(old, t.Workload) {
				continue
			}
			s.upsertWorkload(old, t.Workload)
			switch {
			case old == nil:
				events = append(events, Event{Type: WorkloadAdded, Workload: t.Workload})
			case old.GetNode() != t.Workload.GetNode():
				events = append(events, Event{Type: WorkloadRemoved, Workload: old}, Event{Type: WorkloadAdded, Workload: t.Workload})
			default:
				events = append(events, Event{Type: WorkloadUpdated, Workload: t.Workload, Previous: old})
			}
		case *workloadv1.Address_Service:
			if old := s.workloads[u.name]; old != nil {
				s.removeWorkload(old)
				events = append(events, Event{Type: WorkloadRemoved, Workload: old})
			}
			if old := s.services[u.name]; old != nil {
				s.removeService(u.name, old)
			}
			s.addService(u.name, t.Service)
		}
	}
	return events
}

func workloadAddrs(w *workloadv1.Workload) []netAddr {
	out := make([]netAddr, 0, len(w.GetAddresses()))
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok {
			out = append(out, netAddr{w.GetNetwork(), ip.Unmap()})
		}
	}
	return out
}

func serviceAddrs(svc *workloadv1.Service) []netAddr {
	out := make([]netAddr, 0, len(svc.GetAddresses()))
	for _, na := range svc.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(na.GetAddress()); ok {
			out = append(out, netAddr{na.GetNetwork(), ip.Unmap()})
		}
	}
	return out
}

// addrEntry is what has one address: services (VIP) and workloads, each
// sorted by resource name (usually one of them in all).
type addrEntry struct {
	services  []named[*workloadv1.Service]
	workloads []named[*workloadv1.Workload]
}

type named[T any] struct {
	name string
	v    T
}

func byName[T any](e named[T], name string) int { return strings.Compare(e.name, name) }

// setNamed inserts or replaces name in a sorted list.
func setNamed[T any](list []named[T], name string, v T) []named[T] {
	i, found := slices.BinarySearchFunc(list, name, byName[T])
	if found {
		list[i].v = v
		return list
	}
	return slices.Insert(list, i, named[T]{name, v})
}

func deleteNamed[T any](list []named[T], name string) []named[T] {
	if i, found := slices.BinarySearchFunc(list, name, byName[T]); found {
		return slices.Delete(list, i, i+1)
	}
	return list
}

func (s *Store) addrEntry(k netAddr) *addrEntry {
	e := s.byAddr[k]
	if e == nil {
		e = &addrEntry{}
		s.byAddr[k] = e
	}
	return e
}

func (s *Store) dropIfEmpty(k netAddr, e *addrEntry) {
	if len(e.services) == 0 && len(e.workloads) == 0 {
		delete(s.byAddr, k)
	}
}

func (s *Store) indexWorkloadAddr(k netAddr, w *workloadv1.Workload) {
	e := s.addrEntry(k)
	e.workloads = setNamed(e.workloads, w.GetUid(), w)
}

func (s *Store) unindexWorkloadAddr(k netAddr, uid string) {
	if e := s.byAddr[k]; e != nil {
		e.workloads = deleteNamed(e.workloads, uid)
		s.dropIfEmpty(k, e)
	}
}

// upsertWorkload replaces old (nil if new) by w in every index, touching
// only what differs.
func (s *Store) upsertWorkload(old, w *workloadv1.Workload) {
	uid := w.GetUid()
	if old != nil {
		newAddrs := workloadAddrs(w)
		for _, a := range workloadAddrs(old) {
			if !slices.Contains(newAddrs, a) {
				s.unindexWorkloadAddr(a, uid)
			}
		}
		for key := range old.GetServices() {
			if _, still := w.GetServices()[key]; !still {
				s.removeEndpoint(key, uid)
			}
		}
		if old.GetNode() != w.GetNode() {
			s.removeFromNode(old)
		}
	}
	s.workloads[uid] = w
	for _, a := range workloadAddrs(w) {
		s.indexWorkloadAddr(a, w)
	}
	for key, pl := range w.GetServices() {
		se := s.endpoints[key]
		if se == nil {
			se = &svcEndpoints{members: map[string]Endpoint{}}
			s.endpoints[key] = se
		}
		se.members[uid] = Endpoint{Workload: w, Ports: pl.GetPorts()}
		se.cache.Store(nil)
	}
	n := s.byNode[w.GetNode()]
	if n == nil {
		n = map[string]*workloadv1.Workload{}
		s.byNode[w.GetNode()] = n
	}
	n[uid] = w
}

func (s *Store) removeWorkload(w *workloadv1.Workload) {
	uid := w.GetUid()
	delete(s.workloads, uid)
	for _, a := range workloadAddrs(w) {
		s.unindexWorkloadAddr(a, uid)
	}
	for key := range w.GetServices() {
		s.removeEndpoint(key, uid)
	}
	s.removeFromNode(w)
}

func (s *Store) removeFromNode(w *workloadv1.Workload) {
	if n := s.byNode[w.GetNode()]; n != nil {
		delete(n, w.GetUid())
		if len(n) == 0 {
			delete(s.byNode, w.GetNode())
		}
	}
}

func (s *Store) removeEndpoint(key, uid string) {
	se := s.endpoints[key]
	if se == nil {
		return
	}
	delete(se.members, uid)
	se.cache.Store(nil)
	if len(se.members) == 0 {
		delete(s.endpoints, key)
	}
}

func (s *Store) addService(name string, svc *workloadv1.Service) {
	s.services[name] = svc
	for _, a := range serviceAddrs(svc) {
		e := s.addrEntry(a)
		e.services = setNamed(e.services, name, svc)
	}
}

func (s *Store) removeService(name string, svc *workloadv1.Service) {
	delete(s.services, name)
	for _, a := range serviceAddrs(svc) {
		if e := s.byAddr[a]; e != nil {
			e.services = deleteNamed(e.services, name)
			s.dropIfEmpty(a, e)
		}
	}
}

func (s *Store) applyAuthorizations(upserts []*workloadv1.Authorization, removed []string) {
	touchedNS := map[string]bool{}
	touchedGlobal := false
	touch := func(p *workloadv1.Authorization) {
		switch p.GetScope() {
		case workloadv1.AuthorizationScope_GLOBAL:
			touchedGlobal = true
		case workloadv1.AuthorizationScope_NAMESPACE:
			touchedNS[p.GetNamespace()] = true
		}
	}
	for _, name := range removed {
		if old := s.policies[name]; old != nil {
			delete(s.policies, name)
			touch(old)
		}
	}
	for _, p := range upserts {
		name := p.GetNamespace() + "/" + p.GetName()
		if old := s.policies[name]; old != nil {
			touch(old)
		}
		s.policies[name] = p
		touch(p)
	}
	// Rebuild only the touched scope lists (policies change rarely; the
	// lists are sorted so that decisions name policies deterministically).
	byName := func(a, b *workloadv1.Authorization) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	}
	if touchedGlobal {
		s.globalPolicies = s.globalPolicies[:0:0]
		for _, p := range s.policies {
			if p.GetScope() == workloadv1.AuthorizationScope_GLOBAL {
				s.globalPolicies = append(s.globalPolicies, p)
			}
		}
		slices.SortFunc(s.globalPolicies, byName)
	}
	for ns := range touchedNS {
		var list []*workloadv1.Authorization
		for _, p := range s.policies {
			if p.GetScope() == workloadv1.AuthorizationScope_NAMESPACE && p.GetNamespace() == ns {
				list = append(list, p)
			}
		}
		slices.SortFunc(list, byName)
		if len(list) == 0 {
			delete(s.nsPolicies, ns)
		} else {
			s.nsPolicies[ns] = list
		}
	}
}

// --- lookups ---

// Workload returns the workload with uid, or nil.
func (s *Store) Workload(uid string) *workloadv1.Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.workloads[uid]
}

// Service returns the service named "<namespace>/<hostname>", or nil.
func (s *Store) Service(key string) *workloadv1.Service {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[key]
}

// ServiceByHostname returns the service hostname in namespace, or nil.
func (s *Store) ServiceByHostname(namespace, hostname string) *workloadv1.Service {
	return s.Service(namespace + "/" + hostname)
}

// Authorization returns the policy named "<namespace>/<name>", or nil.
func (s *Store) Authorization(name string) *workloadv1.Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.policies[name]
}

// FindDestination says what ip on network is: a service VIP (checked
// first, as Istio's ztunnel does) or a workload address. When several
// workloads share the address (hostNetwork pods share their node's IP) the
// one with the smallest uid is returned; none of those is captured, so the
// choice does not change how traffic is carried.
func (s *Store) FindDestination(network string, ip netip.Addr) Destination {
	k := netAddr{network, ip.Unmap()}
	s.mu.RLock()
	e := s.byAddr[k]
	var d Destination
	switch {
	case e == nil:
	case len(e.services) > 0:
		d.Service = e.services[0].v
	case len(e.workloads) > 0:
		d.Workload = e.workloads[0].v
	}
	s.mu.RUnlock()
	return d
}

// WorkloadByIP returns the workload with address ip on network (smallest
// uid if several), or nil.
func (s *Store) WorkloadByIP(network string, ip netip.Addr) *workloadv1.Workload {
	k := netAddr{network, ip.Unmap()}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e := s.byAddr[k]; e != nil && len(e.workloads) > 0 {
		return e.workloads[0].v
	}
	return nil
}

// ServiceByIP returns the service with VIP ip on network, or nil.
func (s *Store) ServiceByIP(network string, ip netip.Addr) *workloadv1.Service {
	k := netAddr{network, ip.Unmap()}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e := s.byAddr[k]; e != nil && len(e.services) > 0 {
		return e.services[0].v
	}
	return nil
}

// Endpoints returns every workload backing the service
// "<namespace>/<hostname>" (whether or not the Service itself is known),
// ready or not, sorted by uid. Use Endpoint.Ready to filter; the Balancer
// only picks ready ones. The slice is shared: do not modify it.
func (s *Store) Endpoints(service string) []Endpoint {
	return s.endpointLists(service).all
}

// ReadyEndpoints is Endpoints restricted to ready endpoints.
func (s *Store) ReadyEndpoints(service string) []Endpoint {
	return s.endpointLists(service).ready
}

var noEndpoints = &endpointLists{}

func (s *Store) endpointLists(service string) *endpointLists {
	s.mu.RLock()
	defer s.mu.RUnlock()
	se := s.endpoints[service]
	if se == nil {
		return noEndpoints
	}
	if l := se.cache.Load(); l != nil {
		return l
	}
	// Built under the read lock: writers, which invalidate the cache, are
	// excluded; concurrent readers may build the same lists twice.
	l := &endpointLists{all: make([]Endpoint, 0, len(se.members))}
	for _, ep := range se.members {
		l.all = append(l.all, ep)
	}
	slices.SortFunc(l.all, func(a, b Endpoint) int { return cmp.Compare(a.Workload.GetUid(), b.Workload.GetUid()) })
	for _, ep := range l.all {
		if ep.Ready() {
			l.ready = append(l.ready, ep)
		}
	}
	se.cache.Store(l)
	return l
}

// LocalWorkloads returns the workloads on node (Workload.node), sorted by
// uid.
func (s *Store) LocalWorkloads(node string) []*workloadv1.Workload {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedWorkloads(s.byNode[node])
}

func sortedWorkloads(m map[string]*workloadv1.Workload) []*workloadv1.Workload {
	out := make([]*workloadv1.Workload, 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *workloadv1.Workload) int { return cmp.Compare(a.GetUid(), b.GetUid()) })
	return out
}

// PoliciesFor returns the policies that apply to w: GLOBAL ones, the
// NAMESPACE ones of its namespace, then those it lists in
// authorization_policies, each group sorted by name, without duplicates.
// Listed policies the store does not have (yet) are skipped. With w nil,
// only the GLOBAL ones.
func (s *Store) PoliciesFor(w *workloadv1.Workload) []*workloadv1.Authorization {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ns := s.nsPolicies[w.GetNamespace()]
	if w == nil {
		ns = nil
	}
	out := make([]*workloadv1.Authorization, 0, len(s.globalPolicies)+len(ns)+len(w.GetAuthorizationPolicies()))
	out = append(out, s.globalPolicies...)
	out = append(out, ns...)
	for _, name := range w.GetAuthorizationPolicies() {
		p := s.policies[name]
		if p == nil {
			continue
		}
		switch {
		case p.GetScope() == workloadv1.AuthorizationScope_GLOBAL,
			p.GetScope() == workloadv1.AuthorizationScope_NAMESPACE && p.GetNamespace() == w.GetNamespace():
			continue // already in
		case slices.Contains(out[len(s.globalPolicies)+len(ns):], p):
			continue // listed twice
		}
		out = append(out, p)
	}
	return out
}

// Stats returns how much the store holds.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{Workloads: len(s.workloads), Services: len(s.services), Authorizations: len(s.policies),
		ServicesWithEndpoints: len(s.endpoints)}
}

// --- subscriptions ---

// Subscribe calls fn with the changes of the workloads on node
// (Workload.node), or of every workload when node is "*": first, at once,
// one WorkloadAdded per current workload, then, after each applied Address
// response, its events in order (a workload moving off the node is
// WorkloadRemoved, an identical re-send is no event). Every change is
// delivered exactly once. fn runs on the goroutine that calls Handle (or
// Subscribe), after the state is updated and outside the store's lock, so
// it may read the store; it must not block for long (it holds up the xDS
// stream) and must not call Subscribe. cancel stops delivery; it may be
// called from fn.
func (s *Store) Subscribe(node string, fn func([]Event)) (cancel func()) {
	sub := &subscriber{node: node, all: node == "*", fn: fn}
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	s.mu.RLock()
	var current []*workloadv1.Workload
	if sub.all {
		current = sortedWorkloads(s.workloads)
	} else {
		current = sortedWorkloads(s.byNode[node])
	}
	s.mu.RUnlock()
	s.subsMu.Lock()
	s.subs[sub] = struct{}{}
	s.subsMu.Unlock()
	if len(current) > 0 {
		events := make([]Event, len(current))
		for i, w := range current {
			events[i] = Event{Type: WorkloadAdded, Workload: w}
		}
		fn(events)
	}
	return func() {
		s.subsMu.Lock()
		delete(s.subs, sub)
		s.subsMu.Unlock()
	}
}

// deliver hands events to the subscribers (called with notifyMu held).
func (s *Store) deliver(events []Event) {
	if len(events) == 0 {
		return
	}
	s.subsMu.Lock()
	subs := make([]*subscriber, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.subsMu.Unlock()
	for _, sub := range subs {
		var mine []Event
		for _, e := range events {
			if sub.all || e.Workload.GetNode() == sub.node {
				mine = append(mine, e)
			}
		}
		if len(mine) == 0 {
			continue
		}
		s.subsMu.Lock()
		_, live := s.subs[sub]
		s.subsMu.Unlock()
		if live {
			sub.fn(mine)
		}
	}
}

// Snapshot is everything the store holds, sorted, for the admin view.
type Snapshot struct {
	Workloads      []*workloadv1.Workload
	Services       []*workloadv1.Service
	Authorizations []*workloadv1.Authorization
}

// Snapshot returns the store's content. The messages are shared: do not
// modify them.
func (s *Store) Snapshot() Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := Snapshot{Workloads: sortedWorkloads(s.workloads)}
	for _, k := range slices.Sorted(maps.Keys(s.services)) {
		snap.Services = append(snap.Services, s.services[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.policies)) {
		snap.Authorizations = append(snap.Authorizations, s.policies[k])
	}
	return snap
}
