//go:build linux

package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/cni/plugin"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

func nsPath(ns *podns.NS) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd()) }

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// node is one node's ztunnel side: a real Enroller behind a real server on a
// Unix socket, deciding by namespace name like a Decider fed by the API.
type node struct {
	dir      string
	sock     string
	state    string
	enroller *enroll.Enroller
	acc      *netnstest.Acceptor
}

func decide(ctx context.Context, p enroll.Pod) (enroll.Decision, error) {
	if strings.HasPrefix(p.Namespace, "ambient") {
		return enroll.Capture, nil
	}
	return enroll.Skip, nil
}

func newNode(t *testing.T, serve bool) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{dir: dir, sock: filepath.Join(dir, "run", "ztunnel.sock"), state: filepath.Join(dir, "run", "ambient-namespaces.json"), acc: netnstest.NewAcceptor(t)}
	if !serve {
		return n
	}
	var err error
	n.enroller, err = enroll.NewEnroller(enroll.EnrollerOptions{
		Log: testLog(t),
		OnEnrolled: func(p enroll.Pod, _ *podns.NS, lns *inpod.Listeners) {
			n.acc.Watch(p.Name+"/hbone", lns.HBONE)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.enroller.Close() })
	srv, err := enroll.NewServer(enroll.ServerOptions{Handler: n.enroller, Decider: enroll.DeciderFunc(decide), Log: testLog(t), MaxConcurrent: 16})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := enroll.Listen(n.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return n
}

// prevResult is a bridge plugin's result for a pod with these addresses.
func prevResult(cniVersion string, ips ...netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"cniVersion":%q,"interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:01:05","sandbox":"/var/run/netns/x"}],"ips":[`, cniVersion)
	for i, ip := range ips {
		if i > 0 {
			b.WriteString(",")
		}
		bits, gw := 24, "10.250.0.1"
		if ip.Is6() {
			bits, gw = 64, "fd00::1"
		}
		if cniVersion == "1.0.0" {
			fmt.Fprintf(&b, `{"interface":0,"address":"%s/%d","gateway":%q}`, ip, bits, gw)
		} else {
			fmt.Fprintf(&b, `{"version":%q,"interface":0,"address":"%s/%d","gateway":%q}`, map[bool]string{true: "4", false: "6"}[ip.Is4()], ip, bits, gw)
		}
	}
	b.WriteString(`],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.96.0.10"]}}`)
	return b.String()
}

func netconf(n *node, cniVersion, prev string) []byte {
	conf := fmt.Sprintf(`{"cniVersion":%q,"name":"cbr0","type":"ambit-cni","socketPath":%q,"stateFile":%q,"timeout":"5s","excludeNamespaces":["kube-system","ambit-system"]`,
		cniVersion, n.sock, n.state)
	if prev != "" {
		conf += `,"prevResult":` + prev
	}
	return []byte(conf + "}")
}

func cmdArgs(n *node, ns, name, uid, netnsPath, cniVersion, prev string) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "sandbox-" + uid,
		Netns:       netnsPath,
		IfName:      "eth0",
		Args:        fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=sandbox-%s;K8S_POD_UID=%s", ns, name, uid, uid),
		Path:        "/opt/cni/bin",
		StdinData:   netconf(n, cniVersion, prev),
	}
}

func add(t *testing.T, args *skel.CmdArgs) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := (&plugin.Plugin{Stdout: &out, Log: testLog(t)}).CmdAdd(args)
	return out.String(), err
}

// assertPassedThrough: ADD printed exactly the previous result.
func assertPassedThrough(t *testing.T, out, prev string) {
	t.Helper()
	if strings.TrimSpace(out) != prev {
		t.Fatalf("result changed:\n got %s\nwant %s", out, prev)
	}
}

