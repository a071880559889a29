package state

import (
	"net/netip"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/authz"
)

// TestFromTranslation feeds what istiod-lite's translation produces from
// Kubernetes objects into the store (as xDS would) and checks the lookups
// and decisions ztunnel makes with it.
func TestFromTranslation(t *testing.T) {
	ix := ambient.NewIndex(ambient.Options{})
	ix.UpsertNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeAmbient}}})
	pod := func(name, ip, node string, ready bool) *corev1.Pod {
		st := corev1.ConditionTrue
		if !ready {
			st = corev1.ConditionFalse
		}
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{"app": "cart"}},
			Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "cart"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
		}
	}
	ix.UpsertPod(pod("cart-1", "10.1.0.1", "node-a", true))
	ix.UpsertPod(pod("cart-2", "10.1.0.2", "node-b", false))
	ix.UpsertService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.1.1", ClusterIPs: []string{"10.96.1.1"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP}}},
	})
	name, port, tcp := "http", int32(8080), corev1.ProtocolTCP
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "cart-x", Labels: map[string]string{discoveryv1.LabelServiceName: "cart"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
	}
	for _, p := range []string{"cart-1", "cart-2"} {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.1.0.9"},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: p}})
	}
	ix.UpsertEndpointSlice(es)
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "only-web"}}
	ap.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "cart"}}
	ap.Spec.Rules = []*securityapi.Rule{{From: []*securityapi.Rule_From{{Source: &securityapi.Source{Principals: []string{"cluster.local/ns/shop/sa/web"}}}}}}
	if _, err := ix.UpsertAuthorizationPolicy(ap); err != nil {
		t.Fatal(err)
	}
	pa := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "default"}}
	pa.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}
	if _, err := ix.UpsertPeerAuthentication(pa); err != nil {
		t.Fatal(err)
	}

	s := NewStore()
	snap := ix.Snapshot()
	var addrRes, authRes []*discovery.Resource
	for n, a := range snap.Addresses {
		addrRes = append(addrRes, resource(t, n, a))
	}
	for n, p := range snap.Authorizations {
		authRes = append(authRes, resource(t, n, p))
	}
	mustHandle(t, s, authzURL, authRes)
	mustHandle(t, s, addrURL, addrRes)

	d := s.FindDestination("", netip.MustParseAddr("10.96.1.1"))
	if d.Service.GetName() != "cart" {
		t.Fatalf("VIP: %+v", d)
	}
	key := d.Service.GetNamespace() + "/" + d.Service.GetHostname()
	if n := len(s.Endpoints(key)); n != 2 {
		t.Errorf("%d endpoints", n)
	}
	tg, err := NewBalancer(s, BalancerOptions{}).Pick(key, 80)
	if err != nil || tg.Workload.GetName() != "cart-1" || tg.Port != 8080 {
		t.Errorf("pick: %+v %v (named target port, ready only)", tg, err)
	}
	if got := uids(s.LocalWorkloads("node-b")); len(got) != 1 || got[0] != ambient.WorkloadUID("Kubernetes", "shop", "cart-2") {
		t.Errorf("node-b: %v", got)
	}

	dst := s.WorkloadByIP("", netip.MustParseAddr("10.1.0.1"))
	pols := s.PoliciesFor(dst)
	conn := authz.ConnInfo{SourceIP: netip.MustParseAddr("10.1.5.5"), DestinationIP: netip.MustParseAddr("10.1.0.1"),
		DestinationPort: 8080, Destination: dst}
	if dec := authz.Evaluate(conn, pols); dec.Allowed || !dec.PeerAuthentication() {
		t.Errorf("plain text under STRICT: %v", dec)
	}
	if ok, _ := authz.PlaintextAllowed(dst, 8080, pols); ok {
		t.Error("PlaintextAllowed under STRICT")
	}
	conn.SourceIdentity = identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	if dec := authz.Evaluate(conn, pols); !dec.Allowed || dec.Policy != "shop/only-web" {
		t.Errorf("web: %v", dec)
	}
	conn.SourceIdentity.ServiceAccount = "admin"
	if dec := authz.Evaluate(conn, pols); dec.Allowed || dec.Reason != authz.NoAllowMatched {
		t.Errorf("admin: %v", dec)
	}
}
