package waypoint_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/istiod-lite/waypoint"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

func TestMain(m *testing.M) {
	os.Exit(kubetest.Main(m, kubetest.Options{ControllerManager: true}))
}

var installOnce sync.Once

// install applies manifests/gateway-api (CRDs and the GatewayClass) once.
func install(t *testing.T, env *kubetest.Env) {
	t.Helper()
	var err error
	installOnce.Do(func() {
		var files []string
		files, err = filepath.Glob("../../manifests/gateway-api/*.yaml")
		files = slices.DeleteFunc(files, func(f string) bool { return filepath.Base(f) == "kustomization.yaml" })
		if err == nil {
			err = env.ApplyFiles(context.Background(), files...)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func start(t *testing.T, env *kubetest.Env) gatewayclient.Interface {
	t.Helper()
	install(t, env)
	gw := gatewayclient.NewForConfigOrDie(env.RESTConfig())
	c := waypoint.New(waypoint.Config{Kube: env.Client, Gateway: gw, Image: "example.test/waypoint:1"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return gw
}

func gatewayObj(ns, name, class string, port int32, protocol string) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{waypoint.LabelWaypointFor: "service"}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gatewayv1.ObjectName(class),
			Listeners:        []gatewayv1.Listener{{Name: "mesh", Port: port, Protocol: gatewayv1.ProtocolType(protocol)}},
		},
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getGateway(t *testing.T, gc gatewayclient.Interface, ns, name string) *gatewayv1.Gateway {
	t.Helper()
	g, err := gc.GatewayV1().Gateways(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func condition(g *gatewayv1.Gateway, typ gatewayv1.GatewayConditionType) *metav1.Condition {
	return meta.FindStatusCondition(g.Status.Conditions, string(typ))
}

func ownedBy(m metav1.Object, g *gatewayv1.Gateway) bool {
	return slices.ContainsFunc(m.GetOwnerReferences(), func(r metav1.OwnerReference) bool {
		return r.Kind == "Gateway" && r.Name == g.Name && r.UID == g.UID && r.APIVersion == "gateway.networking.k8s.io/v1"
	})
}

func TestWaypointLifecycle(t *testing.T) {
	env := kubetest.Shared(t)
	gc := start(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "wp-")

	created, err := gc.GatewayV1().Gateways(ns).Create(ctx, gatewayObj(ns, "waypoint", waypoint.ClassName, waypoint.MeshPort, waypoint.ProtocolHBONE), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Accepted with the Service's addresses; not Programmed while no pod
	// is ready (kubetest runs no kubelet).
	var g *gatewayv1.Gateway
	eventually(t, "Accepted with addresses", func() bool {
		g = getGateway(t, gc, ns, "waypoint")
		c := condition(g, gatewayv1.GatewayConditionAccepted)
		return c != nil && c.Status == metav1.ConditionTrue && len(g.Status.Addresses) == 2
	})
	svc, err := env.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.Status.Addresses[0].Value != svc.Spec.ClusterIP || *g.Status.Addresses[0].Type != gatewayv1.IPAddressType {
		t.Errorf("first address %+v, want IPAddress %s", g.Status.Addresses[0], svc.Spec.ClusterIP)
	}
	if h := g.Status.Addresses[1]; h.Value != "waypoint."+ns+".svc.cluster.local" || *h.Type != gatewayv1.HostnameAddressType {
		t.Errorf("second address %+v, want the Service hostname", h)
	}
	if p := condition(g, gatewayv1.GatewayConditionProgrammed); p == nil || p.Status != metav1.ConditionFalse || p.Reason != string(gatewayv1.GatewayReasonPending) {
		t.Errorf("Programmed before any pod is ready: %+v", p)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "mesh" || svc.Spec.Ports[0].Port != 15008 || svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("service ports %+v type %s", svc.Spec.Ports, svc.Spec.Type)
	}
	if !ownedBy(svc, created) {
		t.Errorf("service not owned by the Gateway: %+v", svc.OwnerReferences)
	}
	sa, err := env.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !ownedBy(sa, created) {
		t.Errorf("service account not owned by the Gateway: %+v", sa.OwnerReferences)
	}
	dep, err := env.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !ownedBy(dep, created) {
		t.Errorf("deployment not owned by the Gateway: %+v", dep.OwnerReferences)
	}
	pod := dep.Spec.Template
	if pod.Labels[waypoint.LabelDataplaneMode] != "none" || pod.Labels[waypoint.LabelGatewayName] != "waypoint" || pod.Labels[waypoint.LabelWaypointFor] != "service" {
		t.Errorf("pod labels %v", pod.Labels)
	}
	if pod.Spec.ServiceAccountName != "waypoint" || len(pod.Spec.Containers) != 1 {
		t.Fatalf("pod spec %+v", pod.Spec)
	}
	ctr := pod.Spec.Containers[0]
	wantArgs := []string{"--namespace=" + ns, "--name=waypoint", "--xds-address=istiod.istio-system.svc:15012",
		"--root-cert=/var/run/secrets/istio/root-cert.pem", "--token=/var/run/secrets/tokens/istio-token"}
	if ctr.Image != "example.test/waypoint:1" || !slices.Equal(ctr.Args, wantArgs) {
		t.Errorf("container image %q args %q, want %q", ctr.Image, ctr.Args, wantArgs)
	}
	// The token is pod-bound for istio-ca, the root comes from the
	// published ConfigMap, and both are mounted where the flags say.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	if p := vols["istio-token"].Projected; p == nil || len(p.Sources) != 1 || p.Sources[0].ServiceAccountToken == nil ||
		p.Sources[0].ServiceAccountToken.Audience != "istio-ca" || p.Sources[0].ServiceAccountToken.Path != "istio-token" {
		t.Errorf("token volume %+v", vols["istio-token"])
	}
	if cm := vols["istio-ca-root-cert"].ConfigMap; cm == nil || cm.Name != "istio-ca-root-cert" {
		t.Errorf("root volume %+v", vols["istio-ca-root-cert"])
	}
	mounts := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	if mounts["istio-token"] != "/var/run/secrets/tokens" || mounts["istio-ca-root-cert"] != "/var/run/secrets/istio" {
		t.Errorf("mounts %v", mounts)
	}

	// The pods become ready: Programmed.
	env.EnsureNode(t, "node-a")
	env.KubeletStandIn(t, ns, "node-a")
	eventually(t, "Programmed", func() bool {
		c := condition(getGateway(t, gc, ns, "waypoint"), gatewayv1.GatewayConditionProgrammed)
		return c != nil && c.Status == metav1.ConditionTrue && c.Reason == string(gatewayv1.GatewayReasonProgrammed)
	})

	// A Deployment edited by hand is put back.
	dep, err = env.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dep.Spec.Template.Spec.Containers[0].Image = "tampered:1"
	if _, err := env.Client.AppsV1().Deployments(ns).Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "image restored", func() bool {
		d, err := env.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil && d.Spec.Template.Spec.Containers[0].Image == "example.test/waypoint:1"
	})

	// Deleting the Gateway removes what was deployed for it.
	if err := gc.GatewayV1().Gateways(ns).Delete(ctx, "waypoint", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deployment, service and service account gone", func() bool {
		_, e1 := env.Client.AppsV1().Deployments(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e2 := env.Client.CoreV1().Services(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		_, e3 := env.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "waypoint", metav1.GetOptions{})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2) && apierrors.IsNotFound(e3)
	})
}

func TestInvalidListenerAndOtherClass(t *testing.T) {
	env := kubetest.Shared(t)
	gc := start(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "wp-bad-")

	other := gatewayObj(ns, "ingress", "some-other-class", 80, "HTTP")
	if _, err := gc.GatewayV1().Gateways(ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bad := gatewayObj(ns, "bad", waypoint.ClassName, 8080, "HTTP")
	if _, err := gc.GatewayV1().Gateways(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var c *metav1.Condition
	eventually(t, "Accepted=False on the invalid waypoint", func() bool {
		c = condition(getGateway(t, gc, ns, "bad"), gatewayv1.GatewayConditionAccepted)
		return c != nil && c.Status != metav1.ConditionUnknown
	})
	if c.Status != metav1.ConditionFalse || c.Reason != string(gatewayv1.GatewayReasonListenersNotValid) || c.Message == "" {
		t.Errorf("Accepted condition %+v", c)
	}
	g := getGateway(t, gc, ns, "bad")
	if p := condition(g, gatewayv1.GatewayConditionProgrammed); p == nil || p.Status != metav1.ConditionFalse {
		t.Errorf("Programmed condition %+v", p)
	}
	if len(g.Status.Addresses) != 0 {
		t.Errorf("addresses on an invalid waypoint: %+v", g.Status.Addresses)
	}

	// A valid waypoint after both: once it is handled, the other class's
	// Gateway is still untouched and nothing was deployed for either.
	good := gatewayObj(ns, "good", waypoint.ClassName, waypoint.MeshPort, waypoint.ProtocolHBONE)
	if _, err := gc.GatewayV1().Gateways(ns).Create(ctx, good, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the valid waypoint accepted", func() bool {
		c := condition(getGateway(t, gc, ns, "good"), gatewayv1.GatewayConditionAccepted)
		return c != nil && c.Status == metav1.ConditionTrue
	})
	time.Sleep(500 * time.Millisecond)
	// The CRD's default status (Unknown, Pending) is all it may have.
	for _, c := range getGateway(t, gc, ns, "ingress").Status.Conditions {
		if c.Status != metav1.ConditionUnknown || c.Reason != "Pending" {
			t.Errorf("another class's Gateway got a condition: %+v", c)
		}
	}
	for _, name := range []string{"ingress", "bad"} {
		if _, err := env.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("deployment for %s: %v", name, err)
		}
		if _, err := env.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("service for %s: %v", name, err)
		}
	}
}

// The class is recreated by the controller when missing (kubectl apply -k
// cannot create the CRDs and the class in one go) and marked Accepted.
func TestGatewayClassEnsured(t *testing.T) {
	env := kubetest.Shared(t)
	install(t, env)
	gc := gatewayclient.NewForConfigOrDie(env.RESTConfig())
	ctx := context.Background()
	if err := gc.GatewayV1().GatewayClasses().Delete(ctx, waypoint.ClassName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start(t, env)
	eventually(t, "GatewayClass recreated and Accepted", func() bool {
		cls, err := gc.GatewayV1().GatewayClasses().Get(ctx, waypoint.ClassName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		c := meta.FindStatusCondition(cls.Status.Conditions, string(gatewayv1.GatewayClassConditionStatusAccepted))
		return cls.Spec.ControllerName == waypoint.ControllerName && c != nil && c.Status == metav1.ConditionTrue
	})
}
