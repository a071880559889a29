// Command l7bench measures the waypoint's HTTP engine against nginx and
// Caddy doing the same routing, on loopback (make bench-l7; see
// docs/performance.md, "Waypoint L7 engine vs nginx and Caddy").
//
// Every proxy gets the same route table (routes.go: 29 routes, exact paths,
// prefixes, a header match, a 50/50 weighted split, a response header added
// by every route) in front of the same two plain HTTP/1.1 backends (one
// nginx worker answering a fixed body). wrk drives each target at
// saturation (a fixed number of keep-alive connections, no rate limit) for
// several rounds, the order of the targets rotating from round to round:
//
//   - direct: wrk → backend (the baseline of each round);
//   - nginx: wrk → nginx (reverse proxy, 2 workers) → backend;
//   - caddy: wrk → Caddy (reverse_proxy) → backend;
//   - go-router: wrk → the waypoint's route engine (waypoint/router) with
//     Go's httputil.ReverseProxy on a plain listener (gorouter.go) → backend:
//     Go's HTTP stack without HBONE and the waypoint's proxy package;
//   - waypoint-http: wrk → adapter → HBONE (mTLS, HTTP/2 CONNECT) →
//     waypoint (HTTP chain: route table, least-request pick, pooled
//     upstream HTTP/1.1) → backend. The waypoint only accepts HBONE (its
//     packages offer no plain HTTP listener), so an adapter process plays
//     the client's ztunnel (roles.go); its CPU is reported separately;
//   - waypoint-tcp: the same HBONE path to the waypoint's TCP chain
//     (tcp_proxy straight to the backend): what the waypoint costs without
//     its HTTP engine.
//
// For each run: requests per second and latency percentiles from wrk, and
// the CPU time of each process involved (/proc/<pid>/stat, process trees
// for nginx), from which CPU per request. All traffic is on 127.0.0.1.
// This is a benchmark, not a test.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type roleOpts struct {
	dir, listen, listen2, waypoint, pprof string
	portA, portB                          int
}

type config struct {
	nginx, caddy, wrk string
	rounds            int
	duration, warmup  time.Duration
	conns, threads    int
	body              int
	nginxWorkers      int
	only              string
	profile, raw      string
	keepDir           bool
	// The fixed-rate phase (fortio): latency and CPU per request at a
	// mesh-like rate instead of saturation.
	fortio       string
	rate         int
	rateRounds   int
	rateDuration time.Duration
	payload      int
}

