package main

// meshbench -waypoint: the path through a waypoint against the ztunnel-only
// path, in the same run (make bench-waypoint; docs/performance.md,
// "Waypoint on devcluster").
//
// One ambient namespace holds the fortio server pod (one node), the client
// pod (the other node), a waypoint (Gateway of class istio-waypoint) and two
// Services selecting the same server pod: server-zt, a plain ambient Service
// (client ztunnel → HBONE → server ztunnel), and server-wp, labelled
// istio.io/use-waypoint=waypoint (client ztunnel → HBONE → waypoint: HTTP
// routing → HBONE → server ztunnel). fortio targets each Service's cluster
// IP; rounds alternate the order (ztunnel first, then waypoint first, ...)
// so that drift falls on both paths. Besides latency and the ztunnels' CPU
// time, the waypoint pod's CPU time (cgroup cpuacct) and its process's
// memory (/proc) are sampled.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"
)

const waypointYAML = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: v1
kind: Service
metadata: {name: server-zt}
spec:
  selector: {app: meshbench-server}
  ports: [{name: http, port: 8080, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata:
  name: server-wp
  labels: {istio.io/use-waypoint: waypoint}
spec:
  selector: {app: meshbench-server}
  ports: [{name: http, port: 8080, targetPort: 8080, appProtocol: http}]
`

// waypointPod is the waypoint's pod and process.
type waypointPod struct {
	name, uid, node string
}

// waypointCPU is the waypoint pod's CPU seconds so far (0 when not
// measuring a waypoint).
func (c *config) waypointCPU() float64 {
	if c.wpUID == "" {
		return 0
	}
	return podCPU([]string{c.wpUID})
}

func (c *config) waypointMemory() memSample {
	if c.wpUID == "" {
		return memSample{}
	}
	pid, err := findPid("waypoint", c.wpUID)
	if err != nil {
		logf("waypoint memory: %v", err)
		return memSample{}
	}
	s, _ := procMemory(pid)
	return s
}

type waypointReport struct {
	report
	Waypoint                                      waypointPod `json:"-"`
	WaypointNode                                  string
	WaypointIdle, WaypointAfter                   memSample
	WaypointRequestsCounted, ZtunnelOnlyRequested int64
}

func runWaypoint(ctx context.Context, c config) error {
	if err := c.pickNodes(ctx); err != nil {
		return err
	}
	logf("client pod on %s, server pod on %s", c.clientNode, c.serverNode)
	zt, err := newZtunnels(ctx, &c)
	if err != nil {
		return err
	}
	ns := fmt.Sprintf("bench-wp-%04x", rand.IntN(1<<16))
	defer func() {
		if c.keep {
			logf("keeping namespace %s", ns)
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.kube(cctx, nil, "delete", "namespace", ns, "--wait=false", "--ignore-not-found"); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	if _, err := c.kube(ctx, nil, "create", "namespace", ns); err != nil {
		return err
	}
	if _, err := c.kube(ctx, nil, "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		return err
	}
	manifest := fmt.Sprintf(podsYAML, c.image, c.serverNode, c.clientNode) + "---\n" + waypointYAML
	if _, err := c.kube(ctx, strings.NewReader(manifest), "-n", ns, "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := c.kube(ctx, nil, "-n", ns, "wait", "--for=condition=Ready", "pod", "client", "server", "--timeout=120s"); err != nil {
		out, _ := c.kube(ctx, nil, "-n", ns, "get", "pods,events", "-o", "wide")
		return fmt.Errorf("%v\n%s", err, out)
	}
	t0 := time.Now()
	if _, err := c.kube(ctx, nil, "-n", ns, "wait", "--for=condition=Programmed", "gateway/waypoint", "--timeout=180s"); err != nil {
		st, _ := c.kube(ctx, nil, "-n", ns, "get", "gateway/waypoint", "-o", "jsonpath={.status}")
		return fmt.Errorf("waypoint not Programmed: %v\nstatus: %s", err, st)
	}
	logf("waypoint Programmed after %s", time.Since(t0).Round(100*time.Millisecond))
	out, err := c.kube(ctx, nil, "-n", ns, "get", "pods", "-l", "gateway.networking.k8s.io/gateway-name=waypoint",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.spec.nodeName} {.status.phase}{"\n"}{end}`)
	if err != nil {
		return err
	}
	var wp waypointPod
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[3] == "Running" {
			if wp.uid != "" {
				return fmt.Errorf("more than one running waypoint pod: %s", out)
			}
			wp = waypointPod{name: f[0], uid: f[1], node: f[2]}
		}
	}
	if wp.uid == "" {
		return fmt.Errorf("no running waypoint pod: %q", out)
	}
	if _, err := findPid("waypoint", wp.uid); err != nil {
		return err
	}
	c.wpUID = wp.uid
	logf("waypoint pod %s on %s", wp.name, wp.node)

	uids, err := c.kube(ctx, nil, "-n", ns, "get", "pod", "client", "server", "-o", "jsonpath={.items[*].metadata.uid}")
	if err != nil {
		return err
	}
	var benches []*bench
	for _, m := range []struct{ mode, svc string }{{"ztunnel", "server-zt"}, {"waypoint", "server-wp"}} {
		ip, err := c.kube(ctx, nil, "-n", ns, "get", "service", m.svc, "-o", "jsonpath={.spec.clusterIP}")
		if err != nil {
			return err
		}
		b := &bench{mode: m.mode, ns: ns, serverIP: strings.TrimSpace(string(ip)), clientPod: "client", podUIDs: strings.Fields(string(uids))}
		benches = append(benches, b)
		logf("%s: Service %s, cluster IP %s", m.mode, m.svc, b.serverIP)
	}

	// Warm up both paths, then check that the waypoint served the
	// server-wp requests and none of server-zt's.
	var counted int64
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
			err = zt.checkMesh(ctx, ns)
		}
		if err == nil {
			counted, err = c.checkWaypoint(ctx, ns, wp.name)
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

	rep := &waypointReport{report: report{Config: c, Start: time.Now(), Settings: strings.Join(os.Args[1:], " ")}, Waypoint: wp, WaypointNode: wp.node, WaypointRequestsCounted: counted}
	rep.Load1Before = loadavg()
	rep.ZtunnelIdle = zt.memory()
	rep.WaypointIdle = c.waypointMemory()
	for r := 1; r <= c.rounds; r++ {
		order := benches
		if r%2 == 0 {
			order = []*bench{benches[1], benches[0]}
		}
		for _, b := range order {
			res, err := c.measure(ctx, zt, b, r, func() (any, error) { return c.fortio(ctx, b, c.qps, c.duration) })
			if err != nil {
				return err
			}
			rep.HTTP = append(rep.HTTP, res)
		}
	}
	rep.ZtunnelAfterHTTP = zt.memory()
	rep.WaypointAfter = c.waypointMemory()
	rep.Load1After = loadavg()
	rep.End = time.Now()
	if err := c.writeRaw(rep); err != nil {
		return err
	}
	rep.print(os.Stdout, zt)
	return nil
}

