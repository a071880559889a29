package authz

import (
	"fmt"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// FuzzEvaluate builds a policy and a destination workload from arbitrary
// protobuf bytes and checks that Validate, Evaluate and PlaintextAllowed
// never panic and that Evaluate is consistent.
func FuzzEvaluate(f *testing.F) {
	seeds := []*workloadv1.Authorization{
		policy("app", "p", nsScope, deny, group(rules(&workloadv1.Match{NotPrincipals: sms(presence())}))),
		policy("app", "selected", selected, allow, group(rules(&workloadv1.Match{
			Namespaces: sms(exact("foo"), prefix("f"), suffix("o")), NotPrincipals: sms(exact("td/ns/a/sa/b")),
			SourceIps: cidrs("10.0.0.0/8", "fd00::/8"), NotDestinationIps: cidrs("10.0.1.7/32"),
			DestinationPorts: []uint32{8080}, NotDestinationPorts: []uint32{9090},
		}), rules())),
		policy("istio-system", StaticStrictPolicyName, selected, deny, group()),
		{Name: "x", Namespace: "y", Scope: 9, Action: 7, Groups: []*workloadv1.Group{{Rules: []*workloadv1.Rules{{Matches: []*workloadv1.Match{{
			SourceIps: []*workloadv1.IPBlock{{Address: []byte{1}, Length: 200}}, DestinationPorts: []uint32{0, 1 << 20},
			Principals: []*workloadv1.StringMatch{{}},
		}}}}}}},
	}
	wl, err := proto.Marshal(dest)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, wl, []byte{10, 0, 0, 5}, uint16(8080), true)
		f.Add(b, []byte{}, []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}, uint16(0), false)
	}
	f.Fuzz(func(t *testing.T, policyBytes, workloadBytes, srcIP []byte, port uint16, mtls bool) {
		p := &workloadv1.Authorization{}
		if proto.Unmarshal(policyBytes, p) != nil {
			return
		}
		w := &workloadv1.Workload{}
		if proto.Unmarshal(workloadBytes, w) != nil {
			w = nil
		}
		c := ConnInfo{SourceIP: addrFromBytes(srcIP), DestinationPort: port, Destination: w,
			DestinationIP: netip.MustParseAddr("10.0.1.7")}
		if mtls {
			c.SourceIdentity = identity.Identity{TrustDomain: "cluster.local", Namespace: "foo", ServiceAccount: "bar"}
		}
		_ = Validate(p)
		pols := []*workloadv1.Authorization{p, nil, p}
		d1, d2 := Evaluate(c, pols), Evaluate(c, pols)
		if d1 != d2 {
			t.Fatalf("not deterministic: %v vs %v", d1, d2)
		}
		if d1.Reason == DenyMatched && p.GetAction() != deny {
			t.Fatalf("denied by a non-DENY policy: %v", d1)
		}
		if !Applies(p, w) && d1 != (Decision{Allowed: true, Reason: NoAllowPolicy}) {
			t.Fatalf("a policy that does not apply decided: %v", d1)
		}
		_, _ = PlaintextAllowed(w, port, pols)
	})
}

// benchPolicies returns n policies applying to dest, none of which match
// the benchmark connection except, for ALLOW, the last one: Evaluate walks
// all of them. One in ten is a DENY (which does not match).
func benchPolicies(n int) []*workloadv1.Authorization {
	out := make([]*workloadv1.Authorization, 0, n)
	for i := range n {
		action := allow
		if i%10 == 9 {
			action = deny
		}
		principal := fmt.Sprintf("cluster.local/ns/ns-%d/sa/sa-%d", i, i)
		if i == n-1 {
			action, principal = allow, "cluster.local/ns/foo/sa/bar"
		}
		out = append(out, policy("app", fmt.Sprintf("p-%d", i), nsScope, action,
			group(
				rules(&workloadv1.Match{DestinationPorts: []uint32{8080, 8443}}),
				rules(&workloadv1.Match{Principals: sms(exact(principal))}, &workloadv1.Match{
					Namespaces: sms(exact(fmt.Sprintf("ns-%d", i))), SourceIps: cidrs("192.168.0.0/16")}),
			)))
	}
	return out
}

func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			pols := benchPolicies(n)
			c := mtlsConn()
			if d := Evaluate(c, pols); !d.Allowed || d.Policy != fmt.Sprintf("app/p-%d", n-1) {
				b.Fatalf("unexpected decision %v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				Evaluate(c, pols)
			}
		})
	}
}