func main() {
	var o roleOpts
	var c config
	role := flag.String("role", "", "internal: waypoint or adapter (started by l7bench itself)")
	flag.StringVar(&o.dir, "dir", "", "internal: the run's directory (CA)")
	flag.StringVar(&o.listen, "listen", "", "internal: listen address")
	flag.StringVar(&o.listen2, "listen2", "", "internal: second listen address (adapter: TCP chain)")
	flag.StringVar(&o.waypoint, "waypoint", "", "internal: the waypoint's HBONE address (adapter)")
	flag.StringVar(&o.pprof, "pprof", "", "internal: net/http/pprof listen address (waypoint)")
	flag.IntVar(&o.portA, "port-a", 0, "internal: backend A port")
	flag.IntVar(&o.portB, "port-b", 0, "internal: backend B port")

	flag.StringVar(&c.nginx, "nginx", "nginx", "nginx binary (Debian's nginx-light)")
	flag.StringVar(&c.caddy, "caddy", "caddy", "caddy binary (built from devcluster/tools/caddy)")
	flag.StringVar(&c.wrk, "wrk", "wrk", "wrk binary (Debian)")
	flag.IntVar(&c.rounds, "rounds", 5, "rounds; each runs every target once")
	flag.DurationVar(&c.duration, "d", 10*time.Second, "duration of each measured run")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "unmeasured wrk run before each measured one")
	flag.IntVar(&c.conns, "c", 32, "wrk connections")
	flag.IntVar(&c.threads, "t", 1, "wrk threads")
	flag.IntVar(&c.body, "body", 1024, "response body bytes of the backends")
	flag.IntVar(&c.nginxWorkers, "nginx-workers", 2, "nginx proxy worker processes (GOMAXPROCS of the Go proxies is the machine's CPU count)")
	flag.StringVar(&c.only, "only", "", "comma-separated targets to run (default all: direct,nginx,caddy,go-router,waypoint-http,waypoint-tcp)")
	flag.StringVar(&c.profile, "profile", "", "after the rounds, take a CPU profile of the waypoint process during one more waypoint-http run and write it here")
	flag.StringVar(&c.raw, "raw", "", "also write every run's figures (JSON) to this file")
	flag.StringVar(&c.fortio, "fortio", "", "fortio binary: after the saturation rounds, a fixed-rate phase (fortio load -qps RATE -c 8 -uniform, POST bodies) per target; empty skips it")
	flag.IntVar(&c.rate, "rate", 1000, "fixed-rate phase: requests per second")
	flag.IntVar(&c.rateRounds, "rate-rounds", 3, "fixed-rate phase: rounds")
	flag.DurationVar(&c.rateDuration, "rate-d", 10*time.Second, "fixed-rate phase: duration of each run")
	flag.IntVar(&c.payload, "payload-size", 1024, "fixed-rate phase: request body bytes")
	flag.BoolVar(&c.keepDir, "keep", false, "keep the run's directory (configurations, logs)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch *role {
	case "waypoint":
		err = runWaypointRole(ctx, o)
	case "adapter":
		err = runAdapterRole(ctx, o)
	case "gorouter":
		err = runGoRouterRole(ctx, o)
	case "":
		err = run(ctx, c)
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "l7bench%s: %v\n", map[bool]string{true: " " + *role}[*role != ""], err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[l7bench %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// proc is a started helper process.
type proc struct {
	name string
	cmd  *exec.Cmd
}

// target is one thing wrk is pointed at.
type target struct {
	name  string
	url   string
	procs []*proc // whose CPU is the proxy's
	extra []*proc // whose CPU is reported beside it (the adapter)
	route string  // the x-route header expected, "" none
}

func run(ctx context.Context, c config) error {
	for _, b := range []string{c.nginx, c.caddy, c.wrk} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s not found (make bench-l7 installs nginx-light and wrk with apt-get and builds Caddy)", b)
		}
	}
	dir, err := os.MkdirTemp("", "l7bench-")
	if err != nil {
		return err
	}
	if !c.keepDir {
		defer os.RemoveAll(dir)
	} else {
		logf("run directory %s", dir)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // nginx workers run as nobody
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var ports [10]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	portA, portB, pNginx, pCaddy, pWaypoint, pAdapterHTTP, pAdapterTCP, pPprof, pGoRouter := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6], ports[7], ports[8]
	if err := writeCA(dir); err != nil {
		return err
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			done := make(chan struct{})
			go func() { _ = p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = p.cmd.Process.Kill()
			}
		}
	}()
	start := func(name string, waitReady bool, bin string, args ...string) (*proc, error) {
		cmd := exec.Command(bin, args...)
		logFile, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd.Stderr = logFile
		var stdout io.Reader
		if waitReady {
			if stdout, err = cmd.StdoutPipe(); err != nil {
				return nil, err
			}
		} else {
			cmd.Stdout = logFile
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %v", name, err)
		}
		p := &proc{name: name, cmd: cmd}
		procs = append(procs, p)
		if waitReady {
			ready := make(chan bool, 1)
			go func() {
				sc := bufio.NewScanner(stdout)
				ok := false
				for sc.Scan() {
					if sc.Text() == "ready" && !ok {
						ok = true
						ready <- true
					}
				}
				if !ok {
					ready <- false
				}
			}()
			select {
			case ok := <-ready:
				if !ok {
					log, _ := os.ReadFile(logFile.Name())
					return nil, fmt.Errorf("%s exited before it was ready:\n%s", name, lastLines(string(log), 10))
				}
			case <-time.After(30 * time.Second):
				return nil, fmt.Errorf("%s not ready after 30 s", name)
			}
		}
		return p, nil
	}
	write := func(name, content string) (string, error) {
		f := filepath.Join(dir, name)
		return f, os.WriteFile(f, []byte(content), 0o644)
	}

	bconf, err := write("nginx-backend.conf", nginxBackendConf(dir, portA, portB, c.body))
	if err != nil {
		return err
	}
	backend, err := start("nginx-backend", false, c.nginx, "-p", dir, "-e", filepath.Join(dir, "nginx-backend.error.log"), "-c", bconf, "-g", "daemon off;")
	if err != nil {
		return err
	}
	pconf, err := write("nginx-proxy.conf", nginxProxyConf(dir, c.nginxWorkers, pNginx, portA, portB))
	if err != nil {
		return err
	}
	nginxProxy, err := start("nginx-proxy", false, c.nginx, "-p", dir, "-e", filepath.Join(dir, "nginx-proxy.error.log"), "-c", pconf, "-g", "daemon off;")
	if err != nil {
		return err
	}
	cj, err := caddyConfig(pCaddy, portA, portB)
	if err != nil {
		return err
	}
	cconf, err := write("caddy.json", string(cj))
	if err != nil {
		return err
	}
	caddy, err := start("caddy", false, c.caddy, "run", "--config", cconf)
	if err != nil {
		return err
	}
	wp, err := start("waypoint", true, self, "-role", "waypoint", "-dir", dir, "-listen", fmt.Sprintf("127.0.0.1:%d", pWaypoint),
		"-port-a", strconv.Itoa(portA), "-port-b", strconv.Itoa(portB), "-pprof", fmt.Sprintf("127.0.0.1:%d", pPprof))
	if err != nil {
		return err
	}
	adapter, err := start("adapter", true, self, "-role", "adapter", "-dir", dir, "-listen", fmt.Sprintf("127.0.0.1:%d", pAdapterHTTP),
		"-listen2", fmt.Sprintf("127.0.0.1:%d", pAdapterTCP), "-waypoint", fmt.Sprintf("127.0.0.1:%d", pWaypoint))
	if err != nil {
		return err
	}
	goRouter, err := start("gorouter", true, self, "-role", "gorouter", "-listen", fmt.Sprintf("127.0.0.1:%d", pGoRouter),
		"-port-a", strconv.Itoa(portA), "-port-b", strconv.Itoa(portB))
	if err != nil {
		return err
	}
	u := func(port int) string { return fmt.Sprintf("http://127.0.0.1:%d%s", port, benchPath) }
	all := []*target{
		{name: "direct", url: u(portB), procs: []*proc{backend}},
		{name: "nginx", url: u(pNginx), procs: []*proc{nginxProxy}, route: "svc-13"},
		{name: "caddy", url: u(pCaddy), procs: []*proc{caddy}, route: "svc-13"},
		{name: "go-router", url: u(pGoRouter), procs: []*proc{goRouter}, route: "svc-13"},
		{name: "waypoint-http", url: u(pAdapterHTTP), procs: []*proc{wp}, extra: []*proc{adapter}, route: "svc-13"},
		{name: "waypoint-tcp", url: u(pAdapterTCP), procs: []*proc{wp}, extra: []*proc{adapter}},
	}
	var targets []*target
	for _, t := range all {
		if c.only == "" || strings.Contains(","+c.only+",", ","+t.name+",") {
			targets = append(targets, t)
		}
	}
	// The direct target's CPU is the backend's: reported so that the
	// proxies' figures can be read against it.
	if err := checkTargets(ctx, all, c.body); err != nil {
		return err
	}
	logf("all targets answer; %d rounds of %s per target (wrk -t%d -c%d), nginx %d workers", c.rounds, c.duration, c.threads, c.conns, c.nginxWorkers)

	rep := &report{Config: c, Start: time.Now(), Machine: machineInfo(), Backend: backend}
	rep.Idle = memOf(map[string]*proc{"go-router": goRouter, "waypoint": wp, "adapter": adapter, "caddy": caddy, "nginx": nginxProxy})
	for r := 1; r <= c.rounds; r++ {
		for i := range targets {
			t := targets[(i+r-1)%len(targets)]
			res, err := c.measure(ctx, t, backend, r)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, res)
		}
	}
	if c.fortio != "" {
		for r := 1; r <= c.rateRounds; r++ {
			for i := range targets {
				t := targets[(i+r-1)%len(targets)]
				res, err := c.measureRate(ctx, t, backend, r)
				if err != nil {
					return err
				}
				rep.Rate = append(rep.Rate, res)
			}
		}
	}
	rep.After = memOf(map[string]*proc{"go-router": goRouter, "waypoint": wp, "adapter": adapter, "caddy": caddy, "nginx": nginxProxy})
	rep.End = time.Now()
	if c.profile != "" {
		if err := c.takeProfile(ctx, all[4], backend, pPprof); err != nil {
			return err
		}
	}
	if c.raw != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(c.raw, data, 0o644); err != nil {
			return err
		}
	}
	rep.print(os.Stdout, targets)
	return nil
}

