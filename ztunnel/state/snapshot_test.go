package state

import (
	"net/netip"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

func TestSnapshotListsEverythingSorted(t *testing.T) {
	s := NewStore()
	res := func(name string, a *workloadv1.Address) *discovery.Resource {
		any, err := anypb.New(a)
		if err != nil {
			t.Fatal(err)
		}
		return &discovery.Resource{Name: name, Resource: any}
	}
	wl := func(uid string) *workloadv1.Address {
		return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
			Uid: uid, Name: uid, Namespace: "ns", Addresses: [][]byte{netip.MustParseAddr("10.0.0." + uid[1:]).AsSlice()},
		}}}
	}
	if err := s.Handle(workloadv1.AddressTypeURL, []*discovery.Resource{res("w2", wl("w2")), res("w1", wl("w1"))}, nil); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	if len(snap.Workloads) != 2 || snap.Workloads[0].GetUid() != "w1" || snap.Workloads[1].GetUid() != "w2" {
		t.Errorf("workloads %v", snap.Workloads)
	}
	if len(snap.Services) != 0 || len(snap.Authorizations) != 0 {
		t.Errorf("snapshot has services %v, authorizations %v", snap.Services, snap.Authorizations)
	}
}
