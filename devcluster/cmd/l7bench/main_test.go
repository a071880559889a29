package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

const wrkOutput = `Running 10s test @ http://127.0.0.1:8080/svc13/items/42
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.32ms  520.10us  12.00ms   80.00%
    Req/Sec    24.10k     1.20k   26.00k    70.00%
  Latency Distribution
     50%    1.18ms
     75%    1.50ms
     90%    1.95ms
     99%  850.00us
  241910 requests in 10.00s, 280.00MB read
Requests/sec:  24190.50
Transfer/sec:     28.00MB
`

func TestParseWrk(t *testing.T) {
	w, err := parseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	if w.rps != 24190.5 || w.requests != 241910 || w.p50 != 1.18 || w.p90 != 1.95 || w.p99 != 0.85 {
		t.Errorf("got %+v", w)
	}
	if _, err := parseWrk(wrkOutput + "  Non-2xx or 3xx responses: 12\n"); err == nil {
		t.Error("non-2xx responses not reported")
	}
	if _, err := parseWrk(wrkOutput + "  Socket errors: connect 0, read 3, write 0, timeout 0\n"); err == nil {
		t.Error("socket errors not reported")
	}
}

// The waypoint's route engine accepts the table and routes as intended.
func TestEnvoyRoutes(t *testing.T) {
	tbl, err := router.Compile(envoyRoutes("r"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, version, cluster, route string
	}{
		{benchPath, "", clusterB, "svc-13"},
		{"/exact/3", "", clusterA, "exact-3"},
		{"/exact/3/x", "", clusterA, "default"},
		{"/svc2/x", "", clusterA, "svc-2"},
		{"/anything", "v2", clusterB, "v2-header"},
		{"/anything", "", clusterA, "default"},
	} {
		h := http.Header{}
		if c.version != "" {
			h.Set("X-Version", c.version)
		}
		d, ok := tbl.Route(&router.Request{Authority: "127.0.0.1:80", Method: "GET", Path: c.path, Scheme: "http", Headers: h})
		if !ok || d.Action != router.Forward || d.Cluster != c.cluster {
			t.Errorf("%s: got %+v, %v; want %s", c.path, d, ok, c.cluster)
			continue
		}
		resp := http.Header{}
		d.ApplyResponseHeaders(resp)
		if resp.Get("X-Route") != c.route {
			t.Errorf("%s: x-route %q, want %q", c.path, resp.Get("X-Route"), c.route)
		}
	}
	if n := len(routeTable()); n != 29 {
		t.Errorf("%d routes, the docs say 29", n)
	}
}

func TestProxyConfigs(t *testing.T) {
	conf := nginxProxyConf("/tmp/x", 2, 1, 2, 3)
	for _, want := range []string{"location = /exact/9 ", "location /svc15/ ", "location /split/ ", `if ($http_x_version = "v2")`, "keepalive 128"} {
		if !strings.Contains(conf, want) {
			t.Errorf("nginx config lacks %q", want)
		}
	}
	data, err := caddyConfig(1, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct{ Routes []json.RawMessage }
			}
		}
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if n := len(v.Apps.HTTP.Servers["bench"].Routes); n != 29 {
		t.Errorf("Caddy has %d routes, want 29", n)
	}
}

func TestParseFortio(t *testing.T) {
	out := `Fortio 1.68.2 running at 1000 queries per second
{"ActualQPS": 999.5, "DurationHistogram": {"Count": 10000, "Percentiles": [{"Percentile": 50, "Value": 0.0005}, {"Percentile": 90, "Value": 0.001}, {"Percentile": 99, "Value": 0.003}]}, "RetCodes": {"200": 10000}}`
	w, err := parseFortio([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if w.rps != 999.5 || w.requests != 10000 || w.p50 != 0.5 || w.p90 != 1 || w.p99 != 3 {
		t.Errorf("got %+v", w)
	}
	if _, err := parseFortio([]byte(strings.Replace(out, `{"200": 10000}`, `{"200": 9990, "503": 10}`, 1))); err == nil {
		t.Error("non-200 answers not reported")
	}
}
