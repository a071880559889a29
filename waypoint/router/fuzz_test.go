package router

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var fuzzSeeds = []string{
	oneVhost(`{"name":"r","match":{"prefix":"/"},"route":{"cluster":"c"}}`),
	oneVhost(`{"name":"r","match":{"safe_regex":{"regex":"/a/(.*)"},"headers":[{"name":"x","string_match":{"prefix":"v","ignore_case":true}}],
	  "query_parameters":[{"name":"q","present_match":true}]},"route":{"weighted_clusters":{"clusters":[{"name":"a","weight":1},{"name":"b","weight":3}]},
	  "regex_rewrite":{"pattern":{"regex":"/a/(.*)"},"substitution":"/\\1"},"request_mirror_policies":[{"cluster":"m","runtime_fraction":{"default_value":{"numerator":5}}}]}}`),
	oneVhost(`{"name":"r","match":{"path_separated_prefix":"/p","case_sensitive":false},"redirect":{"prefix_rewrite":"/q","port_redirect":8080,"strip_query":true}}`),
	oneVhost(`{"name":"r","match":{"path":"/d","grpc":{}},"direct_response":{"status":404,"body":{"inline_string":"no"}},
	  "response_headers_to_add":[{"header":{"key":"x","value":"1"},"append_action":"ADD_IF_ABSENT"}]}`),
	`{"ignore_port_in_host_matching":true,"virtual_hosts":[{"name":"a","domains":["a.*","*.b","c"],"routes":[{"match":{"prefix":""},"route":{"cluster":"c","retry_policy":{"retry_on":"5xx"}}}]}]}`,
}

// FuzzCompileRoute checks that Compile and Route never panic on arbitrary
// RouteConfiguration bytes and requests.
func FuzzCompileRoute(f *testing.F) {
	for _, js := range fuzzSeeds {
		rc := &routev3.RouteConfiguration{}
		if err := protojson.Unmarshal([]byte(js), rc); err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(rc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "a.example:80", "/a/b?q=1", "v", uint64(7))
	}
	f.Fuzz(func(t *testing.T, data []byte, authority, path, hval string, rv uint64) {
		rc := &routev3.RouteConfiguration{}
		if err := proto.Unmarshal(data, rc); err != nil {
			return
		}
		tbl, err := Compile(rc)
		if err != nil {
			return
		}
		for _, scheme := range []string{"", "https"} {
			req := &Request{
				Authority: authority,
				Method:    "GET",
				Path:      path,
				Scheme:    scheme,
				Headers:   http.Header{"X": {hval}, "Content-Type": {hval}},
				Rand:      fixedRand(rv),
			}
			d, ok := tbl.Route(req)
			if !ok {
				continue
			}
			d.ApplyRequestHeaders(http.Header{"X": {hval}})
			d.ApplyResponseHeaders(http.Header{})
			_ = d.RedirectLocation(req)
		}
	})
}
