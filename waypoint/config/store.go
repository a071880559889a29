package config

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// TypeURLs are the types the waypoint subscribes to (xdsclient.Options).
var TypeURLs = []string{
	resourcev3.ListenerType,
	resourcev3.RouteType,
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.SecretType,
	workloadv1.AddressTypeURL,
}

// Store keeps the last good compiled resources of every type and publishes
// a new Snapshot after each accepted update.
type Store struct {
	log      *slog.Logger
	onChange func(*Snapshot)

	mu sync.Mutex // serialises updates; readers use cur
	// Compiled resources by name, per type.
	listeners   map[string]*compiledListener // by name (only main_internal is served)
	routes      map[string]*router.Table
	clusters    map[string]*Cluster
	assignments map[string][]Endpoint
	roots       map[string][]*x509.Certificate // by secret name
	addresses   map[string][]addrEntry         // by resource name

	cur atomic.Pointer[Snapshot]
}

type addrEntry struct {
	ip netip.Addr
	w  *Workload
}

// NewStore returns an empty store. onChange, if set, is called (under the
// store's lock, so in order) with every new snapshot.
func NewStore(log *slog.Logger, onChange func(*Snapshot)) *Store {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{
		log: log, onChange: onChange,
		listeners: map[string]*compiledListener{}, routes: map[string]*router.Table{}, clusters: map[string]*Cluster{},
		assignments: map[string][]Endpoint{}, roots: map[string][]*x509.Certificate{}, addresses: map[string][]addrEntry{},
	}
	s.cur.Store(&Snapshot{Routes: map[string]*router.Table{}, Clusters: map[string]*Cluster{},
		Assignments: map[string][]Endpoint{}, Workloads: map[netip.Addr]*Workload{}})
	return s
}

// Snapshot returns the current snapshot.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Handle is an xdsclient.Handler. An update is compiled in full before any
// of it is applied, so an error leaves the type's previous state in place.
func (s *Store) Handle(typeURL string, upserts []*discovery.Resource, removed []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	switch typeURL {
	case resourcev3.ListenerType:
		err = apply(s.listeners, upserts, removed, func() *listenerv3.Listener { return &listenerv3.Listener{} },
			func(name string, l *listenerv3.Listener) (*compiledListener, error) { return compileListener(l) })
	case resourcev3.RouteType:
		err = apply(s.routes, upserts, removed, func() *routev3.RouteConfiguration { return &routev3.RouteConfiguration{} },
			func(name string, rc *routev3.RouteConfiguration) (*router.Table, error) { return router.Compile(rc) })
	case resourcev3.ClusterType:
		err = apply(s.clusters, upserts, removed, func() *clusterv3.Cluster { return &clusterv3.Cluster{} },
			func(name string, c *clusterv3.Cluster) (*Cluster, error) { return compileCluster(c) })
	case resourcev3.EndpointType:
		err = apply(s.assignments, upserts, removed, func() *endpointv3.ClusterLoadAssignment { return &endpointv3.ClusterLoadAssignment{} },
			func(name string, c *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
				return compileAssignment(c)
			})
	case resourcev3.SecretType:
		err = apply(s.roots, upserts, removed, func() *tlsv3.Secret { return &tlsv3.Secret{} },
			func(name string, sec *tlsv3.Secret) ([]*x509.Certificate, error) { return compileSecret(sec) })
	case workloadv1.AddressTypeURL:
		err = apply(s.addresses, upserts, removed, func() *workloadv1.Address { return &workloadv1.Address{} },
			func(name string, a *workloadv1.Address) ([]addrEntry, error) { return compileAddress(a) })
	default:
		return fmt.Errorf("config: unexpected type %q", typeURL)
	}
	if err != nil {
		return err
	}
	snap := s.build()
	s.cur.Store(snap)
	if s.onChange != nil {
		s.onChange(snap)
	}
	return nil
}

// apply decodes and compiles every upsert, then, only if all succeeded,
// stores them and drops the removed names.
func apply[M proto.Message, C any](dst map[string]C, upserts []*discovery.Resource, removed []string,
	newMsg func() M, compile func(name string, m M) (C, error)) error {
	compiled := make(map[string]C, len(upserts))
	for _, r := range upserts {
		name := r.GetName()
		m := newMsg()
		if r.GetResource() == nil {
			return fmt.Errorf("resource %q: no body", name)
		}
		if err := r.GetResource().UnmarshalTo(m); err != nil {
			return fmt.Errorf("resource %q: %w", name, err)
		}
		c, err := compile(name, m)
		if err != nil {
			return fmt.Errorf("resource %q: %w", name, err)
		}
		compiled[name] = c
	}
	for _, name := range removed {
		delete(dst, name)
	}
	for name, c := range compiled {
		dst[name] = c
	}
	return nil
}

// build assembles a snapshot from the current maps (copies: the snapshot
// must not change under its readers).
func (s *Store) build() *Snapshot {
	snap := &Snapshot{
		Chains:      s.listeners[MainInternal].chainsOrNil(),
		Default:     s.listeners[MainInternal].defaultOrNil(),
		Routes:      make(map[string]*router.Table, len(s.routes)),
		Clusters:    make(map[string]*Cluster, len(s.clusters)),
		Assignments: make(map[string][]Endpoint, len(s.assignments)),
		Roots:       s.roots[RootCASecret],
		Workloads:   map[netip.Addr]*Workload{},
	}
	for k, v := range s.routes {
		snap.Routes[k] = v
	}
	for k, v := range s.clusters {
		snap.Clusters[k] = v
	}
	for k, v := range s.assignments {
		snap.Assignments[k] = v
	}
	for _, entries := range s.addresses {
		for _, e := range entries {
			snap.Workloads[e.ip] = e.w
		}
	}
	return snap
}
