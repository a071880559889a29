// Command meshbench measures ambit's ztunnel data path on devcluster against
// direct pod-to-pod traffic in the same run (make bench-mesh; see
// docs/performance.md, "ztunnel data path on devcluster").
//
// It creates two namespaces, one ambient (istio.io/dataplane-mode=ambient)
// and one not, each with a fortio server pod (plus an iperf3 server) on one
// node and a client pod on another node, and then, alternating direct and
// mesh rounds to spread the machine's noise over both:
//
//   - fortio load at a fixed rate (HTTP/1.1, 1 KB request bodies echoed
//     back, keep-alive connections) against the server pod's IP: p50/p90/
//     p99/p99.9 from fortio's JSON;
//   - the CPU time of both nodes' ztunnel processes over each run, read from
//     /proc/<pid>/stat (utime+stime) on this machine (the nodes share its PID
//     namespace), and their VmRSS/VmHWM; the ztunnel CPU seen during the
//     direct rounds (which do not touch ztunnel) is the background that is
//     subtracted;
//   - iperf3 bulk TCP throughput, direct vs mesh.
//
// It prints a markdown table. It must run as root on the devcluster machine
// (it reads other processes' /proc entries) with the fortio image imported
// (images.sh base && images.sh import fortio; make bench-mesh does both).
// This is a benchmark, not a test: nothing asserts on the figures.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	kubectl, kubeconfig    string
	image                  string
	clientNode, serverNode string
	qps, conns, payload    int
	duration               time.Duration
	rounds                 int
	iperfTime              time.Duration
	iperfRounds            int
	keep                   bool
	raw                    string
	// waypoint: measure ztunnel-only vs through a waypoint (waypoint.go)
	// instead of direct vs ztunnel.
	waypoint bool
	// wpUID is the waypoint pod's uid when measuring a waypoint: measure
	// then samples its CPU time too.
	wpUID string
}

func main() {
	var c config
	flag.StringVar(&c.kubectl, "kubectl", envOr("KUBECTL", "kubectl"), "kubectl binary")
	flag.StringVar(&c.kubeconfig, "kubeconfig", envOr("KUBECONFIG", "/var/lib/ambit-devcluster/kubeconfig"), "kubeconfig")
	flag.StringVar(&c.image, "image", "ambit/fortio:dev", "image with /usr/bin/fortio and /usr/bin/iperf3")
	flag.StringVar(&c.clientNode, "client-node", "", "node of the client pods (default: the first node)")
	flag.StringVar(&c.serverNode, "server-node", "", "node of the server pods (default: the second node)")
	flag.IntVar(&c.qps, "qps", 1000, "fortio request rate (fixed)")
	flag.IntVar(&c.conns, "c", 8, "fortio connections")
	flag.IntVar(&c.payload, "payload-size", 1024, "request body bytes (echoed back by the fortio server)")
	flag.DurationVar(&c.duration, "t", 30*time.Second, "duration of each fortio run")
	flag.IntVar(&c.rounds, "rounds", 2, "fortio rounds; each is one direct and one mesh run")
	flag.DurationVar(&c.iperfTime, "iperf-time", 10*time.Second, "duration of each iperf3 run")
	flag.IntVar(&c.iperfRounds, "iperf-rounds", 2, "iperf3 rounds; each is one direct and one mesh run")
	flag.BoolVar(&c.keep, "keep", false, "keep the namespaces afterwards")
	flag.StringVar(&c.raw, "raw", "", "also write every run's raw figures (JSON) to this file")
	flag.BoolVar(&c.waypoint, "waypoint", false, "measure the path through a waypoint against the ztunnel-only path (two Services to the same server pod, one labelled istio.io/use-waypoint) instead of ztunnel against direct; no iperf3")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "meshbench:", err)
		os.Exit(1)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[meshbench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// kube runs kubectl and returns its stdout; stderr goes into the error.
func (c *config) kube(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, lastLines(errb.String(), 3))
	}
	return out.Bytes(), nil
}

// lastLines returns the last n lines of s, trimmed.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// bench is one namespace: a server pod and a client pod on different nodes.
type bench struct {
	mode      string // "direct" or "mesh"
	ns        string
	serverIP  string
	clientPod string
	podUIDs   []string // client and server pods, for their CPU time
}

