// Package router is the waypoint's route engine: it executes an Envoy
// RouteConfiguration (envoy.config.route.v3) the way Envoy's router does.
//
// Compile validates a RouteConfiguration (go-control-plane's Validate, then the
// engine's own checks: a field the engine does not implement is an error that
// names the field's path, so the waypoint NACKs instead of mis-routing),
// compiles its regular expressions and builds the lookup structure. Table.Route
// picks the virtual host by :authority, then the first route whose match
// accepts the request, and returns a Decision: where the request goes (a
// cluster, a redirect or a direct response) and everything the proxy needs to
// carry it out (rewritten path and authority, header mutations, mirrors,
// timeouts, retry policy).
//
// The supported subset, the field-by-field mapping and the deviations from
// Envoy are documented in docs/waypoint.md ("Route engine").
package router

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// Rand is the source of randomness a request brings (weighted cluster picks,
// runtime fractions, mirror percentages). *math/rand/v2.Rand satisfies it; it
// is used by one request at a time, so it need not be goroutine-safe.
type Rand interface {
	Uint64() uint64
}

// Request is what the route engine looks at.
type Request struct {
	// Authority is :authority (HTTP/1 Host), with its port if the client sent
	// one. Virtual host domains are matched against it.
	Authority string
	// Method is :method.
	Method string
	// Path is :path: the path with its query string, as received.
	Path string
	// Scheme is the scheme the client used ("http" or "https"); empty means
	// "http". Redirects use it as both :scheme and x-forwarded-proto.
	Scheme string
	// Headers are the other request headers with canonical keys (as net/http
	// produces them). Several values of one header are matched joined by ",".
	Headers http.Header
	// FilterState holds the connection's string filter state objects
	// route matchers may read, by key: the waypoint sets PeerPrincipalKey
	// to the client's SPIFFE id (GAMMA consumer routes select on it).
	FilterState map[string]string
	// Rand supplies randomness; nil uses math/rand/v2's global source.
	Rand Rand
}

// PeerPrincipalKey is Istio's filter state key for the peer's SPIFFE id.
const PeerPrincipalKey = "io.istio.peer_principal"

func (r *Request) scheme() string {
	if r.Scheme == "" {
		return "http"
	}
	return r.Scheme
}

func (r *Request) random() uint64 {
	if r.Rand != nil {
		return r.Rand.Uint64()
	}
	return rand.Uint64()
}

// Action is what a matched route does with the request.
type Action uint8

const (
	// Forward proxies the request to Decision.Cluster (RouteAction).
	Forward Action = iota + 1
	// Redirect answers with Decision.RedirectStatus and a Location header from
	// Decision.RedirectLocation (RedirectAction).
	Redirect
	// DirectResponse answers with Decision.DirectStatus and DirectBody
	// (DirectResponseAction).
	DirectResponse
)

