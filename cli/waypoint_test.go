package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// The waypoint commands run against a real kube-apiserver; the other CLI
// tests do not use it.
func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }

// ambit runs the CLI with args against env and returns its output.
func ambit(t *testing.T, env *kubetest.Env, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append(args, "--kubeconfig", env.Kubeconfig))
	err := cmd.Execute()
	return out.String(), err
}

func gatewayFiles(t *testing.T) (crds []string, class string) {
	t.Helper()
	files, err := filepath.Glob("../manifests/gateway-api/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		switch b := filepath.Base(f); {
		case b == "gatewayclass-istio-waypoint.yaml":
			class = f
		case strings.HasPrefix(b, "gateway.networking.k8s.io_"):
			crds = append(crds, f)
		}
	}
	if class == "" || len(crds) == 0 {
		t.Fatalf("manifests/gateway-api incomplete: %v", files)
	}
	return crds, class
}

var installed sync.Mutex

func TestWaypointCommands(t *testing.T) {
	installed.Lock()
	defer installed.Unlock()
	env := kubetest.Shared(t)
	ctx := context.Background()
	ns := env.Namespace(t, "apps-")
	gc := gatewayclient.NewForConfigOrDie(env.RESTConfig())

	// Nothing installed yet.
	if _, err := ambit(t, env, "waypoint", "deploy", "-n", ns); err == nil || !strings.Contains(err.Error(), "Gateway API CRDs are not installed") || !strings.Contains(err.Error(), "manifests/gateway-api") {
		t.Fatalf("deploy without CRDs: %v", err)
	}
	if _, err := ambit(t, env, "waypoint", "list", "-n", ns); err == nil || !strings.Contains(err.Error(), "Gateway API CRDs are not installed") {
		t.Fatalf("list without CRDs: %v", err)
	}
	crds, class := gatewayFiles(t)
	if err := env.ApplyFiles(ctx, crds...); err != nil {
		t.Fatal(err)
	}
	eventuallyNoError(t, "GatewayClass missing", func() error {
		_, err := ambit(t, env, "waypoint", "deploy", "-n", ns)
		if err == nil || !strings.Contains(err.Error(), "GatewayClass istio-waypoint not found") {
			return fmt.Errorf("deploy without the class: %v", err)
		}
		return nil
	})
	if err := env.ApplyFiles(ctx, class); err != nil {
		t.Fatal(err)
	}
	if _, err := ambit(t, env, "waypoint", "deploy", "-n", ns); err == nil || !strings.Contains(err.Error(), "control plane not found") || !strings.Contains(err.Error(), "manifests/istiod-lite") {
		t.Fatalf("deploy without a control plane: %v", err)
	}
	env.EnsureNamespace(t, "istio-system")
	if _, err := env.Client.CoreV1().Services("istio-system").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: "istio-system"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 15012}}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	// deploy without --wait: the Gateway as Istio's waypoints look, and
	// the namespace enrolled.
	out, err := ambit(t, env, "waypoint", "deploy", "-n", ns, "--name", "wp1", "--for", "workload", "--enroll-namespace")
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	if !strings.Contains(out, "waypoint "+ns+"/wp1 created") {
		t.Errorf("deploy output: %q", out)
	}
	g, err := gc.GatewayV1().Gateways(ns).Get(ctx, "wp1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g.Spec.GatewayClassName != waypoint.ClassName || g.Labels[waypoint.LabelWaypointFor] != "workload" ||
		len(g.Spec.Listeners) != 1 || g.Spec.Listeners[0].Port != 15008 || g.Spec.Listeners[0].Protocol != "HBONE" {
		t.Errorf("gateway %+v labels %v", g.Spec, g.Labels)
	}
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nsObj.Labels["istio.io/use-waypoint"] != "wp1" {
		t.Errorf("namespace labels %v", nsObj.Labels)
	}
	if _, err := ambit(t, env, "waypoint", "deploy", "-n", ns, "--for", "everything"); err == nil || !strings.Contains(err.Error(), "--for") {
		t.Errorf("bad --for: %v", err)
	}

	// deploy --wait: progress until the status (driven here as istiod-lite
	// would) says Programmed.
	done := make(chan struct{})
	var waitOut string
	var waitErr error
	go func() {
		defer close(done)
		waitOut, waitErr = ambit(t, env, "waypoint", "deploy", "-n", ns, "--name", "wp2", "--wait", "--timeout", "60s")
	}()
	g2 := waitGateway(t, gc, ns, "wp2")
	setStatus(t, gc, g2, metav1.ConditionFalse, "Pending", "waiting for the waypoint Deployment to have an available replica (0/1 ready)", nil)
	time.Sleep(1500 * time.Millisecond)
	setStatus(t, gc, g2, metav1.ConditionTrue, "Programmed", "1 of 1 waypoint replicas available", []string{"10.0.0.77"})
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("deploy --wait did not return")
	}
	if waitErr != nil {
		t.Fatalf("deploy --wait: %v\n%s", waitErr, waitOut)
	}
	for _, want := range []string{"waypoint " + ns + "/wp2 created", "Pending: waiting for the waypoint Deployment", "waypoint " + ns + "/wp2 is programmed (address 10.0.0.77)"} {
		if !strings.Contains(waitOut, want) {
			t.Errorf("deploy --wait output lacks %q:\n%s", want, waitOut)
		}
	}

	// list: a table of the namespace's waypoints; a Gateway of another
	// class is not one.
	other := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "ingress", Namespace: ns},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: "other", Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: "HTTP"}}},
	}
	if _, err := gc.GatewayV1().Gateways(ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = ambit(t, env, "waypoint", "list", "-n", ns)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !slices.Equal(strings.Fields(lines[0]), []string{"NAMESPACE", "NAME", "TRAFFIC-FOR", "PROGRAMMED", "ADDRESS"}) ||
		!slices.Equal(strings.Fields(lines[1]), []string{ns, "wp1", "workload", "Unknown", "-"}) ||
		!slices.Equal(strings.Fields(lines[2]), []string{ns, "wp2", "service", "True", "10.0.0.77"}) {
		t.Errorf("list output:\n%s", out)
	}

	// delete: waypoints only.
	if _, err := ambit(t, env, "waypoint", "delete", "-n", ns, "ingress"); err == nil || !strings.Contains(err.Error(), "not a waypoint") {
		t.Errorf("delete of another class's Gateway: %v", err)
	}
	out, err = ambit(t, env, "waypoint", "delete", "-n", ns, "wp1", "wp2")
	if err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if !strings.Contains(out, "waypoint "+ns+"/wp1 deleted") || !strings.Contains(out, "waypoint "+ns+"/wp2 deleted") || !strings.Contains(out, "still has istio.io/use-waypoint=wp1") {
		t.Errorf("delete output: %q", out)
	}
	for _, name := range []string{"wp1", "wp2"} {
		if _, err := gc.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("gateway %s after delete: %v", name, err)
		}
	}
	if _, err := gc.GatewayV1().Gateways(ns).Get(ctx, "ingress", metav1.GetOptions{}); err != nil {
		t.Errorf("other gateway after delete: %v", err)
	}
	if _, err := ambit(t, env, "waypoint", "delete", "-n", ns, "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("delete of a missing waypoint: %v", err)
	}
}