const podsYAML = `apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: meshbench-server}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: %[1]s
    imagePullPolicy: Never
    args: ["server", "-http-port", "8080"]
    resources: {requests: {cpu: 10m, memory: 16Mi}}
  - name: iperf3
    image: %[1]s
    imagePullPolicy: Never
    command: ["/usr/bin/iperf3", "-s", "-p", "5201"]
    resources: {requests: {cpu: 10m, memory: 16Mi}}
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: meshbench-client}
spec:
  nodeName: %[3]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: %[1]s
    imagePullPolicy: Never
    args: ["server", "-http-port", "8080"]
    resources: {requests: {cpu: 10m, memory: 16Mi}}
    volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
`

func run(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it reads the ztunnel processes' /proc entries")
	}
	if c.waypoint {
		return runWaypoint(ctx, c)
	}
	if err := c.pickNodes(ctx); err != nil {
		return err
	}
	logf("client pods on %s, server pods on %s", c.clientNode, c.serverNode)
	zt, err := newZtunnels(ctx, &c)
	if err != nil {
		return err
	}

	suffix := fmt.Sprintf("%04x", rand.IntN(1<<16))
	benches := []*bench{{mode: "direct", ns: "meshbench-direct-" + suffix}, {mode: "mesh", ns: "meshbench-mesh-" + suffix}}
	defer func() {
		if c.keep {
			logf("keeping namespaces %s and %s", benches[0].ns, benches[1].ns)
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, b := range benches {
			if _, err := c.kube(cctx, nil, "delete", "namespace", b.ns, "--wait=false", "--ignore-not-found"); err != nil {
				logf("cleanup: %v", err)
			}
		}
	}()
	for _, b := range benches {
		if _, err := c.kube(ctx, nil, "create", "namespace", b.ns); err != nil {
			return err
		}
		if b.mode == "mesh" {
			if _, err := c.kube(ctx, nil, "label", "namespace", b.ns, "istio.io/dataplane-mode=ambient"); err != nil {
				return err
			}
		}
		if _, err := c.kube(ctx, strings.NewReader(fmt.Sprintf(podsYAML, c.image, c.serverNode, c.clientNode)), "-n", b.ns, "apply", "-f", "-"); err != nil {
			return err
		}
	}
	for _, b := range benches {
		if _, err := c.kube(ctx, nil, "-n", b.ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
			out, _ := c.kube(ctx, nil, "-n", b.ns, "get", "pods,events", "-o", "wide")
			return fmt.Errorf("%v\n%s", err, out)
		}
		ip, err := c.kube(ctx, nil, "-n", b.ns, "get", "pod", "server", "-o", "jsonpath={.status.podIP}")
		if err != nil {
			return err
		}
		b.serverIP, b.clientPod = strings.TrimSpace(string(ip)), "client"
		uids, err := c.kube(ctx, nil, "-n", b.ns, "get", "pod", "client", "server", "-o", "jsonpath={.items[*].metadata.uid}")
		if err != nil {
			return err
		}
		b.podUIDs = strings.Fields(string(uids))
		logf("%s: namespace %s, server %s", b.mode, b.ns, b.serverIP)
	}

	// Warm up both paths (connections, HBONE pool, certificates) and check
	// that the mesh namespace's traffic really went through ztunnel.
	for attempt := 1; ; attempt++ {
		err := zt.refresh(ctx)
		for _, b := range benches {
			if err == nil {
				if _, err = c.fortio(ctx, b, 100, 3*time.Second); err != nil {
					err = fmt.Errorf("warm-up (%s): %w", b.mode, err)
				}
			}
		}
		if err == nil {
			err = zt.checkMesh(ctx, benches[1].ns)
		}
		if err == nil {
			err = zt.checkNotMesh(ctx, benches[0].ns)
		}
		if err == nil {
			break
		}
		if attempt == maxAttempts {
			return err
		}
		logf("%v; again in 5 s", err)
		if err := sleep(ctx, 5*time.Second); err != nil {
			return err
		}
	}

	rep := &report{Config: c, Start: time.Now(), Settings: strings.Join(os.Args[1:], " ")}
	rep.Load1Before = loadavg()
	rep.ZtunnelIdle = zt.memory()
	for r := 1; r <= c.rounds; r++ {
		for _, b := range benches {
			res, err := c.measure(ctx, zt, b, r, func() (any, error) { return c.fortio(ctx, b, c.qps, c.duration) })
			if err != nil {
				return err
			}
			rep.HTTP = append(rep.HTTP, res)
		}
	}
	rep.ZtunnelAfterHTTP = zt.memory()
	for r := 1; r <= c.iperfRounds; r++ {
		for _, b := range benches {
			res, err := c.measure(ctx, zt, b, r, func() (any, error) { return c.iperf(ctx, b) })
			if err != nil {
				return err
			}
			rep.TCP = append(rep.TCP, res)
		}
	}
	rep.ZtunnelAfterTCP = zt.memory()
	rep.Load1After = loadavg()
	rep.End = time.Now()

	if err := c.writeRaw(rep); err != nil {
		return err
	}
	rep.print(os.Stdout, zt)
	return nil
}

