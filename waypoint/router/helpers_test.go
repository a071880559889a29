package router

import (
	"math/rand/v2"
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	// Registers PreviousHostsPredicate for typed_config in test JSON.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
)

// parseRC reads a RouteConfiguration from its proto JSON form.
func parseRC(t testing.TB, js string) *routev3.RouteConfiguration {
	t.Helper()
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal([]byte(js), rc); err != nil {
		t.Fatalf("parse route configuration: %v\n%s", err, js)
	}
	return rc
}

func mustCompile(t testing.TB, js string) *Table {
	t.Helper()
	tbl, err := Compile(parseRC(t, js))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return tbl
}

// oneVhost wraps routes (a JSON array body) in a configuration with a single
// "*" virtual host.
func oneVhost(routes string) string {
	return `{"name":"rc","virtual_hosts":[{"name":"vh","domains":["*"],"routes":[` + routes + `]}]}`
}

// newReq builds a request; hdr is name, value pairs.
func newReq(authority, method, path string, hdr ...string) *Request {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Add(hdr[i], hdr[i+1])
	}
	return &Request{Authority: authority, Method: method, Path: path, Headers: h, Rand: rand.New(rand.NewPCG(1, 2))}
}

// routeName routes req and returns the matched route's name, or "<none>".
func routeName(t testing.TB, tbl *Table, req *Request) string {
	t.Helper()
	d, ok := tbl.Route(req)
	if !ok {
		return "<none>"
	}
	return d.RouteName
}

// fixedRand returns the same value forever.
type fixedRand uint64

func (f fixedRand) Uint64() uint64 { return uint64(f) }
