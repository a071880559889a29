package workloadv1

import (
	"net/netip"
	"strings"
	"testing"
)

func TestReadableJSON(t *testing.T) {
	a := &Address{Type: &Address_Service{Service: &Service{
		Name: "web", Namespace: "apps", Hostname: "web.apps.svc.cluster.local",
		Addresses: []*NetworkAddress{{Address: netip.MustParseAddr("10.96.0.9").AsSlice()}, {Address: netip.MustParseAddr("fd00::9").AsSlice()}},
	}}}
	b, err := ReadableJSON(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"10.96.0.9"`, `"fd00::9"`, `"hostname":"web.apps.svc.cluster.local"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	w, err := ReadableJSON(&Workload{Uid: "u", Addresses: [][]byte{netip.MustParseAddr("10.244.1.5").AsSlice()}, Name: "AAAA"})
	if err != nil || !strings.Contains(string(w), `"addresses":["10.244.1.5"]`) || !strings.Contains(string(w), `"name":"AAAA"`) {
		t.Errorf("workload: %s %v", w, err)
	}
}
