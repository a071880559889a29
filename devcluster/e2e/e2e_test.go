//go:build e2e

// Package e2e checks that the devcluster is a working Kubernetes: pods on
// every node, Service VIPs (kube-proxy), cluster DNS (CoreDNS), kubectl
// exec/logs/port-forward, ServiceAccount tokens with TokenReview, and the
// Gateway API conformance images.
//
//	make e2e    (as root; brings the cluster up and down if needed)
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

func TestMain(m *testing.M) { os.Exit(devkube.Main(m)) }

const manifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: echo}}}
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0
        imagePullPolicy: IfNotPresent
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        ports: [{containerPort: 3000}]
        readinessProbe:
          httpGet: {path: /, port: 3000}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 3000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: toolbox}
spec:
  replicas: 1
  selector: {matchLabels: {app: toolbox}}
  template:
    metadata: {labels: {app: toolbox}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: toolbox
        image: ambit/toolbox:dev
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-advanced}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo-advanced}}
  template:
    metadata: {labels: {app: echo-advanced}}
    spec:
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0
        imagePullPolicy: IfNotPresent
        args: [--port=8080, --tcp=9090, --grpc=7070, --port=8443, --tls=8443, --crt=/cert.crt, --key=/cert.key]
        ports: [{containerPort: 8080}]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
`

func TestDevcluster(t *testing.T) {
	c := devkube.Get(t)
	ns := c.Namespace(t, "e2e-")
	c.Apply(t, ns, manifest)
	for _, d := range []string{"echo", "toolbox", "echo-advanced"} {
		c.WaitForDeployment(t, ns, d, 3*time.Minute)
	}

	echoPods, echoNodes := c.ReadyPods(t, ns, "app=echo")
	if len(echoPods) != 2 {
		t.Fatalf("want 2 Ready echo-basic pods, got %v", echoPods)
	}
	if c.Nodes > 1 && echoNodes[0] == echoNodes[1] {
		t.Errorf("echo pods should spread over nodes, both on %s", echoNodes[0])
	}
	t.Logf("echo pods %v on nodes %v", echoPods, echoNodes)
	toolbox := firstPod(t, c, ns, "app=toolbox")

	svc, err := c.Client.CoreV1().Services(ns).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// curl from another pod, by VIP, by full DNS name and by short name;
	// echo-basic answers with its pod name, and over a few requests both
	// backends (on both nodes) must answer.
	podRE := regexp.MustCompile(`"pod":\s*"([^"]+)"`)
	for _, target := range []string{
		"http://" + svc.Spec.ClusterIP + "/",
		"http://echo." + ns + ".svc.cluster.local/",
		"http://echo/",
	} {
		t.Run("curl "+target, func(t *testing.T) {
			seen := map[string]bool{}
			// kube-proxy programs a new Service within a few seconds of
			// its endpoints becoming Ready: allow that much for the first
			// answer, then every request must succeed.
			deadline := time.Now().Add(30 * time.Second)
			for i := 0; i < 30 && len(seen) < len(echoPods); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				out, err := c.Exec(ctx, ns, toolbox, "", "curl", "-sS", "-m", "5", "-w", "\n%{http_code}", target)
				cancel()
				if err != nil && len(seen) == 0 && time.Now().Before(deadline) {
					t.Logf("curl %s: %v (retrying)", target, err)
					time.Sleep(time.Second)
					i--
					continue
				}
				if err != nil {
					t.Fatalf("curl %s: %v", target, err)
				}
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if code := lines[len(lines)-1]; code != "200" {
					t.Fatalf("curl %s: status %s, body %q", target, code, out)
				}
				m := podRE.FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("curl %s: no pod name in answer %q", target, out)
				}
				seen[m[1]] = true
			}
			if len(seen) != len(echoPods) {
				t.Errorf("curl %s reached backends %v, want all of %v", target, seen, echoPods)
			}
		})
	}

	t.Run("echo-advanced client", func(t *testing.T) {
		pod := firstPod(t, c, ns, "app=echo-advanced")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := c.Exec(ctx, ns, pod, "echo", "client", "http://echo")
		if err != nil {
			t.Fatalf("client http://echo: %v\n%s", err, out)
		}
		if !strings.Contains(out, "StatusCode=200") {
			t.Fatalf("client http://echo: no StatusCode=200 in %q", out)
		}
	})

	t.Run("logs", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := c.Kubectl(ctx, "", "-n", ns, "logs", "deploy/echo-advanced")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "8080") {
			t.Fatalf("echo-advanced logs do not mention its port 8080: %q", out)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.KubectlBin, "--kubeconfig", c.Kubeconfig, "-n", ns,
			"port-forward", "--address", "127.0.0.1", "svc/echo", ":80")
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		// "Forwarding from 127.0.0.1:NNNNN -> 3000"
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("port-forward: %v", err)
		}
		m := regexp.MustCompile(`127\.0\.0\.1:(\d+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("port-forward: unexpected output %q", line)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%s/", m[1]))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !podRE.Match(body) {
			t.Fatalf("port-forward: %d %q", resp.StatusCode, body)
		}
	})

	t.Run("images on every node", func(t *testing.T) {
		want := []string{
			"registry.k8s.io/pause:3.10.1",
			"registry.k8s.io/coredns/coredns:v1.14.7",
			"registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0",
			"registry.k8s.io/gateway-api/conformance/echo-basic:v0.2.0",
			"registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0",
			"docker.io/ambit/ztunnel:dev",
			"docker.io/ambit/waypoint:dev",
			"docker.io/ambit/istiod-lite:dev",
		}
		nodes, err := c.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) != c.Nodes {
			t.Errorf("want %d nodes, got %d", c.Nodes, len(nodes.Items))
		}
		for _, n := range nodes.Items {
			have := map[string]bool{}
			for _, img := range n.Status.Images {
				for _, name := range img.Names {
					have[name] = true
				}
			}
			for _, w := range want {
				if !have[w] {
					t.Errorf("node %s: image %s not present", n.Name, w)
				}
			}
		}
	})

	t.Run("serviceaccount token review", func(t *testing.T) {
		ctx := context.Background()
		tr, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"ambit"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rev, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"ambit"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := "system:serviceaccount:" + ns + ":default"
		if !rev.Status.Authenticated || rev.Status.User.Username != want {
			t.Fatalf("TokenReview: authenticated=%v user=%q error=%q, want %q", rev.Status.Authenticated, rev.Status.User.Username, rev.Status.Error, want)
		}
	})
}

func firstPod(t *testing.T, c *devkube.Cluster, ns, selector string) string {
	t.Helper()
	pods, _ := c.ReadyPods(t, ns, selector)
	if len(pods) == 0 {
		t.Fatalf("no Ready pod for %s", selector)
	}
	return pods[0]
}
