package agent

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
)

// genState is the cluster state istiod-lite's generator reads: one Service
// "echo" (VIP 10.96.0.10) served by waypoint ns/waypoint, its endpoint on
// loopback (a captured pod), and the AuthorizationPolicies given.
type genState struct {
	svc      *corev1.Service
	slice    *discoveryv1.EndpointSlice
	gw       *gatewayv1.Gateway
	policies []*securityv1.AuthorizationPolicy
	pods     []*corev1.Pod
}

func (s *genState) Namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}
func (s *genState) Services() []*corev1.Service { return []*corev1.Service{s.svc} }
func (s *genState) Service(ns, name string) *corev1.Service {
	if ns == s.svc.Namespace && name == s.svc.Name {
		return s.svc
	}
	return nil
}
func (s *genState) EndpointSlices(ns, svc string) []*discoveryv1.EndpointSlice {
	if ns == s.svc.Namespace && svc == s.svc.Name {
		return []*discoveryv1.EndpointSlice{s.slice}
	}
	return nil
}
func (s *genState) Workload(ip netip.Addr) (waypointxds.Workload, bool) {
	if ip == netip.MustParseAddr("127.0.0.1") {
		return waypointxds.Workload{Name: "echo-v1", Namespace: "ns", ServiceAccount: "backend", Captured: true}, true
	}
	return waypointxds.Workload{}, false
}
func (s *genState) Pods() []*corev1.Pod                                      { return s.pods }
func (s *genState) HTTPRoutes() []*gatewayv1.HTTPRoute                       { return nil }
func (s *genState) GRPCRoutes() []*gatewayv1.GRPCRoute                       { return nil }
func (s *genState) ReferenceGranted(string, string, string) bool             { return false }
func (s *genState) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return s.policies }
func (s *genState) Gateway(ns, name string) *gatewayv1.Gateway {
	if ns == s.gw.Namespace && name == s.gw.Name {
		return s.gw
	}
	return nil
}

// TestGeneratedConfig runs the waypoint on what istiod-lite's generator
// (istiod-lite/waypointxds) produces, policies included: every resource is
// accepted and requests follow it.
func TestGeneratedConfig(t *testing.T) {
	m := startMesh(t)
	httpPort, tcpPort, autoPort := int32(80), int32(9000), int32(7000)
	named := func(s string) *string { return &s }
	tcpProto := corev1.ProtocolTCP
	st := &genState{
		svc: &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "echo", Labels: map[string]string{waypointxds.LabelUseWaypoint: "waypoint"}},
			Spec: corev1.ServiceSpec{ClusterIP: vip, Ports: []corev1.ServicePort{
				{Name: "http", Port: httpPort, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(m.v1.addr.Port()))},
				{Name: "tcp-echo", Port: tcpPort, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(m.tcpEcho.Port()))},
				{Name: "web", Port: autoPort, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(m.v1.addr.Port()))},
			}},
		},
		slice: &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "echo-abc"},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: named("http"), Port: ptr(int32(m.v1.addr.Port())), Protocol: &tcpProto},
				{Name: named("tcp-echo"), Port: ptr(int32(m.tcpEcho.Port())), Protocol: &tcpProto},
				{Name: named("web"), Port: ptr(int32(m.v1.addr.Port())), Protocol: &tcpProto},
			},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "echo-v1"}}},
		},
		// The waypoint takes workload traffic too: the backend pod (at
		// loopback) gets the direct chains and the encap cluster.
		pods: []*corev1.Pod{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "echo-v1", Labels: map[string]string{
				"istio.io/dataplane-mode": "ambient", waypointxds.LabelUseWaypoint: "waypoint"}},
			Spec:   corev1.PodSpec{ServiceAccountName: "backend"},
			Status: corev1.PodStatus{PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}}},
		}},
		gw: &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "waypoint", Labels: map[string]string{waypointxds.LabelWaypointFor: "all"}},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}}},
		policies: []*securityv1.AuthorizationPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "allow-client"},
			Spec: securityv1beta1.AuthorizationPolicy{
				TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "waypoint"}},
				Action:     securityv1beta1.AuthorizationPolicy_ALLOW,
				Rules: []*securityv1beta1.Rule{{
					From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"client-ns"}}}},
					To:   []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Paths: []string{"/allowed*"}}}},
				}},
			},
		}},
	}
	res, rep, err := waypointxds.Build(st, waypointxds.Waypoint{Namespace: "ns", Name: "waypoint"}, waypointxds.Options{RootCerts: m.cp.ca.RootsPEM()})
	if err != nil {
		t.Fatal(err)
	}
	// The policy's paths cannot apply to the TCP chains (reported, fail
	// closed there); the HTTP chains enforce it as written.
	_ = rep
	before := m.cp.nackCount()
	for _, typeURL := range []string{resourcev3.SecretType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ListenerType} {
		all := map[string]types.Resource{}
		for name, msg := range res[typeURL] {
			all[name] = msg.(types.Resource)
		}
		m.cp.caches[typeURL].SetResources(all)
	}
	c := m.httpClient(80, false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if r := m.do(t, c, "echo.ns.svc.cluster.local", "/denied", nil); r.code == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("generated policy never applied (NACKs: %d, last %q)", m.cp.nackCount()-before, m.cp.lastNack())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := m.cp.nackCount() - before; n > 0 {
		t.Fatalf("%d NACKs of generated resources, last: %s", n, m.cp.lastNack())
	}
	if r := m.do(t, c, "echo.ns.svc.cluster.local", "/allowed/x", nil); r.code != 200 || r.echo.Backend != "v1" {
		t.Errorf("allowed path: %d %+v", r.code, r.echo)
	}
	if r := m.do(t, c, "echo.ns.svc.cluster.local", "/public/../denied", nil); r.code != 403 {
		t.Errorf("dot segments must not bypass the policy: %d", r.code)
	}
	if r := m.do(t, m.httpClient(7000, true), "echo.ns.svc.cluster.local", "/allowed", nil); r.code != 200 || r.echo.Proto != "HTTP/2.0" {
		t.Errorf("h2c on the detected port: %d %+v", r.code, r.echo)
	}
	// Workload-addressed: the pod's own address, through direct-http and
	// encap, under the Gateway-wide policy.
	pod := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), m.v1.addr.Port())
	pc := m.targetClient(pod, false)
	if r := m.do(t, pc, pod.String(), "/allowed/pod", nil); r.code != 200 || r.echo.Backend != "v1" {
		t.Errorf("pod address: %d %+v", r.code, r.echo)
	}
	if r := m.do(t, pc, pod.String(), "/denied", nil); r.code != 403 {
		t.Errorf("pod address, denied path: %d, want 403", r.code)
	}
}

func ptr[T any](v T) *T { return &v }
