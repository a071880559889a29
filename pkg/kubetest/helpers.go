package kubetest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

var metaGetOptions = metav1.GetOptions{}

// shared is the package's control plane started by Main.
var shared atomic.Pointer[Env]

// Main starts one control plane for a test package, runs its tests, and
// stops it. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }
//
// When the control plane cannot start (binaries missing included) it prints
// why and returns 1, failing the package: Kubernetes tests never skip.
func Main(m *testing.M, opts Options) int {
	if !flag.Parsed() {
		flag.Parse() // testing.Verbose needs the test flags
	}
	start := time.Now()
	env, err := Start(context.Background(), opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "kubetest: control plane at %s up in %s (dir %s)\n", env.Host, time.Since(start).Round(time.Millisecond), env.Dir)
	}
	shared.Store(env)
	code := m.Run()
	shared.Store(nil)
	if err := env.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "kubetest: stop: %v\n", err)
	}
	return code
}

// Shared returns the control plane Main started; the test fails if Main
// did not run.
func Shared(t testing.TB) *Env {
	t.Helper()
	env := shared.Load()
	if env == nil {
		t.Fatal("kubetest: no shared control plane: call kubetest.Main from TestMain")
	}
	return env
}

// New starts a control plane for one test and stops it at cleanup.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	env, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("kubetest: %v", err)
		}
	})
	return env
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Namespace creates a namespace named prefix plus a random suffix and
// deletes it at cleanup (without kube-controller-manager it then stays
// Terminating; it is gone with the control plane).
func (e *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ctx := ctxFor(t)
	ns, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create namespace %q: %v", prefix, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("kubetest: delete namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// EnsureNamespace creates the namespace name if it does not exist (not
// deleted at cleanup: for fixed names such as istio-system).
func (e *Env) EnsureNamespace(t testing.TB, name string) {
	t.Helper()
	_, err := e.Client.CoreV1().Namespaces().Create(ctxFor(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
}

// EnsureServiceAccount creates ns/name if it does not exist.
func (e *Env) EnsureServiceAccount(t testing.TB, ns, name string) {
	t.Helper()
	_, err := e.Client.CoreV1().ServiceAccounts(ns).Create(ctxFor(t), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("kubetest: create service account %s/%s: %v", ns, name, err)
	}
}

// EnsureNode creates a Node object name (with a Ready condition) if it does
// not exist. There is no kubelet: the node is only an object, which is what
// pod-bound tokens need to carry the node's name and UID.
func (e *Env) EnsureNode(t testing.TB, name string) *corev1.Node {
	t.Helper()
	ctx := ctxFor(t)
	node, err := e.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("kubetest: get node %s: %v", name, err)
		}
		return node
	}
	if err != nil {
		t.Fatalf("kubetest: create node %s: %v", name, err)
	}
	// Controllers (with ControllerManager) may touch the new node first.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
		node, err = e.Client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("kubetest: node %s status: %v", name, err)
	}
	return node
}

// PodOptions describe a pod for RunningPod.
type PodOptions struct {
	Namespace      string
	Name           string
	Node           string // spec.nodeName; the Node object is created if absent
	ServiceAccount string // created if absent; default "default"
	IP             string // pod IP; default a fresh one from 10.200.0.0/16
	Labels         map[string]string
	HostNetwork    bool
}

var podIPs atomic.Uint32

func nextPodIP() string {
	n := podIPs.Add(1)
	return net.IPv4(10, 200, byte(n>>8), byte(n)).String()
}

