package ambient

import (
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

func TestPodTranslation(t *testing.T) {
	yes := true
	owner := func(kind, name string) podOpt {
		return func(p *corev1.Pod) {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}}
		}
	}
	tests := []struct {
		name      string
		nsLabels  map[string]string
		pod       *corev1.Pod
		gone      bool // no Workload at all
		check     func(t *testing.T, w *workloadv1.Workload)
		wantProto *workloadv1.Workload
	}{
		{
			name:     "captured pod, full translation",
			nsLabels: map[string]string{LabelDataplaneMode: DataplaneModeAmbient},
			pod: pod("ns", "web-7d4b9-abcde", "10.1.0.5",
				owner("ReplicaSet", "web-7d4b9"), withLabels("pod-template-hash", "7d4b9", "version", "v2")),
			wantProto: &workloadv1.Workload{
				Uid: uid("ns", "web-7d4b9-abcde"), Name: "web-7d4b9-abcde", Namespace: "ns",
				Addresses: [][]byte{ipBytes("10.1.0.5")}, TunnelProtocol: workloadv1.TunnelProtocol_HBONE,
				ServiceAccount: "sa", Node: "node-1", CanonicalName: "app", CanonicalRevision: "v2",
				WorkloadType: workloadv1.WorkloadType_DEPLOYMENT, WorkloadName: "web",
				Status: workloadv1.WorkloadStatus_HEALTHY, ClusterId: "Kubernetes",
			},
		},
		{
			name:     "pod without IP yet: a workload with no addresses",
			nsLabels: map[string]string{LabelDataplaneMode: DataplaneModeAmbient},
			pod: pod("ns", "pending", "", func(p *corev1.Pod) {
				p.Status.Phase = corev1.PodPending
				p.Status.Conditions = nil
			}),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if len(w.Addresses) != 0 || w.Status != workloadv1.WorkloadStatus_UNHEALTHY || w.TunnelProtocol != workloadv1.TunnelProtocol_HBONE {
					t.Errorf("got addresses %v status %v tunnel %v", w.Addresses, w.Status, w.TunnelProtocol)
				}
			},
		},
		{
			name:     "hostNetwork pod is never captured",
			nsLabels: map[string]string{LabelDataplaneMode: DataplaneModeAmbient},
			pod: pod("ns", "hostnet", "192.168.1.10", withLabels(LabelDataplaneMode, DataplaneModeAmbient),
				func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.TunnelProtocol != workloadv1.TunnelProtocol_NONE {
					t.Errorf("tunnel = %v, want NONE", w.TunnelProtocol)
				}
			},
		},
		{
			name:     "pod opt-out label in an ambient namespace",
			nsLabels: map[string]string{LabelDataplaneMode: DataplaneModeAmbient},
			pod:      pod("ns", "optout", "10.1.0.6", withLabels(LabelDataplaneMode, DataplaneModeNone)),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.TunnelProtocol != workloadv1.TunnelProtocol_NONE {
					t.Errorf("tunnel = %v, want NONE", w.TunnelProtocol)
				}
			},
		},
		{
			name: "pod opt-in label in a plain namespace",
			pod:  pod("ns", "optin", "10.1.0.7", withLabels(LabelDataplaneMode, DataplaneModeAmbient)),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.TunnelProtocol != workloadv1.TunnelProtocol_HBONE {
					t.Errorf("tunnel = %v, want HBONE", w.TunnelProtocol)
				}
			},
		},
		{
			name: "namespace not ambient",
			pod:  pod("ns", "plain", "10.1.0.8"),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.TunnelProtocol != workloadv1.TunnelProtocol_NONE {
					t.Errorf("tunnel = %v, want NONE", w.TunnelProtocol)
				}
			},
		},
		{
			name: "succeeded pod is no workload",
			pod:  pod("ns", "done", "10.1.0.9", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
			gone: true,
		},
		{
			name: "not ready, dual stack, default service account",
			pod: pod("ns", "ds", "10.1.0.10", notReady, func(p *corev1.Pod) {
				p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::10"})
				p.Spec.ServiceAccountName = ""
			}),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.Status != workloadv1.WorkloadStatus_UNHEALTHY || len(w.Addresses) != 2 || len(w.Addresses[1]) != 16 || w.ServiceAccount != "default" {
					t.Errorf("status %v addresses %v sa %q", w.Status, w.Addresses, w.ServiceAccount)
				}
			},
		},
		{
			name: "cronjob owner",
			pod:  pod("ns", "backup-28000000-x", "10.1.0.11", owner("Job", "backup-28000000")),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.WorkloadType != workloadv1.WorkloadType_CRONJOB || w.WorkloadName != "backup" {
					t.Errorf("got %v %q", w.WorkloadType, w.WorkloadName)
				}
			},
		},
		{
			name: "job owner, canonical labels",
			pod: pod("ns", "migrate-x", "10.1.0.12", owner("Job", "migrate"),
				withLabels("service.istio.io/canonical-name", "mig", "app.kubernetes.io/version", "3")),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.WorkloadType != workloadv1.WorkloadType_JOB || w.WorkloadName != "migrate" || w.CanonicalName != "mig" || w.CanonicalRevision != "3" {
					t.Errorf("got %v %q %q %q", w.WorkloadType, w.WorkloadName, w.CanonicalName, w.CanonicalRevision)
				}
			},
		},
		{
			name: "statefulset owner, no labels",
			pod: pod("ns", "db-0", "10.1.0.13", owner("StatefulSet", "db"), func(p *corev1.Pod) {
				p.Labels = nil
			}),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if w.WorkloadType != workloadv1.WorkloadType_POD || w.WorkloadName != "db" || w.CanonicalName != "db" || w.CanonicalRevision != "latest" {
					t.Errorf("got %v %q %q %q", w.WorkloadType, w.WorkloadName, w.CanonicalName, w.CanonicalRevision)
				}
			},
		},
		{
			name: "garbage pod IP is skipped",
			pod:  pod("ns", "garbage", "not-an-ip"),
			check: func(t *testing.T, w *workloadv1.Workload) {
				if len(w.Addresses) != 0 {
					t.Errorf("addresses %v", w.Addresses)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ix := NewIndex(Options{})
			ix.UpsertNamespace(namespace(tc.pod.Namespace, tc.nsLabels))
			c := ix.UpsertPod(tc.pod)
			name := uid(tc.pod.Namespace, tc.pod.Name)
			if tc.gone {
				mustEmpty(t, "terminal pod", c)
				if ix.Address(name) != nil {
					t.Fatal("terminal pod has a workload")
				}
				return
			}
			w := workloadOf(t, c, name)
			if tc.wantProto != nil {
				mustEqualProto(t, "workload", w, tc.wantProto)
			}
			if tc.check != nil {
				tc.check(t, w)
			}
		})
	}
}

