package agent

import (
	"net/netip"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

func resource(t *testing.T, name string, m proto.Message) *discovery.Resource {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Resource: a, Version: "1"}
}

func wl(uid, ns, sa, ip string, captured bool, services map[string]*workloadv1.PortList) *workloadv1.Address {
	w := &workloadv1.Workload{Uid: uid, Name: uid, Namespace: ns, ServiceAccount: sa, Node: "node-a",
		Addresses: [][]byte{netip.MustParseAddr(ip).AsSlice()}, Status: workloadv1.WorkloadStatus_HEALTHY, Services: services}
	if captured {
		w.TunnelProtocol = workloadv1.TunnelProtocol_HBONE
	}
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: w}}
}

func newRouter(t *testing.T) (*Router, *state.Store) {
	st := state.NewStore()
	svc := &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Name: "web", Namespace: "apps", Hostname: "web.apps.svc.cluster.local",
		Addresses: []*workloadv1.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.50").AsSlice()}},
		Ports:     []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}},
	}}}
	ports := map[string]*workloadv1.PortList{"apps/web.apps.svc.cluster.local": {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	if err := st.Handle(workloadv1.AddressTypeURL, []*discovery.Resource{
		resource(t, "apps/web.apps.svc.cluster.local", svc),
		resource(t, "web-1", wl("web-1", "apps", "web", "10.244.1.5", true, ports)),
		resource(t, "legacy-1", wl("legacy-1", "legacy", "", "10.244.2.9", false, nil)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	return &Router{Store: st, Balancer: state.NewBalancer(st, state.BalancerOptions{}), TrustDomain: "cluster.local"}, st
}

func TestRoutes(t *testing.T) {
	r, _ := newRouter(t)
	webID, _ := identity.New("cluster.local", "apps", "web")

	// A Service VIP goes to its captured endpoint over HBONE, target port resolved.
	rt, err := r.Route(nil, netip.MustParseAddrPort("10.96.0.50:80"))
	if err != nil {
		t.Fatal(err)
	}
	if !rt.HBONE || rt.Proxy != netip.MustParseAddrPort("10.244.1.5:15008") || rt.Target != netip.MustParseAddrPort("10.244.1.5:8080") || rt.Identity != webID || rt.Service != "apps/web.apps.svc.cluster.local" {
		t.Errorf("service route: %+v", rt)
	}
	if n := r.Balancer.InFlight("web-1"); n != 1 {
		t.Errorf("in flight %d, want 1", n)
	}
	rt.Done()
	if n := r.Balancer.InFlight("web-1"); n != 0 {
		t.Errorf("in flight %d after Done, want 0", n)
	}

	// A captured pod's IP directly: HBONE to it.
	rt, err = r.Route(nil, netip.MustParseAddrPort("10.244.1.5:9000"))
	if err != nil || !rt.HBONE || rt.Target != netip.MustParseAddrPort("10.244.1.5:9000") {
		t.Errorf("direct captured route: %+v %v", rt, err)
	}
	// A pod the mesh does not capture, and an unknown address: plain TCP.
	for _, dst := range []string{"10.244.2.9:5432", "192.0.2.7:443"} {
		rt, err = r.Route(nil, netip.MustParseAddrPort(dst))
		if err != nil || rt.HBONE || rt.Target != netip.MustParseAddrPort(dst) {
			t.Errorf("passthrough route to %s: %+v %v", dst, rt, err)
		}
	}
	// A service port with no endpoint serving it fails clearly.
	if _, err := r.Route(nil, netip.MustParseAddrPort("10.96.0.50:81")); err == nil {
		t.Error("route to an unserved service port succeeded")
	}
}

func TestAuthorizerUnknownWorkloadRefused(t *testing.T) {
	_, st := newRouter(t)
	a := &Authorizer{Store: st}
	if ok, _ := a.Authorize(proxy.Inbound{Pod: &proxy.Pod{UID: "nobody"}, MTLS: true, Dest: netip.MustParseAddrPort("10.244.9.9:80")}); ok {
		t.Error("connection to an unknown workload allowed")
	}
	id, _ := identity.New("cluster.local", "apps", "client")
	if ok, why := a.Authorize(proxy.Inbound{Pod: &proxy.Pod{UID: "web-1"}, Peer: id, MTLS: true, Dest: netip.MustParseAddrPort("10.244.1.5:8080")}); !ok {
		t.Errorf("no policies: denied (%s)", why)
	}
}

func TestRouteViaWaypoint(t *testing.T) {
	r, st := newRouter(t)
	wpHost := "waypoint.apps.svc.cluster.local"
	wpSvc := &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Name: "waypoint", Namespace: "apps", Hostname: wpHost,
		Addresses: []*workloadv1.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.60").AsSlice()}},
		Ports:     []*workloadv1.Port{{ServicePort: 15008, TargetPort: 15008}},
	}}}
	gw := &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "apps", Hostname: wpHost}}}
	api := &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Name: "api", Namespace: "apps", Hostname: "api.apps.svc.cluster.local", Waypoint: gw,
		Addresses: []*workloadv1.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.70").AsSlice()}},
		Ports:     []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}},
	}}}
	// The route is refused, not sent around the waypoint, until the
	// waypoint's Service is known.
	if err := st.Handle(workloadv1.AddressTypeURL, []*discovery.Resource{resource(t, "apps/api.apps.svc.cluster.local", api)}, nil); err != nil {
		t.Fatal(err)
	}
	if rt, err := r.Route(nil, netip.MustParseAddrPort("10.96.0.70:80")); err == nil {
		t.Fatalf("route with an unknown waypoint: %+v", rt)
	}
	wpPorts := map[string]*workloadv1.PortList{"apps/" + wpHost: {Ports: []*workloadv1.Port{{ServicePort: 15008, TargetPort: 15008}}}}
	if err := st.Handle(workloadv1.AddressTypeURL, []*discovery.Resource{
		resource(t, "apps/"+wpHost, wpSvc),
		resource(t, "waypoint-1", wl("waypoint-1", "apps", "waypoint", "10.244.1.30", false, wpPorts)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	wpID, _ := identity.New("cluster.local", "apps", "waypoint")
	rt, err := r.Route(nil, netip.MustParseAddrPort("10.96.0.70:80"))
	if err != nil {
		t.Fatal(err)
	}
	// HBONE to the waypoint pod, the Service VIP kept as the target.
	if !rt.HBONE || !rt.Waypoint || rt.Proxy != netip.MustParseAddrPort("10.244.1.30:15008") ||
		rt.Target != netip.MustParseAddrPort("10.96.0.70:80") || rt.Identity != wpID {
		t.Errorf("waypoint route: %+v", rt)
	}
	if n := r.Balancer.InFlight("waypoint-1"); n != 1 {
		t.Errorf("waypoint in flight %d, want 1", n)
	}
	rt.Done()
	if n := r.Balancer.InFlight("waypoint-1"); n != 0 {
		t.Errorf("waypoint in flight %d after Done, want 0", n)
	}
}

// A workload with a waypoint (one that takes workload traffic) is reached
// through it when addressed by its own ip:port; through a Service without a
// waypoint of its own it is reached directly (as Istio's ztunnel does).
func TestRouteViaWorkloadWaypoint(t *testing.T) {
	r, st := newRouter(t)
	wpHost := "waypoint.apps.svc.cluster.local"
	gw := &workloadv1.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadv1.GatewayAddress_Hostname{
		Hostname: &workloadv1.NamespacedHostname{Namespace: "apps", Hostname: wpHost}}}
	wpPorts := map[string]*workloadv1.PortList{"apps/" + wpHost: {Ports: []*workloadv1.Port{{ServicePort: 15008, TargetPort: 15008}}}}
	web := wl("web-1", "apps", "web", "10.244.1.5", true,
		map[string]*workloadv1.PortList{"apps/web.apps.svc.cluster.local": {Ports: []*workloadv1.Port{{ServicePort: 80, TargetPort: 8080}}}})
	web.GetWorkload().Waypoint, web.GetWorkload().WorkloadName = gw, "web"
	// Not captured: a waypoint on it means nothing (istiod-lite never sets
	// one), it stays plain TCP.
	legacy := wl("legacy-1", "legacy", "", "10.244.2.9", false, nil)
	legacy.GetWorkload().Waypoint = gw
	if err := st.Handle(workloadv1.AddressTypeURL, []*discovery.Resource{
		resource(t, "web-1", web), resource(t, "legacy-1", legacy),
		resource(t, "apps/"+wpHost, &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
			Name: "waypoint", Namespace: "apps", Hostname: wpHost,
			Addresses: []*workloadv1.NetworkAddress{{Address: netip.MustParseAddr("10.96.0.60").AsSlice()}},
			Ports:     []*workloadv1.Port{{ServicePort: 15008, TargetPort: 15008}},
		}}}),
		resource(t, "waypoint-1", wl("waypoint-1", "apps", "waypoint", "10.244.1.30", false, wpPorts)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	wpID, _ := identity.New("cluster.local", "apps", "waypoint")
	rt, err := r.Route(nil, netip.MustParseAddrPort("10.244.1.5:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if !rt.HBONE || !rt.Waypoint || rt.Proxy != netip.MustParseAddrPort("10.244.1.30:15008") ||
		rt.Target != netip.MustParseAddrPort("10.244.1.5:8080") || rt.Identity != wpID || rt.DestinationWorkload != "web" {
		t.Errorf("pod IP: route %+v, want HBONE to the waypoint for 10.244.1.5:8080", rt)
	}
	if rt.Done != nil {
		rt.Done()
	}
	webID, _ := identity.New("cluster.local", "apps", "web")
	rt, err = r.Route(nil, netip.MustParseAddrPort("10.96.0.50:80"))
	if err != nil {
		t.Fatal(err)
	}
	if !rt.HBONE || rt.Waypoint || rt.Proxy != netip.MustParseAddrPort("10.244.1.5:15008") ||
		rt.Target != netip.MustParseAddrPort("10.244.1.5:8080") || rt.Identity != webID {
		t.Errorf("Service without a waypoint: route %+v, want HBONE straight to 10.244.1.5:8080", rt)
	}
	rt.Done()
	if rt, err := r.Route(nil, netip.MustParseAddrPort("10.244.2.9:80")); err != nil || rt.HBONE || rt.Waypoint {
		t.Errorf("uncaptured workload: %+v, %v", rt, err)
	}
}