// RunningPod creates a pod bound to opts.Node and sets its status as a
// kubelet would for a running, ready pod (phase Running, pod IPs, Ready
// conditions). The pod's one container never runs: there is no kubelet.
func (e *Env) RunningPod(t testing.TB, opts PodOptions) *corev1.Pod {
	t.Helper()
	if opts.ServiceAccount == "" {
		opts.ServiceAccount = "default"
	}
	if opts.IP == "" {
		opts.IP = nextPodIP()
	}
	if opts.Node != "" {
		e.EnsureNode(t, opts.Node)
	}
	e.EnsureServiceAccount(t, opts.Namespace, opts.ServiceAccount)
	ctx := ctxFor(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: opts.Namespace, Name: opts.Name, Labels: opts.Labels},
		Spec: corev1.PodSpec{
			NodeName:           opts.Node,
			ServiceAccountName: opts.ServiceAccount,
			HostNetwork:        opts.HostNetwork,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10.1"}},
		},
	}
	pod, err := e.Client.CoreV1().Pods(opts.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: create pod %s/%s: %v", opts.Namespace, opts.Name, err)
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     opts.IP,
		PodIPs:    []corev1.PodIP{{IP: opts.IP}},
		HostIP:    "192.0.2.1",
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "registry.k8s.io/pause:3.10.1", Ready: true, Started: new(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	pod, err = e.Client.CoreV1().Pods(opts.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("kubetest: pod %s/%s status: %v", opts.Namespace, opts.Name, err)
	}
	return pod
}

// TokenOptions shape a ServiceAccount token.
type TokenOptions struct {
	Audiences  []string      // default: the apiserver's audiences
	Expiration time.Duration // default 1h (the apiserver's minimum is 10m)
	Pod        *corev1.Pod   // bind the token to this pod (and its node)
}

// Token mints a ServiceAccount token with the TokenRequest API, as a
// projected volume would get it. A token bound to a pod carries the pod's
// and its node's names in TokenReview's user extras and stops validating
// when the pod is deleted.
func (e *Env) Token(t testing.TB, ns, sa string, opts TokenOptions) string {
	t.Helper()
	tok, err := e.CreateToken(ctxFor(t), ns, sa, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// CreateToken is Token without a testing.TB.
func (e *Env) CreateToken(ctx context.Context, ns, sa string, opts TokenOptions) (string, error) {
	if opts.Expiration <= 0 {
		opts.Expiration = time.Hour
	}
	secs := int64(opts.Expiration / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         opts.Audiences,
		ExpirationSeconds: &secs,
	}}
	if opts.Pod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: opts.Pod.Name, UID: opts.Pod.UID}
	}
	resp, err := e.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("kubetest: token for %s/%s: %w", ns, sa, err)
	}
	return resp.Status.Token, nil
}

// ForgeToken returns a ServiceAccount token that looks exactly like one the
// apiserver would mint for ns/sa (issuer, audiences, Kubernetes claims, the
// pod and node binding when pod is set) but is signed by a fresh key the
// apiserver does not trust: TokenReview must refuse it.
func (e *Env) ForgeToken(t testing.TB, ns, sa string, audiences []string, pod *corev1.Pod) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if len(audiences) == 0 {
		audiences = e.APIAudiences
	}
	now := time.Now()
	k8s := map[string]any{
		"namespace":      ns,
		"serviceaccount": map[string]string{"name": sa, "uid": "00000000-0000-0000-0000-000000000001"},
	}
	if pod != nil {
		k8s["pod"] = map[string]string{"name": pod.Name, "uid": string(pod.UID)}
		if pod.Spec.NodeName != "" {
			k8s["node"] = map[string]string{"name": pod.Spec.NodeName, "uid": "00000000-0000-0000-0000-000000000002"}
		}
	}
	claims := map[string]any{
		"iss": e.Issuer, "sub": "system:serviceaccount:" + ns + ":" + sa, "aud": audiences,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti":           "forged",
		"kubernetes.io": k8s,
	}
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "forged", "typ": "JWT"})
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(body)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc.EncodeToString(sig)
}

// KubeletStandIn schedules ns's pending pods onto node and reports them
// running and ready with a fresh IP, as a scheduler and kubelet would (a
// control plane started here runs neither), until the test ends. Use it
// for pods that controllers create (Deployments with ControllerManager).
func (e *Env) KubeletStandIn(t testing.TB, ns, node string) {
	t.Helper()
	e.EnsureNode(t, node)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	pods := e.Client.CoreV1().Pods(ns)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			list, err := pods.List(ctx, metav1.ListOptions{})
			if err == nil {
				for i := range list.Items {
					p := &list.Items[i]
					if p.Spec.NodeName == "" {
						b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: ns, UID: p.UID}, Target: corev1.ObjectReference{Kind: "Node", Name: node}}
						_ = pods.Bind(ctx, b, metav1.CreateOptions{})
						continue
					}
					if p.Status.PodIP == "" {
						now := metav1.Now()
						ip := nextPodIP()
						p.Status.Phase = corev1.PodRunning
						p.Status.PodIP = ip
						p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
						p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
						_, _ = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}
