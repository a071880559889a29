// Package config turns the waypoint's xDS resources (Listener,
// RouteConfiguration, Cluster, ClusterLoadAssignment, Secret and the
// workload API's Address) into immutable snapshots the data plane reads
// without locks. Store.Handle is the xdsclient handler: it keeps the last
// good resources per type, compiles each update (route tables, RBAC engines,
// filter chains) and refuses (NACKs) the ones it cannot honour, then
// publishes a new Snapshot.
package config

import (
	"crypto/x509"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// Names of the resources the contract (docs/waypoint.md, "Waypoint xDS")
// gives meaning to.
const (
	// MainInternal is the listener whose filter chains serve the traffic
	// ztunnel tunnels to the waypoint.
	MainInternal = "main_internal"
	// ConnectOriginate is the internal listener an HBONE endpoint address
	// names; the Go waypoint originates HBONE natively.
	ConnectOriginate = "connect_originate"
	// RootCASecret holds the mesh roots.
	RootCASecret = "ROOTCA"
)

// Snapshot is one consistent view of the configuration. It is immutable.
type Snapshot struct {
	// Chains are main_internal's filter chains, in listener order. Nil
	// until the listener arrives: every stream is refused then.
	Chains []*Chain
	// Default is main_internal's default_filter_chain, used when no chain
	// matches (istiod-lite sends one that refuses everything when the
	// waypoint serves no Service).
	Default *Chain
	// Routes are the compiled RouteConfigurations by name.
	Routes map[string]*router.Table
	// Clusters by name.
	Clusters map[string]*Cluster
	// Assignments are the ClusterLoadAssignments by cluster (service) name.
	Assignments map[string][]Endpoint
	// Roots are the mesh roots from the ROOTCA secret (nil until it arrives).
	Roots []*x509.Certificate
	// Workloads by IP, from the Address resources (for naming the source
	// of a request in metrics).
	Workloads map[netip.Addr]*Workload
}

// Chain is one filter chain of main_internal.
type Chain struct {
	Name string
	// Port is filter_chain_match.destination_port; 0 matches any port.
	Port uint32
	// Prefixes are filter_chain_match.prefix_ranges; empty matches any
	// destination address.
	Prefixes []netip.Prefix
	// AppProtocols are filter_chain_match.application_protocols (set on the
	// HTTP chain of a port that needs protocol detection).
	AppProtocols []string
	// Exactly one of HTTP and TCP is set.
	HTTP *HTTPChain
	TCP  *TCPChain
}

// HTTPChain is an HTTP connection manager.
type HTTPChain struct {
	StatPrefix string
	// RouteName is the RDS route configuration's name; Inline is set when
	// the HCM carries its route configuration itself.
	RouteName string
	Inline    *router.Table
	// RBAC are the envoy.filters.http.rbac filters, in order.
	RBAC []RBACFilter
	// NormalizePath removes dot segments from :path before RBAC and
	// routing (normalize_path).
	NormalizePath bool
	// StripAnyHostPort and StripMatchingHostPort remove the port from
	// :authority before the filters (strip_any_host_port,
	// strip_matching_host_port with the chain's port).
	StripAnyHostPort, StripMatchingHostPort bool
	// Upgrades are the upgrade types the HCM allows (upgrade_configs:
	// "websocket"), lower-cased.
	Upgrades []string
	// StreamIdleTimeout resets a request with no activity for this long
	// (stream_idle_timeout, Envoy's default 5m; 0 disables); a route's
	// idle_timeout replaces it.
	StreamIdleTimeout time.Duration
}

// TCPChain is network RBAC filters then a tcp_proxy.
type TCPChain struct {
	StatPrefix string
	Cluster    string
	RBAC       []RBACFilter
	// MaxConnectAttempts is how many hosts to try (max_connect_attempts,
	// default 1).
	MaxConnectAttempts uint32
	// IdleTimeout closes a connection with no bytes either way for this
	// long (idle_timeout, Envoy's default 1h; 0 disables).
	IdleTimeout time.Duration
}

// RBACFilter is one compiled RBAC filter. A filter without rules allows
// everything (Engine nil), as in Envoy.
type RBACFilter struct {
	Engine *rbac.Engine
}

// Cluster is an upstream cluster.
type Cluster struct {
	Name string
	// ServiceName is the ClusterLoadAssignment to use (EDS service_name,
	// else the cluster name).
	ServiceName string
	// Static endpoints (load_assignment in the cluster itself), used when
	// the cluster is not EDS.
	Static []Endpoint
	EDS    bool
	// LeastRequest picks with two random choices; false is round robin.
	LeastRequest   bool
	ConnectTimeout time.Duration
	// Outlier is nil when outlier detection is off.
	Outlier *Outlier
	// HealthyPanicThreshold is the percentage of healthy hosts below which
	// the balancer ignores health (Envoy's default 50).
	HealthyPanicThreshold float64
	// MaxRetries bounds the retries in flight at once over the cluster
	// (circuit_breakers default priority max_retries; Envoy's default 3).
	MaxRetries uint32
	// Service is the host part of an Istio cluster name
	// (outbound|<port>||<host>), for metrics; "" otherwise.
	Service string
	// Destinations are who an original-destination cluster (Istio's
	// "encap": its one endpoint is connect_originate without endpoint_id)
	// may reach, by IP (filter_metadata ambit.destinations). A target whose
	// IP is not here is refused; nil when the metadata is absent.
	Destinations map[netip.Addr]Destination
}

// Destination is one workload an original-destination cluster may reach.
type Destination struct {
	// Identity the workload must prove over HBONE; zero when absent.
	Identity  identity.Identity
	Workload  string
	Namespace string
}

// Outlier is a cluster's outlier detection.
type Outlier struct {
	Consecutive5xx                     uint32
	EnforcingConsecutive5xx            uint32 // percent
	ConsecutiveGatewayFailure          uint32
	EnforcingConsecutiveGatewayFailure uint32 // percent
	Interval                           time.Duration
	BaseEjectionTime                   time.Duration
	MaxEjectionTime                    time.Duration
	MaxEjectionPercent                 uint32
}

// Endpoint is one upstream host.
type Endpoint struct {
	// Address is where the application listens: the endpoint_id of an
	// HBONE endpoint, else the socket address.
	Address netip.AddrPort
	// HBONE endpoints are reached by an HBONE CONNECT to <ip>:15008.
	HBONE bool
	// OriginalDst is an internal address for connect_originate without
	// endpoint_id: Envoy's connect_originate tunnels to the downstream's
	// original destination. Address is zero; each stream's target is the
	// host (HBONE to <target ip>:15008, among the cluster's Destinations).
	// It is always its assignment's only endpoint.
	OriginalDst bool
	// Identity the HBONE endpoint must prove (filter_metadata
	// ambit.identity); zero when absent.
	Identity  identity.Identity
	Workload  string
	Namespace string
	Weight    uint32
}

// Workload is what metrics say about a source or destination workload.
type Workload struct {
	Name, Namespace, CanonicalName, CanonicalRevision string
	Principal                                         string
}

// Match returns the chains that may serve a stream to target: the
// destination port's chains (exact port first, else the chains without a
// port), narrowed to the most specific prefix containing the address (else
// the chains without prefixes). Several chains remain when a port needs
// protocol detection.
func (s *Snapshot) Match(target netip.AddrPort) []*Chain {
	if s == nil {
		return nil
	}
	if out := s.match(target); len(out) > 0 {
		return out
	}
	if s.Default != nil {
		return []*Chain{s.Default}
	}
	return nil
}

func (s *Snapshot) match(target netip.AddrPort) []*Chain {
	var byPort []*Chain
	for _, want := range []uint32{uint32(target.Port()), 0} {
		for _, c := range s.Chains {
			if c.Port == want {
				byPort = append(byPort, c)
			}
		}
		if len(byPort) > 0 {
			break
		}
	}
	best := -1
	var out []*Chain
	ip := target.Addr().Unmap()
	for _, c := range byPort {
		bits := -1 // no prefix ranges: matches any address, least specific
		if len(c.Prefixes) > 0 {
			bits = -2
			for _, p := range c.Prefixes {
				if p.Contains(ip) && p.Bits() > bits {
					bits = p.Bits()
				}
			}
			if bits == -2 {
				continue
			}
		}
		switch {
		case bits > best:
			best, out = bits, []*Chain{c}
		case bits == best:
			out = append(out, c)
		}
	}
	return out
}

// acceptsProtocol reports whether the chain serves the detected protocol
// ("http/1.1", "h2c").
func (c *Chain) acceptsProtocol(proto string) bool {
	return len(c.AppProtocols) == 0 || slices.Contains(c.AppProtocols, proto)
}

// Select picks among matched chains for a detected protocol: "http/1.1" or
// "h2c" for HTTP, "" for anything else. Chains with application_protocols
// are only taken for a protocol they list; the others take anything.
func Select(chains []*Chain, proto string) *Chain {
	var fallback *Chain
	for _, c := range chains {
		if len(c.AppProtocols) > 0 {
			if proto != "" && c.acceptsProtocol(proto) {
				return c
			}
			continue
		}
		if fallback == nil {
			fallback = c
		}
	}
	return fallback
}

// NeedsDetection reports whether choosing among chains depends on the
// application protocol.
func NeedsDetection(chains []*Chain) bool {
	for _, c := range chains {
		if len(c.AppProtocols) > 0 {
			return true
		}
	}
	return false
}

// ServiceOfCluster returns the host of an Istio cluster name
// outbound|<port>|<subset>|<host>, or "".
func ServiceOfCluster(name string) string {
	parts := strings.SplitN(name, "|", 4)
	if len(parts) != 4 {
		return ""
	}
	return parts[3]
}