// writeRaw writes every measurement as JSON to -raw, when set.
func (c *config) writeRaw(rep any) error {
	if c.raw == "" {
		return nil
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("raw report: %w", err)
	}
	return os.WriteFile(c.raw, data, 0o644)
}

func (c *config) pickNodes(ctx context.Context) error {
	out, err := c.kube(ctx, nil, "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil {
		return err
	}
	nodes := strings.Fields(string(out))
	sort.Strings(nodes)
	if len(nodes) < 2 {
		return fmt.Errorf("need 2 nodes (client and server on different nodes), have %v", nodes)
	}
	if c.clientNode == "" {
		c.clientNode = nodes[0]
	}
	if c.serverNode == "" {
		c.serverNode = nodes[1]
		if c.serverNode == c.clientNode {
			c.serverNode = nodes[0]
		}
	}
	if c.clientNode == c.serverNode {
		return fmt.Errorf("client and server node are both %s", c.clientNode)
	}
	return nil
}

// result is one measured run.
type result struct {
	Mode       string
	Round      int
	Seconds    float64            // wall time of the run
	ZtunnelCPU map[string]float64 // node -> ztunnel CPU seconds over the run
	ZtunnelSys map[string]float64 // node -> of which in the kernel (stime)
	// node -> ztunnel's read-like + write-like syscalls, context switches
	ZtunnelSyscalls, ZtunnelCtxSw map[string]uint64
	AppCPU                        float64       // CPU seconds of the client and server pods (fortio or iperf3; cgroup cpuacct)
	MachineCPU                    float64       // busy fraction of all of the machine's CPUs over the run
	WaypointCPU                   float64       `json:",omitempty"` // CPU seconds of the waypoint pod (cgroup cpuacct), -waypoint only
	HTTP                          *fortioResult `json:",omitempty"`
	TCP                           *iperfResult  `json:",omitempty"`
}

const maxAttempts = 5

// measure runs fn while sampling the ztunnels' CPU time and the machine's;
// a run during which a ztunnel restarted is repeated (up to maxAttempts).
func (c *config) measure(ctx context.Context, zt *ztunnels, b *bench, round int, fn func() (any, error)) (*result, error) {
	for attempt := 1; ; attempt++ {
		before, err := zt.cpu(ctx)
		if err != nil {
			return nil, err
		}
		m0, a0, w0 := machineCPU(), podCPU(b.podUIDs), c.waypointCPU()
		t0 := time.Now()
		v, runErr := fn()
		el := time.Since(t0).Seconds()
		m1, a1, w1 := machineCPU(), podCPU(b.podUIDs), c.waypointCPU()
		after, err := zt.cpu(ctx)
		if err != nil {
			return nil, err
		}
		res := &result{Mode: b.mode, Round: round, Seconds: el, ZtunnelCPU: map[string]float64{}, ZtunnelSys: map[string]float64{}, ZtunnelSyscalls: map[string]uint64{}, ZtunnelCtxSw: map[string]uint64{}, MachineCPU: m1.busySince(m0), AppCPU: a1 - a0, WaypointCPU: w1 - w0}
		restarted := w1 < w0 // the waypoint's cgroup was recreated

		for node, a := range after {
			s, ok := before[node]
			if !ok || s.pid != a.pid || s.start != a.start {
				restarted = true
				continue
			}
			res.ZtunnelCPU[node] = float64(a.ticks-s.ticks) / clockTicks
			res.ZtunnelSys[node] = float64(a.sys-s.sys) / clockTicks
			res.ZtunnelSyscalls[node] = a.syscr + a.syscw - s.syscr - s.syscw
			res.ZtunnelCtxSw[node] = a.ctxsw - s.ctxsw
		}
		if restarted {
			if attempt == maxAttempts {
				return nil, fmt.Errorf("%s round %d: a ztunnel restarted during each of %d attempts; is someone restarting it?", b.mode, round, maxAttempts)
			}
			logf("%s round %d: a ztunnel restarted during the run (run error: %v); repeating it in 10 s", b.mode, round, runErr)
			if err := sleep(ctx, 10*time.Second); err != nil {
				return nil, err
			}
			continue
		}
		if runErr != nil {
			return nil, fmt.Errorf("%s round %d: %w", b.mode, round, runErr)
		}
		switch v := v.(type) {
		case *fortioResult:
			res.HTTP = v
			logf("%s round %d: %.0f req/s, p50 %.3f ms, p99 %.3f ms, ztunnel CPU %s s, waypoint CPU %.2f s, machine busy %.0f%%",
				b.mode, round, v.QPS, v.P50*1e3, v.P99*1e3, fmtCPU(res.ZtunnelCPU), res.WaypointCPU, res.MachineCPU*100)
		case *iperfResult:
			res.TCP = v
			logf("%s round %d: %.2f Gbit/s, ztunnel CPU %s s, machine busy %.0f%%", b.mode, round, v.BitsPerSecond/1e9, fmtCPU(res.ZtunnelCPU), res.MachineCPU*100)
		}
		return res, nil
	}
}

