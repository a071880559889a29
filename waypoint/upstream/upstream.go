// Package upstream holds the waypoint's upstream clusters: their hosts
// (from CDS and EDS), load balancing (least request with two random choices,
// or round robin), outlier detection (consecutive 5xx and gateway failures,
// ejection and return), and the connections to a host: an HBONE CONNECT
// through the host's ztunnel for captured endpoints, plain TCP otherwise.
// Host state (requests in flight, failures, ejections, connection pools)
// survives configuration updates that keep the host.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/config"
)

// HBONEPort is where a captured endpoint's ztunnel accepts HBONE.
const HBONEPort = 15008

// ErrNoHealthyHost is returned by Pick when a cluster has no host to use.
var ErrNoHealthyHost = errors.New("no healthy upstream host")

// ErrUnknownDestination is returned by PickFor when the target's IP is not
// among an original-destination cluster's destinations (the waypoint never
// dials an address its configuration does not name). It is an
// ErrNoHealthyHost (503 UH, not retried).
var ErrUnknownDestination = fmt.Errorf("%w: not a destination of the cluster", ErrNoHealthyHost)

// maxOriginalDstHosts bounds an original-destination cluster's cached
// hosts (one per target used); beyond it, hosts with nothing in flight are
// released.
const maxOriginalDstHosts = 4096

// Options configure a Manager.
type Options struct {
	// HBONE dials captured endpoints; Source is the certificate presented.
	HBONE  *hbone.Client
	Source hbone.SourceCert
	// Dial opens plain TCP connections; default net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	Log  *slog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Manager owns the clusters. Update reconciles them with a configuration
// snapshot; Cluster is safe for concurrent use with Update.
type Manager struct {
	opts Options

	mu       sync.Mutex // serialises Update
	clusters atomic.Pointer[map[string]*Cluster]
}

// NewManager returns a Manager with no clusters.
func NewManager(opts Options) *Manager {
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Manager{opts: opts}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	return m
}

// Cluster returns the named cluster, or nil.
func (m *Manager) Cluster(name string) *Cluster {
	return (*m.clusters.Load())[name]
}

// Update applies a snapshot's clusters and endpoints. Hosts that stay keep
// their state; removed hosts' idle connections are closed.
func (m *Manager) Update(snap *config.Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.clusters.Load()
	next := make(map[string]*Cluster, len(snap.Clusters))
	for name, cfg := range snap.Clusters {
		if name == config.MainInternal || name == config.ConnectOriginate {
			continue
		}
		c := old[name]
		if c == nil {
			c = &Cluster{m: m, name: name}
		}
		eps := cfg.Static
		if cfg.EDS {
			eps = snap.Assignments[cfg.ServiceName]
		}
		c.set(cfg, eps)
		next[name] = c
	}
	for name, c := range old {
		if next[name] == nil {
			c.set(nil, nil)
		}
	}
	m.clusters.Store(&next)
}

// Close closes every pooled connection.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range *m.clusters.Load() {
		c.set(nil, nil)
	}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
}

// Cluster is one upstream cluster.
type Cluster struct {
	m       *Manager
	name    string
	st      atomic.Pointer[clusterState]
	rr      atomic.Uint64
	retries atomic.Int64 // retries in flight

	ejMu sync.Mutex // serialises ejection decisions (max_ejection_percent)

	// An original-destination cluster's hosts, one per target, made by
	// PickFor. omu also orders set's state swaps with PickFor, so no host
	// is cached for a destination an update has removed.
	omu  sync.RWMutex
	orig map[netip.AddrPort]*Host
}

type clusterState struct {
	cfg   *config.Cluster
	hosts []*Host
	// originalDst: the cluster's one endpoint is each stream's original
	// destination (hosts is empty; see PickFor).
	originalDst bool
}

// hostKey identifies a host across updates; a host whose metadata changes
// is a new host (its fields stay immutable for lock-free readers).
type hostKey struct {
	addr                netip.AddrPort
	hbone               bool
	identity            identity.Identity
	workload, namespace string
}

