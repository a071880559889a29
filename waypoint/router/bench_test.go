package router

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

// benchTable builds a table of 100 routes with mixed matchers and, for each
// route, a request that it (and no earlier route) matches: exact paths,
// segment prefixes, prefixes with header matches, regexes, query parameter
// matches, and weighted clusters on some. The baseline is a map from the
// request path to a cluster name.
func benchTable(b *testing.B) (*Table, []*Request, map[string]string) {
	b.Helper()
	var routes []string
	var reqs []*Request
	base := map[string]string{}
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range 100 {
		name := fmt.Sprintf("r%d", i)
		cluster := fmt.Sprintf(`"cluster":"c%d"`, i)
		if i%7 == 0 {
			cluster = fmt.Sprintf(`"weighted_clusters":{"clusters":[{"name":"c%da","weight":90},{"name":"c%db","weight":10}]}`, i, i)
		}
		var match, path string
		var hdr []string
		switch i % 5 {
		case 0:
			path = fmt.Sprintf("/exact/%d", i)
			match = fmt.Sprintf(`{"path":%q}`, path)
		case 1:
			match = fmt.Sprintf(`{"path_separated_prefix":"/svc%d"}`, i)
			path = fmt.Sprintf("/svc%d/items/42", i)
		case 2:
			match = fmt.Sprintf(`{"prefix":"/api/","headers":[{"name":"x-tenant","string_match":{"exact":"t%d"}},{"name":":method","string_match":{"exact":"GET"}}]}`, i)
			path = "/api/v1/things"
			hdr = []string{"X-Tenant", fmt.Sprintf("t%d", i)}
		case 3:
			match = fmt.Sprintf(`{"safe_regex":{"regex":"/re%d/[a-z]+/[0-9]+"}}`, i)
			path = fmt.Sprintf("/re%d/users/123", i)
		case 4:
			match = fmt.Sprintf(`{"prefix":"/q/","query_parameters":[{"name":"v","string_match":{"exact":"%d"}}]}`, i)
			path = fmt.Sprintf("/q/search?a=1&v=%d", i)
		}
		routes = append(routes, fmt.Sprintf(`{"name":%q,"match":%s,"route":{%s}}`, name, match, cluster))
		req := newReq("svc.ns.svc.cluster.local", "GET", path, append(hdr, "User-Agent", "bench", "Accept", "*/*")...)
		req.Rand = rng
		reqs = append(reqs, req)
		base[path] = fmt.Sprintf("c%d", i)
	}
	cfg := `{"name":"bench","virtual_hosts":[{"name":"other","domains":["other.ns.svc.cluster.local"]},` +
		`{"name":"svc","domains":["svc.ns.svc.cluster.local","svc.ns.svc.cluster.local:80","svc"],"routes":[` + strings.Join(routes, ",") + `]}]}`
	tbl := mustCompile(b, cfg)
	for i, r := range reqs {
		if got := routeName(b, tbl, r); got != fmt.Sprintf("r%d", i) {
			b.Fatalf("request %d (%s) routed to %s", i, r.Path, got)
		}
	}
	return tbl, reqs, base
}

// BenchmarkRoute times Table.Route over 100 requests, one per route of a
// 100-route table (so on average half the table is scanned), against a plain
// map lookup of the same 100 paths, in the same run. One op is one route.
func BenchmarkRoute(b *testing.B) {
	tbl, reqs, base := benchTable(b)
	var routeTime, mapTime time.Duration
	var sink int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(reqs) {
		t0 := time.Now()
		for _, r := range reqs {
			d, _ := tbl.Route(r)
			sink += len(d.Cluster)
		}
		t1 := time.Now()
		for _, r := range reqs {
			sink += len(base[r.Path])
		}
		mapTime += time.Since(t1)
		routeTime += t1.Sub(t0)
	}
	if sink == 0 {
		b.Fatal("nothing routed")
	}
	n := float64((b.N + len(reqs) - 1) / len(reqs) * len(reqs))
	b.ReportMetric(float64(routeTime.Nanoseconds())/n, "route-ns/req")
	b.ReportMetric(float64(mapTime.Nanoseconds())/n, "map-ns/req")
	b.ReportMetric(routeTime.Seconds()/mapTime.Seconds(), "route/map")
}

// BenchmarkRouteFirst is the best case: the first route matches.
func BenchmarkRouteFirst(b *testing.B) {
	tbl, reqs, _ := benchTable(b)
	r := reqs[0]
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		tbl.Route(r)
	}
}

// BenchmarkApplyRequestHeaders applies a route's header mutations.
func BenchmarkApplyRequestHeaders(b *testing.B) {
	tbl := mustCompile(b, oneVhost(`{"name":"r","match":{"prefix":"/"},"route":{"cluster":"c"},"request_headers_to_add":[
	  {"header":{"key":"x-a","value":"1"},"append_action":"OVERWRITE_IF_EXISTS_OR_ADD"},{"header":{"key":"x-b","value":"2"}}],
	  "request_headers_to_remove":["x-c"]}`))
	d, _ := tbl.Route(newReq("h", "GET", "/"))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		h := http.Header{"X-C": {"1"}, "User-Agent": {"x"}}
		d.ApplyRequestHeaders(h)
	}
}