func TestWaypointUnreachableAPIServer(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newRootCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"waypoint", "list", "--kubeconfig", kc})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Kubernetes API server at https://127.0.0.1:1") {
		t.Fatalf("list against nothing: %v", err)
	}
}

func eventuallyNoError(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitGateway(t *testing.T, gc gatewayclient.Interface, ns, name string) *gatewayv1.Gateway {
	t.Helper()
	var g *gatewayv1.Gateway
	eventuallyNoError(t, "gateway "+name, func() error {
		var err error
		g, err = gc.GatewayV1().Gateways(ns).Get(context.Background(), name, metav1.GetOptions{})
		return err
	})
	return g
}

// setStatus writes the Programmed condition (and addresses) as the
// controller would.
func setStatus(t *testing.T, gc gatewayclient.Interface, g *gatewayv1.Gateway, status metav1.ConditionStatus, reason, msg string, ips []string) {
	t.Helper()
	ctx := context.Background()
	cur, err := gc.GatewayV1().Gateways(g.Namespace).Get(ctx, g.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: cur.Generation})
	meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{Type: "Programmed", Status: status, Reason: reason, Message: msg, ObservedGeneration: cur.Generation})
	cur.Status.Addresses = nil
	for _, ip := range ips {
		cur.Status.Addresses = append(cur.Status.Addresses, gatewayv1.GatewayStatusAddress{Type: new(gatewayv1.IPAddressType), Value: ip})
	}
	if _, err := gc.GatewayV1().Gateways(g.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