func (c *Cluster) set(cfg *config.Cluster, eps []config.Endpoint) {
	c.omu.Lock()
	defer c.omu.Unlock()
	var oldHosts []*Host
	if st := c.st.Load(); st != nil {
		oldHosts = st.hosts
	}
	if cfg != nil && len(eps) == 1 && eps[0].OriginalDst {
		for _, h := range oldHosts {
			h.closeIdle()
		}
		c.st.Store(&clusterState{cfg: cfg, originalDst: true})
		c.pruneOriginalDst(cfg.Destinations)
		return
	}
	c.pruneOriginalDst(nil)
	byKey := make(map[hostKey]*Host, len(oldHosts))
	for _, h := range oldHosts {
		byKey[h.key] = h
	}
	var hosts []*Host
	seen := map[hostKey]bool{}
	for _, ep := range eps {
		if ep.OriginalDst {
			continue // only alone (config refuses it mixed), above
		}
		k := hostKey{ep.Address, ep.HBONE, ep.Identity, ep.Workload, ep.Namespace}
		if seen[k] {
			continue
		}
		seen[k] = true
		h := byKey[k]
		if h == nil {
			h = &Host{c: c, key: k, Workload: ep.Workload, Namespace: ep.Namespace}
		}
		hosts = append(hosts, h)
	}
	for k, h := range byKey {
		if !seen[k] {
			h.closeIdle()
		}
	}
	if cfg == nil {
		c.st.Store(&clusterState{cfg: &config.Cluster{Name: c.name}})
		return
	}
	c.st.Store(&clusterState{cfg: cfg, hosts: hosts})
}

// pruneOriginalDst drops the cached original-destination hosts whose
// destination is gone or changed (all of them for nil), closing their
// idle connections. c.omu is held.
func (c *Cluster) pruneOriginalDst(dests map[netip.Addr]config.Destination) {
	for target, h := range c.orig {
		if d, ok := dests[target.Addr()]; !ok || h.key != originalDstKey(target, d) {
			delete(c.orig, target)
			h.closeIdle()
		}
	}
}

func originalDstKey(target netip.AddrPort, d config.Destination) hostKey {
	return hostKey{addr: target, hbone: true, identity: d.Identity, workload: d.Workload, namespace: d.Namespace}
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// BeginRetry reserves one of the cluster's concurrent retries
// (circuit_breakers max_retries); false when they are all in use, and the
// request then ends with the response or error it has. Call the returned
// function when the retry is done.
func (c *Cluster) BeginRetry() (end func(), ok bool) {
	limit := int64(c.Config().MaxRetries)
	if c.retries.Add(1) > limit {
		c.retries.Add(-1)
		return nil, false
	}
	return func() { c.retries.Add(-1) }, true
}

// Config is the cluster's current configuration.
func (c *Cluster) Config() *config.Cluster { return c.st.Load().cfg }

// Hosts lists the current hosts (for an original-destination cluster, the
// targets it has been used for).
func (c *Cluster) Hosts() []*Host {
	if st := c.st.Load(); !st.originalDst {
		return st.hosts
	}
	c.omu.RLock()
	defer c.omu.RUnlock()
	out := make([]*Host, 0, len(c.orig))
	for _, h := range c.orig {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b *Host) int { return a.key.addr.Compare(b.key.addr) })
	return out
}

// PickFor chooses a host for a stream to target (its CONNECT authority).
// For an original-destination cluster the host is the target itself, if
// its IP is one of the cluster's destinations (else ErrUnknownDestination):
// HBONE to <ip>:15008 requiring the destination's identity, the same *Host
// for every stream to that target while the destination stays. Other
// clusters ignore target: see Pick. An original-destination cluster has one
// candidate, so avoid does not apply to it, nor ejection (as panic mode
// would use the only host anyway).
func (c *Cluster) PickFor(target netip.AddrPort, avoid []*Host) (*Host, error) {
	if st := c.st.Load(); !st.originalDst {
		return c.pick(st, avoid)
	}
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	c.omu.RLock()
	st, h, _, err := c.originalDst(target)
	c.omu.RUnlock()
	if h != nil || err != nil {
		return h, err
	}
	if !st.originalDst {
		return c.pick(st, avoid) // changed in between
	}
	c.omu.Lock()
	defer c.omu.Unlock()
	// Again under the write lock: an update may have come in between.
	st, h, d, err := c.originalDst(target)
	if h != nil || err != nil {
		return h, err
	}
	if !st.originalDst {
		return c.pick(st, avoid)
	}
	if len(c.orig) >= maxOriginalDstHosts {
		for t, x := range c.orig {
			if x.Active() == 0 {
				delete(c.orig, t)
				x.closeIdle()
			}
		}
	}
	if c.orig == nil {
		c.orig = map[netip.AddrPort]*Host{}
	}
	h = &Host{c: c, key: originalDstKey(target, d), Workload: d.Workload, Namespace: d.Namespace}
	c.orig[target] = h
	return h, nil
}

// originalDst looks target up, c.omu held (either way): the current state,
// and for an original-destination cluster target's cached host (nil if
// none yet) and its destination, or ErrUnknownDestination.
func (c *Cluster) originalDst(target netip.AddrPort) (*clusterState, *Host, config.Destination, error) {
	st := c.st.Load()
	if !st.originalDst {
		return st, nil, config.Destination{}, nil
	}
	d, ok := st.cfg.Destinations[target.Addr()]
	if !ok {
		return st, nil, d, fmt.Errorf("%w: %s (cluster %q)", ErrUnknownDestination, target, c.name)
	}
	return st, c.orig[target], d, nil
}

