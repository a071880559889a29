package rbac

import (
	"net/http"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"
)

var fuzzSeeds = []string{
	onePolicy("ALLOW", `{"and_rules":{"rules":[{"destination_port":80},{"header":{"name":":method","string_match":{"exact":"GET"}}},{"url_path":{"path":{"prefix":"/a"}}}]}}`,
		`{"filter_state":{"key":"io.istio.peer_principal","string_match":{"safe_regex":{"regex":"spiffe://[^/]+/ns/a/sa/[^/]+"}}}}`),
	onePolicy("DENY", `{"not_rule":{"or_rules":{"rules":[{"destination_ip":{"address_prefix":"10.0.0.0","prefix_len":8}},{"header":{"name":"x","present_match":true,"invert_match":true}}]}}}`,
		`{"or_ids":{"ids":[{"direct_remote_ip":{"address_prefix":"fd00::","prefix_len":64}},{"authenticated":{"principal_name":{"suffix":"/sa/b","ignore_case":true}}}]}}`),
	onePolicy("LOG", `{"header":{"name":":authority","string_match":{"contains":"svc"}}}`, `{"not_id":{"remote_ip":{"address_prefix":"1.2.3.4","prefix_len":32}}}`),
}

// FuzzCompileEvaluate checks that Compile and Evaluate never panic on
// arbitrary RBAC bytes and attributes.
func FuzzCompileEvaluate(f *testing.F) {
	for _, js := range fuzzSeeds {
		b, err := proto.Marshal(mustParse(f, js))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "spiffe://td/ns/a/sa/b", []byte{10, 0, 0, 1}, uint16(80), "GET", "/a?b", "svc:80", "v")
	}
	f.Fuzz(func(t *testing.T, data []byte, principal string, ip []byte, port uint16, method, path, host, hval string) {
		cfg := mustParse(t, `{}`)
		if err := proto.Unmarshal(data, cfg); err != nil {
			return
		}
		e, err := Compile(cfg)
		if err != nil {
			return
		}
		addr, _ := netip.AddrFromSlice(ip)
		for _, a := range []*Attributes{
			{PeerPrincipal: principal, SourceIP: addr, DestinationIP: addr, DestinationPort: port},
			{PeerPrincipal: principal, SourceIP: addr, DestinationIP: addr, DestinationPort: port,
				Method: method, Path: path, Host: host, Headers: http.Header{"X": {hval, hval}}},
		} {
			r := e.Evaluate(a)
			if r.Matched && r.Policy == "" && len(cfg.GetPolicies()) > 0 {
				if _, ok := cfg.GetPolicies()[""]; !ok {
					t.Fatalf("matched with no policy name: %+v", r)
				}
			}
		}
	})
}
