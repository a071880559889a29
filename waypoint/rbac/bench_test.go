package rbac

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkEvaluate: an ALLOW configuration shaped like Istio's (20
// policies of principal/namespace sources and method/path operations), a
// request that only the last policy matches.
func BenchmarkEvaluate(b *testing.B) {
	var pols []string
	for i := range 20 {
		pols = append(pols, fmt.Sprintf(`"ns[shop]-policy[p%02d]-rule[0]":{
		  "permissions":[{"and_rules":{"rules":[{"header":{"name":":method","string_match":{"exact":"GET"}}},{"url_path":{"path":{"prefix":"/api/%d/"}}}]}}],
		  "principals":[{"or_ids":{"ids":[{"filter_state":{"key":"io.istio.peer_principal","string_match":{"exact":"spiffe://cluster.local/ns/a/sa/s%d"}}},
		    {"filter_state":{"key":"io.istio.peer_principal","string_match":{"safe_regex":{"regex":"spiffe://[^/]+/ns/n%d/sa/[^/]+"}}}}]}}]}`, i, i, i, i))
	}
	e := mustCompile(b, `{"action":"ALLOW","policies":{`+strings.Join(pols, ",")+`}}`)
	a := req()
	a.Path = "/api/19/items?x=1"
	a.PeerPrincipal = "spiffe://cluster.local/ns/n19/sa/x"
	if !e.Evaluate(a).Allowed {
		b.Fatal("not allowed")
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Evaluate(a)
	}
}
