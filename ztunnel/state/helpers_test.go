package state

import (
	"net/netip"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
)

// Store.Handle is an xdsclient.Handler.
var _ xdsclient.Handler = NewStore().Handle

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func uidOf(name string) string { return "Kubernetes//Pod/ns/" + name }

type wlOpt func(*workloadv1.Workload)

// wl builds a workload "ns/<name>" on node-1, healthy, captured.
func wl(name, addr string, opts ...wlOpt) *workloadv1.Workload {
	w := &workloadv1.Workload{
		Uid: uidOf(name), Name: name, Namespace: "ns", Node: "node-1",
		TunnelProtocol: workloadv1.TunnelProtocol_HBONE, ServiceAccount: "sa",
	}
	if addr != "" {
		w.Addresses = [][]byte{ip(addr)}
	}
	for _, o := range opts {
		o(w)
	}
	return w
}

func onNode(n string) wlOpt { return func(w *workloadv1.Workload) { w.Node = n } }

func unhealthy(w *workloadv1.Workload) { w.Status = workloadv1.WorkloadStatus_UNHEALTHY }

func withPolicies(names ...string) wlOpt {
	return func(w *workloadv1.Workload) { w.AuthorizationPolicies = names }
}

// backs makes the workload an endpoint of svc with service->target ports.
func backs(svc string, ports ...uint32) wlOpt {
	return func(w *workloadv1.Workload) {
		if w.Services == nil {
			w.Services = map[string]*workloadv1.PortList{}
		}
		pl := &workloadv1.PortList{}
		for i := 0; i+1 < len(ports); i += 2 {
			pl.Ports = append(pl.Ports, &workloadv1.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
		}
		w.Services[svc] = pl
	}
}

// svc builds a service "ns/<name>.ns.svc.cluster.local" with a VIP and
// service->target ports.
func svc(name, vip string, ports ...uint32) *workloadv1.Service {
	s := &workloadv1.Service{Name: name, Namespace: "ns", Hostname: name + ".ns.svc.cluster.local"}
	if vip != "" {
		s.Addresses = []*workloadv1.NetworkAddress{{Address: ip(vip)}}
	}
	for i := 0; i+1 < len(ports); i += 2 {
		s.Ports = append(s.Ports, &workloadv1.Port{ServicePort: ports[i], TargetPort: ports[i+1]})
	}
	return s
}

func svcKey(name string) string { return "ns/" + name + ".ns.svc.cluster.local" }

func resource(t testing.TB, name string, m proto.Message) *discovery.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "1", Resource: a}
}

// addrs builds Address resources for workloads and services.
func addrs(t testing.TB, items ...proto.Message) []*discovery.Resource {
	t.Helper()
	var out []*discovery.Resource
	for _, it := range items {
		switch v := it.(type) {
		case *workloadv1.Workload:
			out = append(out, resource(t, v.GetUid(), &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: v}}))
		case *workloadv1.Service:
			out = append(out, resource(t, v.GetNamespace()+"/"+v.GetHostname(), &workloadv1.Address{Type: &workloadv1.Address_Service{Service: v}}))
		default:
			t.Fatalf("unexpected %T", it)
		}
	}
	return out
}

func mustHandle(t testing.TB, s *Store, typeURL string, upserts []*discovery.Resource, removed ...string) {
	t.Helper()
	if err := s.Handle(typeURL, upserts, removed); err != nil {
		t.Fatal(err)
	}
}

func uids(ws []*workloadv1.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.GetUid())
	}
	return out
}

func endpointUIDs(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.Workload.GetUid())
	}
	return out
}
