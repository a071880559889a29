package authz

import (
	"net/netip"
	"strings"
	"testing"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// Proto builders.

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}
func prefix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s}}
}
func suffix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: s}}
}
func presence() *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Presence_{Presence: &workloadv1.StringMatch_Presence{}}}
}
func sms(ms ...*workloadv1.StringMatch) []*workloadv1.StringMatch { return ms }

func cidr(s string) *workloadv1.IPBlock {
	p := netip.MustParsePrefix(s)
	return &workloadv1.IPBlock{Address: p.Addr().AsSlice(), Length: uint32(p.Bits())}
}
func cidrs(ss ...string) []*workloadv1.IPBlock {
	var out []*workloadv1.IPBlock
	for _, s := range ss {
		out = append(out, cidr(s))
	}
	return out
}

func group(rules ...*workloadv1.Rules) *workloadv1.Group { return &workloadv1.Group{Rules: rules} }
func rules(ms ...*workloadv1.Match) *workloadv1.Rules    { return &workloadv1.Rules{Matches: ms} }

func policy(ns, name string, scope workloadv1.AuthorizationScope, action workloadv1.AuthorizationAction, groups ...*workloadv1.Group) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: ns, Scope: scope, Action: action, Groups: groups}
}

const (
	global   = workloadv1.AuthorizationScope_GLOBAL
	nsScope  = workloadv1.AuthorizationScope_NAMESPACE
	selected = workloadv1.AuthorizationScope_WORKLOAD_SELECTOR
	allow    = workloadv1.AuthorizationAction_ALLOW
	deny     = workloadv1.AuthorizationAction_DENY
)

// dest is the destination workload of the test connections: namespace
// "app", selecting policy "app/selected".
var dest = &workloadv1.Workload{
	Uid: "Kubernetes//Pod/app/web-1", Name: "web-1", Namespace: "app",
	Addresses:             [][]byte{netip.MustParseAddr("10.0.1.7").AsSlice()},
	AuthorizationPolicies: []string{"app/selected"},
}

// mtlsConn is cluster.local/ns/foo/sa/bar at 10.0.0.5 -> 10.0.1.7:8080.
func mtlsConn() ConnInfo {
	return ConnInfo{
		SourceIdentity:  identity.Identity{TrustDomain: "cluster.local", Namespace: "foo", ServiceAccount: "bar"},
		SourceIP:        netip.MustParseAddr("10.0.0.5"),
		DestinationIP:   netip.MustParseAddr("10.0.1.7"),
		DestinationPort: 8080,
		Destination:     dest,
	}
}

func plainConn() ConnInfo {
	c := mtlsConn()
	c.SourceIdentity = identity.Identity{}
	return c
}

func v6Conn() ConnInfo {
	c := mtlsConn()
	c.SourceIP = netip.MustParseAddr("fd00::5")
	c.DestinationIP = netip.MustParseAddr("fd00:1::7")
	return c
}

