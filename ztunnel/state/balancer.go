package state

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// LBPolicy is how a Balancer picks among a service's ready endpoints.
type LBPolicy int

const (
	// RoundRobin cycles through the ready endpoints (sorted by uid), one
	// cursor per service.
	RoundRobin LBPolicy = iota
	// LeastRequests picks two distinct ready endpoints at random and takes
	// the one with fewer connections in flight (Acquire/Release); ties go
	// to the first pick ("power of two choices").
	LeastRequests
)

// Errors of Balancer.Pick.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrNoPort         = errors.New("service has no such port")
	ErrNoEndpoint     = errors.New("no ready endpoint")
)

// BalancerOptions configure a Balancer.
type BalancerOptions struct {
	Policy LBPolicy
	// Rand is the randomness source of LeastRequests (used under the
	// Balancer's lock). nil: a randomly seeded one. Tests pass a seeded
	// rand.New(rand.NewPCG(seed, seed)) for repeatable picks.
	Rand *rand.Rand
}

// Target is a picked endpoint and the port to connect to on it.
type Target struct {
	Workload *workloadv1.Workload
	Port     uint16
}

// Balancer picks endpoints of services from a Store. It is safe for
// concurrent use.
//
// Only ready endpoints (Endpoint.Ready: HEALTHY, with an address) that
// serve the requested port are picked. When none is ready Pick fails with
// ErrNoEndpoint rather than falling back to unready ones, as Istio's
// ztunnel does: an unready pod is one Kubernetes has taken out of
// rotation.
type Balancer struct {
	store  *Store
	policy LBPolicy

	mu       sync.Mutex
	rng      *rand.Rand
	cursor   map[string]uint64 // service -> round-robin position
	inflight map[string]int64  // workload uid -> connections in flight
}

// NewBalancer returns a Balancer over store.
func NewBalancer(store *Store, opts BalancerOptions) *Balancer {
	rng := opts.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Balancer{store: store, policy: opts.Policy, rng: rng,
		cursor: map[string]uint64{}, inflight: map[string]int64{}}
}

// Pick chooses an endpoint of service ("<namespace>/<hostname>") for a
// connection to servicePort and resolves the target port on it.
func (b *Balancer) Pick(service string, servicePort uint16) (Target, error) {
	svc := b.store.Service(service)
	if svc == nil {
		return Target{}, fmt.Errorf("pick %s:%d: %w", service, servicePort, ErrUnknownService)
	}
	hasPort := false
	for _, p := range svc.GetPorts() {
		if p.GetServicePort() == uint32(servicePort) {
			hasPort = true
			break
		}
	}
	if !hasPort {
		return Target{}, fmt.Errorf("pick %s:%d: %w", service, servicePort, ErrNoPort)
	}
	ready := b.store.ReadyEndpoints(service)
	n := len(ready)
	if n == 0 {
		return Target{}, fmt.Errorf("pick %s:%d: %w", service, servicePort, ErrNoEndpoint)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	start := 0
	switch b.policy {
	case LeastRequests:
		i := b.rng.IntN(n)
		if n > 1 {
			j := b.rng.IntN(n - 1)
			if j >= i {
				j++
			}
			pi, iok := ready[i].TargetPort(svc, servicePort)
			pj, jok := ready[j].TargetPort(svc, servicePort)
			switch {
			case iok && jok:
				if b.inflight[ready[j].Workload.GetUid()] < b.inflight[ready[i].Workload.GetUid()] {
					return Target{ready[j].Workload, pj}, nil
				}
				return Target{ready[i].Workload, pi}, nil
			case iok:
				return Target{ready[i].Workload, pi}, nil
			case jok:
				return Target{ready[j].Workload, pj}, nil
			}
		}
		// Neither pick serves the port (or only one endpoint): scan.
		start = i
	default:
		start = int(b.cursor[service] % uint64(n))
	}
	for k := range n {
		idx := (start + k) % n
		if port, ok := ready[idx].TargetPort(svc, servicePort); ok {
			if b.policy == RoundRobin {
				b.cursor[service] = uint64(idx + 1)
			}
			return Target{ready[idx].Workload, port}, nil
		}
	}
	return Target{}, fmt.Errorf("pick %s:%d: %w (none serves the port)", service, servicePort, ErrNoEndpoint)
}

// Acquire records a connection in flight to the workload uid (call it when
// a connection to a picked Target starts; LeastRequests reads the count).
func (b *Balancer) Acquire(uid string) {
	b.mu.Lock()
	b.inflight[uid]++
	b.mu.Unlock()
}

// Release ends a connection recorded by Acquire. Releasing more than was
// acquired is ignored.
func (b *Balancer) Release(uid string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch n := b.inflight[uid]; {
	case n > 1:
		b.inflight[uid] = n - 1
	case n == 1:
		delete(b.inflight, uid)
	}
}

// InFlight returns the connections in flight to the workload uid.
func (b *Balancer) InFlight(uid string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight[uid]
}