func fmtCPU(m map[string]float64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ---------------------------------------------------------------- fortio

type fortioResult struct {
	QPS                      float64 // achieved
	Requests, OK             int64
	P50, P90, P99, P999, Avg float64 // seconds
	ResponseBytes            float64 // mean response size, headers included
}

func (c *config) fortio(ctx context.Context, b *bench, qps int, d time.Duration) (*fortioResult, error) {
	url := fmt.Sprintf("http://%s:8080/echo", b.serverIP)
	out, err := c.kube(ctx, nil, "-n", b.ns, "exec", b.clientPod, "-c", "fortio", "--",
		"/usr/bin/fortio", "load", "-quiet", "-json", "-",
		"-qps", strconv.Itoa(qps), "-c", strconv.Itoa(c.conns), "-t", d.String(),
		"-payload-size", strconv.Itoa(c.payload), "-uniform", "-p", "50,90,99,99.9", url)
	if err != nil {
		return nil, err
	}
	return parseFortio(out)
}

// parseFortio reads fortio load's JSON; a run with any non-200 answer is
// an error.
func parseFortio(out []byte) (*fortioResult, error) {
	// Anything before the JSON object is noise.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var raw struct {
		ActualQPS         float64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Count       int64
			Avg         float64
			Percentiles []struct{ Percentile, Value float64 }
		}
		Sizes struct{ Avg float64 }
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("fortio JSON: %v", err)
	}
	r := &fortioResult{QPS: raw.ActualQPS, Requests: raw.DurationHistogram.Count, OK: raw.RetCodes["200"],
		Avg: raw.DurationHistogram.Avg, ResponseBytes: raw.Sizes.Avg}
	for _, p := range raw.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			r.P50 = p.Value
		case 90:
			r.P90 = p.Value
		case 99:
			r.P99 = p.Value
		case 99.9:
			r.P999 = p.Value
		}
	}
	if r.Requests == 0 || r.OK != r.Requests {
		return r, fmt.Errorf("fortio: %d of %d requests answered 200 (codes %v)", r.OK, r.Requests, raw.RetCodes)
	}
	return r, nil
}

// ---------------------------------------------------------------- iperf3

type iperfResult struct {
	BitsPerSecond float64 // received
	Bytes         int64
}

func (c *config) iperf(ctx context.Context, b *bench) (*iperfResult, error) {
	out, err := c.kube(ctx, nil, "-n", b.ns, "exec", b.clientPod, "-c", "fortio", "--",
		"/usr/bin/iperf3", "-c", b.serverIP, "-p", "5201", "-t", strconv.Itoa(int(c.iperfTime.Seconds())), "-J")
	r, perr := parseIperf(out)
	if perr != nil && err != nil {
		return nil, err // kubectl's error says more
	}
	return r, perr
}

// parseIperf reads iperf3 -J's JSON: the receiver's throughput.
func parseIperf(out []byte) (*iperfResult, error) {
	var raw struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("iperf3 JSON: %v", err)
	}
	if raw.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", raw.Error)
	}
	if raw.End.SumReceived.Bytes == 0 {
		return nil, errors.New("iperf3: no bytes received")
	}
	return &iperfResult{BitsPerSecond: raw.End.SumReceived.BitsPerSecond, Bytes: raw.End.SumReceived.Bytes}, nil
}

