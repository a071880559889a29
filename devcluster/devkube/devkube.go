// Package devkube is the test helper for end-to-end tests against the
// devcluster (see docs/devcluster.md): it finds (and, when asked, starts)
// the cluster, hands out clients, applies manifests, runs kubectl and
// waits for readiness.
//
// Typical use in an e2e test package:
//
//	func TestMain(m *testing.M) { os.Exit(devkube.Main(m)) }
//
//	func TestX(t *testing.T) {
//		c := devkube.Get(t)
//		ns := c.Namespace(t, "x-")
//		c.Apply(t, ns, manifest)
//		c.WaitForDeployment(t, ns, "echo", 3*time.Minute)
//	}
package devkube

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a running devcluster.
type Cluster struct {
	Kubeconfig string // path of the admin kubeconfig
	KubectlBin string // kubectl built for this cluster's version
	LogDir     string // every component's log
	Nodes      int
	Config     *rest.Config
	Client     kubernetes.Interface
}

// Dir is the devcluster directory (holding scripts/): $DEVCLUSTER_DIR, or
// found from this source file's location.
func Dir() string {
	if d := os.Getenv("DEVCLUSTER_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func script(name string) string { return filepath.Join(Dir(), "scripts", name) }

// env reads the cluster's paths from scripts/env.sh.
func env() (map[string]string, error) {
	out, err := exec.Command(script("env.sh")).Output()
	if err != nil {
		return nil, fmt.Errorf("devkube: %s: %w", script("env.sh"), err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// Connect returns the running devcluster, or an error saying how to start it.
func Connect() (*Cluster, error) {
	e, err := env()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Kubeconfig: e["KUBECONFIG"], KubectlBin: e["KUBECTL"], LogDir: e["LOG_DIR"]}
	fmt.Sscan(e["NODES"], &c.Nodes)
	if _, err := os.Stat(c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("devkube: devcluster is not up (no %s): run 'make devcluster-up' as root", c.Kubeconfig)
	}
	c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	c.Client, err = kubernetes.NewForConfig(c.Config)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		return nil, fmt.Errorf("devkube: devcluster API not answering (%v): run 'make devcluster-up' (logs: %s)", err, c.LogDir)
	}
	return c, nil
}

// Up runs scripts/up.sh (a no-op when the cluster is already up), with its
// output going to w.
func Up(w *os.File) error {
	cmd := exec.Command(script("up.sh"))
	cmd.Stdout, cmd.Stderr = w, w
	return cmd.Run()
}

// Down runs scripts/down.sh.
func Down(w *os.File) error {
	cmd := exec.Command(script("down.sh"))
	cmd.Stdout, cmd.Stderr = w, w
	return cmd.Run()
}

var (
	mu      sync.Mutex
	current *Cluster
)

// Main wraps testing.M.Run for e2e packages. With DEVCLUSTER_START=1 it
// brings the devcluster up when it is not running, and takes it down after
// the tests when it was the one to start it (unless DEVCLUSTER_KEEP=1).
// Without it, tests fail with a message when no cluster is up.
func Main(m *testing.M) int {
	started := false
	if os.Getenv("DEVCLUSTER_START") == "1" {
		if c, err := Connect(); err == nil {
			// A cluster that was already up runs images of whatever
			// checkout built them: test this one.
			if err := refreshAmbit(c); err != nil {
				fmt.Fprintf(os.Stderr, "devkube: refreshing ambit's images: %v\n", err)
				return 1
			}
		} else {
			fmt.Fprintln(os.Stderr, "devkube: bringing the devcluster up")
			t0 := time.Now()
			if err := Up(os.Stderr); err != nil {
				fmt.Fprintf(os.Stderr, "devkube: devcluster up failed: %v\n", err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "devkube: devcluster up in %s\n", time.Since(t0).Round(time.Second))
			started = true
		}
	}
	code := m.Run()
	if started && os.Getenv("DEVCLUSTER_KEEP") != "1" {
		if err := Down(os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "devkube: devcluster down failed: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// refreshAmbit rebuilds ambit's images from this checkout, loads them into
// the nodes and restarts ambit's components if they are installed.
func refreshAmbit(c *Cluster) error {
	for _, args := range [][]string{{"ambit"}, {"import"}} {
		cmd := exec.Command(script("images.sh"), args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("images.sh %s: %w", args[0], err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, w := range []string{"deployment/istiod-lite", "daemonset/ztunnel"} {
		if _, err := c.Kubectl(ctx, "", "-n", "istio-system", "get", w); err != nil {
			continue // not installed
		}
		if out, err := c.Kubectl(ctx, "", "-n", "istio-system", "rollout", "restart", w); err != nil {
			return fmt.Errorf("restart %s: %w: %s", w, err, out)
		}
		if out, err := c.Kubectl(ctx, "", "-n", "istio-system", "rollout", "status", w, "--timeout=180s"); err != nil {
			return fmt.Errorf("%s: %w: %s", w, err, out)
		}
	}
	return nil
}

// Get returns the running devcluster or fails the test.
func Get(t testing.TB) *Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if current == nil {
		c, err := Connect()
		if err != nil {
			t.Fatal(err)
		}
		current = c
	}
	return current
}

// Kubectl runs kubectl against the cluster and returns its stdout; the
// error carries stderr.
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.KubectlBin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Namespace creates a namespace named prefix+random suffix, deleted when
// the test ends (kept, for debugging, when it failed and
// DEVCLUSTER_KEEP=1).
func (c *Cluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpNamespace(t, ns.Name)
			if os.Getenv("DEVCLUSTER_KEEP") == "1" {
				return
			}
		}
		_ = c.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

// Apply applies a YAML manifest (one or more documents) in namespace ns.
func (c *Cluster) Apply(t testing.TB, ns, manifest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Kubectl(ctx, manifest, "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// WaitForDeployment waits until deployment name in ns is fully rolled out
// with every replica Ready.
func (c *Cluster) WaitForDeployment(t testing.TB, ns, name string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	if _, err := c.Kubectl(ctx, "", "-n", ns, "rollout", "status", "deployment/"+name, "--timeout="+timeout.String()); err != nil {
		t.Fatalf("deployment %s/%s not ready: %v", ns, name, err)
	}
}

// ReadyPods returns the names and node names of the Ready pods in ns
// matching selector.
func (c *Cluster) ReadyPods(t testing.TB, ns, selector string) (pods, nodes []string) {
	t.Helper()
	list, err := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == "Ready" && cond.Status == "True" {
				pods = append(pods, p.Name)
				nodes = append(nodes, p.Spec.NodeName)
			}
		}
	}
	return pods, nodes
}

// Exec runs cmd in a pod's container (kubectl exec, SPDY/websocket
// remotecommand) and returns its stdout.
func (c *Cluster) Exec(ctx context.Context, ns, pod, container string, cmd ...string) (string, error) {
	args := []string{"-n", ns, "exec", pod}
	if container != "" {
		args = append(args, "-c", container)
	}
	return c.Kubectl(ctx, "", append(append(args, "--"), cmd...)...)
}

// DumpNamespace logs pods, events and container logs of ns (on failure).
func (c *Cluster) DumpNamespace(t testing.TB, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"-n", ns, "get", "pods,svc,endpointslices", "-o", "wide"},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", ns, "logs", "--all-containers", "--prefix", "--tail=50", "-l", "devkube.dump!=no"},
	} {
		out, err := c.Kubectl(ctx, "", args...)
		t.Logf("kubectl %s:\n%s%v", strings.Join(args, " "), out, errOrEmpty(err))
	}
	t.Logf("component logs: %s", c.LogDir)
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
