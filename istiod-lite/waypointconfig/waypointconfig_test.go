package waypointconfig_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/istiod-lite/controller"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointconfig"
	"github.com/ambit-mesh/ambit/istiod-lite/waypointxds"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

func TestMain(m *testing.M) {
	os.Exit(kubetest.Main(m, kubetest.Options{}))
}

// recorder is a Sink keeping the last configuration of each waypoint.
type recorder struct {
	mu      sync.Mutex
	nodes   map[string]xds.Resources
	deleted []string
}

func (r *recorder) SetWaypoint(_ context.Context, node string, res xds.Resources) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[node] = res
	return nil
}

func (r *recorder) DeleteWaypoint(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.nodes, node)
	r.deleted = append(r.deleted, node)
}

func (r *recorder) get(node string) xds.Resources {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[node]
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWaypointConfigurationAndRouteStatus(t *testing.T) {
	env := kubetest.Shared(t)
	ctx := context.Background()
	m := filepath.Join(repoRoot(t), "manifests")
	gwFiles, err := filepath.Glob(filepath.Join(m, "gateway-api", "gateway.networking.k8s.io_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	gwFiles = slices.DeleteFunc(gwFiles, func(f string) bool { return filepath.Base(f) == "gateway.networking.k8s.io_vap_safeupgrades.yaml" })
	if err := env.ApplyFiles(ctx, append(gwFiles,
		filepath.Join(m, "crds", "authorizationpolicies.security.istio.io.yaml"),
		filepath.Join(m, "crds", "peerauthentications.security.istio.io.yaml"))...); err != nil {
		t.Fatal(err)
	}
	gw := gatewayclient.NewForConfigOrDie(env.RESTConfig())
	dyn := dynamic.NewForConfigOrDie(env.RESTConfig())

	ns := env.Namespace(t, "apps-")
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["istio.io/dataplane-mode"] = "ambient"
	nsObj.Labels["istio.io/use-waypoint"] = "waypoint"
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A captured backend behind Service echo (port 80 -> 8080).
	pod := env.RunningPod(t, kubetest.PodOptions{Namespace: ns, Name: "echo-1", Node: "node-a", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"}})
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-x", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{pod.Status.PodIP}, Conditions: discoveryv1.EndpointConditions{Ready: new(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}}},
		Ports: []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(8080))}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: ns},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	parent := []gatewayv1.ParentReference{{Group: new(gatewayv1.Group("")), Kind: new(gatewayv1.Kind("Service")), Name: "echo"}}
	route := func(name, backend string) *gatewayv1.HTTPRoute {
		return &gatewayv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: gatewayv1.HTTPRouteSpec{
				CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parent},
				Rules: []gatewayv1.HTTPRouteRule{{
					Matches:     []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: new(gatewayv1.PathMatchPathPrefix), Value: new("/" + name)}}},
					BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(backend), Port: new(gatewayv1.PortNumber(80))}}}},
				}},
			},
		}
	}
	for _, r := range []*gatewayv1.HTTPRoute{route("good", "echo"), route("bad", "missing")} {
		if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, r, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The controller, on informers shared as istiod-lite shares them.
	rec := &recorder{nodes: map[string]xds.Resources{}}
	kf := controller.NewInformerFactory(env.Client, 0)
	df := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	c, err := waypointconfig.New(waypointconfig.Options{
		Gateway: gw, Dynamic: dyn, Informers: kf, DynamicInformers: df, Sink: rec, Debounce: 20 * time.Millisecond,
		Build: waypointxds.Options{RootCerts: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	kf.Start(runCtx.Done())
	df.Start(runCtx.Done())
	wg.Go(func() {
		if err := c.Run(runCtx); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() { c.RunStatus(runCtx) })

	node := xds.WaypointNode(ns, "waypoint")
	host := "echo." + ns + ".svc.cluster.local"
	routeName := "inbound-vip|80|http|" + host
	cluster := "outbound|80||" + host
	eventually(t, "the waypoint's configuration", func() bool {
		res := rec.get(node)
		return res != nil && res[resource.RouteType][routeName] != nil && res[resource.EndpointType][cluster] != nil
	})
	res := rec.get(node)
	for typeURL, byName := range res {
		for name, m := range byName {
			if v, ok := m.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					t.Errorf("%s %q does not validate: %v", typeURL, name, err)
				}
			}
		}
	}
	// The backend is reached over HBONE: its endpoint is the internal
	// connect_originate address with the pod's ip:targetPort.
	cla := res[resource.EndpointType][cluster].(*endpointv3.ClusterLoadAssignment)
	var ids []string
	for _, lep := range cla.GetEndpoints() {
		for _, ep := range lep.GetLbEndpoints() {
			ids = append(ids, ep.GetEndpoint().GetAddress().GetEnvoyInternalAddress().GetEndpointId())
		}
	}
	if want := pod.Status.PodIP + ":8080"; !slices.Equal(ids, []string{want}) {
		t.Errorf("endpoints %v, want [%s]", ids, want)
	}

	// Route status: the good route accepted and resolved; the bad one
	// accepted with ResolvedRefs False, BackendNotFound.
	cond := func(name, typ string) *metav1.Condition {
		r, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(r.Status.Parents) != 1 || r.Status.Parents[0].ControllerName != waypointconfig.ControllerName {
			return nil
		}
		return meta.FindStatusCondition(r.Status.Parents[0].Conditions, typ)
	}
	eventually(t, "route statuses", func() bool {
		a, rr, bad := cond("good", "Accepted"), cond("good", "ResolvedRefs"), cond("bad", "ResolvedRefs")
		return a != nil && a.Status == metav1.ConditionTrue && rr != nil && rr.Status == metav1.ConditionTrue &&
			bad != nil && bad.Status == metav1.ConditionFalse && bad.Reason == string(gatewayv1.RouteReasonBackendNotFound)
	})

	// The missing Service appears: the bad route resolves.
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "missing", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the bad route resolving", func() bool {
		c := cond("bad", "ResolvedRefs")
		return c != nil && c.Status == metav1.ConditionTrue
	})

	// Policies with targetRefs get WaypointAccepted: bound through the
	// Gateway, not bound (a Service no waypoint serves), target missing.
	policy := func(name string, target map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec":     map[string]any{"action": "DENY", "targetRefs": []any{target}, "rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"paths": []any{"/admin"}}}}}}},
		}}
		if _, err := dyn.Resource(controller.AuthorizationPolicies).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	policy("via-gateway", map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"})
	policy("unbound", map[string]any{"group": "", "kind": "Service", "name": "missing"})
	policy("no-target", map[string]any{"group": "", "kind": "Service", "name": "nothing-here"})
	waypointAccepted := func(name string) (status, reason string) {
		u, err := dyn.Resource(controller.AuthorizationPolicies).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", ""
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == waypointconfig.ConditionWaypointAccepted {
				return fmt.Sprint(m["status"]), fmt.Sprint(m["reason"])
			}
		}
		return "", ""
	}
	// Service "missing" (created above) would use the namespace's waypoint:
	// opt it out so that "unbound" targets a Service no waypoint serves.
	missing, err := env.Client.CoreV1().Services(ns).Get(ctx, "missing", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	missing.Labels = map[string]string{"istio.io/use-waypoint": "none"}
	if _, err := env.Client.CoreV1().Services(ns).Update(ctx, missing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]string{
		"via-gateway": {"True", waypointconfig.ReasonAccepted},
		"unbound":     {"False", waypointconfig.ReasonAncestorNotBound},
		"no-target":   {"False", waypointconfig.ReasonTargetNotFound},
	} {
		eventually(t, "WaypointAccepted of "+name, func() bool {
			st, reason := waypointAccepted(name)
			return st == want[0] && reason == want[1]
		})
	}

	// The Service opts out: the waypoint no longer serves it.
	svc, err := env.Client.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Labels = map[string]string{"istio.io/use-waypoint": "none"}
	if _, err := env.Client.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "echo no longer served", func() bool {
		res := rec.get(node)
		return res != nil && res[resource.RouteType][routeName] == nil
	})
	// Routes of a Service no waypoint serves are still validated: a new
	// generation of the good route is accepted again.
	good, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "good", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	good.Spec.Rules[0].Matches[0].Path.Value = new("/good-v2")
	if good, err = gw.GatewayV1().HTTPRoutes(ns).Update(ctx, good, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unserved route's status for its new generation", func() bool {
		a := cond("good", "Accepted")
		return a != nil && a.Status == metav1.ConditionTrue && a.ObservedGeneration == good.Generation
	})

	// The Gateway goes: its configuration is dropped.
	if err := gw.GatewayV1().Gateways(ns).Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waypoint's configuration dropped", func() bool { return rec.get(node) == nil })
}