func TestPodGoesTerminalIsRemoved(t *testing.T) {
	ix := NewIndex(Options{})
	p := pod("ns", "a", "10.0.0.1")
	ix.UpsertPod(p)
	p2 := p.DeepCopy()
	p2.Status.Phase = corev1.PodFailed
	c := ix.UpsertPod(p2)
	if !slices.Equal(c.RemovedAddresses, []string{uid("ns", "a")}) || len(c.Addresses) != 0 {
		t.Fatalf("got %+v", c)
	}
	mustEmpty(t, "delete after terminal", ix.DeletePod("ns", "a"))
}

func TestNamespaceLabelFlip(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(namespace("ns", nil))
	ix.UpsertNamespace(namespace("other", nil))
	for _, n := range []string{"a", "b", "c"} {
		ix.UpsertPod(pod("ns", n, "10.0.0.1"))
	}
	ix.UpsertPod(pod("ns", "out", "10.0.0.2", withLabels(LabelDataplaneMode, DataplaneModeNone)))
	ix.UpsertPod(pod("other", "x", "10.0.1.1"))

	on := ix.UpsertNamespace(ambientNS("ns"))
	if len(on.Addresses) != 3 {
		t.Fatalf("flip on: want the 3 enrolled pods, got %v", addressNames(on))
	}
	for _, n := range []string{"a", "b", "c"} {
		if w := workloadOf(t, on, uid("ns", n)); w.TunnelProtocol != workloadv1.TunnelProtocol_HBONE {
			t.Errorf("%s: tunnel %v", n, w.TunnelProtocol)
		}
	}
	mustEmpty(t, "same labels again", ix.UpsertNamespace(ambientNS("ns")))

	// Another label change that does not affect translation: no change.
	mustEmpty(t, "unrelated label", ix.UpsertNamespace(namespace("ns", map[string]string{LabelDataplaneMode: DataplaneModeAmbient, "team": "x"})))

	off := ix.UpsertNamespace(namespace("ns", nil))
	if len(off.Addresses) != 3 {
		t.Fatalf("flip off: want 3, got %v", addressNames(off))
	}
	for _, n := range []string{"a", "b", "c"} {
		if w := workloadOf(t, off, uid("ns", n)); w.TunnelProtocol != workloadv1.TunnelProtocol_NONE {
			t.Errorf("%s: tunnel %v", n, w.TunnelProtocol)
		}
	}
}

