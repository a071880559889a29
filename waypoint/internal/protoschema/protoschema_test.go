package protoschema

import (
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCheck(t *testing.T) {
	s := New(Options{
		Engine: "test engine", Root: "(rc)", MaxDepth: 2,
		Fields: map[protoreflect.FullName][]protoreflect.Name{
			"envoy.config.route.v3.RouteConfiguration": {"name", "virtual_hosts", "validate_clusters"},
			"envoy.config.route.v3.VirtualHost":        {"name", "domains", "routes"},
			"envoy.config.route.v3.Route":              {"name", "match"},
		},
		Leaves: map[protoreflect.FullName]bool{"google.protobuf.BoolValue": true},
	})
	cases := []struct {
		name string
		rc   *routev3.RouteConfiguration
		want string // "" for accepted
	}{
		{"supported fields and a leaf", &routev3.RouteConfiguration{Name: "a", ValidateClusters: wrapperspb.Bool(true),
			VirtualHosts: []*routev3.VirtualHost{{Name: "vh", Domains: []string{"*"}}}}, ""},
		{"unsupported field with its path", &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{}, {Name: "x", RequireTls: routev3.VirtualHost_ALL}}},
			"virtual_hosts[1].require_tls: field is not supported by the waypoint test engine"},
		{"unsupported message type", &routev3.RouteConfiguration{VirtualHosts: []*routev3.VirtualHost{{Routes: []*routev3.Route{{Match: &routev3.RouteMatch{}}}}}},
			"virtual_hosts[0].routes[0].match: nesting deeper than 2 levels"},
		{"top-level field", &routev3.RouteConfiguration{MostSpecificHeaderMutationsWins: true},
			"most_specific_header_mutations_wins: field is not supported by the waypoint test engine"},
	}
	for _, tc := range cases {
		err := s.Check(tc.rc.ProtoReflect())
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || err.Error() != tc.want):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	// A message type outside the schema, named at the root.
	if err := s.Check((&routev3.VirtualHost{}).ProtoReflect()); err != nil {
		t.Errorf("listed type: %v", err)
	}
	if err := s.Check((&routev3.RouteMatch{}).ProtoReflect()); err == nil || !strings.HasPrefix(err.Error(), "(rc): message type envoy.config.route.v3.RouteMatch is not supported") {
		t.Errorf("unlisted root type: %v", err)
	}
	// Unknown fields (a newer schema) are refused.
	rc := &routev3.RouteConfiguration{Name: "a"}
	rc.ProtoReflect().SetUnknown(protoreflect.RawFields{0xf8, 0xff, 0x03, 0x01})
	if err := s.Check(rc.ProtoReflect()); err == nil || !strings.Contains(err.Error(), "unknown field(s)") {
		t.Errorf("unknown fields: %v", err)
	}
	if got := Index(JoinPath("a", "b"), 3); got != "a.b[3]" {
		t.Errorf("path %q", got)
	}
}