func (a Action) String() string {
	switch a {
	case Forward:
		return "forward"
	case Redirect:
		return "redirect"
	case DirectResponse:
		return "direct_response"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// DefaultRouteTimeout is Envoy's route timeout when RouteAction.timeout is
// not set.
const DefaultRouteTimeout = 15 * time.Second

// Decision is the outcome of routing one request. It is read-only: its slices
// and pointers may be shared with the Table and with other decisions.
type Decision struct {
	// RouteName is Route.name (the Gateway API rule name, for metrics), and
	// StatPrefix Route.stat_prefix; VirtualHost is VirtualHost.name.
	RouteName   string
	StatPrefix  string
	VirtualHost string
	Action      Action

	// Forward: the target cluster (RouteAction.cluster or the picked
	// weighted cluster), and the :path and :authority to send upstream, after
	// prefix_rewrite/regex_rewrite and host_rewrite_literal.
	Cluster   string
	Path      string
	Authority string
	// ClusterNotFoundStatus is the status to answer when Cluster is unknown
	// (cluster_not_found_response_code: 503, 404 or 500).
	ClusterNotFoundStatus int
	// Timeout is the whole-request timeout (RouteAction.timeout, 15s when
	// unset); 0 disables it.
	Timeout time.Duration
	// IdleTimeout is RouteAction.idle_timeout; nil leaves the listener's
	// stream idle timeout in force, 0 disables it.
	IdleTimeout *time.Duration
	// Retry is the route's retry policy, else the virtual host's; nil means
	// no retries.
	Retry *RetryPolicy
	// Mirrors are the request mirrors whose runtime fraction hit for this
	// request.
	Mirrors []Mirror

	// Redirect: the status (301, 302, 303, 307 or 308).
	RedirectStatus int

	// DirectResponse: the status and body.
	DirectStatus int
	DirectBody   []byte

	table *Table
	vhost *virtualHost
	route *route
	wc    *weightedCluster
}

// Mirror is a shadow copy of the request to send, fire and forget.
type Mirror struct {
	Cluster string
	// Authority is the mirrored request's :authority: the upstream
	// authority with "-shadow" appended to the host (unless
	// disable_shadow_host_suffix_append).
	Authority string
}

// ApplyRequestHeaders applies the request header mutations of the picked
// weighted cluster, the route, the virtual host and the route configuration,
// in Envoy's order: most specific first, so the route configuration's
// overwrites win, or the reverse when most_specific_header_mutations_wins.
func (d *Decision) ApplyRequestHeaders(h http.Header) {
	d.applyHeaders(h, true)
}

// ApplyResponseHeaders applies the response header mutations in the same
// order as ApplyRequestHeaders. Envoy applies them to redirects and direct
// responses too.
func (d *Decision) ApplyResponseHeaders(h http.Header) {
	d.applyHeaders(h, false)
}

func (d *Decision) applyHeaders(h http.Header, request bool) {
	if d == nil || d.route == nil || h == nil {
		return
	}
	levels := [4]*levelMutations{nil, &d.route.mut, &d.vhost.mut, &d.table.mut}
	if d.wc != nil {
		levels[0] = &d.wc.mut
	}
	apply := func(l *levelMutations) {
		if l == nil {
			return
		}
		if request {
			l.request.apply(h)
		} else {
			l.response.apply(h)
		}
	}
	if d.table.mostSpecificWins {
		for i := len(levels) - 1; i >= 0; i-- {
			apply(levels[i])
		}
		return
	}
	for _, l := range levels {
		apply(l)
	}
}

// RedirectLocation computes the Location header of a redirect for req (the
// request the decision was made for), as Envoy does; "" if the decision is
// not a redirect.
func (d *Decision) RedirectLocation(req *Request) string {
	if d == nil || d.route == nil || d.route.redirect == nil || req == nil {
		return ""
	}
	return d.route.redirect.location(d.route, req)
}

// Table is a compiled RouteConfiguration. It is immutable and safe for
// concurrent use.
type Table struct {
	name             string
	exact            map[string]*virtualHost
	suffixes         []wildcardGroup // longest first
	prefixes         []wildcardGroup // longest first
	star             *virtualHost
	onlyStar         bool
	ignorePort       bool
	ignorePathParams bool
	vhostHeader      *headerRef
	mostSpecificWins bool
	mut              levelMutations
	mirrors          []mirrorPolicy
}

// Name is RouteConfiguration.name.
func (t *Table) Name() string { return t.name }

type wildcardGroup struct {
	n     int // length of the domain without '*'
	hosts map[string]*virtualHost
}

type levelMutations struct {
	request, response *mutations
}

type virtualHost struct {
	name    string
	routes  []*route
	mut     levelMutations
	retry   *RetryPolicy
	mirrors []mirrorPolicy
}

// Route routes req: virtual host by authority, then the first matching route.
// ok is false when no virtual host or no route matches (Envoy answers 404).
func (t *Table) Route(req *Request) (d *Decision, ok bool) {
	if t == nil || req == nil {
		return nil, false
	}
	vh := t.findVirtualHost(req)
	if vh == nil {
		return nil, false
	}
	// One random value per request, shared by every route's runtime_fraction
	// and the weighted cluster pick, as in Envoy.
	rv := req.random()
	p := pathOnly(req.Path)
	if t.ignorePathParams {
		if i := strings.IndexByte(p, ';'); i >= 0 {
			p = p[:i]
		}
	}
	for _, r := range vh.routes {
		if r.matches(req, p, rv) {
			return t.decide(vh, r, req, rv), true
		}
	}
	return nil, false
}

func (t *Table) findVirtualHost(req *Request) *virtualHost {
	if t.onlyStar {
		return t.star
	}
	var host string
	if t.vhostHeader != nil {
		host, _ = t.vhostHeader.value(req)
	} else {
		host = req.Authority
	}
	host = envoymatch.ToLowerASCII(host)
	if t.ignorePort {
		if i := portStart(host); i >= 0 {
			host = host[:i]
		}
	}
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, g := range t.suffixes {
		// '>=': "*.foo.com" must not match ".foo.com"; the wildcard matches at
		// least one character.
		if g.n >= len(host) {
			continue
		}
		if vh, ok := g.hosts[host[len(host)-g.n:]]; ok {
			return vh
		}
	}
	for _, g := range t.prefixes {
		if g.n >= len(host) {
			continue
		}
		if vh, ok := g.hosts[host[:g.n]]; ok {
			return vh
		}
	}
	return t.star
}

// portStart is Envoy's HeaderUtility::getPortStart: the index of the ':'
// before a numeric port, outside IPv6 brackets, or -1.
func portStart(host string) int {
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return -1
	}
	if j := strings.LastIndexByte(host, ']'); j > i {
		return -1
	}
	port := host[i+1:]
	if port == "" {
		return -1
	}
	if _, err := strconv.ParseUint(port, 10, 32); err != nil {
		return -1
	}
	return i
}

// StripAnyHostPort removes the port from an authority, as the HTTP connection
// manager's strip_any_host_port does before routing.
func StripAnyHostPort(authority string) string {
	if i := portStart(authority); i >= 0 {
		return authority[:i]
	}
	return authority
}

// StripMatchingHostPort removes the port from an authority when it equals the
// listener's port, as the HTTP connection manager's strip_matching_host_port
// does before routing.
func StripMatchingHostPort(authority string, listenerPort uint32) string {
	if i := portStart(authority); i >= 0 && authority[i+1:] == strconv.FormatUint(uint64(listenerPort), 10) {
		return authority[:i]
	}
	return authority
}

func (t *Table) decide(vh *virtualHost, r *route, req *Request, rv uint64) *Decision {
	d := &Decision{
		RouteName:   r.name,
		StatPrefix:  r.statPrefix,
		VirtualHost: vh.name,
		Action:      r.action,
		table:       t,
		vhost:       vh,
		route:       r,
	}
	switch r.action {
	case Redirect:
		d.RedirectStatus = r.redirect.status
		return d
	case DirectResponse:
		d.DirectStatus = r.direct.status
		d.DirectBody = r.direct.body
		return d
	}
	d.Cluster = r.cluster
	d.Authority = req.Authority
	if r.hostRewrite != "" {
		d.Authority = r.hostRewrite
	}
	if r.weighted != nil {
		d.wc = r.weighted.pick(rv)
		d.Cluster = d.wc.name
		if d.wc.hostRewrite != "" {
			d.Authority = d.wc.hostRewrite
		}
	}
	d.Path = r.rewritePath(req.Path, r.prefixRewrite, r.regexRewrite)
	d.ClusterNotFoundStatus = r.clusterNotFound
	d.Timeout = r.timeout
	d.IdleTimeout = r.idleTimeout
	d.Retry = r.retry
	if d.Retry == nil {
		d.Retry = vh.retry
	}
	// Mirror policies are not merged: the most specific non-empty list wins.
	mirrors := r.mirrors
	if len(mirrors) == 0 {
		mirrors = vh.mirrors
	}
	if len(mirrors) == 0 {
		mirrors = t.mirrors
	}
	if len(mirrors) > 0 {
		// One stable random value for all of this request's mirror policies
		// (Envoy uses the stream's id), independent of the routing value.
		mv := req.random()
		for i := range mirrors {
			m := &mirrors[i]
			if m.fraction.hit(mv) {
				a := d.Authority
				if !m.noSuffix {
					a = shadowAuthority(a)
				}
				d.Mirrors = append(d.Mirrors, Mirror{Cluster: m.cluster, Authority: a})
			}
		}
	}
	return d
}

// shadowAuthority appends "-shadow" to the host part of an authority.
func shadowAuthority(a string) string {
	if i := portStart(a); i >= 0 {
		return a[:i] + "-shadow" + a[i:]
	}
	return a + "-shadow"
}
