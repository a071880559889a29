package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

func testListener(name string, port uint32) *listener.Listener {
	return &listener.Listener{Name: name, Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}}
}

func TestWaypointsGetOnlyTheirOwnConfiguration(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond, Authenticate: authenticateTestNode})
	ctx := context.Background()
	a, b := WaypointNode("shop", "waypoint"), WaypointNode("bank", "waypoint")
	must(t, s.SetWaypoint(ctx, a, Resources{resource.ListenerType: {"shop-l": testListener("shop-l", 15008)}}))
	must(t, s.SetWaypoint(ctx, b, Resources{resource.ListenerType: {"bank-l": testListener("bank-l", 15008)}}))
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"w1": workload("w1", "node-a")}, nil))
	s.Flush()

	// The claimed node does not matter: the credential's does.
	types := append([]string{workloadv1.AddressTypeURL}, EnvoyTypeURLs...)
	recA, recB := newRecorder(), newRecorder()
	waitSynced(t, startBoundClientFor(t, addr, a, b, types, recA))
	waitSynced(t, startBoundClientFor(t, addr, b, "", types, recB))
	if got := recA.names(resource.ListenerType); !slices.Equal(got, []string{"shop-l"}) {
		t.Errorf("waypoint shop got listeners %v", got)
	}
	if got := recB.names(resource.ListenerType); !slices.Equal(got, []string{"bank-l"}) {
		t.Errorf("waypoint bank got listeners %v", got)
	}
	// Waypoints get the workload addresses as ztunnels do.
	if got := recA.names(workloadv1.AddressTypeURL); !slices.Equal(got, []string{"w1"}) {
		t.Errorf("waypoint got addresses %v", got)
	}

	// Setting the same configuration again pushes nothing; a change pushes
	// only that waypoint.
	_, before := recA.snapshot()
	must(t, s.SetWaypoint(ctx, a, Resources{resource.ListenerType: {"shop-l": testListener("shop-l", 15008)}}))
	must(t, s.SetWaypoint(ctx, b, Resources{resource.ListenerType: {"bank-l": testListener("bank-l", 15009)}}))
	eventually(t, "bank's update", func() bool {
		recB.mu.Lock()
		defer recB.mu.Unlock()
		var l listener.Listener
		res := recB.state[resource.ListenerType]["bank-l"]
		return res != nil && res.GetResource().UnmarshalTo(&l) == nil && l.GetAddress().GetSocketAddress().GetPortValue() == 15009
	})
	if _, after := recA.snapshot(); after != before {
		t.Errorf("an unchanged configuration was pushed again (%d upserts, then %d)", before, after)
	}

	// A removed resource is removed on the client.
	must(t, s.SetWaypoint(ctx, a, Resources{resource.ListenerType: {"shop-2": testListener("shop-2", 15008)}}))
	eventually(t, "shop's listener replaced", func() bool {
		return slices.Equal(recA.names(resource.ListenerType), []string{"shop-2"})
	})
}

func TestEnvoyTypesAreForWaypointsOnly(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond, Authenticate: authenticateTestNode})
	must(t, s.SetWaypoint(context.Background(), WaypointNode("shop", "waypoint"), Resources{resource.ListenerType: {"shop-l": testListener("shop-l", 15008)}}))
	if err := s.SetWaypoint(context.Background(), "node-a", nil); err == nil {
		t.Error("SetWaypoint accepted a ztunnel node")
	}
	// A ztunnel claiming to be the waypoint is refused the Envoy types:
	// its stream fails and is retried, and never gets a listener.
	rec := newRecorder()
	c := startBoundClientFor(t, addr, "node-a", WaypointNode("shop", "waypoint"), []string{resource.ListenerType}, rec)
	select {
	case <-c.Synced():
		t.Fatal("a ztunnel-bound client synced the waypoint's listeners")
	case <-time.After(500 * time.Millisecond):
	}
	if got := rec.names(resource.ListenerType); len(got) != 0 {
		t.Errorf("ztunnel-bound client got listeners %v", got)
	}
}
