package ambient

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

const (
	strictMode     = securityapi.PeerAuthentication_MutualTLS_STRICT
	permissiveMode = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
	unsetMode      = securityapi.PeerAuthentication_MutualTLS_UNSET
	disableMode    = securityapi.PeerAuthentication_MutualTLS_DISABLE
)

func denyFromNamespace(ns string) *securityapi.AuthorizationPolicy {
	return &securityapi.AuthorizationPolicy{
		Action: securityapi.AuthorizationPolicy_DENY,
		Rules:  []*securityapi.Rule{{From: []*securityapi.Rule_From{{Source: &securityapi.Source{Namespaces: []string{ns}}}}}},
	}
}

func from(src *securityapi.Source) []*securityapi.Rule_From {
	return []*securityapi.Rule_From{{Source: src}}
}

func to(op *securityapi.Operation) []*securityapi.Rule_To {
	return []*securityapi.Rule_To{{Operation: op}}
}

func selector(kv ...string) *typeapi.WorkloadSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &typeapi.WorkloadSelector{MatchLabels: m}
}

func exact(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Exact{Exact: s}}
}
func prefix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Prefix{Prefix: s}}
}
func suffix(s string) *workloadv1.StringMatch {
	return &workloadv1.StringMatch{MatchType: &workloadv1.StringMatch_Suffix{Suffix: s}}
}

func block(ip string, bits uint32) *workloadv1.IPBlock {
	return &workloadv1.IPBlock{Address: ipBytes(ip), Length: bits}
}

func group(rules ...*workloadv1.Rules) *workloadv1.Group { return &workloadv1.Group{Rules: rules} }
func rules(ms ...*workloadv1.Match) *workloadv1.Rules    { return &workloadv1.Rules{Matches: ms} }