// ---------------------------------------------------------------- ztunnels

const clockTicks = 100 // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux

type ztunnel struct {
	node, pod, uid string
}

type ztunnels struct {
	c   *config
	all []ztunnel
}

type cpuSample struct {
	pid   int
	start uint64 // starttime, to tell a restarted process
	ticks uint64 // utime + stime
	sys   uint64 // stime
	// From /proc/<pid>/io and the threads' status: read-like and
	// write-like system calls, context switches.
	syscr, syscw, ctxsw uint64
}

func newZtunnels(ctx context.Context, c *config) (*ztunnels, error) {
	z := &ztunnels{c: c}
	if err := z.refresh(ctx); err != nil {
		return nil, err
	}
	return z, nil
}

func (z *ztunnels) refresh(ctx context.Context) error {
	out, err := z.c.kube(ctx, nil, "-n", "istio-system", "get", "pods", "-l", "app.kubernetes.io/name=ztunnel",
		"-o", `jsonpath={range .items[*]}{.spec.nodeName} {.metadata.name} {.metadata.uid} {.status.phase}{"\n"}{end}`)
	if err != nil {
		return err
	}
	z.all = nil
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[3] == "Running" && (f[0] == z.c.clientNode || f[0] == z.c.serverNode) {
			z.all = append(z.all, ztunnel{node: f[0], pod: f[1], uid: f[2]})
		}
	}
	if len(z.all) != 2 {
		return fmt.Errorf("want a running ztunnel on %s and on %s, found %v (is ambit installed? kubectl apply -k manifests/devcluster)", z.c.clientNode, z.c.serverNode, z.all)
	}
	return nil
}

// pid finds the ztunnel process of a pod on this machine: a process whose
// argv[0] is .../ztunnel and whose cgroup path names the pod's uid (the
// kubelet's cgroupfs driver uses pod<uid>).
func (z *ztunnels) pid(zt ztunnel) (int, error) {
	pid, err := findPid("ztunnel", zt.uid)
	if err != nil {
		return 0, fmt.Errorf("no ztunnel process of pod %s (uid %s) on this machine", zt.pod, zt.uid)
	}
	return pid, nil
}

// findPid finds the process of a pod on this machine whose argv[0] is
// .../name and whose cgroup path names the pod's uid.
func findPid(name, uid string) (int, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || filepath.Base(string(bytes.SplitN(cmdline, []byte{0}, 2)[0])) != name {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err == nil && bytes.Contains(cg, []byte("pod"+uid)) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s process of pod uid %s on this machine", name, uid)
}

// cpu samples each ztunnel's CPU time; the pod list is refreshed when a
// process is gone (a restarted ztunnel).
func (z *ztunnels) cpu(ctx context.Context) (map[string]cpuSample, error) {
	for attempt := 0; attempt < 10; attempt++ {
		m, err := z.sample()
		if err == nil {
			return m, nil
		}
		logf("ztunnel: %v; looking again", err)
		if err := sleep(ctx, 3*time.Second); err != nil {
			return nil, err
		}
		if err := z.refresh(ctx); err != nil {
			logf("ztunnel: %v", err)
		}
	}
	return nil, errors.New("ztunnel processes not found")
}

func (z *ztunnels) sample() (map[string]cpuSample, error) {
	m := map[string]cpuSample{}
	for _, zt := range z.all {
		pid, err := z.pid(zt)
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil, err
		}
		s, err := parseStat(data)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/stat: %v", pid, err)
		}
		s.pid = pid
		s.syscr, s.syscw, s.ctxsw = procCounters(pid)
		m[zt.node] = s
	}
	return m, nil
}

// procCounters reads a process's syscr and syscw (/proc/<pid>/io) and the
// context switches of its threads (/proc/<pid>/task/*/status).
func procCounters(pid int) (syscr, syscw, ctxsw uint64) {
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			switch k {
			case "syscr":
				syscr = n
			case "syscw":
				syscw = n
			}
		}
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				ctxsw += n
			}
		}
	}
	return syscr, syscw, ctxsw
}