func TestOnePodChangeIsOneWorkload(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ports := []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))}
	ix.UpsertService(service("ns", "web", "10.96.0.10", ports))
	var names []string
	for i := range 20 {
		n := "p" + string(rune('a'+i))
		names = append(names, n)
		ix.UpsertPod(pod("ns", n, "10.0.0.1"))
	}
	ix.UpsertEndpointSlice(slice("ns", "web-1", "web", map[string]int32{"http": 8080}, names...))

	p := pod("ns", "pa", "10.0.0.1", notReady)
	c := ix.UpsertPod(p)
	if len(c.Addresses) != 1 || len(c.RemovedAddresses) != 0 || len(c.Authorizations) != 0 {
		t.Fatalf("want exactly one workload, got %v", addressNames(c))
	}
	if w := workloadOf(t, c, uid("ns", "pa")); w.Status != workloadv1.WorkloadStatus_UNHEALTHY || w.Services[svcName("ns", "web")] == nil {
		t.Errorf("got %v", w)
	}
	mustEmpty(t, "no-op pod update", ix.UpsertPod(p.DeepCopy()))
	c = ix.DeletePod("ns", "pb")
	if !slices.Equal(c.RemovedAddresses, []string{uid("ns", "pb")}) || len(c.Addresses) != 0 {
		t.Errorf("delete: got %+v", c)
	}
}

func TestNamedTargetPortsResolvedPerPod(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ports := []corev1.ServicePort{
		svcPort("http", 80, intstr.FromString("web")),
		svcPort("metrics", 9090, intstr.FromInt32(9100)),
		{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(53), Protocol: corev1.ProtocolUDP},
	}
	ix.UpsertPod(pod("ns", "old", "10.0.0.1"))
	ix.UpsertPod(pod("ns", "new", "10.0.0.2"))
	// Pods that name the port differently land in different slices.
	ix.UpsertEndpointSlice(slice("ns", "web-a", "web", map[string]int32{"http": 8080, "metrics": 9100}, "old"))
	ix.UpsertEndpointSlice(slice("ns", "web-b", "web", map[string]int32{"http": 8081, "metrics": 9100}, "new"))
	c := ix.UpsertService(service("ns", "web", "10.96.0.10", ports))

	svc := c.Addresses[svcName("ns", "web")].GetService()
	mustEqualProto(t, "service", svc, &workloadv1.Service{
		Name: "web", Namespace: "ns", Hostname: "web.ns.svc.cluster.local",
		Addresses: []*workloadv1.NetworkAddress{{Address: ipBytes("10.96.0.10")}},
		Ports: []*workloadv1.Port{
			{ServicePort: 80, TargetPort: 0, AppProtocol: "http"},
			{ServicePort: 9090, TargetPort: 9100},
		},
	})
	for pod, target := range map[string]uint32{"old": 8080, "new": 8081} {
		w := workloadOf(t, c, uid("ns", pod))
		mustEqualProto(t, pod+" ports", w.Services[svcName("ns", "web")], &workloadv1.PortList{Ports: []*workloadv1.Port{
			{ServicePort: 80, TargetPort: target, AppProtocol: "http"},
			{ServicePort: 9090, TargetPort: 9100},
		}})
	}
	// Headless: no VIP.
	c = ix.UpsertService(service("ns", "web", "None", ports))
	if a := c.Addresses[svcName("ns", "web")].GetService().GetAddresses(); len(a) != 0 {
		t.Errorf("headless service has VIPs %v", a)
	}
	// Deleting the service removes it from its workloads.
	c = ix.DeleteService("ns", "web")
	if !slices.Equal(c.RemovedAddresses, []string{svcName("ns", "web")}) || len(c.Addresses) != 2 {
		t.Fatalf("delete service: %+v", c)
	}
	if len(workloadOf(t, c, uid("ns", "old")).Services) != 0 {
		t.Error("deleted service still on workload")
	}
}

