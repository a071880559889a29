//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

// TestIstiodLiteInstall installs istiod-lite with `kubectl apply -k` from
// the repository's manifests, as a user would, and checks it runs with its
// least-privilege RBAC: it becomes ready, keeps its root in the Secret,
// publishes the root to namespaces, and its debug view shows the workloads
// of an ambient namespace.
func TestIstiodLiteInstall(t *testing.T) {
	c := devkube.Get(t)
	ctx := context.Background()
	_, file, _, _ := runtime.Caller(0)
	manifests := filepath.Join(filepath.Dir(file), "..", "..", "manifests", "istiod-lite")
	if out, err := c.Kubectl(ctx, "", "apply", "-k", manifests); err != nil {
		t.Fatalf("kubectl apply -k %s: %v\n%s", manifests, err, out)
	}
	c.WaitForDeployment(t, "istio-system", "istiod-lite", 3*time.Minute)

	if _, err := c.Client.CoreV1().Secrets("istio-system").Get(ctx, "istio-ca-secret", metav1.GetOptions{}); err != nil {
		t.Fatalf("root Secret: %v", err)
	}
	ns := c.Namespace(t, "ambient-")
	if out, err := c.Kubectl(ctx, "", "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label: %v %s", err, out)
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		return err == nil && strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE"), nil
	})
	if err != nil {
		t.Fatalf("root ConfigMap never published in %s", ns)
	}

	c.Apply(t, ns, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: sleep, image: ambit/toolbox:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
`)
	c.WaitForDeployment(t, ns, "sleep", 3*time.Minute)
	pods, _ := c.ReadyPods(t, ns, "app=sleep")

	port := portForward(t, c, "istio-system", "svc/istiod", "15014")
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://127.0.0.1:" + port + "/debug/ambient")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		var view struct {
			Workloads []struct {
				Name           string `json:"name"`
				Namespace      string `json:"namespace"`
				TunnelProtocol string `json:"tunnel_protocol"`
			} `json:"workloads"`
		}
		body, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(body, &view); err != nil {
			return false, fmt.Errorf("debug view: %w: %s", err, body)
		}
		for _, w := range view.Workloads {
			if w.Namespace == ns && w.Name == pods[0] && w.TunnelProtocol == "HBONE" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("istiod-lite's debug view never showed pod %s/%s as captured: %v", ns, pods[0], err)
	}
}

// portForward forwards a local port to target's remote port and returns
// the local port.
func portForward(t *testing.T, c *devkube.Cluster, ns, target, remote string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, c.KubectlBin, "--kubeconfig", c.Kubeconfig, "-n", ns,
		"port-forward", "--address", "127.0.0.1", target, ":"+remote)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("port-forward: %v", err)
	}
	m := regexp.MustCompile(`127\.0\.0\.1:(\d+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("port-forward: unexpected output %q", line)
	}
	return m[1]
}
