package ca

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

// The publisher puts the root into existing and new namespaces, restores a
// deleted ConfigMap, corrects an edited one, and follows a root change.
func TestPublisher(t *testing.T) {
	env := kubetest.Shared(t)
	existing := env.Namespace(t, "pub-old-")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	root1 := []byte("-----BEGIN CERTIFICATE-----\nroot-one\n-----END CERTIFICATE-----\n")
	root2 := []byte("-----BEGIN CERTIFICATE-----\nroot-two\n-----END CERTIFICATE-----\n")
	p := NewPublisher(env.Client, root1, testLog(t))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	cms := func(ns string) interface {
		Get(context.Context, string, metav1.GetOptions) (*corev1.ConfigMap, error)
	} {
		return env.Client.CoreV1().ConfigMaps(ns)
	}
	waitFor := func(what, ns string, want []byte) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
			cm, err := cms(ns).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			return cm.Data[RootCertKey] == string(want) && cm.Labels["istio.io/config"] == "true" && len(cm.Data) == 1, nil
		})
		if err != nil {
			t.Fatalf("%s: ConfigMap %s/%s never held the expected root: %v", what, ns, RootCertConfigMap, err)
		}
	}

	waitFor("existing namespace", existing, root1)
	fresh := env.Namespace(t, "pub-new-")
	waitFor("new namespace", fresh, root1)

	if err := env.Client.CoreV1().ConfigMaps(fresh).Delete(ctx, RootCertConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("deleted ConfigMap", fresh, root1)

	cm, err := env.Client.CoreV1().ConfigMaps(existing).Get(ctx, RootCertConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[RootCertKey] = "tampered"
	cm.Data["extra"] = "x"
	if _, err := env.Client.CoreV1().ConfigMaps(existing).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("edited ConfigMap", existing, root1)

	p.SetRoot(root2)
	for _, ns := range []string{existing, fresh, "default"} {
		waitFor(fmt.Sprintf("root change in %s", ns), ns, root2)
	}
}