// TestMatchFields checks every Match field, its not_ variant and every
// StringMatch kind, through a single DENY policy: denied iff it matches.
func TestMatchFields(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match *workloadv1.Match
		conn  ConnInfo
		want  bool // matches
	}{
		{"empty match matches everything", &workloadv1.Match{}, mtlsConn(), true},
		{"empty match matches plaintext", &workloadv1.Match{}, plainConn(), true},

		// namespaces
		{"namespace exact", &workloadv1.Match{Namespaces: sms(exact("foo"))}, mtlsConn(), true},
		{"namespace exact other", &workloadv1.Match{Namespaces: sms(exact("fo"))}, mtlsConn(), false},
		{"namespace prefix", &workloadv1.Match{Namespaces: sms(prefix("fo"))}, mtlsConn(), true},
		{"namespace prefix other", &workloadv1.Match{Namespaces: sms(prefix("oo"))}, mtlsConn(), false},
		{"namespace suffix", &workloadv1.Match{Namespaces: sms(suffix("oo"))}, mtlsConn(), true},
		{"namespace suffix other", &workloadv1.Match{Namespaces: sms(suffix("fo"))}, mtlsConn(), false},
		{"namespace presence", &workloadv1.Match{Namespaces: sms(presence())}, mtlsConn(), true},
		{"namespace values OR-ed", &workloadv1.Match{Namespaces: sms(exact("x"), exact("foo"))}, mtlsConn(), true},
		{"namespace plaintext never matches", &workloadv1.Match{Namespaces: sms(presence())}, plainConn(), false},
		{"namespace plaintext empty prefix", &workloadv1.Match{Namespaces: sms(prefix(""))}, plainConn(), false},
		{"not_namespaces hit", &workloadv1.Match{NotNamespaces: sms(exact("foo"))}, mtlsConn(), false},
		{"not_namespaces miss", &workloadv1.Match{NotNamespaces: sms(exact("x"))}, mtlsConn(), true},
		{"not_namespaces any of values", &workloadv1.Match{NotNamespaces: sms(exact("x"), suffix("oo"))}, mtlsConn(), false},
		{"not_namespaces plaintext", &workloadv1.Match{NotNamespaces: sms(presence())}, plainConn(), true},

		// principals
		{"principal exact", &workloadv1.Match{Principals: sms(exact("cluster.local/ns/foo/sa/bar"))}, mtlsConn(), true},
		{"principal with scheme never matches", &workloadv1.Match{Principals: sms(exact("spiffe://cluster.local/ns/foo/sa/bar"))}, mtlsConn(), false},
		{"principal other sa", &workloadv1.Match{Principals: sms(exact("cluster.local/ns/foo/sa/baz"))}, mtlsConn(), false},
		{"principal prefix", &workloadv1.Match{Principals: sms(prefix("cluster.local/ns/foo/"))}, mtlsConn(), true},
		{"principal suffix (serviceAccounts)", &workloadv1.Match{Principals: sms(suffix("/ns/foo/sa/bar"))}, mtlsConn(), true},
		{"principal suffix other", &workloadv1.Match{Principals: sms(suffix("/ns/foo/sa/ba"))}, mtlsConn(), false},
		{"principal presence", &workloadv1.Match{Principals: sms(presence())}, mtlsConn(), true},
		{"principal plaintext never matches", &workloadv1.Match{Principals: sms(presence())}, plainConn(), false},
		{"not_principals presence: mTLS", &workloadv1.Match{NotPrincipals: sms(presence())}, mtlsConn(), false},
		{"not_principals presence: plaintext (STRICT)", &workloadv1.Match{NotPrincipals: sms(presence())}, plainConn(), true},
		{"not_principals other", &workloadv1.Match{NotPrincipals: sms(exact("td/ns/x/sa/y"))}, mtlsConn(), true},
		{"not_principals self", &workloadv1.Match{NotPrincipals: sms(exact("td/ns/x/sa/y"), prefix("cluster.local/"))}, mtlsConn(), false},

		// source IPs
		{"source cidr", &workloadv1.Match{SourceIps: cidrs("10.0.0.0/24")}, mtlsConn(), true},
		{"source single ip", &workloadv1.Match{SourceIps: cidrs("10.0.0.5/32")}, mtlsConn(), true},
		{"source other cidr", &workloadv1.Match{SourceIps: cidrs("10.0.1.0/24")}, mtlsConn(), false},
		{"source cidrs OR-ed", &workloadv1.Match{SourceIps: cidrs("192.168.0.0/16", "10.0.0.0/8")}, mtlsConn(), true},
		{"source /0", &workloadv1.Match{SourceIps: cidrs("0.0.0.0/0")}, mtlsConn(), true},
		{"source v6 block vs v4 ip", &workloadv1.Match{SourceIps: cidrs("::/0")}, mtlsConn(), false},
		{"source v6", &workloadv1.Match{SourceIps: cidrs("fd00::/64")}, v6Conn(), true},
		{"source v6 other", &workloadv1.Match{SourceIps: cidrs("fd01::/64")}, v6Conn(), false},
		{"source v4-mapped block", &workloadv1.Match{SourceIps: []*workloadv1.IPBlock{{
			Address: netip.MustParseAddr("::ffff:10.0.0.0").AsSlice(), Length: 120}}}, mtlsConn(), true},
		{"source plaintext still matches IPs", &workloadv1.Match{SourceIps: cidrs("10.0.0.0/24")}, plainConn(), true},
		{"not_source hit", &workloadv1.Match{NotSourceIps: cidrs("10.0.0.0/24")}, mtlsConn(), false},
		{"not_source miss", &workloadv1.Match{NotSourceIps: cidrs("10.9.0.0/16")}, mtlsConn(), true},
		{"source and not_source", &workloadv1.Match{SourceIps: cidrs("10.0.0.0/16"), NotSourceIps: cidrs("10.0.0.5/32")}, mtlsConn(), false},
		{"unknown source ip", &workloadv1.Match{SourceIps: cidrs("0.0.0.0/0")}, ConnInfo{Destination: dest}, false},
		{"unknown source ip, not", &workloadv1.Match{NotSourceIps: cidrs("0.0.0.0/0")}, ConnInfo{Destination: dest}, true},

		// destination IPs
		{"destination cidr", &workloadv1.Match{DestinationIps: cidrs("10.0.1.0/24")}, mtlsConn(), true},
		{"destination other", &workloadv1.Match{DestinationIps: cidrs("10.0.0.0/24")}, mtlsConn(), false},
		{"destination v6", &workloadv1.Match{DestinationIps: cidrs("fd00:1::7/128")}, v6Conn(), true},
		{"not_destination hit", &workloadv1.Match{NotDestinationIps: cidrs("10.0.1.7/32")}, mtlsConn(), false},
		{"not_destination miss", &workloadv1.Match{NotDestinationIps: cidrs("10.0.0.0/24")}, mtlsConn(), true},

		// destination ports
		{"port", &workloadv1.Match{DestinationPorts: []uint32{8080}}, mtlsConn(), true},
		{"port other", &workloadv1.Match{DestinationPorts: []uint32{9090}}, mtlsConn(), false},
		{"ports OR-ed", &workloadv1.Match{DestinationPorts: []uint32{9090, 8080}}, mtlsConn(), true},
		{"not_port hit", &workloadv1.Match{NotDestinationPorts: []uint32{9090, 8080}}, mtlsConn(), false},
		{"not_port miss", &workloadv1.Match{NotDestinationPorts: []uint32{9090}}, mtlsConn(), true},
		{"port truncation does not alias", &workloadv1.Match{DestinationPorts: []uint32{65536 + 8080}}, mtlsConn(), false},

		// fields AND-ed
		{"namespace and port", &workloadv1.Match{Namespaces: sms(exact("foo")), DestinationPorts: []uint32{8080}}, mtlsConn(), true},
		{"namespace and wrong port", &workloadv1.Match{Namespaces: sms(exact("foo")), DestinationPorts: []uint32{9090}}, mtlsConn(), false},
		{"all fields", &workloadv1.Match{
			Namespaces: sms(exact("foo")), NotNamespaces: sms(exact("kube-system")),
			Principals: sms(suffix("/sa/bar")), NotPrincipals: sms(exact("cluster.local/ns/foo/sa/admin")),
			SourceIps: cidrs("10.0.0.0/8"), NotSourceIps: cidrs("10.0.0.6/32"),
			DestinationIps: cidrs("10.0.1.0/24"), NotDestinationIps: cidrs("10.0.1.8/32"),
			DestinationPorts: []uint32{8080}, NotDestinationPorts: []uint32{15008},
		}, mtlsConn(), true},

		// malformed values match nothing
		{"string match without type", &workloadv1.Match{Namespaces: sms(&workloadv1.StringMatch{})}, mtlsConn(), false},
		{"not: string match without type", &workloadv1.Match{NotNamespaces: sms(&workloadv1.StringMatch{})}, mtlsConn(), true},
		{"ip block too long", &workloadv1.Match{SourceIps: []*workloadv1.IPBlock{{Address: []byte{10, 0, 0, 5}, Length: 33}}}, mtlsConn(), false},
		{"ip block bad address", &workloadv1.Match{SourceIps: []*workloadv1.IPBlock{{Address: []byte{10, 0, 0}, Length: 0}}}, mtlsConn(), false},
		{"port 0", &workloadv1.Match{DestinationPorts: []uint32{0}}, ConnInfo{Destination: dest}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy("app", "p", nsScope, deny, group(rules(tc.match)))
			d := Evaluate(tc.conn, []*workloadv1.Authorization{p})
			if matched := !d.Allowed; matched != tc.want {
				t.Fatalf("matched = %v, want %v (%v)", matched, tc.want, d)
			}
			if tc.want && (d.Reason != DenyMatched || d.Policy != "app/p") {
				t.Errorf("decision %+v", d)
			}
		})
	}
}

