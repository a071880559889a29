package waypointxds

import (
	"strings"
	"testing"
)

const (
	reviewsHTTP = "inbound-vip|9080|http|reviews.shop.svc.cluster.local"
	reviewsTCP  = "inbound-vip|3306|tcp|reviews.shop.svc.cluster.local"
	ratingsHTTP = "inbound-vip|9080|http|ratings.shop.svc.cluster.local"
	alice       = "spiffe://cluster.local/ns/shop/sa/alice"
	bob         = "spiffe://cluster.local/ns/bank/sa/bob"
	carol       = "spiffe://cluster.local/ns/other/sa/carol"
)

// authzState: waypoint shop/waypoint serving reviews (HTTP 9080, TCP 3306)
// and ratings (HTTP 9080), plus policies.
func authzState(t *testing.T, policies ...string) *fakeState {
	t.Helper()
	st := newState().ns("shop", LabelUseWaypoint, "waypoint").ns("istio-system").
		waypoint("shop", "waypoint", "").waypoint("shop", "second", "")
	st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""), port("mysql", 3306, ""))
	st.service("shop", "ratings", "10.96.0.11", nil, port("http", 9080, ""))
	st.service("shop", "elsewhere", "10.96.0.12", []string{LabelUseWaypoint, "second"}, port("http", 9080, ""))
	for _, p := range policies {
		st.policy(t, p)
	}
	return st
}

func gatewayPolicy(name, action, rules string) string {
	return `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: ` + name + `}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: ` + action + `
` + rules
}

func servicePolicy(name, svc, action, rules string) string {
	return `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: ` + name + `}
spec:
  targetRefs: [{kind: Service, group: "", name: ` + svc + `}]
  action: ` + action + `
` + rules
}

func TestPrincipalAllow(t *testing.T) {
	st := authzState(t, gatewayPolicy("allow-alice", "ALLOW", `
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/alice"]}}]
`))
	res, rep := build(t, st, "shop", "waypoint")
	if !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("alice denied")
	}
	if authorize(t, res, reviewsHTTP, request(bob, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("bob allowed")
	}
	if authorize(t, res, reviewsHTTP, request("", "10.1.0.1", 9080, "GET", "/")) {
		t.Error("unauthenticated allowed")
	}
	// L4 attributes apply to TCP chains too.
	if !authorize(t, res, reviewsTCP, request(alice, "10.1.0.1", 3306, "", "")) || authorize(t, res, reviewsTCP, request(bob, "10.1.0.1", 3306, "", "")) {
		t.Error("tcp chain: principal not enforced")
	}
	if len(rep.Policies) != 1 || rep.Policies[0].Name != "allow-alice" || len(rep.Policies[0].Problems) != 0 {
		t.Errorf("report %+v", rep.Policies)
	}
}

func TestNamespaceAllowAndNotNamespaces(t *testing.T) {
	st := authzState(t, gatewayPolicy("ns", "ALLOW", `
  rules:
  - from: [{source: {namespaces: ["shop", "ba*"], notNamespaces: ["bank"]}}]
  - from: [{source: {namespaces: ["*her"]}}]
`))
	res, _ := build(t, st, "shop", "waypoint")
	for peer, want := range map[string]bool{
		alice:                                    true,
		bob:                                      false, // ba* but notNamespaces bank
		"spiffe://cluster.local/ns/banking/sa/x": true,
		carol:                                    true, // *her
		"spiffe://cluster.local/ns/shopx/sa/x":   false,
		"spiffe://cluster.local/ns/shop/sa/x/y":  false,
		"":                                       false,
	} {
		if got := authorize(t, res, reviewsHTTP, request(peer, "10.1.0.1", 9080, "GET", "/")); got != want {
			t.Errorf("%q: allowed=%v, want %v", peer, got, want)
		}
	}
}