func TestConvertAuthorizationPolicy(t *testing.T) {
	tests := []struct {
		name      string
		ns        string
		opts      Options
		spec      *securityapi.AuthorizationPolicy
		want      *workloadv1.Authorization // Name/Namespace filled in by the test
		noAuth    bool                      // no L4 policy at all
		reason    string
		waypoint  bool
		selector  map[string]string
		unenforce []string
	}{
		{
			name: "empty ALLOW in a namespace: scope NAMESPACE, no groups (allows nothing)",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Action: workloadv1.AuthorizationAction_ALLOW},
		},
		{
			name: "root namespace without selector is GLOBAL; allow-all rule",
			ns:   "istio-system",
			spec: &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{}}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_GLOBAL, Action: workloadv1.AuthorizationAction_ALLOW,
				Groups: []*workloadv1.Group{group()}},
		},
		{
			name:     "selector: WORKLOAD_SELECTOR",
			ns:       "istio-system",
			spec:     &securityapi.AuthorizationPolicy{Selector: selector("app", "web"), Action: securityapi.AuthorizationPolicy_DENY},
			want:     &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_WORKLOAD_SELECTOR, Action: workloadv1.AuthorizationAction_DENY},
			selector: map[string]string{"app": "web"},
		},
		{
			name: "empty selector is namespace-wide",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{Selector: &typeapi.WorkloadSelector{}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE},
		},
		{
			name: "full L4 rule: sources, operations, conditions, string matching",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{
				From: []*securityapi.Rule_From{
					{Source: &securityapi.Source{
						Principals:    []string{"cluster.local/ns/a/sa/b", "cluster.local/ns/a/*", "*/ns/a/sa/c", "*"},
						NotPrincipals: []string{"cluster.local/ns/a/sa/evil"},
						Namespaces:    []string{"a", "team-*"}, NotNamespaces: []string{"*-test"},
						IpBlocks: []string{"10.0.0.0/8", "192.168.1.7"}, NotIpBlocks: []string{"10.9.1.2/16", "fd00::/64"},
					}},
					{Source: &securityapi.Source{ServiceAccounts: []string{"other/sa1", "local"}, NotServiceAccounts: []string{"x/y"}}},
				},
				To: []*securityapi.Rule_To{{Operation: &securityapi.Operation{Ports: []string{"80", "443"}, NotPorts: []string{"8080"}}}},
				When: []*securityapi.Condition{
					{Key: "source.ip", Values: []string{"10.1.0.0/16"}, NotValues: []string{"10.1.2.3"}},
					{Key: "destination.port", Values: []string{"80"}},
					{Key: "destination.ip", NotValues: []string{"10.96.0.0/12"}},
					{Key: "source.namespace", Values: []string{"a"}},
					{Key: "source.principal", NotValues: []string{"cluster.local/ns/a/sa/evil"}},
				},
			}}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Groups: []*workloadv1.Group{group(
				rules(&workloadv1.Match{DestinationPorts: []uint32{80, 443}, NotDestinationPorts: []uint32{8080}}),
				rules(
					&workloadv1.Match{
						Principals:    []*workloadv1.StringMatch{exact("cluster.local/ns/a/sa/b"), prefix("cluster.local/ns/a/"), suffix("/ns/a/sa/c"), presence()},
						NotPrincipals: []*workloadv1.StringMatch{exact("cluster.local/ns/a/sa/evil")},
						Namespaces:    []*workloadv1.StringMatch{exact("a"), prefix("team-")},
						NotNamespaces: []*workloadv1.StringMatch{suffix("-test")},
						SourceIps:     []*workloadv1.IPBlock{block("10.0.0.0", 8), block("192.168.1.7", 32)},
						NotSourceIps:  []*workloadv1.IPBlock{block("10.9.0.0", 16), block("fd00::", 64)},
					},
					&workloadv1.Match{
						Principals:    []*workloadv1.StringMatch{suffix("/ns/other/sa/sa1"), suffix("/ns/ns/sa/local")},
						NotPrincipals: []*workloadv1.StringMatch{suffix("/ns/x/sa/y")},
					},
				),
				rules(&workloadv1.Match{SourceIps: []*workloadv1.IPBlock{block("10.1.0.0", 16)}, NotSourceIps: []*workloadv1.IPBlock{block("10.1.2.3", 32)}}),
				rules(&workloadv1.Match{DestinationPorts: []uint32{80}}),
				rules(&workloadv1.Match{NotDestinationIps: []*workloadv1.IPBlock{block("10.96.0.0", 12)}}),
				rules(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("a")}}),
				rules(&workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{exact("cluster.local/ns/a/sa/evil")}}),
			)}},
		},
		{
			name: "ALLOW with an L7 rule: that rule is dropped, the L4 one stays",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{
				{To: to(&securityapi.Operation{Methods: []string{"GET"}, Ports: []string{"80"}})},
				{From: from(&securityapi.Source{Namespaces: []string{"a"}})},
			}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Groups: []*workloadv1.Group{
				group(rules(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("a")}})),
			}},
			reason: ReasonPartiallyEnforced, waypoint: true, unenforce: []string{"methods"},
		},
		{
			name: "ALLOW with only L7 rules allows nothing at L4",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{
				{From: from(&securityapi.Source{RequestPrincipals: []string{"iss/sub"}})},
				{When: []*securityapi.Condition{{Key: "request.headers[x-user]", Values: []string{"admin"}}}},
				{To: to(&securityapi.Operation{Paths: []string{"/admin"}, Hosts: []string{"a.com"}})},
			}},
			want:   &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE},
			reason: ReasonPartiallyEnforced, waypoint: true,
			unenforce: []string{"hosts", "paths", "request.headers[x-user]", "requestPrincipals"},
		},
		{
			name: "DENY with L7 parts denies more broadly: L7 ignored",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{Action: securityapi.AuthorizationPolicy_DENY, Rules: []*securityapi.Rule{
				{
					From: from(&securityapi.Source{Namespaces: []string{"a"}, RequestPrincipals: []string{"*"}}),
					To:   to(&securityapi.Operation{Methods: []string{"DELETE"}, Ports: []string{"80"}}),
					When: []*securityapi.Condition{{Key: "request.auth.claims[group]", Values: []string{"x"}}},
				},
				{To: to(&securityapi.Operation{Paths: []string{"/admin"}})},
			}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Action: workloadv1.AuthorizationAction_DENY,
				Groups: []*workloadv1.Group{
					group(
						rules(&workloadv1.Match{DestinationPorts: []uint32{80}}),
						rules(&workloadv1.Match{Namespaces: []*workloadv1.StringMatch{exact("a")}}),
					),
					group(rules(&workloadv1.Match{})), // any port: denies everything
				}},
			reason: ReasonPartiallyEnforced, waypoint: true,
			unenforce: []string{"methods", "paths", "request.auth.claims[group]", "requestPrincipals"},
		},
		{
			name:   "remoteIpBlocks are L7 by default (ALLOW rule dropped)",
			ns:     "ns",
			spec:   &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{RemoteIpBlocks: []string{"1.2.3.4"}})}}},
			want:   &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE},
			reason: ReasonPartiallyEnforced, waypoint: true, unenforce: []string{"remoteIpBlocks"},
		},
		{
			name: "remoteIpBlocks as source IPs with RemoteIPAsSourceIP",
			ns:   "ns",
			opts: Options{RemoteIPAsSourceIP: true},
			spec: &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{
				From: from(&securityapi.Source{RemoteIpBlocks: []string{"1.2.3.4"}, NotIpBlocks: []string{"1.2.3.0/24"}, NotRemoteIpBlocks: []string{"5.6.7.8"}}),
				When: []*securityapi.Condition{{Key: "remote.ip", Values: []string{"9.9.9.9"}}},
			}}},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Groups: []*workloadv1.Group{group(
				rules(&workloadv1.Match{SourceIps: []*workloadv1.IPBlock{block("1.2.3.4", 32)},
					NotSourceIps: []*workloadv1.IPBlock{block("1.2.3.0", 24), block("5.6.7.8", 32)}}),
				rules(&workloadv1.Match{SourceIps: []*workloadv1.IPBlock{block("9.9.9.9", 32)}}),
			)}},
		},
		{
			name: "CUSTOM is enforced as DENY of its rules without L7",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{
				Action:       securityapi.AuthorizationPolicy_CUSTOM,
				ActionDetail: &securityapi.AuthorizationPolicy_Provider{Provider: &securityapi.AuthorizationPolicy_ExtensionProvider{Name: "ext-authz"}},
				Rules:        []*securityapi.Rule{{To: to(&securityapi.Operation{Paths: []string{"/admin"}, Ports: []string{"8080"}})}},
			},
			want: &workloadv1.Authorization{Scope: workloadv1.AuthorizationScope_NAMESPACE, Action: workloadv1.AuthorizationAction_DENY,
				Groups: []*workloadv1.Group{group(rules(&workloadv1.Match{DestinationPorts: []uint32{8080}}))}},
			reason: ReasonPartiallyEnforced, waypoint: true, unenforce: []string{"paths"},
		},
		{
			name:   "AUDIT gives no L4 policy",
			ns:     "ns",
			spec:   &securityapi.AuthorizationPolicy{Action: securityapi.AuthorizationPolicy_AUDIT, Rules: []*securityapi.Rule{{}}},
			noAuth: true, reason: ReasonUnsupportedValue,
		},
		{
			name: "targetRefs are for the waypoint",
			ns:   "ns",
			spec: &securityapi.AuthorizationPolicy{
				TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "web"}},
				Rules:      []*securityapi.Rule{{To: to(&securityapi.Operation{Methods: []string{"GET"}})}},
			},
			noAuth: true, reason: ReasonNotForZtunnel, waypoint: true, unenforce: []string{"methods"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ConvertAuthorizationPolicy(tc.opts, authzPolicy(tc.ns, "p", tc.spec))
			if err != nil {
				t.Fatal(err)
			}
			if tc.noAuth {
				if res.Authorization != nil {
					t.Fatalf("want no L4 policy, got %v", res.Authorization)
				}
			} else {
				tc.want.Name, tc.want.Namespace = "p", tc.ns
				mustEqualProto(t, "authorization", res.Authorization, tc.want)
			}
			reason := tc.reason
			if reason == "" {
				reason = ReasonAccepted
			}
			if res.Reason != reason || res.ForWaypoint != tc.waypoint || !slices.Equal(res.UnenforcedAttributes, tc.unenforce) {
				t.Errorf("reason %q waypoint %v unenforced %v; want %q %v %v (message %q)",
					res.Reason, res.ForWaypoint, res.UnenforcedAttributes, reason, tc.waypoint, tc.unenforce, res.Message)
			}
			if tc.selector != nil && !equalMaps(res.Selector, tc.selector) {
				t.Errorf("selector %v, want %v", res.Selector, tc.selector)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// withUnknownField returns spec with an unknown field (number 999) in its
// first rule's first source, as a binary decode from a newer schema keeps.
func withUnknownField() *securityapi.AuthorizationPolicy {
	spec := &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{Namespaces: []string{"a"}})}}}
	var raw []byte
	raw = protowire.AppendTag(raw, 999, protowire.BytesType)
	raw = protowire.AppendString(raw, "surprise")
	spec.Rules[0].From[0].Source.ProtoReflect().SetUnknown(raw)
	return spec
}