// TestStructure checks how groups, rules and matches combine.
func TestStructure(t *testing.T) {
	nsFoo := &workloadv1.Match{Namespaces: sms(exact("foo"))}
	nsX := &workloadv1.Match{Namespaces: sms(exact("x"))}
	port8080 := &workloadv1.Match{DestinationPorts: []uint32{8080}}
	port9090 := &workloadv1.Match{DestinationPorts: []uint32{9090}}
	for _, tc := range []struct {
		name   string
		groups []*workloadv1.Group
		want   bool
	}{
		{"no groups match nothing", nil, false},
		{"group without rules matches everything", []*workloadv1.Group{group()}, true},
		{"rules without matches match (as Istio)", []*workloadv1.Group{group(rules())}, true},
		{"rules AND-ed: both", []*workloadv1.Group{group(rules(nsFoo), rules(port8080))}, true},
		{"rules AND-ed: one fails", []*workloadv1.Group{group(rules(nsFoo), rules(port9090))}, false},
		{"matches OR-ed", []*workloadv1.Group{group(rules(nsX, port8080))}, true},
		{"matches OR-ed: none", []*workloadv1.Group{group(rules(nsX, port9090))}, false},
		{"groups OR-ed", []*workloadv1.Group{group(rules(nsX)), group(rules(port8080))}, true},
		{"groups OR-ed: none", []*workloadv1.Group{group(rules(nsX)), group(rules(port9090))}, false},
		{"nil group entries are harmless", []*workloadv1.Group{nil}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, action := range []workloadv1.AuthorizationAction{allow, deny} {
				p := policy("app", "p", nsScope, action, tc.groups...)
				d := Evaluate(mtlsConn(), []*workloadv1.Authorization{p})
				matched := d.Allowed == (action == allow)
				if matched != tc.want {
					t.Errorf("%v: matched = %v, want %v (%v)", action, matched, tc.want, d)
				}
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	matchAll := group()
	fromFoo := group(rules(&workloadv1.Match{Namespaces: sms(exact("foo"))}))
	fromX := group(rules(&workloadv1.Match{Namespaces: sms(exact("x"))}))
	withPrincipal := group(rules(&workloadv1.Match{Principals: sms(presence())}))
	for _, tc := range []struct {
		name     string
		conn     ConnInfo
		policies []*workloadv1.Authorization
		want     Decision
	}{
		{"no policies allow", mtlsConn(), nil,
			Decision{Allowed: true, Reason: NoAllowPolicy}},
		{"Istio allow-nothing: ALLOW without rules", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "allow-nothing", nsScope, allow)},
			Decision{Reason: NoAllowMatched, AllowPolicies: 1}},
		{"Istio deny-all: DENY with one empty rule", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "deny-all", nsScope, deny, matchAll)},
			Decision{Reason: DenyMatched, Policy: "app/deny-all"}},
		{"Istio allow-all: ALLOW with one empty rule", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "allow-all", nsScope, allow, matchAll)},
			Decision{Allowed: true, Reason: AllowMatched, Policy: "app/allow-all", AllowPolicies: 1}},
		{"DENY without rules denies nothing", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "d", nsScope, deny)},
			Decision{Allowed: true, Reason: NoAllowPolicy}},
		{"DENY beats a matching ALLOW", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "a", nsScope, allow, matchAll), policy("app", "d", nsScope, deny, fromFoo)},
			Decision{Reason: DenyMatched, Policy: "app/d"}},
		{"non-matching DENY, matching ALLOW", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "d", nsScope, deny, fromX), policy("app", "a", nsScope, allow, fromFoo)},
			Decision{Allowed: true, Reason: AllowMatched, Policy: "app/a", AllowPolicies: 1}},
		{"non-matching DENY only", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "d", nsScope, deny, fromX)},
			Decision{Allowed: true, Reason: NoAllowPolicy}},
		{"ALLOW that does not match denies", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "a", nsScope, allow, fromX)},
			Decision{Reason: NoAllowMatched, AllowPolicies: 1}},
		{"any ALLOW suffices; first match named", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "a1", nsScope, allow, fromX), policy("app", "a2", nsScope, allow, fromFoo), policy("app", "a3", nsScope, allow, matchAll)},
			Decision{Allowed: true, Reason: AllowMatched, Policy: "app/a2", AllowPolicies: 3}},
		{"ALLOW with principals denies plaintext", plainConn(),
			[]*workloadv1.Authorization{policy("app", "a", nsScope, allow, withPrincipal)},
			Decision{Reason: NoAllowMatched, AllowPolicies: 1}},
		{"ALLOW with principals allows mTLS", mtlsConn(),
			[]*workloadv1.Authorization{policy("app", "a", nsScope, allow, withPrincipal)},
			Decision{Allowed: true, Reason: AllowMatched, Policy: "app/a", AllowPolicies: 1}},
		{"nil policies ignored", mtlsConn(), []*workloadv1.Authorization{nil},
			Decision{Allowed: true, Reason: NoAllowPolicy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Evaluate(tc.conn, tc.policies); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestScope: a policy only counts for the workloads its scope covers.
func TestScope(t *testing.T) {
	allowNothing := func(ns, name string, scope workloadv1.AuthorizationScope) []*workloadv1.Authorization {
		return []*workloadv1.Authorization{policy(ns, name, scope, allow)}
	}
	for _, tc := range []struct {
		name     string
		dest     *workloadv1.Workload
		policies []*workloadv1.Authorization
		applies  bool
	}{
		{"GLOBAL applies everywhere", dest, allowNothing("istio-system", "g", global), true},
		{"NAMESPACE of the workload", dest, allowNothing("app", "n", nsScope), true},
		{"NAMESPACE of another namespace", dest, allowNothing("other", "n", nsScope), false},
		{"WORKLOAD_SELECTOR listed", dest, allowNothing("app", "selected", selected), true},
		{"WORKLOAD_SELECTOR not listed", dest, allowNothing("app", "other", selected), false},
		{"WORKLOAD_SELECTOR same name other namespace", dest, allowNothing("other", "selected", selected), false},
		{"WORKLOAD_SELECTOR name prefix is not a match", dest, allowNothing("app", "selecte", selected), false},
		{"root-namespace selector policy listed", &workloadv1.Workload{Namespace: "app",
			AuthorizationPolicies: []string{"istio-system/sel"}}, allowNothing("istio-system", "sel", selected), true},
		{"no destination: GLOBAL", nil, allowNothing("istio-system", "g", global), true},
		{"no destination: NAMESPACE", nil, allowNothing("app", "n", nsScope), false},
		{"no destination: selector", nil, allowNothing("app", "selected", selected), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mtlsConn()
			c.Destination = tc.dest
			d := Evaluate(c, tc.policies)
			if d.Allowed == tc.applies {
				t.Errorf("applies = %v, want %v (%v)", !d.Allowed, tc.applies, d)
			}
			if Applies(tc.policies[0], tc.dest) != tc.applies {
				t.Error("Applies disagrees")
			}
		})
	}
}

func TestDecisionString(t *testing.T) {
	for _, tc := range []struct {
		d    Decision
		want string
	}{
		{Decision{Allowed: true, Reason: NoAllowPolicy}, "allow (no_allow_policy)"},
		{Decision{Reason: DenyMatched, Policy: "ns/p"}, "deny (deny_matched ns/p)"},
		{Decision{Reason: NoAllowMatched, AllowPolicies: 2}, "deny (no_allow_matched)"},
		{Decision{Allowed: true, Reason: AllowMatched, Policy: "ns/a"}, "allow (allow_matched ns/a)"},
	} {
		if got := tc.d.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.d, got, tc.want)
		}
	}
	if s := Reason(42).String(); s != "reason(42)" {
		t.Errorf("unknown reason: %q", s)
	}
}