// checkTargets sends one request to each target: 200, the body size, the
// route's response header; and one with x-version: v2 to the catch-all.
func checkTargets(ctx context.Context, ts []*target, body int) error {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, t := range ts {
		for _, probe := range []struct {
			path, header, route string
		}{{benchPath, "", t.route}, {"/anything", "v2", map[bool]string{true: "v2-header"}[t.route != ""]}, {"/exact/3", "", map[bool]string{true: "exact-3"}[t.route != ""]}} {
			url := strings.Replace(t.url, benchPath, probe.path, 1)
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			if probe.header != "" {
				req.Header.Set("X-Version", probe.header)
			}
			var resp *http.Response
			var err error
			for try := 0; ; try++ { // nginx and Caddy take a moment to listen
				if resp, err = client.Do(req); err == nil || try == 50 {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if err != nil {
				return fmt.Errorf("%s: %v", t.name, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(b) != body || resp.Header.Get("X-Route") != probe.route {
				return fmt.Errorf("%s %s: status %d, %d bytes, x-route %q (want 200, %d bytes, x-route %q)", t.name, url, resp.StatusCode, len(b), resp.Header.Get("X-Route"), body, probe.route)
			}
		}
	}
	return nil
}

// result is one measured run.
type result struct {
	Target             string
	Round              int
	Seconds            float64
	RPS                float64
	Requests           int64
	P50, P90, P99      float64 // ms
	ProxyCPU, ExtraCPU float64 // seconds: the proxy's processes, the adapter
	BackendCPU         float64
	WrkCPU             float64
	MachineBusy        float64
}

func (c *config) measure(ctx context.Context, t *target, backend *proc, round int) (*result, error) {
	if c.warmup > 0 {
		if _, _, err := c.runWrk(ctx, t.url, c.warmup); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", t.name, err)
		}
	}
	p0, e0, b0, m0 := cpuOf(t.procs), cpuOf(t.extra), cpuOf([]*proc{backend}), machineCPU()
	t0 := time.Now()
	w, wrkCPU, err := c.runWrk(ctx, t.url, c.duration)
	el := time.Since(t0).Seconds()
	p1, e1, b1, m1 := cpuOf(t.procs), cpuOf(t.extra), cpuOf([]*proc{backend}), machineCPU()
	if err != nil {
		return nil, fmt.Errorf("%s round %d: %w", t.name, round, err)
	}
	r := &result{Target: t.name, Round: round, Seconds: el, RPS: w.rps, Requests: w.requests, P50: w.p50, P90: w.p90, P99: w.p99,
		ProxyCPU: p1 - p0, ExtraCPU: e1 - e0, BackendCPU: b1 - b0, WrkCPU: wrkCPU, MachineBusy: m1.busySince(m0)}
	if t.name == "direct" {
		r.ProxyCPU = 0 // the backend is reported as BackendCPU
	}
	logf("round %d %-13s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  proxy CPU %.1f µs/req  adapter %.1f µs/req  machine busy %.0f%%",
		round, t.name, r.RPS, r.P50, r.P99, r.ProxyCPU/float64(r.Requests)*1e6, r.ExtraCPU/float64(r.Requests)*1e6, r.MachineBusy*100)
	return r, nil
}

// measureRate runs fortio at a fixed rate against t.
func (c *config) measureRate(ctx context.Context, t *target, backend *proc, round int) (*result, error) {
	if _, err := c.runFortio(ctx, t.url, 2*time.Second); err != nil {
		return nil, fmt.Errorf("%s warm-up: %w", t.name, err)
	}
	p0, e0, b0, m0 := cpuOf(t.procs), cpuOf(t.extra), cpuOf([]*proc{backend}), machineCPU()
	t0 := time.Now()
	w, err := c.runFortio(ctx, t.url, c.rateDuration)
	el := time.Since(t0).Seconds()
	p1, e1, b1, m1 := cpuOf(t.procs), cpuOf(t.extra), cpuOf([]*proc{backend}), machineCPU()
	if err != nil {
		return nil, fmt.Errorf("%s fixed-rate round %d: %w", t.name, round, err)
	}
	r := &result{Target: t.name, Round: round, Seconds: el, RPS: w.rps, Requests: w.requests, P50: w.p50, P90: w.p90, P99: w.p99,
		ProxyCPU: p1 - p0, ExtraCPU: e1 - e0, BackendCPU: b1 - b0, MachineBusy: m1.busySince(m0)}
	if t.name == "direct" {
		r.ProxyCPU = 0
	}
	logf("fixed rate, round %d %-13s %6.0f req/s  p50 %.3f ms  p99 %.3f ms  proxy CPU %.1f µs/req  adapter %.1f µs/req  machine busy %.0f%%",
		round, t.name, r.RPS, r.P50, r.P99, r.ProxyCPU/float64(r.Requests)*1e6, r.ExtraCPU/float64(r.Requests)*1e6, r.MachineBusy*100)
	return r, nil
}

// runFortio runs fortio load at c.rate with 8 connections and POST bodies
// of c.payload bytes (the bench-mesh settings).
func (c *config) runFortio(ctx context.Context, url string, d time.Duration) (*wrkResult, error) {
	cmd := exec.CommandContext(ctx, c.fortio, "load", "-quiet", "-json", "-", "-qps", strconv.Itoa(c.rate), "-c", "8",
		"-t", d.String(), "-payload-size", strconv.Itoa(c.payload), "-uniform", "-p", "50,90,99", url)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("fortio: %v: %s", err, lastLines(errb.String(), 3))
	}
	return parseFortio(out.Bytes())
}

// parseFortio reads fortio load's JSON; any non-200 answer is an error.
func parseFortio(out []byte) (*wrkResult, error) {
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var raw struct {
		ActualQPS         float64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Count       int64
			Percentiles []struct{ Percentile, Value float64 }
		}
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("fortio JSON: %v", err)
	}
	w := &wrkResult{rps: raw.ActualQPS, requests: raw.DurationHistogram.Count}
	for _, p := range raw.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			w.p50 = p.Value * 1e3
		case 90:
			w.p90 = p.Value * 1e3
		case 99:
			w.p99 = p.Value * 1e3
		}
	}
	if w.requests == 0 || raw.RetCodes["200"] != w.requests {
		return nil, fmt.Errorf("fortio: %d of %d requests answered 200 (%v)", raw.RetCodes["200"], w.requests, raw.RetCodes)
	}
	return w, nil
}