func rules(t *testing.T, ns *podns.NS) capture.Status {
	t.Helper()
	st, err := capture.Check(ns, capture.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func dialHBONE(p *netnstest.Pair) error {
	c, err := (&inpod.Dialer{NS: p.PeerNS, Timeout: 2 * time.Second}).DialContext(context.Background(), "tcp", netip.AddrPortFrom(p.IP4, capture.HBONEPort).String())
	if err == nil {
		_ = c.Close()
	}
	return err
}

func TestAddCheckDelCapturedPod(t *testing.T) {
	netnstest.RequireRoot(t)
	n := newNode(t, true)
	p := netnstest.NewPair(t, 210)
	prev := prevResult("1.0.0", p.IP4, p.IP6)
	args := cmdArgs(n, "ambient-demo", "web-0", "uid-1", nsPath(p.NS), "1.0.0", prev)

	start := time.Now()
	out, err := add(t, args)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ADD through the plugin and the ztunnel took %v", time.Since(start))
	assertPassedThrough(t, out, prev)
	if st := rules(t, p.NS); !st.Current {
		t.Fatalf("rules not in place: %q", st.Problems)
	}
	if err := dialHBONE(p); err != nil {
		t.Fatalf("15008 in the pod: %v", err)
	}
	n.acc.Expect(t, "web-0/hbone")
	got := n.enroller.Enrolled()
	if len(got) != 1 || got[0].UID != "uid-1" || got[0].ContainerID != "sandbox-uid-1" || !slices.Equal(got[0].IPs, []netip.Addr{p.IP4, p.IP6}) {
		t.Fatalf("registry %+v", got)
	}

	pl := &plugin.Plugin{Log: testLog(t)}
	if err := pl.CmdCheck(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := capture.Remove(p.NS, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if err := pl.CmdCheck(args); err == nil || !strings.Contains(err.Error(), "not current") {
		t.Fatalf("CHECK after rules were flushed: %v", err)
	}

	if err := pl.CmdDel(args); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if st := rules(t, p.NS); st.Present() {
		t.Fatalf("rules left after DEL: %q", st.Problems)
	}
	if err := dialHBONE(p); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("15008 after DEL: want refused, got %v", err)
	}
	if len(n.enroller.Enrolled()) != 0 {
		t.Fatal("registry not empty after DEL")
	}
	// DEL is idempotent.
	if err := pl.CmdDel(args); err != nil {
		t.Fatal(err)
	}
}

func TestAddNotCapturedPassesThrough(t *testing.T) {
	netnstest.RequireRoot(t)
	n := newNode(t, true)
	p := netnstest.NewPair(t, 211)
	for _, ver := range []string{"1.0.0", "0.4.0", "0.3.1"} {
		prev := prevResult(ver, p.IP4)
		out, err := add(t, cmdArgs(n, "plain", "web-0", "uid-2", nsPath(p.NS), ver, prev))
		if err != nil {
			t.Fatalf("%s: %v", ver, err)
		}
		assertPassedThrough(t, out, prev)
		if st := rules(t, p.NS); st.Present() {
			t.Fatal("a pod that is not captured got rules")
		}
		if err := dialHBONE(p); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("a pod that is not captured has a listener: %v", err)
		}
	}
	// A captured pod with an older CNI version: enrolled, result unchanged.
	prev := prevResult("0.4.0", p.IP4)
	out, err := add(t, cmdArgs(n, "ambient-demo", "web-0", "uid-3", nsPath(p.NS), "0.4.0", prev))
	if err != nil {
		t.Fatal(err)
	}
	assertPassedThrough(t, out, prev)
	if st := rules(t, p.NS); !st.Current {
		t.Fatal("0.4.0 pod not enrolled")
	}
}

func TestInputErrors(t *testing.T) {
	n := newNode(t, false)
	// Not chained (no prevResult): a configuration error.
	if _, err := add(t, cmdArgs(n, "ambient-demo", "a", "u", "/x", "1.0.0", "")); err == nil || !strings.Contains(err.Error(), "chained") {
		t.Fatalf("no prevResult: %v", err)
	}
	// Garbage configuration.
	args := cmdArgs(n, "ambient-demo", "a", "u", "/x", "1.0.0", "")
	args.StdinData = []byte("{nope")
	if _, err := add(t, args); err == nil {
		t.Fatal("garbage configuration accepted")
	}
	// Not a Kubernetes pod: passed through without asking anybody.
	prev := prevResult("1.0.0", netip.MustParseAddr("10.250.9.2"))
	args = cmdArgs(n, "ambient-demo", "a", "u", "/x", "1.0.0", prev)
	args.Args = ""
	out, err := add(t, args)
	if err != nil {
		t.Fatal(err)
	}
	assertPassedThrough(t, out, prev)
	// Timeout as a number of seconds; a bad one is refused.
	if c, err := plugin.ParseConfig([]byte(`{"type":"ambit-cni","timeout":2.5}`)); err != nil || time.Duration(c.Timeout) != 2500*time.Millisecond {
		t.Fatalf("numeric timeout: %+v %v", c, err)
	}
	if _, err := plugin.ParseConfig([]byte(`{"type":"ambit-cni","timeout":"soon"}`)); err == nil {
		t.Fatal("bad timeout accepted")
	}
}

// TestZtunnelUnreachable is the documented behaviour when no ztunnel
// answers: pods of ambient namespaces (per the state file) fail, others and
// excluded namespaces pass, and without a state file pods fail closed.
func TestZtunnelUnreachable(t *testing.T) {
	n := newNode(t, false)
	prev := prevResult("1.0.0", netip.MustParseAddr("10.250.9.2"))
	run := func(ns string) (string, error) {
		return add(t, cmdArgs(n, ns, "web-0", "u-"+ns, "/var/run/netns/none", "1.0.0", prev))
	}
	// No state file yet: fail closed, except excluded namespaces.
	if _, err := run("ambient-demo"); err == nil || !strings.Contains(err.Error(), "no namespace state") {
		t.Fatalf("no state, ambient: %v", err)
	}
	if _, err := run("plain"); err == nil {
		t.Fatal("no state, plain: passed")
	}
	out, err := run("kube-system")
	if err != nil {
		t.Fatalf("kube-system: %v", err)
	}
	assertPassedThrough(t, out, prev)
	if _, err := run("ambit-system"); err != nil {
		t.Fatalf("ztunnel's own namespace: %v", err)
	}

	if err := wire.WriteNamespaceState(n.state, []string{"ambient-demo"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = run("ambient-demo")
	if err == nil || !strings.Contains(err.Error(), "is ambient") || !wire.IsUnavailable(err) {
		t.Fatalf("ambient namespace with ztunnel down: want failure, got %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("failing took %v", time.Since(start))
	}
	out, err = run("plain")
	if err != nil {
		t.Fatalf("plain namespace with ztunnel down: %v", err)
	}
	assertPassedThrough(t, out, prev)

	// DEL never fails; CHECK follows ADD's rule.
	pl := &plugin.Plugin{Log: testLog(t)}
	if err := pl.CmdDel(cmdArgs(n, "ambient-demo", "web-0", "u", "", "1.0.0", "")); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if err := pl.CmdCheck(cmdArgs(n, "ambient-demo", "web-0", "u", "/x", "1.0.0", prev)); err == nil {
		t.Fatal("CHECK of an ambient pod passed with ztunnel down")
	}
	if err := pl.CmdCheck(cmdArgs(n, "plain", "web-0", "u", "/x", "1.0.0", prev)); err != nil {
		t.Fatalf("CHECK of a plain pod: %v", err)
	}

	// A ztunnel that accepts but hangs is unavailable too, after the timeout.
	if err := os.MkdirAll(filepath.Dir(n.sock), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", n.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	args := cmdArgs(n, "plain", "web-0", "u", "/x", "1.0.0", prev)
	args.StdinData = bytes.Replace(args.StdinData, []byte(`"timeout":"5s"`), []byte(`"timeout":"300ms"`), 1)
	start = time.Now()
	if _, err := add(t, args); err != nil {
		t.Fatalf("hung ztunnel, plain namespace: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("hung ztunnel: answered after %v", d)
	}
}

// TestConcurrentAdds: 100 pods created at once on a node, then deleted at
// once; all enrolled, all released, and no descriptor or goroutine leaks.
func TestConcurrentAdds(t *testing.T) {
	netnstest.RequireRoot(t)
	n := newNode(t, true)
	const pods = 100
	nss := make([]*podns.NS, pods)
	for i := range nss {
		nss[i] = netnstest.NewT(t)
	}
	runtime.GC()
	baseG := runtime.NumGoroutine()
	baseFD, err := netnstest.CountFDs()
	if err != nil {
		t.Fatal(err)
	}

	argsOf := func(i int) *skel.CmdArgs {
		ip := netip.AddrFrom4([4]byte{10, 250, 220, byte(i + 2)})
		return cmdArgs(n, "ambient-load", fmt.Sprintf("pod-%d", i), fmt.Sprintf("uid-%d", i), nsPath(nss[i]), "1.0.0", prevResult("1.0.0", ip))
	}
	lat := make([]time.Duration, pods)
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	start := time.Now()
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			var out bytes.Buffer
			if err := (&plugin.Plugin{Stdout: &out, Log: slog.New(slog.DiscardHandler)}).CmdAdd(argsOf(i)); err != nil {
				errs <- fmt.Errorf("pod %d: %w", i, err)
			}
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	total := time.Since(start)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	slices.Sort(lat)
	t.Logf("%d concurrent ADDs in %v: p50 %v, p90 %v, max %v", pods, total.Round(time.Millisecond), lat[pods/2].Round(time.Millisecond), lat[pods*9/10].Round(time.Millisecond), lat[pods-1].Round(time.Millisecond))
	if st := n.enroller.Stats(); st.Enrolled != pods || st.Applied != pods {
		t.Fatalf("stats %+v", st)
	}
	for i, ns := range nss {
		if st := rules(t, ns); !st.Current {
			t.Fatalf("pod %d: rules %q", i, st.Problems)
		}
	}
	// Listeners are really there: connect inside one pod.
	c, err := (&inpod.Dialer{NS: nss[pods/2], Timeout: time.Second}).DialContext(context.Background(), "tcp", "127.0.0.1:15008")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	n.acc.Expect(t, fmt.Sprintf("pod-%d/hbone", pods/2))

	start = time.Now()
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := (&plugin.Plugin{Log: slog.New(slog.DiscardHandler)}).CmdDel(argsOf(i)); err != nil {
				t.Errorf("DEL %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent DELs in %v", pods, time.Since(start).Round(time.Millisecond))
	if st := n.enroller.Stats(); st.Enrolled != 0 || st.Released != pods {
		t.Fatalf("stats %+v", st)
	}
	for i, ns := range nss {
		if st := rules(t, ns); st.Present() {
			t.Fatalf("pod %d: rules left", i)
		}
	}
	n.acc.Close()
	var g, fd int
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		g = runtime.NumGoroutine()
		fd, _ = netnstest.CountFDs()
		if g <= baseG && fd <= baseFD || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g > baseG || fd > baseFD {
		buf := make([]byte, 1<<20)
		t.Fatalf("leak: goroutines %d (baseline %d), fds %d (baseline %d)\n%s", g, baseG, fd, baseFD, buf[:runtime.Stack(buf, true)])
	}
}

// TestBinaryEndToEnd builds ambit-cni and runs it the way a container
// runtime does: CNI_* environment, network configuration on stdin, result on
// stdout.
func TestBinaryEndToEnd(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "ambit-cni")
	build := exec.Command("go", "build", "-o", bin, "github.com/ambit-mesh/ambit/ztunnel/cni/cmd/ambit-cni")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	n := newNode(t, true)
	p := netnstest.NewPair(t, 212)
	prev := prevResult("1.0.0", p.IP4)
	logFile := filepath.Join(n.dir, "cni.log")
	conf := bytes.Replace(netconf(n, "1.0.0", prev), []byte(`"timeout"`), fmt.Appendf(nil, `"logFile":%q,"timeout"`, logFile), 1)

	invoke := func(command string) (string, string, error) {
		cmd := exec.Command(bin)
		cmd.Env = []string{
			"CNI_COMMAND=" + command,
			"CNI_CONTAINERID=sandbox-e2e",
			"CNI_NETNS=" + nsPath(p.NS),
			"CNI_IFNAME=eth0",
			"CNI_PATH=" + filepath.Dir(bin),
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ambient-e2e;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox-e2e;K8S_POD_UID=uid-e2e",
		}
		cmd.Stdin = bytes.NewReader(conf)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	out, stderr, err := invoke("ADD")
	if err != nil {
		t.Fatalf("ADD: %v\nstdout %s\nstderr %s", err, out, stderr)
	}
	assertPassedThrough(t, out, prev)
	var js map[string]any
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("result is not JSON: %v", err)
	}
	if st := rules(t, p.NS); !st.Current {
		t.Fatalf("rules after ADD: %q", st.Problems)
	}
	if err := dialHBONE(p); err != nil {
		t.Fatal(err)
	}
	n.acc.Expect(t, "web-0/hbone")
	if out, stderr, err := invoke("CHECK"); err != nil {
		t.Fatalf("CHECK: %v\n%s%s", err, out, stderr)
	}
	if out, stderr, err := invoke("DEL"); err != nil {
		t.Fatalf("DEL: %v\n%s%s", err, out, stderr)
	}
	if st := rules(t, p.NS); st.Present() {
		t.Fatal("rules after DEL")
	}
	if out, _, err := invoke("VERSION"); err != nil || !strings.Contains(out, "1.0.0") {
		t.Fatalf("VERSION: %v %s", err, out)
	}
	logs, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(logs), "status=enrolled") || !strings.Contains(string(logs), "status=released") {
		t.Fatalf("plugin log: %v\n%s", err, logs)
	}

	// With the ztunnel gone, the same binary fails an ambient pod with a
	// CNI error on stdout and a non-zero exit.
	if err := wire.WriteNamespaceState(n.state, []string{"ambient-e2e"}); err != nil {
		t.Fatal(err)
	}
	conf = bytes.Replace(conf, []byte(n.sock), []byte(n.sock+".gone"), 1)
	out, _, err = invoke("ADD")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(out, `"code"`) || !strings.Contains(out, "is ambient") {
		t.Fatalf("ADD with ztunnel gone: %v\n%s", err, out)
	}
}