func TestMethodPathDeny(t *testing.T) {
	st := authzState(t, gatewayPolicy("deny-writes", "DENY", `
  rules:
  - to: [{operation: {methods: ["POST", "DELETE"], paths: ["/admin/*", "/exact"]}}]
  - to: [{operation: {notPaths: ["/public*"], ports: ["9999"]}}]
`))
	res, _ := build(t, st, "shop", "waypoint")
	for _, c := range []struct {
		method, path string
		want         bool
	}{
		{"GET", "/admin/x", true},
		{"POST", "/admin/x", false},
		{"POST", "/admin/x?q=1", false},
		{"DELETE", "/exact", false},
		{"POST", "/exact/more", true},
		{"POST", "/public", true},
	} {
		if got := authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, c.method, c.path)); got != c.want {
			t.Errorf("%s %s: allowed=%v, want %v", c.method, c.path, got, c.want)
		}
	}
	// On the TCP port, the first rule has only HTTP attributes: ignored,
	// it denies everything (Istio's DENY on TCP); reported.
	if authorize(t, res, reviewsTCP, request(alice, "10.1.0.1", 3306, "", "")) {
		t.Error("tcp: DENY rule with HTTP attributes did not deny")
	}
}

func TestHeaderAndWhenConditions(t *testing.T) {
	st := authzState(t, gatewayPolicy("when", "ALLOW", `
  rules:
  - when:
    - {key: "request.headers[X-User]", values: ["admin", "ops-*"]}
    - {key: source.ip, notValues: ["10.9.0.0/16"]}
    - {key: destination.port, values: ["9080"]}
    - {key: source.principal, values: ["*"]}
`))
	res, rep := build(t, st, "shop", "waypoint")
	for _, c := range []struct {
		src  string
		hdr  []string
		want bool
	}{
		{"10.1.0.1", []string{"X-User", "admin"}, true},
		{"10.1.0.1", []string{"X-User", "ops-1"}, true},
		{"10.1.0.1", []string{"X-User", "dev"}, false},
		{"10.1.0.1", nil, false},
		{"10.9.1.1", []string{"X-User", "admin"}, false},
	} {
		if got := authorize(t, res, reviewsHTTP, request(alice, c.src, 9080, "GET", "/", c.hdr...)); got != c.want {
			t.Errorf("%s %v: allowed=%v, want %v", c.src, c.hdr, got, c.want)
		}
	}
	// TCP: the ALLOW rule has an HTTP attribute: it allows nothing there.
	if authorize(t, res, reviewsTCP, request(alice, "10.1.0.1", 3306, "", "")) {
		t.Error("tcp: ALLOW rule with an HTTP condition allowed")
	}
	if len(rep.Policies) != 1 || !strings.Contains(strings.Join(rep.Policies[0].Problems, "\n"), "TCP port 3306") {
		t.Errorf("report %+v", rep.Policies)
	}
}

func TestHosts(t *testing.T) {
	st := authzState(t, gatewayPolicy("hosts", "ALLOW", `
  rules:
  - to: [{operation: {hosts: ["Reviews.shop.svc.cluster.local", "*.example.com"]}}]
`))
	res, _ := build(t, st, "shop", "waypoint")
	for host, want := range map[string]bool{
		"reviews.shop.svc.cluster.local":      true,
		"reviews.shop.svc.cluster.local:9080": true,
		"a.example.com:80":                    true,
		"reviews.shop.svc":                    false,
	} {
		r := request(alice, "10.1.0.1", 9080, "GET", "/")
		r.Host = host
		if got := authorize(t, res, reviewsHTTP, r); got != want {
			t.Errorf("host %q: allowed=%v, want %v", host, got, want)
		}
	}
}

func TestAllowNoMatchDenies(t *testing.T) {
	st := authzState(t, gatewayPolicy("allow-bank", "ALLOW", `
  rules:
  - from: [{source: {namespaces: ["bank"]}}]
`))
	res, _ := build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("request matching no ALLOW rule allowed")
	}
	if !authorize(t, res, reviewsHTTP, request(bob, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("bob denied")
	}
}

func TestEmptyAllowPolicies(t *testing.T) {
	// No rules: allows nothing.
	res, _ := build(t, authzState(t, gatewayPolicy("nothing", "ALLOW", "")), "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("ALLOW without rules allowed")
	}
	// One empty rule: allows everything.
	res, _ = build(t, authzState(t, gatewayPolicy("everything", "ALLOW", "  rules: [{}]\n")), "shop", "waypoint")
	if !authorize(t, res, reviewsHTTP, request("", "10.1.0.1", 9080, "GET", "/")) || !authorize(t, res, reviewsTCP, request("", "10.1.0.1", 3306, "", "")) {
		t.Error("ALLOW with an empty rule denied")
	}
	// DENY without rules denies nothing.
	res, _ = build(t, authzState(t, gatewayPolicy("deny-nothing", "DENY", "")), "shop", "waypoint")
	if !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("DENY without rules denied")
	}
}

