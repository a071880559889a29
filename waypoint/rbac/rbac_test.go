package rbac

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

func mustParse(t testing.TB, js string) *rbacv3.RBAC {
	t.Helper()
	cfg := &rbacv3.RBAC{}
	if err := protojson.Unmarshal([]byte(js), cfg); err != nil {
		t.Fatalf("parse %s: %v", js, err)
	}
	return cfg
}

func mustCompile(t testing.TB, js string) *Engine {
	t.Helper()
	e, err := Compile(mustParse(t, js))
	if err != nil {
		t.Fatalf("compile %s: %v", js, err)
	}
	return e
}

// onePolicy wraps a permission and a principal into an RBAC of action.
func onePolicy(action, perm, principal string) string {
	return `{"action":"` + action + `","policies":{"p":{"permissions":[` + perm + `],"principals":[` + principal + `]}}}`
}

const (
	anyJS = `{"any":true}`
	alice = "spiffe://cluster.local/ns/a/sa/alice"
	bob   = "spiffe://cluster.local/ns/b/sa/bob"
)

func req() *Attributes {
	return &Attributes{
		PeerPrincipal:   alice,
		SourceIP:        netip.MustParseAddr("10.0.0.5"),
		DestinationIP:   netip.MustParseAddr("10.96.0.10"),
		DestinationPort: 8080,
		Method:          "GET",
		Path:            "/api/v1/items?x=1",
		Host:            "svc.ns.svc.cluster.local:8080",
		Headers:         http.Header{"X-Env": {"prod"}, "X-Multi": {"a", "b"}},
	}
}

func TestPermissions(t *testing.T) {
	l4 := req()
	l4.Method, l4.Path, l4.Host, l4.Headers = "", "", "", nil
	cases := []struct {
		name string
		perm string
		in   *Attributes
		want bool
	}{
		{"any", anyJS, req(), true},
		{"port", `{"destination_port":8080}`, req(), true},
		{"port other", `{"destination_port":9090}`, req(), false},
		{"dest ip", `{"destination_ip":{"address_prefix":"10.96.0.0","prefix_len":16}}`, req(), true},
		{"dest ip other", `{"destination_ip":{"address_prefix":"10.97.0.0","prefix_len":16}}`, req(), false},
		{"dest ip unset len is /0", `{"destination_ip":{"address_prefix":"1.2.3.4"}}`, req(), true},
		{"method", `{"header":{"name":":method","string_match":{"exact":"GET"}}}`, req(), true},
		{"method l4", `{"header":{"name":":method","string_match":{"exact":"GET"}}}`, l4, false},
		{"method inverted", `{"header":{"name":":method","string_match":{"exact":"GET"},"invert_match":true}}`, req(), false},
		{"method inverted l4: absent never matches", `{"header":{"name":":method","string_match":{"exact":"GET"},"invert_match":true}}`, l4, false},
		{"authority", `{"header":{"name":":authority","string_match":{"prefix":"svc.ns."}}}`, req(), true},
		{"host alias", `{"header":{"name":"Host","string_match":{"suffix":":8080"}}}`, req(), true},
		{":path has query", `{"header":{"name":":path","string_match":{"suffix":"?x=1"}}}`, req(), true},
		{"header exact", `{"header":{"name":"x-env","string_match":{"exact":"prod"}}}`, req(), true},
		{"header ignore case", `{"header":{"name":"x-env","string_match":{"exact":"PROD","ignore_case":true}}}`, req(), true},
		{"header case sensitive", `{"header":{"name":"x-env","string_match":{"exact":"PROD"}}}`, req(), false},
		{"header joined", `{"header":{"name":"x-multi","string_match":{"exact":"a,b"}}}`, req(), true},
		{"header contains", `{"header":{"name":"x-multi","string_match":{"contains":",b"}}}`, req(), true},
		{"header regex full", `{"header":{"name":"x-env","string_match":{"safe_regex":{"regex":"pro"}}}}`, req(), false},
		{"header regex", `{"header":{"name":"x-env","string_match":{"safe_regex":{"regex":"p.*d"}}}}`, req(), true},
		{"header present", `{"header":{"name":"x-env","present_match":true}}`, req(), true},
		{"header no specifier", `{"header":{"name":"x-env"}}`, req(), true},
		{"header absent", `{"header":{"name":"x-none","present_match":true}}`, req(), false},
		{"header not present", `{"header":{"name":"x-none","present_match":false}}`, req(), true},
		{"header present inverted", `{"header":{"name":"x-env","present_match":true,"invert_match":true}}`, req(), false},
		{"header missing as empty", `{"header":{"name":"x-none","string_match":{"exact":""},"treat_missing_header_as_empty":true}}`, req(), true},
		{"url_path strips query", `{"url_path":{"path":{"exact":"/api/v1/items"}}}`, req(), true},
		{"url_path prefix", `{"url_path":{"path":{"prefix":"/api/"}}}`, req(), true},
		{"url_path l4", `{"url_path":{"path":{"prefix":"/"}}}`, l4, false},
		{"and", `{"and_rules":{"rules":[{"destination_port":8080},{"header":{"name":":method","string_match":{"exact":"GET"}}}]}}`, req(), true},
		{"and one fails", `{"and_rules":{"rules":[{"destination_port":8080},{"header":{"name":":method","string_match":{"exact":"POST"}}}]}}`, req(), false},
		{"or", `{"or_rules":{"rules":[{"destination_port":1},{"destination_port":8080}]}}`, req(), true},
		{"or none", `{"or_rules":{"rules":[{"destination_port":1},{"destination_port":2}]}}`, req(), false},
		{"not", `{"not_rule":{"destination_port":1}}`, req(), true},
		{"not not", `{"not_rule":{"not_rule":{"destination_port":1}}}`, req(), false},
		{"not over l4 header", `{"not_rule":{"header":{"name":":method","string_match":{"exact":"GET"}}}}`, l4, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := mustCompile(t, onePolicy("ALLOW", c.perm, anyJS))
			if got := e.Evaluate(c.in); got.Allowed != c.want || got.Matched != c.want {
				t.Fatalf("got %+v, want allowed=matched=%v", got, c.want)
			}
		})
	}
}

