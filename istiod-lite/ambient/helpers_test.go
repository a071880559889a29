package ambient

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// Test object builders. Options are functions that modify the object.

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func ambientNS(name string) *corev1.Namespace {
	return namespace(name, map[string]string{LabelDataplaneMode: DataplaneModeAmbient})
}

type podOpt func(*corev1.Pod)

func pod(ns, name, ip string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "app"}},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "sa"},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	if ip != "" {
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func withLabels(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

func notReady(p *corev1.Pod) {
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
}

type svcOpt func(*corev1.Service)

func service(ns, name, vip string, ports []corev1.ServicePort, opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: vip, ClusterIPs: []string{vip}, Ports: ports, Type: corev1.ServiceTypeClusterIP},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func svcPort(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
}

func ptr[T any](v T) *T { return &v }

// slice builds an EndpointSlice of service svc listing pods (all with the
// same resolved ports: name -> port).
func slice(ns, name, svc string, ports map[string]int32, pods ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for n, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(corev1.ProtocolTCP)})
	}
	for _, p := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{"10.0.0.1"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p},
		})
	}
	return es
}

func authzPolicy(ns, name string, spec *securityapi.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	p := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	proto.Merge(&p.Spec, spec)
	return p
}

func peerAuthentication(ns, name string, created int64, selector map[string]string, mode securityapi.PeerAuthentication_MutualTLS_Mode, ports map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
	p := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.Unix(created, 0)}}
	p.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	if selector != nil {
		p.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
	}
	if ports != nil {
		p.Spec.PortLevelMtls = map[uint32]*securityapi.PeerAuthentication_MutualTLS{}
		for port, m := range ports {
			p.Spec.PortLevelMtls[port] = &securityapi.PeerAuthentication_MutualTLS{Mode: m}
		}
	}
	return p
}

func uid(ns, name string) string { return WorkloadUID("Kubernetes", ns, name) }

func svcName(ns, name string) string {
	return ServiceResourceName(ns, ServiceHostname(name, ns, "cluster.local"))
}

func ipBytes(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// workloadOf returns the Workload named by uid from changes, failing if absent.
func workloadOf(t *testing.T, c Changes, name string) *workloadv1.Workload {
	t.Helper()
	a, ok := c.Addresses[name]
	if !ok || a.GetWorkload() == nil {
		t.Fatalf("changes have no workload %q; have %v", name, addressNames(c))
	}
	return a.GetWorkload()
}

func addressNames(c Changes) []string {
	var out []string
	for n := range c.Addresses {
		out = append(out, n)
	}
	return out
}

func mustEqualProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got: %s\nwant: %s", what, prototext.Format(got), prototext.Format(want))
	}
}

func mustEmpty(t *testing.T, what string, c Changes) {
	t.Helper()
	if !c.Empty() {
		t.Errorf("%s: want no changes, got addresses %v removed %v authorizations %d removed %v",
			what, addressNames(c), c.RemovedAddresses, len(c.Authorizations), c.RemovedAuthorizations)
	}
}