func TestInvalidAuthorizationPolicies(t *testing.T) {
	tests := []struct {
		name string
		spec *securityapi.AuthorizationPolicy
		want string // substring of the error
	}{
		{"principal with scheme", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{Principals: []string{"spiffe://cluster.local/ns/a/sa/b"}})}}}, "spiffe://"},
		{"principal not an identity", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{Principals: []string{"admin"}})}}}, "principals[0]"},
		{"wildcard in the middle", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{Namespaces: []string{"a*b"}})}}}, "wildcard"},
		{"empty value", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{NotNamespaces: []string{""}})}}}, "empty"},
		{"malformed ip block", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{IpBlocks: []string{"10.0.0.0/33"}})}}}, "ipBlocks[0]"},
		{"malformed ip in condition", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{When: []*securityapi.Condition{{Key: "source.ip", Values: []string{"10.0.0.300"}}}}}}, "bad IP"},
		{"malformed remote ip block (even though L7)", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{RemoteIpBlocks: []string{"x"}})}}}, "remoteIpBlocks"},
		{"bad port", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{To: to(&securityapi.Operation{Ports: []string{"http"}})}}}, "bad port"},
		{"port out of range", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{To: to(&securityapi.Operation{NotPorts: []string{"70000"}})}}}, "bad port"},
		{"unknown condition key", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{When: []*securityapi.Condition{{Key: "source.color", Values: []string{"red"}}}}}}, "unknown attribute"},
		{"condition without values", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{When: []*securityapi.Condition{{Key: "source.ip"}}}}}, "values or notValues"},
		{"nil source", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: []*securityapi.Rule_From{{}}}}}, "source: required"},
		{"nil operation", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{To: []*securityapi.Rule_To{{}}}}}, "operation: required"},
		{"service accounts with principals", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{ServiceAccounts: []string{"a"}, Principals: []string{"*"}})}}}, "serviceAccounts"},
		{"service account wildcard", &securityapi.AuthorizationPolicy{Rules: []*securityapi.Rule{{From: from(&securityapi.Source{ServiceAccounts: []string{"ns/*"}})}}}, "service account"},
		{"selector and targetRefs", &securityapi.AuthorizationPolicy{Selector: selector("a", "b"), TargetRefs: []*typeapi.PolicyTargetReference{{Kind: "Service", Name: "x"}}}, "mutually exclusive"},
		{"unknown action", &securityapi.AuthorizationPolicy{Action: 42}, "unknown value"},
		{"CUSTOM without provider", &securityapi.AuthorizationPolicy{Action: securityapi.AuthorizationPolicy_CUSTOM}, "provider"},
		{"unknown fields", withUnknownField(), "unknown fields"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Direct conversion.
			res, err := ConvertAuthorizationPolicy(Options{}, authzPolicy("ns", "bad", tc.spec))
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.Name != "bad" || pe.Namespace != "ns" || pe.Kind != "AuthorizationPolicy" {
				t.Fatalf("want a *PolicyError for ns/bad, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if res.Authorization != nil || res.Reason != ReasonInvalid {
				t.Errorf("invalid policy translated: %+v", res)
			}

			// In the index: skipped, others intact.
			ix := NewIndex(Options{})
			ix.UpsertNamespace(ambientNS("ns"))
			ix.UpsertPod(pod("ns", "a", "10.0.0.1"))
			mustNoErr(ix.UpsertAuthorizationPolicy(authzPolicy("ns", "good", denyFromNamespace("x"))))
			mustNoErr(ix.UpsertAuthorizationPolicy(authzPolicy("ns", "sel", &securityapi.AuthorizationPolicy{Selector: selector("app", "app")})))
			before := ix.Snapshot()
			c, err := ix.UpsertAuthorizationPolicy(authzPolicy("ns", "bad", tc.spec))
			if !errors.As(err, &pe) {
				t.Fatalf("index: want *PolicyError, got %v", err)
			}
			mustEmpty(t, "invalid new policy", c)
			after := ix.Snapshot()
			if len(after.Authorizations) != len(before.Authorizations) || after.Authorizations["ns/good"] == nil {
				t.Errorf("other policies touched: %d -> %d", len(before.Authorizations), len(after.Authorizations))
			}
			if _, gotErr, ok := ix.AuthorizationPolicyStatus("ns", "bad"); !ok || gotErr == nil {
				t.Error("status of the invalid policy not recorded")
			}

			// An update of a valid policy to an invalid version keeps the
			// last valid version.
			c, err = ix.UpsertAuthorizationPolicy(authzPolicy("ns", "good", tc.spec))
			if err == nil {
				t.Fatal("no error for invalid update")
			}
			mustEmpty(t, "invalid update", c)
			mustEqualProto(t, "kept policy", ix.Authorization("ns/good"), before.Authorizations["ns/good"])
			res, gotErr, _ := ix.AuthorizationPolicyStatus("ns", "good")
			if gotErr == nil || res.Authorization == nil {
				t.Errorf("status after invalid update: %+v %v", res, gotErr)
			}
		})
	}
}