func TestDenyBeforeAllow(t *testing.T) {
	st := authzState(t,
		gatewayPolicy("allow-all", "ALLOW", "  rules: [{}]\n"),
		gatewayPolicy("deny-bob", "DENY", "  rules: [{from: [{source: {principals: [\"cluster.local/ns/bank/sa/bob\"]}}]}]\n"))
	res, _ := build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(bob, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("bob allowed despite DENY")
	}
	if !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("alice denied")
	}
	var order []string
	for _, r := range chainRBAC(t, chain(t, res, reviewsHTTP)) {
		order = append(order, r.GetAction().String())
	}
	if strings.Join(order, ",") != "DENY,ALLOW" {
		t.Errorf("filter order %v", order)
	}
}

func TestAuditNeverBlocks(t *testing.T) {
	st := authzState(t, gatewayPolicy("audit", "AUDIT", "  rules: [{}]\n"))
	res, _ := build(t, st, "shop", "waypoint")
	rbacs := chainRBAC(t, chain(t, res, reviewsHTTP))
	if len(rbacs) != 1 || rbacs[0].GetAction().String() != "LOG" || len(rbacs[0].GetPolicies()) != 1 {
		t.Fatalf("audit rbac %v", rbacs)
	}
	if !authorize(t, res, reviewsHTTP, request("", "10.1.0.1", 9080, "GET", "/")) {
		t.Error("AUDIT blocked")
	}
}

func TestJWTUnsupported(t *testing.T) {
	allow := gatewayPolicy("jwt-allow", "ALLOW", `
  rules:
  - from: [{source: {requestPrincipals: ["issuer/subject"]}}]
  - from: [{source: {namespaces: ["bank"]}}]
`)
	res, rep := build(t, authzState(t, allow), "shop", "waypoint")
	// The JWT rule matches nothing; the other still allows bank.
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/", "Authorization", "Bearer x")) {
		t.Error("ALLOW JWT rule allowed")
	}
	if !authorize(t, res, reviewsHTTP, request(bob, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("other rule of the policy lost")
	}
	if len(rep.Policies) != 1 || !strings.Contains(strings.Join(rep.Policies[0].Problems, "\n"), "requestPrincipals") {
		t.Errorf("report %+v", rep.Policies)
	}
	deny := gatewayPolicy("jwt-deny", "DENY", `
  rules:
  - from: [{source: {requestPrincipals: ["issuer/subject"]}}]
    to: [{operation: {paths: ["/admin"]}}]
  - when: [{key: "request.auth.claims[group]", values: ["x"]}]
    to: [{operation: {paths: ["/ops"]}}]
`)
	res, rep = build(t, authzState(t, deny), "shop", "waypoint")
	// The JWT parts are ignored: the rules deny /admin and /ops for all.
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/admin")) ||
		authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/ops")) {
		t.Error("DENY JWT rule did not deny")
	}
	if !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/other")) {
		t.Error("DENY JWT rule denied more than its other attributes")
	}
	if n := strings.Count(strings.Join(rep.Policies[0].Problems, "\n"), "(JWT)"); n != 2 {
		t.Errorf("%d JWT problems reported: %+v", n, rep.Policies)
	}
}

func TestPolicyTargets(t *testing.T) {
	st := authzState(t,
		// Only ratings.
		servicePolicy("ratings-only", "ratings", "ALLOW", "  rules: [{from: [{source: {namespaces: [bank]}}]}]\n"),
		// Another waypoint's Gateway and Service: not applied here.
		strings.Replace(gatewayPolicy("second", "DENY", "  rules: [{}]\n"), "name: waypoint}", "name: second}", 1),
		servicePolicy("elsewhere", "elsewhere", "DENY", "  rules: [{}]\n"),
		// A selector policy is ztunnel's.
		`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: selector}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{}]
`,
		// The GatewayClass outside the root namespace: ignored.
		`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: shop, name: class-wrong-ns}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  action: DENY
  rules: [{}]
`)
	res, rep := build(t, st, "shop", "waypoint")
	if !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("reviews: a policy for something else applied")
	}
	if authorize(t, res, ratingsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) || !authorize(t, res, ratingsHTTP, request(bob, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("ratings: its policy not applied")
	}
	if len(rep.Policies) != 1 || rep.Policies[0].Name != "ratings-only" {
		t.Errorf("applied %+v", rep.Policies)
	}
	// The GatewayClass from the root namespace applies to every waypoint.
	st.policy(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: istio-system, name: mesh}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["10.66.0.0/16"]}}]}]