func TestPrincipals(t *testing.T) {
	anon := req()
	anon.PeerPrincipal = ""
	v6 := req()
	v6.SourceIP = netip.MustParseAddr("fd00::5")
	mapped := req()
	mapped.SourceIP = netip.MustParseAddr("::ffff:10.0.0.5")
	cases := []struct {
		name      string
		principal string
		in        *Attributes
		want      bool
	}{
		{"any", anyJS, req(), true},
		{"filter state exact", `{"filter_state":{"key":"io.istio.peer_principal","string_match":{"exact":"` + alice + `"}}}`, req(), true},
		{"filter state other", `{"filter_state":{"key":"io.istio.peer_principal","string_match":{"exact":"` + bob + `"}}}`, req(), false},
		{"filter state namespace regex", `{"filter_state":{"key":"io.istio.peer_principal","string_match":{"safe_regex":{"regex":"spiffe://[^/]+/ns/a/sa/[^/]+"}}}}`, req(), true},
		{"filter state absent", `{"filter_state":{"key":"io.istio.peer_principal","string_match":{"safe_regex":{"regex":".*"}}}}`, anon, false},
		{"authenticated name", `{"authenticated":{"principal_name":{"exact":"` + alice + `"}}}`, req(), true},
		{"authenticated any", `{"authenticated":{}}`, req(), true},
		{"authenticated anonymous", `{"authenticated":{}}`, anon, false},
		{"direct remote ip", `{"direct_remote_ip":{"address_prefix":"10.0.0.0","prefix_len":24}}`, req(), true},
		{"direct remote ip host bits", `{"direct_remote_ip":{"address_prefix":"10.0.0.9","prefix_len":24}}`, req(), true},
		{"direct remote ip other", `{"direct_remote_ip":{"address_prefix":"10.0.1.0","prefix_len":24}}`, req(), false},
		{"remote ip", `{"remote_ip":{"address_prefix":"10.0.0.5","prefix_len":32}}`, req(), true},
		{"source ip", `{"source_ip":{"address_prefix":"10.0.0.5","prefix_len":32}}`, req(), true},
		{"mapped v4", `{"remote_ip":{"address_prefix":"10.0.0.5","prefix_len":32}}`, mapped, true},
		{"mapped range", `{"remote_ip":{"address_prefix":"::ffff:10.0.0.0","prefix_len":120}}`, req(), true},
		{"mapped range other", `{"remote_ip":{"address_prefix":"::ffff:10.0.1.0","prefix_len":120}}`, req(), false},
		{"v6", `{"remote_ip":{"address_prefix":"fd00::","prefix_len":64}}`, v6, true},
		{"v6 vs v4 range", `{"remote_ip":{"address_prefix":"0.0.0.0","prefix_len":0}}`, v6, false},
		{"no source", `{"remote_ip":{"address_prefix":"0.0.0.0","prefix_len":0}}`, &Attributes{}, false},
		{"not id", `{"not_id":{"filter_state":{"key":"io.istio.peer_principal","string_match":{"exact":"` + bob + `"}}}}`, req(), true},
		{"and ids", `{"and_ids":{"ids":[{"authenticated":{}},{"remote_ip":{"address_prefix":"10.0.0.0","prefix_len":8}}]}}`, req(), true},
		{"or ids", `{"or_ids":{"ids":[{"remote_ip":{"address_prefix":"11.0.0.0","prefix_len":8}},{"authenticated":{}}]}}`, anon, false},
		{"header principal", `{"header":{"name":"x-env","string_match":{"exact":"prod"}}}`, req(), true},
		{"url_path principal", `{"url_path":{"path":{"prefix":"/api"}}}`, req(), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := mustCompile(t, onePolicy("ALLOW", anyJS, c.principal))
			if got := e.Evaluate(c.in); got.Allowed != c.want {
				t.Fatalf("got %+v, want allowed=%v", got, c.want)
			}
		})
	}
}