func TestEndpointSliceChurn(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ix.UpsertService(service("ns", "web", "10.96.0.10", []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))}))
	for _, n := range []string{"a", "b", "c", "d"} {
		ix.UpsertPod(pod("ns", n, "10.0.0.1"))
	}
	ports := map[string]int32{"http": 8080}
	c := ix.UpsertEndpointSlice(slice("ns", "web-1", "web", ports, "a", "b", "c"))
	if len(c.Addresses) != 3 {
		t.Fatalf("initial slice: %v", addressNames(c))
	}
	// c leaves, d joins: exactly c and d change.
	c = ix.UpsertEndpointSlice(slice("ns", "web-1", "web", ports, "a", "b", "d"))
	got := addressNames(c)
	slices.Sort(got)
	if want := []string{uid("ns", "c"), uid("ns", "d")}; !slices.Equal(got, want) {
		t.Fatalf("churn changed %v, want %v", got, want)
	}
	if len(workloadOf(t, c, uid("ns", "c")).Services) != 0 || len(workloadOf(t, c, uid("ns", "d")).Services) != 1 {
		t.Error("wrong services after churn")
	}
	// Same slice again (e.g. a resync, or a readiness flip in the slice):
	// nothing.
	mustEmpty(t, "same slice", ix.UpsertEndpointSlice(slice("ns", "web-1", "web", ports, "a", "b", "d")))
	// A second slice listing a pod already listed (dual stack): no change.
	mustEmpty(t, "duplicate listing", ix.UpsertEndpointSlice(slice("ns", "web-1-v6", "web", ports, "a")))
	// The port changes: every pod of the slice changes.
	c = ix.UpsertEndpointSlice(slice("ns", "web-1", "web", map[string]int32{"http": 8888}, "a", "b", "d"))
	if len(c.Addresses) != 3 {
		t.Fatalf("port change: %v", addressNames(c))
	}
	// The slice goes away: its pods lose the service (a keeps it via web-1-v6).
	c = ix.DeleteEndpointSlice("ns", "web-1")
	if len(c.Addresses) != 3 {
		t.Fatalf("delete slice: %v", addressNames(c))
	}
	if len(workloadOf(t, c, uid("ns", "a")).Services) != 1 || len(workloadOf(t, c, uid("ns", "b")).Services) != 0 {
		t.Error("wrong services after slice delete")
	}
	// Slice arriving before its pod: the pod gets the service when it comes.
	ix.UpsertEndpointSlice(slice("ns", "web-2", "web", ports, "late"))
	w := workloadOf(t, ix.UpsertPod(pod("ns", "late", "10.0.0.9")), uid("ns", "late"))
	if w.Services[svcName("ns", "web")] == nil {
		t.Error("late pod has no service")
	}
}

