package kubetest_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/kubetest"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }

func review(t *testing.T, env *kubetest.Env, token string, audiences ...string) *authenticationv1.TokenReviewStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := env.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return &tr.Status
}

func TestRunningPodAndBoundToken(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "kt-")
	pod := env.RunningPod(t, kubetest.PodOptions{Namespace: ns, Name: "web", Node: "node-a", ServiceAccount: "web", Labels: map[string]string{"app": "web"}})
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" || pod.Spec.NodeName != "node-a" {
		t.Fatalf("pod not running on node-a with an IP: phase %s ip %q node %q", pod.Status.Phase, pod.Status.PodIP, pod.Spec.NodeName)
	}
	ready := false
	for _, c := range pod.Status.Conditions {
		ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
	}
	if !ready {
		t.Fatalf("pod not Ready: %+v", pod.Status.Conditions)
	}

	token := env.Token(t, ns, "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
	st := review(t, env, token, "istio-ca")
	if !st.Authenticated {
		t.Fatalf("bound token not authenticated: %s", st.Error)
	}
	if want := "system:serviceaccount:" + ns + ":web"; st.User.Username != want {
		t.Errorf("username %q, want %q", st.User.Username, want)
	}
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  "web",
		"authentication.kubernetes.io/pod-uid":   string(pod.UID),
		"authentication.kubernetes.io/node-name": "node-a",
	} {
		if got := st.User.Extra[key]; len(got) != 1 || got[0] != want {
			t.Errorf("extra %s = %v, want [%s]", key, got, want)
		}
	}

	// Wrong audience: refused.
	if st := review(t, env, token, "other"); st.Authenticated {
		t.Errorf("token for istio-ca accepted for audience other")
	}
	// The apiserver's own audience by default.
	plain := env.Token(t, ns, "web", kubetest.TokenOptions{})
	if st := review(t, env, plain); !st.Authenticated {
		t.Errorf("unbound token for the apiserver audience refused: %s", st.Error)
	}
	// Deleting the pod invalidates the bound token.
	ctx := context.Background()
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := env.Client.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod not gone: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The apiserver caches successful authentications for 10s.
	for review(t, env, token, "istio-ca").Authenticated {
		if time.Now().After(deadline.Add(15 * time.Second)) {
			t.Fatal("token bound to a deleted pod still authenticates")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if st := review(t, env, "garbage", "istio-ca"); st.Authenticated {
		t.Errorf("garbage token authenticated")
	}
}

func TestRBACEnforced(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "kt-")
	env.EnsureServiceAccount(t, ns, "nobody")
	token := env.Token(t, ns, "nobody", kubetest.TokenOptions{})
	cfg := env.RESTConfig()
	cfg.CertData, cfg.KeyData, cfg.BearerToken = nil, nil, token
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CoreV1().Secrets("kube-system").List(context.Background(), metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("service account without RBAC listed secrets: err = %v", err)
	}
}

func TestMissingBinariesFailClearly(t *testing.T) {
	t.Setenv(kubetest.BinDirEnv, t.TempDir())
	_, err := kubetest.Start(context.Background(), kubetest.Options{})
	if err == nil || !strings.Contains(err.Error(), kubetest.MakeTarget) || !strings.Contains(err.Error(), "kube-apiserver") {
		t.Fatalf("error %v does not name the missing binary and %q", err, kubetest.MakeTarget)
	}
}

// A private control plane with kube-controller-manager: namespaces are
// finalized and default ServiceAccounts appear.
func TestControllerManager(t *testing.T) {
	start := time.Now()
	env := kubetest.New(t, kubetest.Options{ControllerManager: true})
	t.Logf("control plane with controller-manager up in %s", time.Since(start).Round(time.Millisecond))
	ctx := context.Background()
	ns, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kcm"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := env.Client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no default service account: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := env.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := env.Client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace not finalized: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	dir := env.Dir
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Stop left %s behind: %v", dir, err)
	}
}
