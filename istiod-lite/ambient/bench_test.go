package ambient

import (
	"fmt"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"
	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	benchNamespaces  = 20
	benchServices    = 1000
	benchPodsPerSvc  = 10
	benchPolicyPerNS = 2
)

// benchWorld is 1,000 Services with 10 pods each (10,000 pods) in 20
// ambient namespaces, one EndpointSlice per Service (named target port),
// and a few policies.
type benchWorld struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
	policies   []*securityv1.AuthorizationPolicy
	peerAuths  []*securityv1.PeerAuthentication
}

func newBenchWorld() *benchWorld {
	w := &benchWorld{}
	yes := true
	for n := range benchNamespaces {
		ns := fmt.Sprintf("ns-%d", n)
		w.namespaces = append(w.namespaces, ambientNS(ns))
		for p := range benchPolicyPerNS {
			w.policies = append(w.policies, authzPolicy(ns, fmt.Sprintf("allow-%d", p), &securityapi.AuthorizationPolicy{
				Selector: selector("app", fmt.Sprintf("svc-%d", n*benchServices/benchNamespaces+p)),
				Rules: []*securityapi.Rule{{
					From: from(&securityapi.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/client"}}),
					To:   to(&securityapi.Operation{Ports: []string{"8080"}}),
				}},
			}))
		}
	}
	w.peerAuths = append(w.peerAuths, peerAuthentication("istio-system", "default", 1, nil, strictMode, nil))
	for s := range benchServices {
		ns := fmt.Sprintf("ns-%d", s%benchNamespaces)
		name := fmt.Sprintf("svc-%d", s)
		w.services = append(w.services, service(ns, name, fmt.Sprintf("10.96.%d.%d", s/250, s%250+1), []corev1.ServicePort{
			svcPort("http", 80, intstr.FromString("http")),
			svcPort("grpc-api", 9000, intstr.FromInt32(9000)),
		}))
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)},
				{Name: ptr("grpc-api"), Port: ptr(int32(9000)), Protocol: ptr(corev1.ProtocolTCP)},
			},
		}
		for p := range benchPodsPerSvc {
			i := s*benchPodsPerSvc + p
			ip := fmt.Sprintf("10.%d.%d.%d", 1+i/65536, (i/256)%256, i%256)
			podName := fmt.Sprintf("%s-7d4b9c-%05d", name, p)
			pd := pod(ns, podName, ip, withLabels("app", name, "pod-template-hash", "7d4b9c"), func(p *corev1.Pod) {
				p.Spec.NodeName = fmt.Sprintf("node-%d", i%50)
				p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: name + "-7d4b9c", Controller: &yes}}
			})
			w.pods = append(w.pods, pd)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{ip},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: podName},
			})
		}
		w.slices = append(w.slices, es)
	}
	return w
}

// build feeds the world into a new Index in informer start-up order.
func (w *benchWorld) build(tb testing.TB) *Index {
	ix := NewIndex(Options{})
	for _, ns := range w.namespaces {
		ix.UpsertNamespace(ns)
	}
	for _, p := range w.peerAuths {
		if _, err := ix.UpsertPeerAuthentication(p); err != nil {
			tb.Fatal(err)
		}
	}
	for _, p := range w.policies {
		if _, err := ix.UpsertAuthorizationPolicy(p); err != nil {
			tb.Fatal(err)
		}
	}
	for _, s := range w.services {
		ix.UpsertService(s)
	}
	for _, p := range w.pods {
		ix.UpsertPod(p)
	}
	for _, es := range w.slices {
		ix.UpsertEndpointSlice(es)
	}
	return ix
}

func snapshotBytes(c Changes) int {
	n := 0
	for _, a := range c.Addresses {
		n += proto.Size(a)
	}
	for _, a := range c.Authorizations {
		n += proto.Size(a)
	}
	return n
}

func TestBenchWorldShape(t *testing.T) {
	w := newBenchWorld()
	ix := w.build(t)
	s := ix.Snapshot()
	if got, want := len(s.Addresses), benchServices*(benchPodsPerSvc+1); got != want {
		t.Fatalf("addresses %d, want %d", got, want)
	}
	wl := ix.Address(uid("ns-3", "svc-3-7d4b9c-00004")).GetWorkload()
	if pl := wl.GetServices()[svcName("ns-3", "svc-3")]; len(pl.GetPorts()) != 2 || pl.Ports[0].TargetPort != 8080 {
		t.Fatalf("workload services %v", wl.GetServices())
	}
	static := "istio-system/" + StaticStrictPolicyName
	if got := wl.GetAuthorizationPolicies(); len(got) != 1 || got[0] != static {
		t.Errorf("policies of a workload no policy selects: %v", got)
	}
	// ns-0/allow-0 selects app=svc-0.
	sel := ix.Address(uid("ns-0", "svc-0-7d4b9c-00001")).GetWorkload().GetAuthorizationPolicies()
	if len(sel) != 2 || sel[0] != static || sel[1] != "ns-0/allow-0" {
		t.Errorf("policies of a selected workload: %v", sel)
	}
}

// BenchmarkIndexBuild feeds 1,000 Services / 10,000 pods with their
// EndpointSlices (and 40 policies, a mesh-wide STRICT PeerAuthentication)
// into a new Index.
func BenchmarkIndexBuild(b *testing.B) {
	w := newBenchWorld()
	b.ReportAllocs()
	var ix *Index
	for b.Loop() {
		ix = w.build(b)
	}
	b.StopTimer()
	s := ix.Snapshot()
	b.ReportMetric(float64(len(s.Addresses)), "addresses")
	b.ReportMetric(float64(snapshotBytes(s)), "snapshot-bytes")
	// Heap held by one built index (objects are shared with the caller, so
	// this is the index's own structures and the derived resources).
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ix2 := w.build(b)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(ix2)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "index-heap-MiB")
}

// BenchmarkPodChurn measures one pod update (a readiness flip) in the
// 10,000-pod index, and the size of the delta it produces against the full
// snapshot.
func BenchmarkPodChurn(b *testing.B) {
	w := newBenchWorld()
	ix := w.build(b)
	ready := w.pods[4242]
	unready := ready.DeepCopy()
	notReady(unready)
	full := snapshotBytes(ix.Snapshot())
	b.ReportAllocs()
	deltaBytes, deltas := 0, 0
	i := 0
	for b.Loop() {
		p := unready
		if i%2 == 1 {
			p = ready
		}
		i++
		c := ix.UpsertPod(p)
		if len(c.Addresses) != 1 {
			b.Fatalf("pod update changed %d addresses", len(c.Addresses))
		}
		deltaBytes += snapshotBytes(c)
		deltas++
	}
	b.ReportMetric(float64(deltaBytes)/float64(deltas), "delta-bytes")
	b.ReportMetric(float64(full), "snapshot-bytes")
}
