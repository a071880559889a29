package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

func rootCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A restarted istiod-lite (a second LoadOrCreateRoot against the same
// Secret) gets the same root, so certificates issued before the restart
// still verify.
func TestRootSurvivesRestart(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "sys-")
	ctx := rootCtx(t)

	first, created, err := LoadOrCreateRoot(ctx, env.Client.CoreV1(), RootOptions{Namespace: ns, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("first start did not report creating the root Secret")
	}
	issuedBefore := issueFor(t, first, spiffe("apps", "web"))

	second, created, err := LoadOrCreateRoot(ctx, env.Client.CoreV1(), RootOptions{Namespace: ns, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("restart created a new root Secret")
	}
	if !bytes.Equal(first.RootsPEM(), second.RootsPEM()) {
		t.Fatal("restart changed the root")
	}
	verifyUnder(t, issuedBefore, second.Roots())
	verifyUnder(t, issueFor(t, second, spiffe("apps", "web")), first.Roots())

	s, err := env.Client.CoreV1().Secrets(ns).Get(ctx, RootSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != RootSecretType || len(s.Data[CACertKey]) == 0 || len(s.Data[CAKeyKey]) == 0 {
		t.Errorf("root Secret has type %q and keys %v", s.Type, keysOf(s.Data))
	}
}

// Replicas starting together agree on one root.
func TestRootConcurrentStarts(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "sys-")
	ctx := rootCtx(t)
	const replicas = 5
	roots := make([][]byte, replicas)
	errs := make([]error, replicas)
	createdCount := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			a, created, err := LoadOrCreateRoot(ctx, env.Client.CoreV1(), RootOptions{Namespace: ns, Log: testLog(t)})
			errs[i] = err
			if err == nil {
				roots[i] = a.RootsPEM()
				if created {
					mu.Lock()
					createdCount++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		if !bytes.Equal(roots[i], roots[0]) {
			t.Errorf("replica %d has a different root", i)
		}
	}
	if createdCount != 1 {
		t.Errorf("%d replicas report creating the Secret, want 1", createdCount)
	}
}

// A Secret that exists but is unusable is an error and is left alone:
// overwriting it would silently invalidate every workload certificate.
func TestRootCorruptSecretNotOverwritten(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "sys-")
	ctx := rootCtx(t)
	corrupt := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: RootSecretName, Namespace: ns},
		Type:       RootSecretType,
		Data:       map[string][]byte{CACertKey: []byte("not a certificate"), CAKeyKey: []byte("not a key")},
	}
	if _, err := env.Client.CoreV1().Secrets(ns).Create(ctx, corrupt, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreateRoot(ctx, env.Client.CoreV1(), RootOptions{Namespace: ns, Log: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("corrupt Secret: err = %v, want an 'unusable' error", err)
	}
	s, err := env.Client.CoreV1().Secrets(ns).Get(ctx, RootSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Data[CACertKey]) != "not a certificate" {
		t.Error("corrupt Secret was overwritten")
	}
}

func issueFor(t *testing.T, authority *ca.CA, id string) *x509.Certificate {
	t.Helper()
	issued, err := authority.Sign([]byte(csrFor(t, id)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return issued.Leaf
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