type wrkResult struct {
	rps           float64
	requests      int64
	p50, p90, p99 float64
}

// runWrk runs wrk and returns its figures and its own CPU seconds.
func (c *config) runWrk(ctx context.Context, url string, d time.Duration) (*wrkResult, float64, error) {
	cmd := exec.CommandContext(ctx, c.wrk, "-t", strconv.Itoa(c.threads), "-c", strconv.Itoa(c.conns), "-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", url)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, 0, fmt.Errorf("wrk: %v: %s", err, errb.String())
	}
	cpu := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	w, err := parseWrk(out.String())
	return w, cpu, err
}

func parseWrk(s string) (*wrkResult, error) {
	w := &wrkResult{}
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			w.rps, _ = strconv.ParseFloat(f[1], 64)
		case len(f) >= 2 && f[1] == "requests" && len(f) > 2 && f[2] == "in":
			w.requests, _ = strconv.ParseInt(f[0], 10, 64)
		case len(f) == 2 && (f[0] == "50%" || f[0] == "90%" || f[0] == "99%"):
			v := parseDuration(f[1])
			switch f[0] {
			case "50%":
				w.p50 = v
			case "90%":
				w.p90 = v
			case "99%":
				w.p99 = v
			}
		case strings.HasPrefix(strings.TrimSpace(line), "Non-2xx or 3xx responses:"):
			return nil, fmt.Errorf("wrk: %s", strings.TrimSpace(line))
		case strings.HasPrefix(strings.TrimSpace(line), "Socket errors:"):
			// connect/read/write/timeout: a proxy that drops connections.
			if !strings.Contains(line, "connect 0, read 0, write 0, timeout 0") {
				return nil, fmt.Errorf("wrk: %s", strings.TrimSpace(line))
			}
		}
	}
	if w.rps == 0 || w.requests == 0 {
		return nil, fmt.Errorf("wrk: no result in %q", s)
	}
	return w, nil
}

// parseDuration reads wrk's "1.23ms", "456.00us", "1.02s" as milliseconds.
func parseDuration(s string) float64 {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 1e-3}, {"ms", 1}, {"m", 60e3}, {"s", 1e3}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f * u.ms
			}
		}
	}
	return 0
}

func (c *config) takeProfile(ctx context.Context, t *target, backend *proc, pprofPort int) error {
	secs := int(c.duration.Seconds()) - 2
	if secs < 1 {
		secs = 1
	}
	errc := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", pprofPort, secs))
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("pprof: %s", resp.Status)
		}
		if err == nil {
			err = os.WriteFile(c.profile, data, 0o644)
		}
		errc <- err
	}()
	time.Sleep(time.Second)
	if _, _, err := c.runWrk(ctx, t.url, c.duration); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	logf("CPU profile of the waypoint during a waypoint-http run: %s (go tool pprof -top %s)", c.profile, c.profile)
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
