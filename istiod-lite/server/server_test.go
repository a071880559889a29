package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	casvc "github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/controller"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
)

func TestMain(m *testing.M) {
	os.Exit(kubetest.Main(m, kubetest.Options{ControllerManager: true}))
}

func testLog() *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// istiod is one running istiod-lite.
type istiod struct {
	addr    string
	monitor string
	stop    func()
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func startIstiod(t *testing.T, env *kubetest.Env, ns string) *istiod {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	monitor := freeAddr(t)
	go func() {
		done <- Run(ctx, Config{
			Kube: asServiceAccount(env, ns, "istiod-lite"), Namespace: ns, GRPCListener: ln, MonitoringAddr: monitor,
			LeaderElection: true, Identity: "test-" + ln.Addr().String(),
			Debounce: 20 * time.Millisecond, Log: testLog(), Ready: func() { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("istiod-lite exited during startup: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("istiod-lite not ready after 60s")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("istiod-lite: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return &istiod{addr: ln.Addr().String(), monitor: monitor, stop: stop}
}

// asServiceAccount is the admin config impersonating ns/sa, as the pod
// would authenticate.
func asServiceAccount(env *kubetest.Env, ns, sa string) *rest.Config {
	c := env.RESTConfig()
	c.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + ns + ":" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
	}
	return c
}

// bearer sends a ServiceAccount token with every RPC, as ztunnel does.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func dial(t *testing.T, addr string, rootPEM []byte, token string) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		t.Fatal("no root certificate")
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(bearer(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// recorder keeps a client's view and the log of what it was sent.
type recorder struct {
	mu    sync.Mutex
	state map[string]map[string]*discovery.Resource
	log   []string // "+type name" / "-type name"
}

func newRecorder() *recorder { return &recorder{state: map[string]map[string]*discovery.Resource{}} }

func short(typeURL string) string { return typeURL[strings.LastIndex(typeURL, ".")+1:] }

func (r *recorder) handle(typeURL string, ups []*discovery.Resource, removed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.state[typeURL]
	if m == nil {
		m = map[string]*discovery.Resource{}
		r.state[typeURL] = m
	}
	for _, u := range ups {
		m[u.GetName()] = u
		r.log = append(r.log, "+"+short(typeURL)+" "+u.GetName())
	}
	for _, n := range removed {
		delete(m, n)
		r.log = append(r.log, "-"+short(typeURL)+" "+n)
	}
	return nil
}

func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.log)
}

func (r *recorder) since(mark int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log[mark:])
}

func (r *recorder) names(typeURL string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.state[typeURL] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// workloads returns the client's workloads of namespace ns.
func (r *recorder) workloads(t *testing.T, ns string) map[string]*workloadv1.Workload {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*workloadv1.Workload{}
	for name, res := range r.state[workloadv1.AddressTypeURL] {
		var a workloadv1.Address
		if err := res.GetResource().UnmarshalTo(&a); err != nil {
			t.Errorf("unmarshal %s: %v", name, err)
			continue
		}
		if w := a.GetWorkload(); w != nil && w.GetNamespace() == ns {
			out[name] = w
		}
	}
	return out
}

func startXDS(t *testing.T, conn *grpc.ClientConn, claimedNode string) *recorder {
	t.Helper()
	return startXDSFor(t, conn, claimedNode, []string{workloadv1.AddressTypeURL, workloadv1.AuthorizationTypeURL})
}

func startXDSFor(t *testing.T, conn *grpc.ClientConn, claimedNode string, typeURLs []string) *recorder {
	t.Helper()
	rec := newRecorder()
	c, err := xdsclient.New(conn, xdsclient.Options{
		Node:     &core.Node{Id: claimedNode},
		TypeURLs: typeURLs,
		Handler:  rec.handle, MinBackoff: 50 * time.Millisecond, Logger: testLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("xDS client never synced")
	}
	return rec
}

// eventually waits for eventual consistency. The bound is generous: under
// make test, several packages' kube-apiservers and controller-managers share
// two CPUs, and creating a Deployment's pods can take tens of seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

var authorizationPolicies = controller.AuthorizationPolicies

func createPolicy(t *testing.T, dyn dynamic.Interface, ns, name string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns}, "spec": spec,
	}}
	if _, err := dyn.Resource(authorizationPolicies).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func policyCondition(t *testing.T, dyn dynamic.Interface, ns, name string) map[string]any {
	u, err := dyn.Resource(authorizationPolicies).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == controller.ConditionZtunnelAccepted {
			return m
		}
	}
	return nil
}

func TestIstiodLite(t *testing.T) {
	env := kubetest.Shared(t)
	ctx := context.Background()
	// The install manifests' CRDs, namespace, ServiceAccount and RBAC:
	// istiod-lite runs as that ServiceAccount below, so the test proves the
	// least-privilege RBAC is enough.
	m := filepath.Join(repoRoot(t), "manifests")
	if err := env.ApplyFiles(ctx,
		filepath.Join(m, "crds", "authorizationpolicies.security.istio.io.yaml"),
		filepath.Join(m, "crds", "peerauthentications.security.istio.io.yaml"),
		filepath.Join(m, "istiod-lite", "namespace.yaml"),
		filepath.Join(m, "istiod-lite", "serviceaccount.yaml"),
		filepath.Join(m, "istiod-lite", "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	sys := "istio-system"
	apps := env.Namespace(t, "apps-")
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, apps, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels["istio.io/dataplane-mode"] = "ambient"
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	zta := env.RunningPod(t, kubetest.PodOptions{Namespace: sys, Name: "ztunnel-a", Node: "node-a", ServiceAccount: "ztunnel"})
	ztb := env.RunningPod(t, kubetest.PodOptions{Namespace: sys, Name: "ztunnel-b", Node: "node-b", ServiceAccount: "ztunnel"})
	tokenA := env.Token(t, sys, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: zta})
	tokenB := env.Token(t, sys, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: ztb})

	// A Deployment of two, its Service, and a namespace policy.
	env.KubeletStandIn(t, apps, "node-a")
	env.EnsureServiceAccount(t, apps, "web")
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: apps},
		Spec: appsv1.DeploymentSpec{
			Replicas: new(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{ServiceAccountName: "web", Containers: []corev1.Container{{
					Name: "web", Image: "registry.k8s.io/pause:3.10.1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
			},
		},
	}
	if _, err := env.Client.AppsV1().Deployments(apps).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: apps},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}
	if _, err := env.Client.CoreV1().Services(apps).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPolicy(t, dyn, apps, "deny-evil", map[string]any{
		"action": "DENY", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/evil/sa/evil"}}}}}},
	})

	d := startIstiod(t, env, sys)
	rootPEM := waitRootConfigMap(t, env, apps)

	// Client A (ztunnel on node-a) sees the two web workloads with their
	// service ports resolved, the Service, and the namespace policy.
	connA := dial(t, d.addr, rootPEM, tokenA)
	recA := startXDS(t, connA, "claims-to-be-node-b")
	webReady := func(rec *recorder, n int) func() bool {
		return func() bool {
			ws := rec.workloads(t, apps)
			if len(ws) != n {
				return false
			}
			for _, w := range ws {
				if len(w.GetServices()) != 1 || len(w.GetAddresses()) != 1 || w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
					return false
				}
			}
			return true
		}
	}
	eventually(t, "A sees two web workloads behind the Service", webReady(recA, 2))
	svcName := apps + "/web." + apps + ".svc.cluster.local"
	if !slices.Contains(recA.names(workloadv1.AddressTypeURL), svcName) {
		t.Fatalf("A has no Service %s: %v", svcName, recA.names(workloadv1.AddressTypeURL))
	}
	eventually(t, "A gets the namespace policy", func() bool {
		return slices.Contains(recA.names(workloadv1.AuthorizationTypeURL), apps+"/deny-evil")
	})

	// Scaling to three sends exactly the new workload, nothing else.
	time.Sleep(300 * time.Millisecond) // let the initial churn settle
	before := recA.workloads(t, apps)
	mark := recA.mark()
	scale, err := env.Client.AppsV1().Deployments(apps).GetScale(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 3
	if _, err := env.Client.AppsV1().Deployments(apps).UpdateScale(ctx, "web", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A sees the third web workload ready behind the Service", webReady(recA, 3))
	time.Sleep(300 * time.Millisecond) // anything else that was going to be sent
	var added string
	for name := range recA.workloads(t, apps) {
		if before[name] == nil {
			added = name
		}
	}
	for _, entry := range recA.since(mark) {
		if entry != "+Address "+added {
			t.Errorf("scaling up sent %q; want only upserts of the new workload %s (all: %v)", entry, added, recA.since(mark))
			break
		}
	}

	// Client B (ztunnel on node-b, no captured pods there) gets every
	// address but not the policies of a namespace it has no pods of.
	connB := dial(t, d.addr, rootPEM, tokenB)
	recB := startXDS(t, connB, "node-a")
	eventually(t, "B sees the three web workloads", func() bool { return len(recB.workloads(t, apps)) == 3 })
	if got := recB.names(workloadv1.AuthorizationTypeURL); len(got) != 0 {
		t.Errorf("B (no pods on node-b) got policies %v", got)
	}

	// A malformed policy is skipped with a status condition and an event;
	// the valid one stays in force.
	createPolicy(t, dyn, apps, "bad-principal", map[string]any{
		"action": "ALLOW", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"spiffe://cluster.local/ns/a/sa/b"}}}}}},
	})
	eventually(t, "status condition on the bad policy", func() bool {
		c := policyCondition(t, dyn, apps, "bad-principal")
		return c != nil && c["status"] == "False"
	})
	cond := policyCondition(t, dyn, apps, "bad-principal")
	if !strings.Contains(fmt.Sprint(cond["message"]), "spiffe://") {
		t.Errorf("condition does not say what is wrong: %v", cond)
	}
	eventually(t, "a Warning event for the bad policy", func() bool {
		evs, err := env.Client.CoreV1().Events(apps).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=bad-principal"})
		return err == nil && len(evs.Items) > 0 && evs.Items[0].Type == corev1.EventTypeWarning
	})
	if c := policyCondition(t, dyn, apps, "deny-evil"); c == nil || c["status"] != "True" {
		t.Errorf("valid policy's condition: %v", c)
	}
	if got := recA.names(workloadv1.AuthorizationTypeURL); !slices.Contains(got, apps+"/deny-evil") || slices.Contains(got, apps+"/bad-principal") {
		t.Errorf("A's policies after the bad one: %v", got)
	}

	// The debug view shows the workloads and the problem.
	resp, err := http.Get("http://" + d.monitor + "/debug/ambient?node=node-a")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var view struct {
		Workloads      []json.RawMessage `json:"workloads"`
		Authorizations []json.RawMessage `json:"authorizations"`
		Problems       []map[string]any  `json:"policyProblems"`
		Clients        int64             `json:"connectedClients"`
	}
	if err := json.Unmarshal(body, &view); err != nil {
		t.Fatalf("debug view: %v: %s", err, body)
	}
	if view.Clients != 2 || len(view.Authorizations) != 1 || len(view.Problems) != 1 || view.Problems[0]["name"] != "bad-principal" {
		t.Errorf("debug view: %d clients, %d authorizations, problems %v", view.Clients, len(view.Authorizations), view.Problems)
	}
	resp, err = http.Get("http://" + d.monitor + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pilot_xds 2", "pilot_xds_pushes_total", "pilot_proxy_convergence_time_seconds_bucket"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// A restart keeps the root: the published root is unchanged and the
	// new process serves under it.
	d.stop()
	d2 := startIstiod(t, env, sys)
	if again := waitRootConfigMap(t, env, apps); string(again) != string(rootPEM) {
		t.Fatal("restart changed the published root")
	}
	recA2 := startXDS(t, dial(t, d2.addr, rootPEM, tokenA), "node-a")
	eventually(t, "A reconnected to the restarted istiod-lite", webReady(recA2, 3))
}

func waitRootConfigMap(t *testing.T, env *kubetest.Env, ns string) []byte {
	t.Helper()
	var root []byte
	eventually(t, "root ConfigMap in "+ns, func() bool {
		cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return false
		}
		root = []byte(cm.Data["root-cert.pem"])
		return len(root) > 0
	})
	return root
}

// The issuer probe returns the roots the issuer's certificates chain to
// (here the built-in CA as the issuer; the cert-manager signer is tested
// against the real cert-manager in istiod-lite/ca/certmanager).
func TestProbeIssuerRoots(t *testing.T) {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := probeIssuerRoots(context.Background(), authority, casvc.CASigner{CA: authority}, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	if string(roots) != string(authority.RootsPEM()) {
		t.Errorf("probe returned %q, want the issuer's root", roots)
	}
}