// Pick chooses a host: among the hosts not ejected (all of them when fewer
// than healthy_panic_threshold percent are healthy), avoiding the ones in
// avoid when possible (the previous_hosts retry predicate). An
// original-destination cluster needs the stream's target: PickFor.
func (c *Cluster) Pick(avoid []*Host) (*Host, error) {
	return c.pick(c.st.Load(), avoid)
}

func (c *Cluster) pick(st *clusterState, avoid []*Host) (*Host, error) {
	if st.originalDst {
		return nil, fmt.Errorf("%w: cluster %q goes to the original destination and needs a target", ErrNoHealthyHost, c.name)
	}
	if len(st.hosts) == 0 {
		return nil, ErrNoHealthyHost
	}
	now := c.m.opts.Now()
	healthy := make([]*Host, 0, len(st.hosts))
	for _, h := range st.hosts {
		if !h.ejected(now) {
			healthy = append(healthy, h)
		}
	}
	if float64(len(healthy))*100 < st.cfg.HealthyPanicThreshold*float64(len(st.hosts)) {
		healthy = st.hosts // panic mode, as Envoy: better an ejected host than none
	}
	if len(healthy) == 0 {
		return nil, ErrNoHealthyHost
	}
	candidates := healthy
	if len(avoid) > 0 {
		fresh := make([]*Host, 0, len(healthy))
		for _, h := range healthy {
			if !contains(avoid, h) {
				fresh = append(fresh, h)
			}
		}
		if len(fresh) > 0 {
			candidates = fresh
		}
	}
	if len(candidates) == 1 {
		return candidates[0], nil
	}
	if st.cfg.LeastRequest {
		a := candidates[rand.IntN(len(candidates))]
		b := candidates[rand.IntN(len(candidates))]
		if b.active.Load() < a.active.Load() {
			return b, nil
		}
		return a, nil
	}
	return candidates[c.rr.Add(1)%uint64(len(candidates))], nil
}

func contains(hs []*Host, h *Host) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

// Host is one upstream endpoint.
type Host struct {
	c   *Cluster
	key hostKey
	// Workload and Namespace are from the endpoint's ambit metadata
	// (read-only).
	Workload, Namespace string

	active atomic.Int64 // requests or connections in flight

	mu           sync.Mutex
	consec5xx    uint32
	consecGw     uint32
	ejections    uint32
	ejectedUntil time.Time

	tmu    sync.Mutex
	h1, h2 *http.Transport
}

// Address is where the application listens (the HBONE :authority for a
// captured endpoint).
func (h *Host) Address() netip.AddrPort { return h.key.addr }

// HBONE reports whether the host is reached through HBONE.
func (h *Host) HBONE() bool { return h.key.hbone }

// Identity is the identity an HBONE host must prove (zero if unknown).
func (h *Host) Identity() identity.Identity { return h.key.identity }

// Active is the number of requests or connections in flight.
func (h *Host) Active() int64 { return h.active.Load() }

// Begin counts a request in flight (least request); call the returned
// function when it ends.
func (h *Host) Begin() (end func()) {
	h.active.Add(1)
	return func() { h.active.Add(-1) }
}

// Dial opens a connection to the host: an HBONE stream through
// <ip>:15008, or TCP, within the cluster's connect timeout.
func (h *Host) Dial(ctx context.Context) (net.Conn, error) {
	timeout := h.c.Config().ConnectTimeout
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	m := h.c.m
	if !h.key.hbone {
		conn, err := m.opts.Dial(ctx, "tcp", h.key.addr.String())
		if err != nil {
			return nil, &ConnectError{Err: err}
		}
		return conn, nil
	}
	if m.opts.HBONE == nil || m.opts.Source == nil {
		return nil, &ConnectError{Err: errors.New("HBONE is not configured")}
	}
	conn, err := m.opts.HBONE.Dial(ctx, hbone.DialRequest{
		Source:   m.opts.Source,
		Proxy:    netip.AddrPortFrom(h.key.addr.Addr(), HBONEPort),
		Target:   h.key.addr,
		Expected: h.key.identity,
	})
	if err != nil {
		return nil, &ConnectError{Err: err}
	}
	return conn, nil
}

// ConnectError is a failure to reach a host (connect-failure for retries,
// a gateway failure for outlier detection).
type ConnectError struct{ Err error }

func (e *ConnectError) Error() string { return fmt.Sprintf("upstream connect error: %v", e.Err) }
func (e *ConnectError) Unwrap() error { return e.Err }

