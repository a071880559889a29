package server

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

// TestWaypointThroughIstiodLite runs istiod-lite as its ServiceAccount with
// the manifests' RBAC and the Gateway API CRDs: a waypoint Gateway is
// deployed (objects, status, GatewayClass created), a client holding the
// waypoint's pod-bound token gets that waypoint's Envoy configuration, and
// a ztunnel's token does not.
func TestWaypointThroughIstiodLite(t *testing.T) {
	env := kubetest.Shared(t)
	ctx := context.Background()
	m := filepath.Join(repoRoot(t), "manifests")
	gwCRDs, err := filepath.Glob(filepath.Join(m, "gateway-api", "gateway.networking.k8s.io_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	gwCRDs = slices.DeleteFunc(gwCRDs, func(f string) bool { return filepath.Base(f) == "gateway.networking.k8s.io_vap_safeupgrades.yaml" })
	if err := env.ApplyFiles(ctx, append(gwCRDs,
		filepath.Join(m, "crds", "authorizationpolicies.security.istio.io.yaml"),
		filepath.Join(m, "crds", "peerauthentications.security.istio.io.yaml"),
		filepath.Join(m, "istiod-lite", "namespace.yaml"),
		filepath.Join(m, "istiod-lite", "serviceaccount.yaml"),
		filepath.Join(m, "istiod-lite", "rbac.yaml"))...); err != nil {
		t.Fatal(err)
	}
	sys := "istio-system"
	gw := gatewayclient.NewForConfigOrDie(env.RESTConfig())
	apps := env.Namespace(t, "wp-")
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, apps, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["istio.io/dataplane-mode"] = "ambient"
	nsObj.Labels["istio.io/use-waypoint"] = "waypoint"
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Services(apps).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: apps},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := gw.GatewayV1().Gateways(apps).Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: apps},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	d := startIstiod(t, env, sys)
	rootPEM := waitRootConfigMap(t, env, apps)

	// The deployer (leader) creates the class and the waypoint's objects
	// and accepts the Gateway.
	eventually(t, "GatewayClass istio-waypoint accepted", func() bool {
		gc, err := gw.GatewayV1().GatewayClasses().Get(ctx, "istio-waypoint", metav1.GetOptions{})
		if err != nil {
			return false
		}
		c := meta.FindStatusCondition(gc.Status.Conditions, "Accepted")
		return c != nil && c.Status == metav1.ConditionTrue
	})
	eventually(t, "the waypoint's Deployment", func() bool {
		_, err := env.Client.AppsV1().Deployments(apps).Get(ctx, "waypoint", metav1.GetOptions{})
		return err == nil
	})
	eventually(t, "Gateway Accepted", func() bool {
		g, err := gw.GatewayV1().Gateways(apps).Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return false
		}
		c := meta.FindStatusCondition(g.Status.Conditions, "Accepted")
		return c != nil && c.Status == metav1.ConditionTrue
	})

	// A waypoint pod's token gets its configuration: the listeners, and
	// the route configuration of the Service it serves.
	wpPod := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "waypoint-x", Node: "node-a", ServiceAccount: "waypoint"})
	token := env.Token(t, apps, "waypoint", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: wpPod})
	envoyTypes := []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType}
	rec := startXDSFor(t, dial(t, d.addr, rootPEM, token), "waypoint~claimed", append([]string{workloadv1.AddressTypeURL}, envoyTypes...))
	host := "web." + apps + ".svc.cluster.local"
	eventually(t, "the waypoint's configuration", func() bool {
		return slices.Contains(rec.names(resource.ListenerType), "connect_terminate") &&
			slices.Contains(rec.names(resource.RouteType), "inbound-vip|80|http|"+host) &&
			slices.Contains(rec.names(resource.SecretType), "ROOTCA")
	})

	// A ztunnel's token never gets Envoy resources.
	zt := env.RunningPod(t, kubetest.PodOptions{Namespace: sys, Name: "ztunnel-w", Node: "node-a", ServiceAccount: "ztunnel"})
	ztToken := env.Token(t, sys, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: zt})
	ztRec := startXDS(t, dial(t, d.addr, rootPEM, ztToken), "waypoint")
	if got := ztRec.names(resource.ListenerType); len(got) != 0 {
		t.Errorf("ztunnel got listeners %v", got)
	}
}
