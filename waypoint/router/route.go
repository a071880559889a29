package router

import (
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/internal/envoymatch"
)

// route is a compiled Route.
type route struct {
	name       string
	statPrefix string

	path    pathMatcher
	runtime *fraction // nil: always
	headers []headerMatcher
	query   []queryMatcher
	grpc    bool
	state   []filterStateMatcher

	action Action

	// Forward
	cluster         string
	weighted        *weightedClusters
	prefixRewrite   string
	regexRewrite    *regexRewrite
	hostRewrite     string
	clusterNotFound int
	timeout         time.Duration
	idleTimeout     *time.Duration
	retry           *RetryPolicy
	mirrors         []mirrorPolicy

	redirect *redirect
	direct   *directResponse

	mut levelMutations
}

// matches is Envoy's RouteEntryImplBase::matchRoute plus the path matcher:
// p is the :path without query and fragment (and without ;parameters when
// ignore_path_parameters_in_path_matching is set).
func (r *route) matches(req *Request, p string, rv uint64) bool {
	if !r.path.match(p) {
		return false
	}
	if r.runtime != nil && !r.runtime.hit(rv) {
		return false
	}
	for i := range r.headers {
		if !r.headers[i].match(req) {
			return false
		}
	}
	for i := range r.query {
		if !r.query[i].match(req.Path) {
			return false
		}
	}
	if r.grpc && !isGRPC(req) {
		return false
	}
	for i := range r.state {
		v, ok := req.FilterState[r.state[i].key]
		if !ok || !r.state[i].value.Match(v) {
			return false
		}
	}
	return true
}

// filterStateMatcher is a FilterStateMatcher with a string match: an
// absent key does not match.
type filterStateMatcher struct {
	key   string
	value envoymatch.String
}

// rewritePath applies a prefix_rewrite or regex_rewrite to the full :path
// (query included), as Envoy's currentUrlPathAfterRewriteWithMatchedPath: a
// prefix rewrite replaces the matched part (the configured prefix or path; the
// whole path for a regex match), a regex rewrite substitutes in the path and
// keeps the query.
func (r *route) rewritePath(full, prefixRewrite string, rr *regexRewrite) string {
	switch {
	case prefixRewrite != "":
		var n int
		switch r.path.kind {
		case pathRegex:
			n = len(pathOnly(full))
		default:
			n = len(r.path.value)
		}
		if n > len(full) {
			n = len(full)
		}
		return prefixRewrite + full[n:]
	case rr != nil:
		just := pathOnly(full)
		return rr.replace(just) + full[len(just):]
	}
	return full
}

// fraction is a RuntimeFractionalPercent's default value (the engine has no
// runtime): it hits when random % denominator < numerator.
type fraction struct {
	numerator   uint64
	denominator uint64
}

func (f *fraction) hit(rv uint64) bool {
	if f == nil {
		return true
	}
	return rv%f.denominator < f.numerator
}

type weightedClusters struct {
	clusters []weightedCluster // weight > 0 only
	total    uint64
}

type weightedCluster struct {
	name        string
	weight      uint64
	hostRewrite string
	mut         levelMutations
}

// pick is Envoy's weighted cluster selection: rv % total falls in one
// cluster's [begin, begin+weight) interval.
func (w *weightedClusters) pick(rv uint64) *weightedCluster {
	v := rv % w.total
	var begin uint64
	for i := range w.clusters {
		c := &w.clusters[i]
		if v < begin+c.weight {
			return c
		}
		begin += c.weight
	}
	return &w.clusters[len(w.clusters)-1]
}

type mirrorPolicy struct {
	cluster  string
	fraction *fraction // nil: always
	noSuffix bool
}

type directResponse struct {
	status int
	body   []byte
}

type redirect struct {
	status        int
	scheme        string // "" keeps the request's
	host          string
	port          string // ":N" or ""
	pathRedirect  string
	pathHasQuery  bool
	prefixRewrite string
	regexRewrite  *regexRewrite
	stripQuery    bool
}

// location is Envoy's newUri for a route's redirect, with one deviation: a
// port_redirect equal to the final scheme's default port (80 for http, 443
// for https) is left out of the Location, as Gateway API asks.
func (rd *redirect) location(r *route, req *Request) string {
	scheme := rd.scheme
	if scheme == "" {
		scheme = req.scheme()
	}
	port := rd.port
	host := rd.host
	if host == "" {
		host = redirectRequestHost(req.Authority, req.scheme(), scheme, port)
	}
	if (port == ":80" && strings.EqualFold(scheme, "http")) || (port == ":443" && strings.EqualFold(scheme, "https")) {
		port = ""
	}
	var p string
	switch {
	case rd.pathRedirect != "":
		p = rd.pathRedirect
		if !rd.pathHasQuery {
			if q := strings.IndexByte(req.Path, '?'); q >= 0 {
				p += req.Path[q:]
			}
		}
	default:
		p = r.rewritePath(req.Path, rd.prefixRewrite, rd.regexRewrite)
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if rd.stripQuery && !rd.pathHasQuery {
		if q := strings.IndexByte(p, '?'); q >= 0 {
			p = p[:q]
		}
	}
	return scheme + "://" + host + port + p
}

// redirectRequestHost is Envoy's processRequestHost: the request's host keeps
// its port unless a port_redirect replaces it, or the scheme changes and the
// port was the default of the request's scheme (the request's scheme stands
// for x-forwarded-proto).
func redirectRequestHost(authority, reqScheme, newScheme, newPort string) string {
	if authority == "" {
		return authority
	}
	end := -1
	if authority[0] == '[' {
		if i := strings.LastIndex(authority, "]:"); i >= 0 {
			end = i + 1
		}
	} else {
		end = strings.LastIndexByte(authority, ':')
	}
	if end < 0 {
		return authority
	}
	reqPort := authority[end:]
	remove := newPort != ""
	if newScheme != reqScheme {
		remove = remove || (strings.EqualFold(reqScheme, "https") && reqPort == ":443")
		remove = remove || (strings.EqualFold(reqScheme, "http") && reqPort == ":80")
	}
	if remove {
		return authority[:end]
	}
	return authority
}
