//go:build e2e

package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

const ambientApps = `
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
        # Kubelet probes come from the node in plain text; STRICT must
        # not fail them (the node source-NATs them past capture).
        readinessProbe:
          httpGet: {path: /, port: 3000}
          periodSeconds: 1
          failureThreshold: 2
        livenessProbe:
          tcpSocket: {port: 3000}
          periodSeconds: 1
          failureThreshold: 3
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 3000}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      serviceAccountName: client
      terminationGracePeriodSeconds: 1
      containers:
      - {name: client, image: ambit/toolbox:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outsider}
spec:
  replicas: 1
  selector: {matchLabels: {app: outsider}}
  template:
    metadata: {labels: {app: outsider, istio.io/dataplane-mode: none}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: client, image: ambit/toolbox:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
`

// installAmbient installs istiod-lite and ztunnel (manifests/devcluster)
// and waits for both.
func installAmbient(t *testing.T, c *devkube.Cluster) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "manifests", "devcluster")
	if out, err := c.Kubectl(context.Background(), "", "apply", "-k", dir); err != nil {
		t.Fatalf("kubectl apply -k %s: %v\n%s", dir, err, out)
	}
	c.WaitForDeployment(t, "istio-system", "istiod-lite", 3*time.Minute)
	if out, err := c.Kubectl(context.Background(), "", "-n", "istio-system", "rollout", "status", "daemonset/ztunnel", "--timeout=180s"); err != nil {
		t.Fatalf("ztunnel rollout: %v\n%s", err, out)
	}
}

// curl runs curl in a pod and returns the HTTP status ("000" when the
// connection failed).
func curl(c *devkube.Cluster, ns, pod, url string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, _ := c.Exec(ctx, ns, pod, "", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url)
	return strings.TrimSpace(out)
}

// meshConnections sums ztunnel's istio_tcp_connections_opened_total on
// every node for reporter=destination, mutual TLS, destination namespace ns.
func meshConnections(t *testing.T, c *devkube.Cluster, ns string) int {
	t.Helper()
	pods, err := c.Client.CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`istio_tcp_connections_opened_total\{([^}]*)\} (\d+)`)
	total := 0
	for _, p := range pods.Items {
		raw, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces/istio-system/pods/" + p.Name + ":15020/proxy/metrics").DoRaw(context.Background())
		if err != nil {
			t.Fatalf("ztunnel %s metrics: %v", p.Name, err)
		}
		for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
			labels := m[1]
			if strings.Contains(labels, `reporter="destination"`) && strings.Contains(labels, `connection_security_policy="mutual_tls"`) &&
				strings.Contains(labels, `destination_workload_namespace="`+ns+`"`) {
				n, _ := strconv.Atoi(m[2])
				total += n
			}
		}
	}
	return total
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}