func TestDecodeAuthorizationPolicyRejectsUnknownFields(t *testing.T) {
	good := `{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"ns"},
		"spec":{"action":"DENY","rules":[{"from":[{"source":{"namespaces":["a"],"ipBlocks":["10.0.0.0/8"]}}],"to":[{"operation":{"ports":["80"]}}]}]}}`
	p, err := DecodeAuthorizationPolicy([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "p" || p.Spec.Action != securityapi.AuthorizationPolicy_DENY || p.Spec.Rules[0].From[0].Source.IpBlocks[0] != "10.0.0.0/8" {
		t.Fatalf("decoded %+v", p)
	}
	if _, err := ConvertAuthorizationPolicy(Options{}, p); err != nil {
		t.Fatal(err)
	}

	bad := `{"metadata":{"name":"p","namespace":"ns"},"spec":{"rules":[{"from":[{"source":{"principal":["typo"]}}]}]}}`
	_, err = DecodeAuthorizationPolicy([]byte(bad))
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Name != "p" || !strings.Contains(err.Error(), "principal") {
		t.Fatalf("want a PolicyError naming the unknown field, got %v", err)
	}
	if _, err := DecodePeerAuthentication([]byte(`{"metadata":{"name":"p","namespace":"ns"},"spec":{"mtls":{"mode":"STRICT","extra":1}}}`)); err == nil {
		t.Error("PeerAuthentication with unknown field decoded")
	}
	if _, err := DecodeAuthorizationPolicy([]byte(`{`)); err == nil {
		t.Error("broken JSON decoded")
	}
}

func TestSelectorPoliciesOnWorkloads(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ix.UpsertNamespace(ambientNS("other"))
	ix.UpsertPod(pod("ns", "web", "10.0.0.1", withLabels("app", "web")))
	ix.UpsertPod(pod("ns", "db", "10.0.0.2", withLabels("app", "db")))
	ix.UpsertPod(pod("other", "web", "10.0.1.1", withLabels("app", "web")))
	ix.UpsertPod(pod("ns", "plain", "10.0.0.3", withLabels("app", "web", LabelDataplaneMode, DataplaneModeNone)))

	c, err := ix.UpsertAuthorizationPolicy(authzPolicy("ns", "web-only", &securityapi.AuthorizationPolicy{Selector: selector("app", "web")}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Authorizations) != 1 || len(c.Addresses) != 1 {
		t.Fatalf("want the policy and ns/web, got %d authorizations, addresses %v", len(c.Authorizations), addressNames(c))
	}
	if got := workloadOf(t, c, uid("ns", "web")).AuthorizationPolicies; !slices.Equal(got, []string{"ns/web-only"}) {
		t.Errorf("policies %v", got)
	}

	// Root-namespace selector policy: every namespace.
	c, err = ix.UpsertAuthorizationPolicy(authzPolicy("istio-system", "mesh-web", &securityapi.AuthorizationPolicy{Selector: selector("app", "web")}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Addresses) != 2 {
		t.Fatalf("root selector policy: %v", addressNames(c))
	}
	if got := workloadOf(t, c, uid("ns", "web")).AuthorizationPolicies; !slices.Equal(got, []string{"istio-system/mesh-web", "ns/web-only"}) {
		t.Errorf("policies %v", got)
	}

	// A rules-only change: the Authorization changes, no workload does.
	c, err = ix.UpsertAuthorizationPolicy(authzPolicy("ns", "web-only", &securityapi.AuthorizationPolicy{Selector: selector("app", "web"), Rules: []*securityapi.Rule{{}}}))
	if err != nil || len(c.Authorizations) != 1 || len(c.Addresses) != 0 {
		t.Fatalf("rules change: %v %+v", err, c)
	}

	// Selector change: old and new selections change.
	c, err = ix.UpsertAuthorizationPolicy(authzPolicy("ns", "web-only", &securityapi.AuthorizationPolicy{Selector: selector("app", "db")}))
	if err != nil || len(c.Addresses) != 2 {
		t.Fatalf("selector change: %v %v", err, addressNames(c))
	}

	// Pod relabel picks up policies.
	w := workloadOf(t, ix.UpsertPod(pod("ns", "web", "10.0.0.1", withLabels("app", "db"))), uid("ns", "web"))
	if !slices.Equal(w.AuthorizationPolicies, []string{"ns/web-only"}) {
		t.Errorf("relabelled pod policies %v", w.AuthorizationPolicies)
	}

	// Delete: the workloads that listed it change.
	c = ix.DeleteAuthorizationPolicy("ns", "web-only")
	if !slices.Equal(c.RemovedAuthorizations, []string{"ns/web-only"}) || len(c.Addresses) != 2 {
		t.Fatalf("delete: %+v", c)
	}
}

func TestPeerAuthentication(t *testing.T) {
	static := "istio-system/" + StaticStrictPolicyName
	setup := func() *Index {
		ix := NewIndex(Options{})
		ix.UpsertNamespace(ambientNS("ns"))
		ix.UpsertNamespace(ambientNS("other"))
		ix.UpsertPod(pod("ns", "web", "10.0.0.1", withLabels("app", "web")))
		ix.UpsertPod(pod("ns", "db", "10.0.0.2", withLabels("app", "db")))
		ix.UpsertPod(pod("other", "x", "10.0.1.1"))
		return ix
	}
	policiesOf := func(ix *Index, ns, name string) []string {
		return ix.Address(uid(ns, name)).GetWorkload().GetAuthorizationPolicies()
	}

	t.Run("mesh STRICT", func(t *testing.T) {
		ix := setup()
		c, err := ix.UpsertPeerAuthentication(peerAuthentication("istio-system", "default", 1, nil, strictMode, nil))
		if err != nil {
			t.Fatal(err)
		}
		mustEqualProto(t, "static strict", c.Authorizations[static], &workloadv1.Authorization{
			Name: StaticStrictPolicyName, Namespace: "istio-system",
			Scope: workloadv1.AuthorizationScope_WORKLOAD_SELECTOR, Action: workloadv1.AuthorizationAction_DENY,
			Groups: []*workloadv1.Group{group(rules(&workloadv1.Match{NotPrincipals: []*workloadv1.StringMatch{presence()}}))},
		})
		if len(c.Addresses) != 3 {
			t.Fatalf("every workload changes: %v", addressNames(c))
		}
		for _, w := range []string{"web", "db"} {
			if got := policiesOf(ix, "ns", w); !slices.Equal(got, []string{static}) {
				t.Errorf("%s: %v", w, got)
			}
		}
		// Namespace PERMISSIVE overrides the mesh.
		c, _ = ix.UpsertPeerAuthentication(peerAuthentication("ns", "perm", 2, nil, permissiveMode, nil))
		if len(c.Addresses) != 2 || len(policiesOf(ix, "ns", "web")) != 0 || len(policiesOf(ix, "other", "x")) != 1 {
			t.Errorf("namespace PERMISSIVE: %v", addressNames(c))
		}
		// Workload STRICT overrides the namespace.
		ix.UpsertPeerAuthentication(peerAuthentication("ns", "web-strict", 3, map[string]string{"app": "web"}, strictMode, nil))
		if !slices.Equal(policiesOf(ix, "ns", "web"), []string{static}) || len(policiesOf(ix, "ns", "db")) != 0 {
			t.Errorf("workload STRICT: web %v db %v", policiesOf(ix, "ns", "web"), policiesOf(ix, "ns", "db"))
		}
		// Removing all: the static policy goes, workloads list nothing.
		ix.DeletePeerAuthentication("ns", "perm")
		ix.DeletePeerAuthentication("ns", "web-strict")
		c = ix.DeletePeerAuthentication("istio-system", "default")
		if !slices.Equal(c.RemovedAuthorizations, []string{static}) || len(policiesOf(ix, "other", "x")) != 0 {
			t.Errorf("delete: %+v", c)
		}
	})

	t.Run("PERMISSIVE and UNSET give nothing", func(t *testing.T) {
		ix := setup()
		ix.UpsertPeerAuthentication(peerAuthentication("istio-system", "default", 1, nil, permissiveMode, nil))
		ix.UpsertPeerAuthentication(peerAuthentication("ns", "unset", 1, nil, unsetMode, nil))
		ix.UpsertPeerAuthentication(peerAuthentication("other", "disable", 1, nil, disableMode, nil))
		for _, w := range [][2]string{{"ns", "web"}, {"other", "x"}} {
			if got := policiesOf(ix, w[0], w[1]); len(got) != 0 {
				t.Errorf("%v: %v", w, got)
			}
		}
	})

	t.Run("oldest namespace policy wins", func(t *testing.T) {
		ix := setup()
		ix.UpsertPeerAuthentication(peerAuthentication("ns", "newer", 20, nil, permissiveMode, nil))
		ix.UpsertPeerAuthentication(peerAuthentication("ns", "older", 10, nil, strictMode, nil))
		if !slices.Equal(policiesOf(ix, "ns", "web"), []string{static}) {
			t.Errorf("got %v", policiesOf(ix, "ns", "web"))
		}
	})

	t.Run("port-level mTLS", func(t *testing.T) {
		ix := setup()
		ix.UpsertPeerAuthentication(peerAuthentication("ns", "strict", 1, nil, strictMode, nil))
		c, err := ix.UpsertPeerAuthentication(peerAuthentication("ns", "web-ports", 2, map[string]string{"app": "web"}, unsetMode,
			map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode{9090: permissiveMode, 8080: strictMode}))
		if err != nil {
			t.Fatal(err)
		}
		name := "ns/" + peerAuthPolicyPrefix + "web-ports"
		mustEqualProto(t, "port-level exception", c.Authorizations[name], &workloadv1.Authorization{
			Name: peerAuthPolicyPrefix + "web-ports", Namespace: "ns",
			Scope: workloadv1.AuthorizationScope_WORKLOAD_SELECTOR, Action: workloadv1.AuthorizationAction_DENY,
			Groups: []*workloadv1.Group{group(rules(&workloadv1.Match{
				NotPrincipals: []*workloadv1.StringMatch{presence()}, NotDestinationPorts: []uint32{9090},
			}))},
		})
		if !slices.Equal(policiesOf(ix, "ns", "web"), []string{name}) || !slices.Equal(policiesOf(ix, "ns", "db"), []string{static}) {
			t.Errorf("web %v db %v", policiesOf(ix, "ns", "web"), policiesOf(ix, "ns", "db"))
		}
		// The namespace turns PERMISSIVE: the same workload policy now
		// requires mTLS only on its STRICT port.
		c, _ = ix.UpsertPeerAuthentication(peerAuthentication("ns", "strict", 1, nil, permissiveMode, nil))
		mustEqualProto(t, "port-level strict", c.Authorizations[name].GetGroups()[0], group(rules(&workloadv1.Match{
			NotPrincipals: []*workloadv1.StringMatch{presence()}, DestinationPorts: []uint32{8080},
		})))
		if len(policiesOf(ix, "ns", "db")) != 0 {
			t.Errorf("db %v", policiesOf(ix, "ns", "db"))
		}
	})

	t.Run("invalid", func(t *testing.T) {
		ix := setup()
		mustNoErr(ix.UpsertPeerAuthentication(peerAuthentication("ns", "p", 1, nil, strictMode, nil)))
		for _, p := range []*securityv1.PeerAuthentication{
			peerAuthentication("ns", "p", 1, nil, 17, nil),
			peerAuthentication("ns", "p", 1, nil, strictMode, map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode{8080: strictMode}), // ports without selector
			peerAuthentication("ns", "p", 1, map[string]string{"a": "b"}, strictMode, map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode{0: strictMode}),
		} {
			c, err := ix.UpsertPeerAuthentication(p)
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.Kind != "PeerAuthentication" {
				t.Errorf("want PolicyError, got %v", err)
			}
			mustEmpty(t, "invalid peer authentication", c)
			if ix.PeerAuthenticationError("ns", "p") == nil {
				t.Error("error not recorded")
			}
			if !slices.Equal(policiesOf(ix, "ns", "web"), []string{static}) {
				t.Error("last valid version not kept")
			}
		}
	})
}