`)
	res, _ = build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.66.1.1", 9080, "GET", "/")) || !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("mesh-wide GatewayClass policy not applied")
	}
}

func TestInvalidPolicyFailsClosed(t *testing.T) {
	st := authzState(t, gatewayPolicy("bad-allow", "ALLOW", "  rules: [{from: [{source: {ipBlocks: [\"not-an-ip\"]}}]}]\n"))
	res, rep := build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("invalid ALLOW policy allowed")
	}
	if len(rep.Policies) != 1 || !strings.Contains(rep.Policies[0].Problems[0], "invalid") {
		t.Errorf("report %+v", rep.Policies)
	}
	st = authzState(t, gatewayPolicy("bad-deny", "DENY", "  rules: [{to: [{operation: {ports: [\"99999\"]}}]}]\n"))
	res, _ = build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/")) {
		t.Error("invalid DENY policy did not deny")
	}
}

func TestTrustDomainAlias(t *testing.T) {
	st := authzState(t, gatewayPolicy("td", "ALLOW", `
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/alice"]}}]
`))
	opts := testOptions()
	opts.TrustDomain = "example.org"
	res, _, err := Build(st, Waypoint{"shop", "waypoint"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	validateAll(t, res)
	for peer, want := range map[string]bool{
		"spiffe://example.org/ns/shop/sa/alice":   true,
		"spiffe://cluster.local/ns/shop/sa/alice": true,
		"spiffe://other.org/ns/shop/sa/alice":     false,
	} {
		if got := authorize(t, res, reviewsHTTP, request(peer, "10.1.0.1", 9080, "GET", "/")); got != want {
			t.Errorf("%s: allowed=%v, want %v", peer, got, want)
		}
	}
}

// Istio's path templates: {*} is one non-empty segment, {**} the rest of
// the path (zero or more segments), both as whole segments; anything else
// is refused (the rule is reported and fails closed).
func TestPathTemplates(t *testing.T) {
	st := authzState(t, gatewayPolicy("templates", "DENY", `
  rules:
  - to: [{operation: {paths: ["/users/{*}/secrets", "/files/{**}"]}}]
`))
	res, rep := build(t, st, "shop", "waypoint")
	for path, denied := range map[string]bool{
		"/users/ann/secrets":     true,
		"/users/a.b~c/secrets":   true,
		"/users//secrets":        false, // {*} needs a non-empty segment
		"/users/ann/bob/secrets": false, // ... and only one
		"/users/ann/secretsx":    false,
		"/files/":                true,
		"/files/a/b/c.txt":       true,
		"/files":                 false,
		"/filesx/a":              false,
		"/users/ann/secrets?x=1": true, // the query is not part of the path
	} {
		if got := !authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", path)); got != denied {
			t.Errorf("%s: denied=%v, want %v", path, got, denied)
		}
	}
	for _, p := range rep.Policies {
		for _, m := range p.Problems {
			if strings.Contains(m, "template") {
				t.Errorf("valid templates reported: %v", m)
			}
		}
	}

	for _, bad := range []string{"/a/{**}/b", "/a{*}", "/a/{*}x", "/a/{x}", "a/{*}", "/a/{*}*"} {
		if _, err := pathTemplateRegex(bad); err == nil {
			t.Errorf("template %q accepted", bad)
		}
	}
	st = authzState(t, gatewayPolicy("bad", "ALLOW", `
  rules:
  - to: [{operation: {paths: ["/a/{**}/b"]}}]
`))
	res, rep = build(t, st, "shop", "waypoint")
	if authorize(t, res, reviewsHTTP, request(alice, "10.1.0.1", 9080, "GET", "/a/x/b")) {
		t.Error("an ALLOW rule with an invalid template allowed a request")
	}
	if len(rep.Policies) != 1 || !strings.Contains(strings.Join(rep.Policies[0].Problems, " "), "{**} must be the last segment") {
		t.Errorf("invalid template not reported: %+v", rep.Policies)
	}
}