// TestAmbientMesh is the mesh on a real cluster: pods of an ambient
// namespace talk through ztunnel over HBONE mTLS across nodes, L4 policy
// and PeerAuthentication are enforced, a pod that opts out stays out, and
// a namespace joining or leaving the mesh takes its running pods along.
func TestAmbientMesh(t *testing.T) {
	c := devkube.Get(t)
	installAmbient(t, c)
	ns := c.Namespace(t, "mesh-")
	if out, err := c.Kubectl(context.Background(), "", "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label: %v %s", err, out)
	}
	c.Apply(t, ns, ambientApps)
	for _, d := range []string{"echo", "client", "outsider"} {
		c.WaitForDeployment(t, ns, d, 3*time.Minute)
	}
	client := firstPod(t, c, ns, "app=client")
	outsider := firstPod(t, c, ns, "app=outsider")
	url := "http://echo." + ns + "/"

	t.Run("mTLS across nodes", func(t *testing.T) {
		before := meshConnections(t, c, ns)
		podRE := regexp.MustCompile(`"pod":\s*"([^"]+)"`)
		seen := map[string]bool{}
		eventually(t, "both echo pods answering through the mesh", time.Minute, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := c.Exec(ctx, ns, client, "", "curl", "-s", "-m", "5", url)
			if m := podRE.FindStringSubmatch(out); err == nil && m != nil {
				seen[m[1]] = true
			}
			return len(seen) == 2
		})
		if after := meshConnections(t, c, ns); after <= before {
			t.Errorf("no connection reached the echo pods over mutual TLS (ztunnel count %d -> %d)", before, after)
		}
	})

	t.Run("AuthorizationPolicy DENY", func(t *testing.T) {
		c.Apply(t, ns, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/`+ns+`/sa/client"]}
`)
		eventually(t, "the client denied", 30*time.Second, func() bool { return curl(c, ns, client, url) == "000" })
		if code := curl(c, ns, outsider, url); code != "200" {
			t.Errorf("a plaintext caller (not the denied principal) got %s", code)
		}
		if out, err := c.Kubectl(context.Background(), "", "-n", ns, "delete", "authorizationpolicy", "deny-client"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		eventually(t, "the client allowed again", 30*time.Second, func() bool { return curl(c, ns, client, url) == "200" })
	})

	t.Run("PeerAuthentication STRICT refuses the opted-out pod", func(t *testing.T) {
		c.Apply(t, ns, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
`)
		eventually(t, "plaintext refused", 30*time.Second, func() bool { return curl(c, ns, outsider, url) == "000" })
		if code := curl(c, ns, client, url); code != "200" {
			t.Errorf("the meshed client got %s under STRICT", code)
		}
		// The echo pods' kubelet probes (every second, unready after two
		// failures) keep passing: watched for 8 s under STRICT.
		for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			pods, err := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pods.Items {
				ready := false
				for _, cond := range p.Status.Conditions {
					ready = ready || cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue
				}
				restarts := int32(0)
				for _, cs := range p.Status.ContainerStatuses {
					restarts += cs.RestartCount
				}
				if !ready || restarts > 0 {
					t.Fatalf("under STRICT, echo pod %s: ready %v, restarts %d (kubelet probes refused?)", p.Name, ready, restarts)
				}
			}
		}
		if out, err := c.Kubectl(context.Background(), "", "-n", ns, "delete", "peerauthentication", "strict"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		eventually(t, "plaintext accepted again", 30*time.Second, func() bool { return curl(c, ns, outsider, url) == "200" })
	})

	t.Run("namespace joins and leaves the mesh", func(t *testing.T) {
		late := c.Namespace(t, "late-")
		c.Apply(t, late, ambientApps)
		c.WaitForDeployment(t, late, "echo", 3*time.Minute)
		lateURL := "http://echo." + late + "/"
		if code := curl(c, ns, client, lateURL); code != "200" {
			t.Fatalf("before joining: %s", code)
		}
		before := meshConnections(t, c, late)
		if out, err := c.Kubectl(context.Background(), "", "label", "namespace", late, "istio.io/dataplane-mode=ambient"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		eventually(t, "the running echo pods enrolled (mTLS connections to them)", time.Minute, func() bool {
			return curl(c, ns, client, lateURL) == "200" && meshConnections(t, c, late) > before
		})
		if out, err := c.Kubectl(context.Background(), "", "label", "namespace", late, "istio.io/dataplane-mode-"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		// Released: new connections are plain again, so the mTLS count stops.
		var settled int
		eventually(t, "the echo pods released", time.Minute, func() bool {
			if curl(c, ns, client, lateURL) != "200" {
				return false
			}
			n := meshConnections(t, c, late)
			if n == settled {
				return true
			}
			settled = n
			return false
		})
		for i := 0; i < 3; i++ {
			if code := curl(c, ns, client, lateURL); code != "200" {
				t.Fatalf("after leaving: %s", code)
			}
		}
		if n := meshConnections(t, c, late); n != settled {
			t.Errorf("connections to the released pods still counted as mTLS (%d -> %d)", settled, n)
		}
	})
}
