package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The route table every proxy gets, in first-match order (Envoy's and
// Caddy's semantics; nginx picks exact locations first and then the longest
// prefix, which selects the same route because the prefixes do not
// overlap and the header match only applies under the catch-all).
//
//   - exact paths /exact/0 ... /exact/9 → A
//   - prefixes /svc0/ ... /svc15/ → A (even) or B (odd)
//   - prefix /split/ → A and B, weight 50/50
//   - any path with header x-version: v2 → B
//   - / → A
//
// Every route adds the response header x-route: <route name>.
type route struct {
	name    string
	exact   string // exact path match, or
	prefix  string // path prefix match
	header  string // x-version must equal this (with prefix "/")
	backend string // "a" or "b", or "split" (50/50)
}

const (
	nExact  = 10
	nPrefix = 16
)

func routeTable() []route {
	var rs []route
	for i := range nExact {
		rs = append(rs, route{name: fmt.Sprintf("exact-%d", i), exact: fmt.Sprintf("/exact/%d", i), backend: "a"})
	}
	for i := range nPrefix {
		b := "a"
		if i%2 == 1 {
			b = "b"
		}
		rs = append(rs, route{name: fmt.Sprintf("svc-%d", i), prefix: fmt.Sprintf("/svc%d/", i), backend: b})
	}
	rs = append(rs, route{name: "split", prefix: "/split/", backend: "split"})
	rs = append(rs, route{name: "v2-header", prefix: "/", header: "v2", backend: "b"})
	rs = append(rs, route{name: "default", prefix: "/", backend: "a"})
	return rs
}

// The request path the load generator sends: prefix route svc-13 (the 24th
// of 29 routes, so a first-match engine tries 23 routes before it), backend
// B. Chosen so that the lookup is not the cheapest case.
const benchPath = "/svc13/items/42"

const (
	clusterA = "outbound|8080||backend-a.bench.svc.cluster.local"
	clusterB = "outbound|8080||backend-b.bench.svc.cluster.local"
)

func envoyRoutes(name string) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: "bench", Domains: []string{"*"}}
	cl := map[string]string{"a": clusterA, "b": clusterB}
	for _, r := range routeTable() {
		m := &routev3.RouteMatch{}
		if r.exact != "" {
			m.PathSpecifier = &routev3.RouteMatch_Path{Path: r.exact}
		} else {
			m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: r.prefix}
		}
		if r.header != "" {
			m.Headers = []*routev3.HeaderMatcher{{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: r.header}}}}}
		}
		act := &routev3.RouteAction{}
		if r.backend == "split" {
			act.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
				{Name: clusterA, Weight: wrapperspb.UInt32(50)}, {Name: clusterB, Weight: wrapperspb.UInt32(50)}}}}
		} else {
			act.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: cl[r.backend]}
		}
		vh.Routes = append(vh.Routes, &routev3.Route{Name: r.name, Match: m, Action: &routev3.Route_Route{Route: act},
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: r.name},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}})
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{vh}}
}

// edsCluster is what istiod-lite sends for a Service: EDS over ADS,
// LEAST_REQUEST, outlier detection.
func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}},
		LbPolicy:       clusterv3.Cluster_LEAST_REQUEST,
		ConnectTimeout: durationpb.New(10 * time.Second),
		OutlierDetection: &clusterv3.OutlierDetection{
			Consecutive_5Xx: wrapperspb.UInt32(5), ConsecutiveGatewayFailure: wrapperspb.UInt32(5),
			Interval: durationpb.New(5 * time.Second), BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50),
		},
	}
}

// plainEndpoints: the backend as a plain TCP endpoint (no HBONE on the
// upstream side, as for nginx and Caddy).
func plainEndpoints(name, addr string, port int) *endpointv3.ClusterLoadAssignment {
	md, _ := structpb.NewStruct(map[string]any{"workload": name, "namespace": "bench"})
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}},
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"ambit": md}},
	}}}}}
}

