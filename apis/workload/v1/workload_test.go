package workloadv1

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func sampleWorkload() *Workload {
	return &Workload{
		Uid:            "Kubernetes//Pod/shop/cart-7d9f-abcde",
		Name:           "cart-7d9f-abcde",
		Namespace:      "shop",
		Addresses:      [][]byte{ip("10.244.1.7"), ip("fd00:10:244:1::7")},
		TunnelProtocol: TunnelProtocol_HBONE,
		TrustDomain:    "cluster.local",
		ServiceAccount: "cart",
		Node:           "node-1",
		Waypoint: &GatewayAddress{
			Destination:   &GatewayAddress_Hostname{Hostname: &NamespacedHostname{Namespace: "shop", Hostname: "waypoint.shop.svc.cluster.local"}},
			HboneMtlsPort: 15008,
		},
		CanonicalName:     "cart",
		CanonicalRevision: "v2",
		WorkloadType:      WorkloadType_DEPLOYMENT,
		WorkloadName:      "cart",
		Services: map[string]*PortList{
			"shop/cart.shop.svc.cluster.local": {Ports: []*Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: "http"}}},
		},
		AuthorizationPolicies: []string{"shop/cart-allow"},
		Status:                WorkloadStatus_UNHEALTHY,
		ClusterId:             "Kubernetes",
		Locality:              &Locality{Region: "eu", Zone: "eu-1a"},
	}
}

func sampleService() *Service {
	return &Service{
		Name:      "cart",
		Namespace: "shop",
		Hostname:  "cart.shop.svc.cluster.local",
		Addresses: []*NetworkAddress{{Address: ip("10.96.0.42")}, {Network: "net2", Address: ip("fd00:10:96::42")}},
		Ports: []*Port{
			{ServicePort: 80, TargetPort: 8080, AppProtocol: "http"},
			{ServicePort: 9090}, // named target port: resolved per workload
		},
		Waypoint: &GatewayAddress{
			Destination:   &GatewayAddress_Address{Address: &NetworkAddress{Address: ip("10.96.0.9")}},
			HboneMtlsPort: 15008,
		},
		LoadBalancing: &LoadBalancing{
			RoutingPreference: []LoadBalancing_Scope{LoadBalancing_NODE, LoadBalancing_ZONE},
			Mode:              LoadBalancing_FAILOVER,
		},
	}
}

func sampleAuthorization() *Authorization {
	return &Authorization{
		Name:      "cart-allow",
		Namespace: "shop",
		Scope:     AuthorizationScope_WORKLOAD_SELECTOR,
		Action:    AuthorizationAction_DENY,
		Groups: []*Group{{
			Rules: []*Rules{
				{Matches: []*Match{{
					Namespaces:    []*StringMatch{{MatchType: &StringMatch_Exact{Exact: "shop"}}},
					NotNamespaces: []*StringMatch{{MatchType: &StringMatch_Prefix{Prefix: "kube-"}}},
					Principals:    []*StringMatch{{MatchType: &StringMatch_Suffix{Suffix: "/sa/frontend"}}},
					NotPrincipals: []*StringMatch{{MatchType: &StringMatch_Presence_{Presence: &StringMatch_Presence{}}}},
					SourceIps:     []*IPBlock{{Address: ip("10.0.0.0"), Length: 8}},
					NotSourceIps:  []*IPBlock{{Address: ip("10.9.0.0"), Length: 16}},
				}}},
				{Matches: []*Match{{
					DestinationIps:      []*IPBlock{{Address: ip("fd00::"), Length: 64}},
					NotDestinationIps:   []*IPBlock{{Address: ip("fd00::1"), Length: 128}},
					DestinationPorts:    []uint32{8080, 8443},
					NotDestinationPorts: []uint32{9090},
				}}},
			},
		}},
	}
}

func TestRoundTrip(t *testing.T) {
	msgs := map[string]proto.Message{
		"workload":      &Address{Type: &Address_Workload{Workload: sampleWorkload()}},
		"service":       &Address{Type: &Address_Service{Service: sampleService()}},
		"authorization": sampleAuthorization(),
	}
	for name, m := range msgs {
		t.Run(name, func(t *testing.T) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatalf("proto.Marshal: %v", err)
			}
			got := m.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			if !proto.Equal(m, got) {
				t.Errorf("binary round trip differs:\nwant %v\n got %v", m, got)
			}

			j, err := protojson.Marshal(m)
			if err != nil {
				t.Fatalf("protojson.Marshal: %v", err)
			}
			got = m.ProtoReflect().New().Interface()
			if err := protojson.Unmarshal(j, got); err != nil {
				t.Fatalf("protojson.Unmarshal: %v", err)
			}
			if !proto.Equal(m, got) {
				t.Errorf("JSON round trip differs:\nwant %v\n got %v\njson %s", m, got, j)
			}
		})
	}
}

// proto.Equal must actually look at the fields we rely on.
func TestEqualSeesChanges(t *testing.T) {
	a, b := sampleWorkload(), sampleWorkload()
	b.Services["shop/cart.shop.svc.cluster.local"].Ports[0].TargetPort = 8081
	if proto.Equal(a, b) {
		t.Error("proto.Equal ignored a changed target port in Workload.services")
	}
	x, y := sampleAuthorization(), sampleAuthorization()
	y.Groups[0].Rules[0].Matches[0].NotPrincipals[0].MatchType = &StringMatch_Exact{Exact: ""}
	if proto.Equal(x, y) {
		t.Error("proto.Equal confused presence with exact \"\"")
	}
}

func TestEnumJSONNames(t *testing.T) {
	j, err := protojson.Marshal(sampleAuthorization())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"WORKLOAD_SELECTOR"`, `"DENY"`, `"presence":{}`} {
		if !strings.Contains(strings.ReplaceAll(string(j), " ", ""), want) {
			t.Errorf("JSON %s lacks %s", j, want)
		}
	}
}

func TestTypeURLs(t *testing.T) {
	for want, m := range map[string]proto.Message{
		AddressTypeURL:       &Address{},
		AuthorizationTypeURL: &Authorization{},
	} {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		if a.TypeUrl != want {
			t.Errorf("anypb.New(%T).TypeUrl = %q, documented %q", m, a.TypeUrl, want)
		}
	}
}

// The generator (tools/go.mod) and the runtime (go.mod) must use the same
// google.golang.org/protobuf version, or `make generate` output drifts from
// what the runtime expects.
func TestProtobufVersionsAligned(t *testing.T) {
	main := requiredVersion(t, "../../../go.mod", "google.golang.org/protobuf")
	tools := requiredVersion(t, "../../../tools/go.mod", "google.golang.org/protobuf")
	if main != tools {
		t.Errorf("google.golang.org/protobuf: go.mod has %s, tools/go.mod has %s; align them and run make generate", main, tools)
	}
}

func requiredVersion(t *testing.T, gomod, module string) string {
	t.Helper()
	f, err := os.Open(gomod)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(fields) >= 2 && fields[0] == module {
			return fields[1]
		}
	}
	t.Fatalf("%s: no requirement on %s", gomod, module)
	return ""
}