func TestActions(t *testing.T) {
	matching := `{"destination_port":8080}`
	other := `{"destination_port":1}`
	cases := []struct {
		action, perm     string
		allowed, matched bool
	}{
		{"ALLOW", matching, true, true},
		{"ALLOW", other, false, false},
		{"DENY", matching, false, true},
		{"DENY", other, true, false},
		{"LOG", matching, true, true},
		{"LOG", other, true, false},
	}
	for _, c := range cases {
		e := mustCompile(t, onePolicy(c.action, c.perm, anyJS))
		got := e.Evaluate(req())
		if got.Allowed != c.allowed || got.Matched != c.matched || got.Action.String() != c.action {
			t.Errorf("%s %s: got %+v", c.action, c.perm, got)
		}
		if c.matched && got.Policy != "p" {
			t.Errorf("%s: policy %q, want p", c.action, got.Policy)
		}
	}
	// No policies: ALLOW denies everything, DENY allows everything.
	if got := mustCompile(t, `{"action":"ALLOW"}`).Evaluate(req()); got.Allowed {
		t.Errorf("empty ALLOW allowed: %+v", got)
	}
	if got := mustCompile(t, `{"action":"DENY"}`).Evaluate(req()); !got.Allowed {
		t.Errorf("empty DENY denied: %+v", got)
	}
	// A nil Attributes is an empty connection, not a panic.
	if got := mustCompile(t, `{"action":"DENY"}`).Evaluate(nil); !got.Allowed {
		t.Errorf("nil attributes: %+v", got)
	}
}

func TestPolicyOrderAndLogic(t *testing.T) {
	e := mustCompile(t, `{"action":"DENY","policies":{
	  "z-port":{"permissions":[{"destination_port":8080}],"principals":[{"any":true}]},
	  "a-port":{"permissions":[{"destination_port":8080}],"principals":[{"any":true}]},
	  "m-never":{"permissions":[{"destination_port":1}],"principals":[{"any":true}]}}}`)
	if got := e.Evaluate(req()); got.Policy != "a-port" || got.Allowed {
		t.Fatalf("got %+v, want the first sorted matching policy a-port", got)
	}
	// Permissions OR, principals OR, AND between them.
	e = mustCompile(t, `{"action":"ALLOW","policies":{"p":{
	  "permissions":[{"destination_port":1},{"destination_port":8080}],
	  "principals":[{"remote_ip":{"address_prefix":"11.0.0.0","prefix_len":8}},{"filter_state":{"key":"io.istio.peer_principal","string_match":{"exact":"`+bob+`"}}}]}}}`)
	if got := e.Evaluate(req()); got.Allowed {
		t.Fatalf("no principal matches but allowed: %+v", got)
	}
	r := req()
	r.PeerPrincipal = bob
	if got := e.Evaluate(r); !got.Allowed {
		t.Fatalf("bob on 8080 denied: %+v", got)
	}
	r.DestinationPort = 2
	if got := e.Evaluate(r); got.Allowed {
		t.Fatalf("bob on port 2 allowed: %+v", got)
	}
}

