package debug

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

type fakeSource map[string]map[string]types.Resource

func (f fakeSource) Clients() int64 { return 3 }
func (f fakeSource) NodeResources(typeURL, _ string) map[string]types.Resource {
	return f[typeURL]
}

func TestViewShowsIPsAndProblems(t *testing.T) {
	src := fakeSource{
		workloadv1.AddressTypeURL: {
			"w1": &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
				Uid: "w1", Name: "web-1", Namespace: "apps", Addresses: [][]byte{netip.MustParseAddr("10.244.1.5").AsSlice()},
			}}},
			"apps/web": &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
				Name: "web", Namespace: "apps", Addresses: []*workloadv1.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.9").AsSlice()}},
			}}},
		},
		workloadv1.AuthorizationTypeURL: {"apps/deny": &workloadv1.Authorization{Name: "deny", Namespace: "apps"}},
	}
	h := Handler(src, func() []PolicyProblem {
		return []PolicyProblem{{Kind: "AuthorizationPolicy", Namespace: "apps", Name: "bad", Reason: "Invalid"}}
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/ambient", nil))
	body := rec.Body.String()
	for _, want := range []string{`"10.244.1.5"`, `"10.96.0.9"`, `"connectedClients": 3`, `"name": "bad"`, `"apps"`} {
		if !strings.Contains(body, want) {
			t.Errorf("view lacks %s:\n%s", want, body)
		}
	}
	var v View
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil || len(v.Workloads) != 1 || len(v.Services) != 1 || len(v.Authorizations) != 1 {
		t.Errorf("view: %+v %v", v, err)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/debug/ambient", nil))
	if rec.Code != 405 {
		t.Errorf("POST answered %d", rec.Code)
	}
}