func TestNoOpUpdatesProduceNoChanges(t *testing.T) {
	ix := NewIndex(Options{})
	ns := ambientNS("ns")
	p := pod("ns", "a", "10.0.0.1")
	svc := service("ns", "web", "10.96.0.10", []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))})
	es := slice("ns", "web-1", "web", map[string]int32{"http": 8080}, "a")
	ap := authzPolicy("ns", "deny", denyFromNamespace("bad"))
	pa := peerAuthentication("ns", "strict", 1, nil, strictMode, nil)
	ix.UpsertNamespace(ns)
	ix.UpsertPod(p)
	ix.UpsertService(svc)
	ix.UpsertEndpointSlice(es)
	mustNoErr(ix.UpsertAuthorizationPolicy(ap))
	mustNoErr(ix.UpsertPeerAuthentication(pa))

	mustEmpty(t, "namespace", ix.UpsertNamespace(ns.DeepCopy()))
	mustEmpty(t, "pod", ix.UpsertPod(p.DeepCopy()))
	mustEmpty(t, "service", ix.UpsertService(svc.DeepCopy()))
	mustEmpty(t, "slice", ix.UpsertEndpointSlice(es.DeepCopy()))
	c, err := ix.UpsertAuthorizationPolicy(ap.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	mustEmpty(t, "authorization policy", c)
	c, err = ix.UpsertPeerAuthentication(pa.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	mustEmpty(t, "peer authentication", c)
	mustEmpty(t, "delete unknown pod", ix.DeletePod("ns", "nope"))
	mustEmpty(t, "delete unknown service", ix.DeleteService("ns", "nope"))
	mustEmpty(t, "delete unknown policy", ix.DeleteAuthorizationPolicy("ns", "nope"))
}

func mustNoErr(_ Changes, err error) {
	if err != nil {
		panic(err)
	}
}

func TestWaypointLabels(t *testing.T) {
	wp := func(name, ns string) *workloadv1.GatewayAddress {
		return waypointAddress(name, ns, "cluster.local")
	}
	ports := []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))}
	withSvcLabels := func(kv ...string) svcOpt {
		return func(s *corev1.Service) {
			s.Labels = map[string]string{}
			for i := 0; i+1 < len(kv); i += 2 {
				s.Labels[kv[i]] = kv[i+1]
			}
		}
	}
	tests := []struct {
		name     string
		nsLabels map[string]string
		svc      *corev1.Service
		want     *workloadv1.GatewayAddress
	}{
		{"no labels", nil, service("ns", "s", "10.96.0.1", ports), nil},
		{"namespace label", map[string]string{LabelUseWaypoint: "wp"}, service("ns", "s", "10.96.0.1", ports), wp("wp", "ns")},
		{"namespace label with waypoint namespace", map[string]string{LabelUseWaypoint: "wp", LabelUseWaypointNamespace: "infra"},
			service("ns", "s", "10.96.0.1", ports), wp("wp", "infra")},
		{"service label overrides", map[string]string{LabelUseWaypoint: "wp"},
			service("ns", "s", "10.96.0.1", ports, withSvcLabels(LabelUseWaypoint, "svc-wp")), wp("svc-wp", "ns")},
		{"service opts out", map[string]string{LabelUseWaypoint: "wp"},
			service("ns", "s", "10.96.0.1", ports, withSvcLabels(LabelUseWaypoint, WaypointNone)), nil},
		{"service label with namespace", nil,
			service("ns", "s", "10.96.0.1", ports, withSvcLabels(LabelUseWaypoint, "w", LabelUseWaypointNamespace, "shared")), wp("w", "shared")},
		{"the waypoint's own service never loops into it", map[string]string{LabelUseWaypoint: "wp"},
			service("ns", "wp", "10.96.0.1", ports, withSvcLabels(labelGatewayName, "wp", labelGatewayManaged, "istio.io-mesh-controller")), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ix := NewIndex(Options{})
			ix.UpsertNamespace(namespace("ns", tc.nsLabels))
			c := ix.UpsertService(tc.svc)
			got := c.Addresses[svcName("ns", "s")].GetService().GetWaypoint()
			mustEqualProto(t, "waypoint", got, tc.want)
		})
	}

	// Namespace label change reaches the services; pods get a waypoint only
	// from their own label, and only when captured.
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ix.UpsertService(service("ns", "s", "10.96.0.1", ports))
	ix.UpsertPod(pod("ns", "a", "10.0.0.1"))
	c := ix.UpsertNamespace(namespace("ns", map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"}))
	if len(c.Addresses) != 1 || c.Addresses[svcName("ns", "s")] == nil {
		t.Fatalf("namespace waypoint: %v", addressNames(c))
	}
	w := workloadOf(t, ix.UpsertPod(pod("ns", "a", "10.0.0.1", withLabels(LabelUseWaypoint, "pod-wp"))), uid("ns", "a"))
	mustEqualProto(t, "pod waypoint", w.Waypoint, wp("pod-wp", "ns"))
	w = workloadOf(t, ix.UpsertPod(pod("ns", "a", "10.0.0.1", withLabels(LabelUseWaypoint, "pod-wp", LabelDataplaneMode, DataplaneModeNone))), uid("ns", "a"))
	if w.Waypoint != nil {
		t.Error("uncaptured pod has a waypoint")
	}
}

// A waypoint's traffic type decides whether a Service labelled to use it is
// sent to it; an unknown waypoint is assumed to take service traffic.
func TestWaypointTrafficType(t *testing.T) {
	ports := []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))}
	ix := NewIndex(Options{})
	ix.UpsertNamespace(namespace("ns", map[string]string{LabelUseWaypoint: "wp"}))
	c := ix.UpsertService(service("ns", "s", "10.96.0.1", ports))
	want := waypointAddress("wp", "ns", "cluster.local")
	mustEqualProto(t, "unknown waypoint", c.Addresses[svcName("ns", "s")].GetService().GetWaypoint(), want)
	steps := []struct {
		trafficFor string
		delete     bool
		want       *workloadv1.GatewayAddress
	}{
		{trafficFor: WaypointForWorkload, want: nil},
		{trafficFor: WaypointForAll, want: want},
		{trafficFor: WaypointForNone, want: nil},
		{trafficFor: "", want: want}, // the label's default: service
		{trafficFor: WaypointForWorkload, want: nil},
		{delete: true, want: want},
	}
	for i, st := range steps {
		if st.delete {
			c = ix.DeleteWaypoint("ns", "wp")
		} else {
			c = ix.UpsertWaypoint("ns", "wp", st.trafficFor)
		}
		a := c.Addresses[svcName("ns", "s")]
		if a == nil {
			t.Fatalf("step %d (%q): the Service did not change: %v", i, st.trafficFor, addressNames(c))
		}
		mustEqualProto(t, fmt.Sprintf("step %d (%q)", i, st.trafficFor), a.GetService().GetWaypoint(), st.want)
	}
	// Another namespace's waypoint of the same name changes nothing here.
	if c := ix.UpsertWaypoint("other", "wp", WaypointForWorkload); c.Addresses[svcName("ns", "s")] != nil {
		t.Error("another namespace's waypoint changed the Service")
	}
}