func TestValidate(t *testing.T) {
	ok := policy("ns", "p", selected, deny, group(rules(&workloadv1.Match{
		Namespaces: sms(exact("a"), prefix("b"), suffix("c"), presence()), NotPrincipals: sms(presence()),
		SourceIps: cidrs("10.0.0.0/8", "fd00::/8"), NotDestinationIps: cidrs("10.0.0.1/32"),
		DestinationPorts: []uint32{1, 65535}, NotDestinationPorts: []uint32{80},
	})))
	if err := Validate(ok); err != nil {
		t.Fatalf("valid policy: %v", err)
	}
	withMatch := func(m *workloadv1.Match) *workloadv1.Authorization {
		return policy("ns", "p", selected, deny, group(rules(m)))
	}
	for _, tc := range []struct {
		name string
		p    *workloadv1.Authorization
		want string
	}{
		{"nil", nil, "nil authorization"},
		{"no name", policy("ns", "", selected, deny), "missing name"},
		{"no namespace", policy("", "p", selected, deny), "missing name"},
		{"unknown scope", policy("ns", "p", 7, deny), "unknown scope 7"},
		{"unknown action", policy("ns", "p", selected, 5), "unknown action 5"},
		{"nil group", policy("ns", "p", selected, deny, nil), "groups[0]: nil"},
		{"nil rules", policy("ns", "p", selected, deny, group(nil)), "groups[0].rules[0]: nil"},
		{"nil match", withMatch(nil), "matches[0].nil"},
		{"untyped string match", withMatch(&workloadv1.Match{NotPrincipals: sms(&workloadv1.StringMatch{})}), "not_principals[0]: no match type"},
		{"3-byte address", withMatch(&workloadv1.Match{SourceIps: []*workloadv1.IPBlock{{Address: []byte{1, 2, 3}, Length: 8}}}), "source_ips[0]: bad IP block"},
		{"v4 length 33", withMatch(&workloadv1.Match{NotSourceIps: []*workloadv1.IPBlock{{Address: []byte{1, 2, 3, 4}, Length: 33}}}), "not_source_ips[0]"},
		{"v6 length 129", withMatch(&workloadv1.Match{DestinationIps: []*workloadv1.IPBlock{{Address: make([]byte, 16), Length: 129}}}), "destination_ips[0]"},
		{"port 0", withMatch(&workloadv1.Match{DestinationPorts: []uint32{0}}), "destination_ports[0]: bad port 0"},
		{"port 65536", withMatch(&workloadv1.Match{NotDestinationPorts: []uint32{80, 65536}}), "not_destination_ports[1]: bad port 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}