// nginxProxyConf is the same table as nginx locations. Keep-alive
// connections to the backends (as the waypoint and Caddy pool them), no
// access log.
func nginxProxyConf(dir string, workers, listen, portA, portB int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `worker_processes %d;
pid %s/nginx-proxy.pid;
error_log %s/nginx-proxy.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s/tmp-proxy;
  upstream a { server 127.0.0.1:%d; keepalive 128; }
  upstream b { server 127.0.0.1:%d; keepalive 128; }
  upstream split { server 127.0.0.1:%d weight=1; server 127.0.0.1:%d weight=1; keepalive 128; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering on;
  server {
    listen 127.0.0.1:%d backlog=4096;
    keepalive_requests 1000000;
`, workers, dir, dir, dir, portA, portB, portA, portB, listen)
	for _, r := range routeTable() {
		switch {
		case r.exact != "":
			fmt.Fprintf(&b, "    location = %s { add_header x-route %s always; proxy_pass http://%s; }\n", r.exact, r.name, r.backend)
		case r.header != "":
			// Folded into the catch-all below.
		case r.prefix == "/":
			fmt.Fprintf(&b, "    location / {\n      if ($http_x_version = \"v2\") { add_header x-route v2-header always; proxy_pass http://b; }\n      add_header x-route %s always; proxy_pass http://%s;\n    }\n", r.name, r.backend)
		default:
			fmt.Fprintf(&b, "    location %s { add_header x-route %s always; proxy_pass http://%s; }\n", r.prefix, r.name, r.backend)
		}
	}
	b.WriteString("  }\n}\n")
	return b.String()
}

// nginxBackendConf: the two backends, one nginx worker answering a fixed
// body from memory.
func nginxBackendConf(dir string, portA, portB, bodySize int) string {
	body := strings.Repeat("x", bodySize)
	return fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx-backend.pid;
error_log %[1]s/nginx-backend.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/tmp-backend;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:%[2]d backlog=4096; location / { default_type text/plain; return 200 "%[4]s"; } }
  server { listen 127.0.0.1:%[3]d backlog=4096; location / { default_type text/plain; return 200 "%[4]s"; } }
}
`, dir, portA, portB, body)
}

// caddyConfig is the same table as Caddy JSON routes (first match, in
// order), plain HTTP, no admin endpoint, no access log.
func caddyConfig(listen, portA, portB int) ([]byte, error) {
	up := func(ports ...int) []map[string]any {
		var u []map[string]any
		for _, p := range ports {
			u = append(u, map[string]any{"dial": fmt.Sprintf("127.0.0.1:%d", p)})
		}
		return u
	}
	proxy := func(backend string) map[string]any {
		switch backend {
		case "a":
			return map[string]any{"handler": "reverse_proxy", "upstreams": up(portA)}
		case "b":
			return map[string]any{"handler": "reverse_proxy", "upstreams": up(portB)}
		}
		return map[string]any{"handler": "reverse_proxy", "upstreams": up(portA, portB),
			"load_balancing": map[string]any{"selection_policy": map[string]any{"policy": "weighted_round_robin", "weights": []int{1, 1}}}}
	}
	var routes []map[string]any
	for _, r := range routeTable() {
		m := map[string]any{}
		switch {
		case r.exact != "":
			m["path"] = []string{r.exact}
		case r.prefix != "/":
			m["path"] = []string{r.prefix + "*"}
		}
		if r.header != "" {
			m["header"] = map[string][]string{"X-Version": {r.header}}
		}
		rt := map[string]any{
			"handle": []map[string]any{
				{"handler": "headers", "response": map[string]any{"set": map[string][]string{"X-Route": {r.name}}}},
				proxy(r.backend),
			},
			"terminal": true,
		}
		if len(m) > 0 {
			rt["match"] = []map[string]any{m}
		}
		routes = append(routes, rt)
	}
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
			"listen":          []string{fmt.Sprintf("127.0.0.1:%d", listen)},
			"routes":          routes,
			"automatic_https": map[string]any{"disable": true},
			"protocols":       []string{"h1"},
		}}}},
	}
	return json.MarshalIndent(cfg, "", "  ")
}