func TestRefused(t *testing.T) {
	cases := []struct{ js, want string }{
		{`{"action":"ALLOW","policies":{"p":{"permissions":[{"any":true}],"principals":[{"any":true}],"condition":{"const_expr":{"bool_value":true}}}}}`, `policies["p"].condition: field is not supported`},
		{onePolicy("ALLOW", `{"requested_server_name":{"exact":"a"}}`, anyJS), `policies["p"].permissions[0].requested_server_name: field is not supported`},
		{onePolicy("ALLOW", `{"destination_port_range":{"start":1,"end":2}}`, anyJS), `destination_port_range: field is not supported`},
		{onePolicy("ALLOW", `{"metadata":{"filter":"f","path":[{"key":"k"}],"value":{"present_match":true}}}`, anyJS), `permissions[0].metadata: field is not supported`},
		{onePolicy("ALLOW", `{"not_rule":{"and_rules":{"rules":[{"requested_server_name":{"exact":"a"}}]}}}`, anyJS), `permissions[0].not_rule.and_rules.rules[0].requested_server_name`},
		{onePolicy("ALLOW", anyJS, `{"filter_state":{"key":"other","string_match":{"exact":"a"}}}`), `principals[0].filter_state.key: filter state key "other" is not supported`},
		{onePolicy("ALLOW", anyJS, `{"header":{"name":":scheme","string_match":{"exact":"https"}}}`), `principals[0].header.name: pseudo-header ":scheme"`},
		{onePolicy("ALLOW", anyJS, `{"header":{"name":"x","exact_match":"a"}}`), `principals[0].header.exact_match: field is not supported`},
		{onePolicy("ALLOW", anyJS, `{"remote_ip":{"address_prefix":"10.0.0.0","prefix_len":33}}`), `principals[0].remote_ip.prefix_len: 33 is longer`},
		{onePolicy("ALLOW", anyJS, `{"remote_ip":{"address_prefix":"nope","prefix_len":8}}`), `principals[0].remote_ip.address_prefix`},
		{onePolicy("ALLOW", `{"url_path":{"path":{"safe_regex":{"regex":"("}}}}`, anyJS), `permissions[0].url_path.path.safe_regex.regex: invalid RE2 regex`},
		{onePolicy("ALLOW", `{"url_path":{"path":{"safe_regex":{"regex":"a"},"ignore_case":true}}}`, anyJS), `ignore_case may not be combined`},
		{onePolicy("ALLOW", `{"url_path":{"path":{"safe_regex":{"regex":"a{1000}{1000}"}}}}`, anyJS), `regex`},
		{`{"action":"ALLOW","audit_logging_options":{"audit_condition":"ON_DENY"}}`, `audit_logging_options: field is not supported`},
		{onePolicy("ALLOW", `{"any":false}`, anyJS), `invalid`},
		{`{"action":"ALLOW","policies":{"p":{"permissions":[],"principals":[{"any":true}]}}}`, `invalid`},
	}
	for _, c := range cases {
		_, err := Compile(mustParse(t, c.js))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n got error %v\nwant one containing %q", c.js, err, c.want)
		}
	}
	if _, err := Compile(nil); err == nil {
		t.Error("nil config accepted")
	}
}

func TestDeepNestingRefused(t *testing.T) {
	perm := `{"destination_port":1}`
	for range 40 {
		perm = `{"not_rule":` + perm + `}`
	}
	if _, err := Compile(mustParse(t, onePolicy("ALLOW", perm, anyJS))); err == nil || !strings.Contains(err.Error(), "nesting") {
		t.Fatalf("got %v, want a nesting error", err)
	}
}