// parseStat reads utime+stime and starttime from /proc/<pid>/stat.
func parseStat(data []byte) (cpuSample, error) {
	// Fields after the command (which may hold spaces and parentheses)
	// start with the state, field 3 of proc(5).
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return cpuSample{}, errors.New("no command field")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return cpuSample{}, errors.New("too few fields")
	}
	var v [3]uint64
	for j, k := range []int{11, 12, 19} { // utime (14), stime (15), starttime (22)
		n, err := strconv.ParseUint(f[k], 10, 64)
		if err != nil {
			return cpuSample{}, err
		}
		v[j] = n
	}
	return cpuSample{ticks: v[0] + v[1], sys: v[1], start: v[2]}, nil
}

type memSample struct {
	RSS, HWM, Anon, File int64 // bytes: VmRSS, VmHWM, RssAnon, RssFile
}

// memory reads VmRSS, VmHWM, RssAnon and RssFile of each ztunnel
// (missing: left out).
func (z *ztunnels) memory() map[string]memSample {
	m := map[string]memSample{}
	for _, zt := range z.all {
		pid, err := z.pid(zt)
		if err != nil {
			continue
		}
		if s, err := procMemory(pid); err == nil {
			m[zt.node] = s
		}
	}
	return m
}

// procMemory reads VmRSS, VmHWM, RssAnon and RssFile of a process.
func procMemory(pid int) (memSample, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memSample{}, err
	}
	var s memSample
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			s.RSS = kb << 10
		case "VmHWM:":
			s.HWM = kb << 10
		case "RssAnon:":
			s.Anon = kb << 10
		case "RssFile:":
			s.File = kb << 10
		}
	}
	return s, nil
}

// metrics returns the Prometheus text of every ztunnel.
func (z *ztunnels) metrics(ctx context.Context) (string, error) {
	var all strings.Builder
	for _, zt := range z.all {
		out, err := z.c.kube(ctx, nil, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/istio-system/pods/%s:15020/proxy/metrics", zt.pod))
		if err != nil {
			return "", err
		}
		all.Write(out)
	}
	return all.String(), nil
}

// checkMesh verifies that a destination ztunnel counted mTLS connections
// into ns (the warm-up traffic).
func (z *ztunnels) checkMesh(ctx context.Context, ns string) error {
	m, err := z.metrics(ctx)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, "istio_tcp_connections_opened_total{") && strings.Contains(line, `reporter="destination"`) &&
			strings.Contains(line, `destination_workload_namespace="`+ns+`"`) && strings.Contains(line, `connection_security_policy="mutual_tls"`) {
			return nil
		}
	}
	return fmt.Errorf("the ztunnels counted no mTLS connection into %s: the mesh traffic was not captured", ns)
}

// checkNotMesh verifies that no ztunnel saw traffic into the direct namespace.
func (z *ztunnels) checkNotMesh(ctx context.Context, ns string) error {
	m, err := z.metrics(ctx)
	if err != nil {
		return err
	}
	if strings.Contains(m, `destination_workload_namespace="`+ns+`"`) {
		return fmt.Errorf("a ztunnel counted connections into the direct namespace %s", ns)
	}
	return nil
}

// podCPU sums the CPU time (seconds) of the pods with these uids from their
// cgroup v1 cpuacct.usage, which, unlike /proc, also counts processes that
// have exited (the kubectl-exec'd fortio and iperf3 clients exit before the
// run's second sample). The kubelets' cgroup roots are /ambit-nN.
func podCPU(uids []string) float64 {
	var sum float64
	for _, uid := range uids {
		for _, pattern := range []string{"/sys/fs/cgroup/cpuacct/*/kubepods/pod%s/cpuacct.usage", "/sys/fs/cgroup/cpuacct/*/kubepods/*/pod%s/cpuacct.usage"} {
			files, _ := filepath.Glob(fmt.Sprintf(pattern, uid))
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					continue
				}
				ns, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
				sum += float64(ns) / 1e9
			}
		}
	}
	return sum
}

// ---------------------------------------------------------------- machine

type cpuTimes struct{ busy, total uint64 }

func machineCPU() cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var t cpuTimes
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 { // guest, guest_nice are already in user, nice
			break
		}
		t.total += n
		if i != 3 && i != 4 { // idle, iowait
			t.busy += n
		}
	}
	return t
}

func (t cpuTimes) busySince(s cpuTimes) float64 {
	if t.total <= s.total {
		return math.NaN()
	}
	return float64(t.busy-s.busy) / float64(t.total-s.total)
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