func TestAddressAliases(t *testing.T) {
	w := &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
		Network: "net1", Addresses: [][]byte{ipBytes("10.0.0.1"), ipBytes("fd00::1")},
	}}}
	if got, want := AddressAliases(w), []string{"net1/10.0.0.1", "net1/fd00::1"}; !slices.Equal(got, want) {
		t.Errorf("workload aliases %v, want %v", got, want)
	}
	s := &workloadv1.Address{Type: &workloadv1.Address_Service{Service: &workloadv1.Service{
		Namespace: "ns", Hostname: "h", Addresses: []*workloadv1.NetworkAddress{{Address: ipBytes("10.96.0.1")}},
	}}}
	if got, want := AddressAliases(s), []string{"/10.96.0.1"}; !slices.Equal(got, want) {
		t.Errorf("service aliases %v, want %v", got, want)
	}
	if AddressResourceName(s) != "ns/h" || AddressResourceName(w) != "" {
		t.Error("AddressResourceName")
	}
}

func TestChangesMerge(t *testing.T) {
	a := &workloadv1.Address{}
	var c Changes
	c.Merge(Changes{Addresses: map[string]*workloadv1.Address{"x": a, "y": a}})
	c.Merge(Changes{RemovedAddresses: []string{"x", "z"}})
	c.Merge(Changes{Addresses: map[string]*workloadv1.Address{"z": a}})
	if len(c.Addresses) != 2 || c.Addresses["y"] == nil || c.Addresses["z"] == nil || !slices.Equal(c.RemovedAddresses, []string{"x"}) {
		t.Errorf("merge: %+v", c)
	}
}