// checkWaypoint reads the waypoint's metrics: it must have counted requests
// to server-wp and none to server-zt. It returns the server-wp count.
func (c *config) checkWaypoint(ctx context.Context, ns, pod string) (int64, error) {
	out, err := c.kube(ctx, nil, "get", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/%s:15020/proxy/metrics", ns, pod))
	if err != nil {
		return 0, err
	}
	var wp int64
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "istio_requests_total{") {
			continue
		}
		if strings.Contains(line, `destination_service_name="server-zt"`) {
			return 0, fmt.Errorf("the waypoint counted requests to server-zt, which has no waypoint: %s", line)
		}
		if strings.Contains(line, `destination_service_name="server-wp"`) && strings.Contains(line, `response_code="200"`) {
			f := strings.Fields(line)
			var n float64
			_, _ = fmt.Sscan(f[len(f)-1], &n)
			wp += int64(n)
		}
	}
	if wp == 0 {
		return 0, fmt.Errorf("the waypoint counted no request to server-wp: the traffic did not go through it")
	}
	return wp, nil
}

func (r *waypointReport) print(w io.Writer, z *ztunnels) {
	c := r.Config
	cn, sn := c.clientNode, c.serverNode
	fmt.Fprintf(w, "\n### meshbench -waypoint, %s (%s)\n\n", r.Start.UTC().Format("2006-01-02 15:04 MST"), r.End.Sub(r.Start).Round(time.Second))
	fmt.Fprintf(w, "Client pod on %s, server pod on %s, waypoint pod on %s. fortio: HTTP/1.1, %d B request bodies echoed back, %d req/s fixed, %d keep-alive connections, %s per run, %d rounds alternating the order of the ztunnel-only (Service server-zt) and waypoint (Service server-wp) runs, to the Services' cluster IPs. Load average (1/5/15 min) before %s, after %s.\n\n",
		cn, sn, r.WaypointNode, c.payload, c.qps, c.conns, c.duration, c.rounds, r.Load1Before, r.Load1After)
	fmt.Fprintf(w, "| run | path | req/s | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | waypoint CPU s | ztunnel CPU s (%s / %s) | fortio CPU s | machine CPU busy |\n", cn, sn)
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, x := range r.HTTP {
		h := x.HTTP
		fmt.Fprintf(w, "| %d | %s | %.0f | %d | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f / %.2f | %.2f | %.0f%% |\n", x.Round, x.Mode, h.QPS, h.Requests,
			h.P50*1e3, h.P90*1e3, h.P99*1e3, h.P999*1e3, x.WaypointCPU, x.ZtunnelCPU[cn], x.ZtunnelCPU[sn], x.AppCPU, x.MachineCPU*100)
	}
	lat := func(mode string, get func(*fortioResult) float64) stats {
		var v []float64
		for _, x := range r.HTTP {
			if x.Mode == mode {
				v = append(v, get(x.HTTP)*1e3)
			}
		}
		return summarize(v)
	}
	var addP50, addP99, wpK, wpGross, wpBg, ztK, ztWK, totZ, totW, totAdded, busyZ, busyW []float64
	for round := 1; round <= c.rounds; round++ {
		z, wr := pair(r.HTTP, "ztunnel", round), pair(r.HTTP, "waypoint", round)
		if z == nil || wr == nil {
			continue
		}
		addP50 = append(addP50, (wr.HTTP.P50-z.HTTP.P50)*1e3)
		addP99 = append(addP99, (wr.HTTP.P99-z.HTTP.P99)*1e3)
		kz, kw := float64(z.HTTP.Requests)/1000, float64(wr.HTTP.Requests)/1000
		// The waypoint's CPU during the ztunnel-only run (xDS, metrics
		// scrapes, idle timers) is background.
		bg := z.WaypointCPU / z.Seconds * wr.Seconds
		wpK = append(wpK, (wr.WaypointCPU-bg)/kw)
		wpGross = append(wpGross, wr.WaypointCPU/kw)
		wpBg = append(wpBg, z.WaypointCPU/z.Seconds)
		zz := (z.ZtunnelCPU[cn] + z.ZtunnelCPU[sn]) / kz
		zw := (wr.ZtunnelCPU[cn] + wr.ZtunnelCPU[sn]) / kw
		ztK, ztWK = append(ztK, zz), append(ztWK, zw)
		tz := z.AppCPU/kz + zz + z.WaypointCPU/kz
		tw := wr.AppCPU/kw + zw + wr.WaypointCPU/kw
		totZ, totW, totAdded = append(totZ, tz), append(totW, tw), append(totAdded, tw-tz)
		busyZ, busyW = append(busyZ, z.MachineCPU*100), append(busyW, wr.MachineCPU*100)
	}
	p50, p99 := func(h *fortioResult) float64 { return h.P50 }, func(h *fortioResult) float64 { return h.P99 }
	fmt.Fprintf(w, "\nSummary (mean over rounds, range in brackets):\n\n")
	fmt.Fprintln(w, "| figure | ztunnel only | through the waypoint | added by the waypoint (per round) |")
	fmt.Fprintln(w, "| --- | --- | --- | --- |")
	fmt.Fprintf(w, "| p50 latency, ms | %s | %s | %s |\n", lat("ztunnel", p50).f(3), lat("waypoint", p50).f(3), summarize(addP50).f(3))
	fmt.Fprintf(w, "| p99 latency, ms | %s | %s | %s |\n", lat("ztunnel", p99).f(3), lat("waypoint", p99).f(3), summarize(addP99).f(3))
	fmt.Fprintf(w, "| waypoint CPU s per 1,000 requests (= vCPU at 1,000 req/s), background subtracted | – | %s | |\n", summarize(wpK).f(3))
	fmt.Fprintf(w, "| the same without subtracting the background | – | %s | background during ztunnel-only runs: %s vCPU |\n", summarize(wpGross).f(3), summarize(wpBg).f(3))
	fmt.Fprintf(w, "| both ztunnels' CPU s per 1,000 requests | %s | %s | |\n", summarize(ztK).f(3), summarize(ztWK).f(3))
	fmt.Fprintf(w, "| whole data path (fortio pods + ztunnels + waypoint) CPU s per 1,000 requests | %s | %s | %s |\n", summarize(totZ).f(3), summarize(totW).f(3), summarize(totAdded).f(3))
	fmt.Fprintf(w, "| machine CPU busy, %% | %s | %s | |\n", summarize(busyZ).f(0), summarize(busyW).f(0))
	fmt.Fprintf(w, "| waypoint VmRSS, MiB | before: %s | after: %s | peak since start (VmHWM): %s |\n", mib(r.WaypointIdle.RSS), mib(r.WaypointAfter.RSS), mib(r.WaypointAfter.HWM))
	fmt.Fprintf(w, "| waypoint anonymous memory (RssAnon; the rest is the mapped binary), MiB | before: %s | after: %s | |\n", mib(r.WaypointIdle.Anon), mib(r.WaypointAfter.Anon))
	var pods []string
	for _, zt := range z.all {
		pods = append(pods, zt.pod)
	}
	fmt.Fprintf(w, "\nwaypoint pod: %s (counted %d warm-up requests to server-wp, none to server-zt); ztunnel pods: %s.\n", r.Waypoint.name, r.WaypointRequestsCounted, strings.Join(pods, ", "))
}