// Transport returns the host's pooled HTTP transport: HTTP/1.1, or HTTP/2
// with prior knowledge (h2c, gRPC) when http2 is set.
func (h *Host) Transport(http2 bool) *http.Transport {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	t := &h.h1
	if http2 {
		t = &h.h2
	}
	if *t == nil {
		p := new(http.Protocols)
		if http2 {
			p.SetUnencryptedHTTP2(true)
		} else {
			p.SetHTTP1(true)
		}
		*t = &http.Transport{
			DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return h.Dial(ctx) },
			Protocols:           p,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		}
	}
	return *t
}

func (h *Host) closeIdle() {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	for _, t := range []*http.Transport{h.h1, h.h2} {
		if t != nil {
			t.CloseIdleConnections()
		}
	}
}

// Outcome of one request or connection to a host, for outlier detection.
type Outcome uint8

const (
	// Success is any response below 500 (and 5xx that are not gateway
	// errors reset only the gateway counter).
	Success Outcome = iota
	// Error5xx is a 500 or other 5xx response that is not a gateway error.
	Error5xx
	// GatewayFailure is a 502, 503, 504, or a connect failure or reset
	// (Envoy counts local origin errors as gateway failures when they are
	// not split).
	GatewayFailure
)

// OutcomeOf classifies an HTTP status.
func OutcomeOf(status int) Outcome {
	switch {
	case status == 502 || status == 503 || status == 504:
		return GatewayFailure
	case status >= 500:
		return Error5xx
	}
	return Success
}

// Report feeds outlier detection with the result of one request.
func (h *Host) Report(o Outcome) {
	od := h.c.Config().Outlier
	if od == nil {
		return
	}
	h.mu.Lock()
	switch o {
	case Success:
		h.consec5xx, h.consecGw = 0, 0
		h.mu.Unlock()
		return
	case Error5xx:
		h.consec5xx++
		h.consecGw = 0
	case GatewayFailure:
		h.consec5xx++
		h.consecGw++
	}
	eject := (od.Consecutive5xx > 0 && h.consec5xx >= od.Consecutive5xx && enforce(od.EnforcingConsecutive5xx)) ||
		(od.ConsecutiveGatewayFailure > 0 && h.consecGw >= od.ConsecutiveGatewayFailure && enforce(od.EnforcingConsecutiveGatewayFailure))
	if eject {
		h.consec5xx, h.consecGw = 0, 0
	}
	h.mu.Unlock()
	if eject {
		h.c.eject(h, od)
	}
}

func enforce(percent uint32) bool {
	return percent >= 100 || (percent > 0 && rand.Uint32N(100) < percent)
}

// eject takes h out of rotation for base_ejection_time × the number of its
// ejections (capped by max_ejection_time), unless that would eject more
// than max_ejection_percent of the hosts (at least one host may always be
// ejected, as in Envoy).
func (c *Cluster) eject(h *Host, od *config.Outlier) {
	c.ejMu.Lock()
	defer c.ejMu.Unlock()
	now := c.m.opts.Now()
	hosts := c.Hosts()
	ejected := 0
	for _, x := range hosts {
		if x.ejected(now) {
			ejected++
		}
	}
	if h.ejected(now) {
		return
	}
	if ejected > 0 && float64(ejected+1)*100 > float64(od.MaxEjectionPercent)*float64(len(hosts)) {
		return
	}
	h.mu.Lock()
	h.ejections++
	d := od.BaseEjectionTime * time.Duration(h.ejections)
	if od.MaxEjectionTime > 0 && d > od.MaxEjectionTime {
		d = max(od.MaxEjectionTime, od.BaseEjectionTime)
	}
	h.ejectedUntil = now.Add(d)
	h.mu.Unlock()
	c.m.opts.Log.Info("outlier detection: host ejected", "cluster", c.name, "host", h.key.addr.String(), "for", d)
}

// ejected reports whether h is out of rotation. A host returns once its
// ejection time has passed; its ejection count decays by one for every
// interval it then stays healthy (approximated at the next ejection).
func (h *Host) ejected(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ejectedUntil.IsZero() {
		return false
	}
	if now.Before(h.ejectedUntil) {
		return true
	}
	od := h.c.Config().Outlier
	if od != nil && od.Interval > 0 && h.ejections > 0 {
		healthyFor := now.Sub(h.ejectedUntil)
		if dec := uint32(healthyFor / od.Interval); dec > 0 {
			h.ejections -= min(dec, h.ejections)
			h.ejectedUntil = now.Add(-healthyFor % od.Interval)
		}
	}
	return false
}

// Ejected reports whether the host is currently ejected.
func (h *Host) Ejected() bool { return h.ejected(h.c.m.opts.Now()) }