func TestSnapshot(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	ix.UpsertPod(pod("ns", "a", "10.0.0.1"))
	ix.UpsertService(service("ns", "web", "10.96.0.10", nil))
	mustNoErr(ix.UpsertAuthorizationPolicy(authzPolicy("ns", "deny", denyFromNamespace("bad"))))
	s := ix.Snapshot()
	if len(s.Addresses) != 2 || len(s.Authorizations) != 1 {
		t.Fatalf("snapshot: %v, %d authorizations", addressNames(s), len(s.Authorizations))
	}
	ix.DeletePod("ns", "a")
	if len(s.Addresses) != 2 {
		t.Error("snapshot shares its map with the index")
	}
}

func TestIndexConcurrentUse(t *testing.T) {
	ix := NewIndex(Options{})
	ix.UpsertNamespace(ambientNS("ns"))
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 50 {
				name := string(rune('a'+g)) + string(rune('a'+i%26))
				ix.UpsertPod(pod("ns", name, "10.0.0.1"))
				ix.UpsertEndpointSlice(slice("ns", "s"+name, "web", map[string]int32{"http": 8080}, name))
				_ = ix.Snapshot()
				ix.DeletePod("ns", name)
			}
		}()
	}
	for range 4 {
		<-done
	}
}

// Traffic addressed to a pod goes through the waypoint its own label names
// (assumed to take workload traffic until its Gateway is known), or its
// namespace's when that waypoint takes workload traffic; a waypoint's
// traffic type changing recomputes the pods.
func TestWorkloadWaypoint(t *testing.T) {
	want := waypointAddress("wp", "ns", "cluster.local")
	var none *workloadv1.GatewayAddress
	nsLabels := map[string]string{LabelDataplaneMode: DataplaneModeAmbient, LabelUseWaypoint: "wp"}
	ix := NewIndex(Options{})
	ix.UpsertNamespace(namespace("ns", nsLabels))
	waypointOf := func(c Changes, name string) *workloadv1.GatewayAddress {
		t.Helper()
		return workloadOf(t, c, uid("ns", name)).GetWaypoint()
	}
	// Namespace label, waypoint unknown (default traffic type: service).
	mustEqualProto(t, "namespace label, unknown waypoint", waypointOf(ix.UpsertPod(pod("ns", "a", "10.0.0.1")), "a"), none)
	// Own label, waypoint unknown: assumed.
	mustEqualProto(t, "pod label, unknown waypoint", waypointOf(ix.UpsertPod(pod("ns", "b", "10.0.0.2", withLabels(LabelUseWaypoint, "wp"))), "b"), want)
	// Opted out, and not captured: never.
	mustEqualProto(t, "pod opts out", waypointOf(ix.UpsertPod(pod("ns", "c", "10.0.0.3", withLabels(LabelUseWaypoint, WaypointNone))), "c"), none)
	mustEqualProto(t, "not captured", waypointOf(ix.UpsertPod(pod("ns", "d", "10.0.0.4", withLabels(LabelDataplaneMode, DataplaneModeNone, LabelUseWaypoint, "wp"))), "d"), none)

	for _, st := range []struct {
		trafficFor string
		a, b       *workloadv1.GatewayAddress
	}{
		{WaypointForService, none, none},
		{WaypointForWorkload, want, want},
		{WaypointForAll, want, want},
		{WaypointForNone, none, none},
	} {
		c := ix.UpsertWaypoint("ns", "wp", st.trafficFor)
		for name, w := range map[string]*workloadv1.GatewayAddress{"a": st.a, "b": st.b} {
			var got *workloadv1.GatewayAddress
			if a := c.Addresses[uid("ns", name)]; a != nil {
				got = a.GetWorkload().GetWaypoint()
			} else {
				got = ix.Address(uid("ns", name)).GetWorkload().GetWaypoint()
			}
			mustEqualProto(t, fmt.Sprintf("%s with traffic type %q", name, st.trafficFor), got, w)
		}
	}
}
