package daemon

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestNewLoggerRejectsBadFlags(t *testing.T) {
	for _, o := range []Options{{LogLevel: "loud", LogFormat: "text"}, {LogLevel: "info", LogFormat: "xml"}} {
		if _, err := o.NewLogger(io.Discard, "x"); err == nil {
			t.Errorf("NewLogger(%+v) accepted invalid options", o)
		}
	}
	if _, err := (&Options{LogLevel: "debug", LogFormat: "json"}).NewLogger(io.Discard, "x"); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
}

func TestRunDrainsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	drained := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{ShutdownTimeout: 5 * time.Second}, quietLogger(), func(ctx context.Context, p *Process) error {
			<-ctx.Done()
			close(drained)
			return nil
		})
	}()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
	select {
	case <-drained:
	default:
		t.Fatal("body was not given the chance to drain")
	}
}

func TestRunReportsDrainTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	block := make(chan struct{})
	defer close(block)
	err := Run(ctx, Options{ShutdownTimeout: 50 * time.Millisecond}, quietLogger(), func(context.Context, *Process) error {
		<-block // ignores cancellation
		return nil
	})
	if err == nil {
		t.Fatal("Run returned nil although the body never drained")
	}
}

func TestRunReturnsBodyError(t *testing.T) {
	want := errors.New("boom")
	err := Run(context.Background(), Options{}, quietLogger(), func(context.Context, *Process) error { return want })
	if !errors.Is(err, want) {
		t.Fatalf("Run = %v, want %v", err, want)
	}
}

var healthAddrRE = regexp.MustCompile(`health endpoint listening.*addr=(\S+)`)

// TestComponentsStartServeHealthAndStopOnSIGTERM builds each component's
// binary and runs it as a process: health and readiness answer, SIGTERM
// exits 0 after a clean drain.
func TestComponentsStartServeHealthAndStopOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	for _, component := range []string{"ztunnel", "waypoint", "istiod-lite"} {
		t.Run(component, func(t *testing.T) {
			bin := filepath.Join(dir, component)
			build := exec.Command("go", "build", "-o", bin, "../../"+component)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("build: %v\n%s", err, out)
			}
			args := []string{"--health-addr", "127.0.0.1:0", "--log-format", "text"}
			switch component {
			case "istiod-lite":
				args = append(args, istiodLiteArgs(t)...)
			case "ztunnel":
				args = append(args, ztunnelArgs(t)...)
			case "waypoint":
				args = append(args, waypointArgs(t)...)
			}
			cmd := exec.Command(bin, args...)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill() }()
			lines := bufio.NewScanner(stderr)
			var addr string
			var log []string
			for lines.Scan() {
				log = append(log, lines.Text())
				if m := healthAddrRE.FindStringSubmatch(lines.Text()); m != nil {
					addr = m[1]
					break
				}
			}
			if addr == "" {
				t.Fatalf("no health address logged:\n%v", log)
			}
			go func() { _, _ = io.Copy(io.Discard, stderr) }()
			waitOK(t, "http://"+addr+"/healthz")
			if component == "waypoint" {
				// Its control plane is not there: alive, but never ready
				// (it has no configuration and no certificate).
				time.Sleep(500 * time.Millisecond)
				if code := status(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable {
					t.Errorf("waypoint /readyz without a control plane = %d, want 503", code)
				}
			} else {
				waitOK(t, "http://"+addr+"/readyz")
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("exit after SIGTERM: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("did not exit after SIGTERM")
			}
		})
	}
}

// istiodLiteArgs gives istiod-lite a real control plane to watch: its own
// kube-apiserver with the CRDs it needs, and loopback ports.
func istiodLiteArgs(t *testing.T) []string {
	env := kubetest.New(t, kubetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	crds := filepath.Join("..", "..", "manifests", "crds")
	if err := env.ApplyFiles(ctx, filepath.Join(crds, "authorizationpolicies.security.istio.io.yaml"), filepath.Join(crds, "peerauthentications.security.istio.io.yaml")); err != nil {
		t.Fatal(err)
	}
	return []string{"--kubeconfig", env.Kubeconfig, "--namespace", "default", "--grpc-addr", "127.0.0.1:0", "--monitoring-addr", "127.0.0.1:0", "--leader-elect=false"}
}

// ztunnelArgs gives ztunnel a kube-apiserver to watch, a root and a token
// file, a CNI socket of its own, and a control plane address that is not
// there (ztunnel serves enrollment without it and keeps retrying).
func ztunnelArgs(t *testing.T) []string {
	env := kubetest.New(t, kubetest.Options{})
	dir := t.TempDir()
	root, token := rootAndToken(t, dir)
	return []string{"--kubeconfig", env.Kubeconfig, "--node-name", "node-a", "--control-plane", "127.0.0.1:1",
		"--root-cert", root, "--token", token, "--cni-socket", filepath.Join(dir, "run", "ztunnel.sock"),
		"--cni-state-file", filepath.Join(dir, "run", "ambient-namespaces.json"), "--monitoring-addr", "127.0.0.1:0"}
}

// rootAndToken writes a mesh root and a (never checked) token file into
// dir, for the node agent and the waypoint.
func rootAndToken(t *testing.T, dir string) (root, token string) {
	t.Helper()
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, token = filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "token")
	if err := os.WriteFile(root, authority.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("not-a-real-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	return root, token
}

// waypointArgs gives the waypoint a root and a token file and a control
// plane address that is not there (it keeps retrying).
func waypointArgs(t *testing.T) []string {
	dir := t.TempDir()
	root, token := rootAndToken(t, dir)
	return []string{"--namespace", "ns", "--name", "waypoint", "--xds-address", "127.0.0.1:1", "--root-cert", root, "--token", token,
		"--hbone-addr", "127.0.0.1:0", "--monitoring-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}
}

func status(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitOK(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s never answered 200 (last: %v)", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
