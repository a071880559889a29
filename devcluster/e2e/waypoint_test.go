//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

// waypointApps: two versions of Istio's echo app (echo-advanced) behind
// one Service per test (so one test's routes never change another's
// traffic), a Service per version, and a client pod running the same image
// (its `client` binary sends the requests, from inside the mesh).
const waypointApps = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: echo, image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0, imagePullPolicy: IfNotPresent, args: [--port=8080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: echo, image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0, imagePullPolicy: IfNotPresent, args: [--port=8080]}
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
      - {name: client, image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0, imagePullPolicy: IfNotPresent, args: [--port=8080]}
`

// waypointServices are the Services of the test: echo-v1 and echo-v2 pick
// one version, every other one both (kube-proxy alone would split them
// about evenly).
var waypointServices = []string{"echo-v1", "echo-v2", "canary", "headers", "authz", "slow", "restart", "bad-regex", "bad-backend", "zero-weights"}

func waypointServiceYAML(name string) string {
	sel := "{app: echo}"
	if v, ok := strings.CutPrefix(name, "echo-"); ok {
		sel = "{app: echo, version: " + v + "}"
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %s}
spec:
  selector: %s
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
`, name, sel)
}

// installWaypointPrereqs installs ambit as the other mesh tests do
// (manifests/devcluster includes the Gateway API CRDs; istiod-lite creates
// the istio-waypoint GatewayClass). When the CRDs were new, istiod-lite is
// restarted once they are established so that it watches Gateways whatever
// the order in which they came up.
func installWaypointPrereqs(t *testing.T, c *devkube.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, crdErr := c.Kubectl(ctx, "", "get", "crd", "gateways.gateway.networking.k8s.io")
	installAmbient(t, c)
	if out, err := c.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/gateways.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io"); err != nil {
		t.Fatalf("Gateway API CRDs not established: %v\n%s", err, out)
	}
	if crdErr != nil {
		if out, err := c.Kubectl(ctx, "", "-n", "istio-system", "rollout", "restart", "deployment/istiod-lite"); err != nil {
			t.Fatalf("restart istiod-lite: %v\n%s", err, out)
		}
		c.WaitForDeployment(t, "istio-system", "istiod-lite", 3*time.Minute)
	}
}

// deployNamespaceWaypoint creates the Gateway "waypoint" (class
// istio-waypoint, listener mesh 15008 HBONE) in ns, waits until it is
// Programmed and labels the namespace istio.io/use-waypoint=waypoint.
func deployNamespaceWaypoint(t *testing.T, c *devkube.Cluster, ns string) {
	t.Helper()
	c.Apply(t, ns, `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
`)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+10*time.Second)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Programmed", "--timeout=180s", "gateway/waypoint"); err != nil {
		st, _ := c.Kubectl(context.Background(), "", "-n", ns, "get", "gateway/waypoint", "-o", "jsonpath={.status}")
		t.Fatalf("waypoint not Programmed: %v\n%s\nstatus: %s", err, out, st)
	}
	t.Logf("waypoint Programmed after %s", time.Since(start).Round(100*time.Millisecond))
	if out, err := c.Kubectl(ctx, "", "label", "--overwrite", "namespace", ns, "istio.io/use-waypoint=waypoint"); err != nil {
		t.Fatalf("label: %v %s", err, out)
	}
}

// echoResult is one request's outcome as the echo client reports it.
type echoResult struct {
	code     int    // 0: the request failed (no response)
	hostname string // the answering pod
	err      error
}

var (
	statusRE   = regexp.MustCompile(`(?m)^\[(\d+)\] StatusCode=(\d+)`)
	hostnameRE = regexp.MustCompile(`(?m)^\[(\d+) body\] Hostname=(\S+)`)
)

// echoRequests runs the echo client in the client pod: count requests
// (sequentially paced when qps > 0) to url with headers ("Name:value"), and
// returns each request's outcome. The echo client fails the whole set when
// one request has no response; then every result carries the error.
func echoRequests(c *devkube.Cluster, ns, pod, url string, count int, timeout time.Duration, headers ...string) []echoResult {
	args := []string{"client", url, fmt.Sprintf("--count=%d", count), "--timeout=" + timeout.String()}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	out, err := c.Exec(ctx, ns, pod, "", args...)
	res := make([]echoResult, count)
	if err != nil {
		for i := range res {
			res[i].err = err
		}
		return res
	}
	for _, m := range statusRE.FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		if i < count {
			res[i].code, _ = strconv.Atoi(m[2])
		}
	}
	for _, m := range hostnameRE.FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		if i < count {
			res[i].hostname = m[2]
		}
	}
	return res
}

// echoOne sends one request and returns its status and answering pod.
func echoOne(c *devkube.Cluster, ns, pod, url string, headers ...string) echoResult {
	return echoRequests(c, ns, pod, url, 1, 5*time.Second, headers...)[0]
}

// echoVersion is "v1" or "v2" for a pod of echo-v1 or echo-v2.
func echoVersion(hostname string) string {
	switch {
	case strings.HasPrefix(hostname, "echo-v1-"):
		return "v1"
	case strings.HasPrefix(hostname, "echo-v2-"):
		return "v2"
	}
	return "?" + hostname
}

// routeCondition returns the condition condType of the route's status
// for the parent Service svc: status, reason, message (empty when absent).
func routeCondition(c *devkube.Cluster, ns, route, svc, condType string) (status, reason, message string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := c.Kubectl(ctx, "", "-n", ns, "get", "httproute", route, "-o", "json")
	if err != nil {
		return "", "", err.Error()
	}
	var r struct {
		Metadata struct {
			Generation int64 `json:"generation"`
		} `json:"metadata"`
		Status struct {
			Parents []struct {
				ParentRef struct {
					Kind string `json:"kind"`
					Name string `json:"name"`
				} `json:"parentRef"`
				Conditions []struct {
					Type               string `json:"type"`
					Status             string `json:"status"`
					Reason             string `json:"reason"`
					Message            string `json:"message"`
					ObservedGeneration int64  `json:"observedGeneration"`
				} `json:"conditions"`
			} `json:"parents"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return "", "", err.Error()
	}
	for _, p := range r.Status.Parents {
		if p.ParentRef.Kind != "Service" || p.ParentRef.Name != svc {
			continue
		}
		for _, cond := range p.Conditions {
			if cond.Type == condType && cond.ObservedGeneration == r.Metadata.Generation {
				return cond.Status, cond.Reason, cond.Message
			}
		}
	}
	return "", "", ""
}

// waitRouteCondition waits until the route's status for parent Service svc
// has condType with the given status and reason.
func waitRouteCondition(t *testing.T, c *devkube.Cluster, ns, route, svc, condType, status, reason string) {
	t.Helper()
	var gs, gr, gm string
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		gs, gr, gm = routeCondition(c, ns, route, svc, condType)
		if gs == status && gr == reason {
			t.Logf("HTTPRoute %s: %s=%s %s: %s", route, condType, gs, gr, gm)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("HTTPRoute %s, parent Service %s: want %s=%s reason %s, have %q %q (%s)", route, svc, condType, status, reason, gs, gr, gm)
}

// TestWaypoint is the waypoint on a real cluster: a namespace waypoint
// (Gateway of class istio-waypoint) in an ambient namespace, GAMMA
// HTTPRoutes on its Services, an L7 AuthorizationPolicy on the waypoint, a
// route timeout, the waypoint pod deleted under load, and invalid routes
// answered with their status conditions while the others keep working.
// Requests go from a client pod through ztunnel, the waypoint and ztunnel.
func TestWaypoint(t *testing.T) {
	c := devkube.Get(t)
	installWaypointPrereqs(t, c)
	ns := c.Namespace(t, "waypoint-e2e-")
	if out, err := c.Kubectl(context.Background(), "", "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label: %v %s", err, out)
	}
	apps := waypointApps
	for _, s := range waypointServices {
		apps += waypointServiceYAML(s)
	}
	c.Apply(t, ns, apps)
	for _, d := range []string{"echo-v1", "echo-v2", "client"} {
		c.WaitForDeployment(t, ns, d, 3*time.Minute)
	}
	deployNamespaceWaypoint(t, c, ns)
	client := firstPod(t, c, ns, "app=client")
	url := func(svc, path string) string { return "http://" + svc + "." + ns + path }

	// The routes of every subtest, applied together so that istiod-lite
	// translates them at once.
	c.Apply(t, ns, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary}
spec:
  parentRefs: [{group: "", kind: Service, name: canary, port: 80}]
  rules:
  - matches: [{headers: [{name: x-probe, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: headers}
spec:
  parentRefs: [{group: "", kind: Service, name: headers, port: 80}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow}
spec:
  parentRefs: [{group: "", kind: Service, name: slow, port: 80}]
  rules:
  - matches: [{headers: [{name: x-probe, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
`)
	for _, r := range []string{"canary", "headers", "slow"} {
		svc := r
		waitRouteCondition(t, c, ns, r, svc, "Accepted", "True", "Accepted")
		waitRouteCondition(t, c, ns, r, svc, "ResolvedRefs", "True", "ResolvedRefs")
	}
	// The routes are in effect once a header match answers from v2 only
	// (kube-proxy alone would pick v1 half the time).
	routed := func(svc, header string) func() bool {
		return func() bool {
			for _, r := range echoRequests(c, ns, client, url(svc, "/"), 10, 10*time.Second, header) {
				if r.code != 200 || echoVersion(r.hostname) != "v2" {
					return false
				}
			}
			return true
		}
	}
	eventually(t, "the headers route in effect at the waypoint", time.Minute, routed("headers", "x-version:v2"))

	t.Run("canary 90/10", func(t *testing.T) {
		eventually(t, "the canary route in effect", time.Minute, routed("canary", "x-probe:v2"))
		const n = 1000
		res := echoRequests(c, ns, client, url("canary", "/"), n, 3*time.Minute)
		counts := map[string]int{}
		for _, r := range res {
			if r.err != nil {
				t.Fatalf("requests failed: %v", r.err)
			}
			if r.code != 200 {
				counts[fmt.Sprintf("status %d", r.code)]++
				continue
			}
			counts[echoVersion(r.hostname)]++
		}
		t.Logf("%d requests: %v", n, counts)
		v2 := float64(counts["v2"]) / n
		if counts["v1"]+counts["v2"] != n || v2 < 0.07 || v2 > 0.13 {
			t.Errorf("want 90%%/10%% ±3%% over %d requests, have %v (v2 %.1f%%)", n, counts, 100*v2)
		}
	})

	t.Run("header routing", func(t *testing.T) {
		for _, tc := range []struct {
			headers []string
			want    string
		}{{[]string{"x-version:v2"}, "v2"}, {nil, "v1"}, {[]string{"x-version:v3"}, "v1"}} {
			for i, r := range echoRequests(c, ns, client, url("headers", "/"), 20, 20*time.Second, tc.headers...) {
				if r.err != nil || r.code != 200 || echoVersion(r.hostname) != tc.want {
					t.Errorf("headers %v, request %d: want 200 from %s, have %d from %q (%v)", tc.headers, i, tc.want, r.code, r.hostname, r.err)
					break
				}
			}
		}
	})

	t.Run("AuthorizationPolicy DENY by path", func(t *testing.T) {
		c.Apply(t, ns, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
`)
		start := time.Now()
		eventually(t, "/admin denied with 403", time.Minute, func() bool { return echoOne(c, ns, client, url("authz", "/admin/x")).code == 403 })
		t.Logf("DENY policy in effect after %s", time.Since(start).Round(100*time.Millisecond))
		for _, p := range []string{"/admin", "/admin/", "/admin/x"} {
			if r := echoOne(c, ns, client, url("authz", p)); r.code != 403 {
				t.Errorf("%s: want 403, have %d (%v)", p, r.code, r.err)
			}
		}
		for _, p := range []string{"/", "/adminx", "/public/admin"} {
			if r := echoOne(c, ns, client, url("authz", p)); r.code != 200 {
				t.Errorf("%s: want 200, have %d (%v)", p, r.code, r.err)
			}
		}
		if out, err := c.Kubectl(context.Background(), "", "-n", ns, "delete", "authorizationpolicy", "deny-admin"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		eventually(t, "/admin allowed again", time.Minute, func() bool { return echoOne(c, ns, client, url("authz", "/admin/x")).code == 200 })
	})

	t.Run("request timeout 504", func(t *testing.T) {
		eventually(t, "the slow route in effect", time.Minute, routed("slow", "x-probe:v2"))
		// Baseline: the cost of one exec'd request without delay.
		t0 := time.Now()
		if r := echoOne(c, ns, client, url("slow", "/?delay=100ms")); r.code != 200 {
			t.Fatalf("a 100ms request within the 500ms timeout: want 200, have %d (%v)", r.code, r.err)
		}
		base := time.Since(t0)
		t0 = time.Now()
		r := echoOne(c, ns, client, url("slow", "/?delay=3s"))
		took := time.Since(t0)
		t.Logf("delay=3s with a 500ms route timeout: status %d after %s (a 100ms request took %s, exec included)", r.code, took.Round(time.Millisecond), base.Round(time.Millisecond))
		if r.code != 504 {
			t.Errorf("want 504, have %d (%v)", r.code, r.err)
		}
		// 500ms timeout + 1s margin over the fast request's cost.
		if took > base+1500*time.Millisecond {
			t.Errorf("504 after %s, want within 500ms (+1s margin) of the fast request's %s", took, base)
		}
	})

	t.Run("workload waypoint for traffic to a pod IP", func(t *testing.T) {
		// A second waypoint, for workload traffic only, named by one echo
		// pod's own label; its L7 policy applies to requests addressed to
		// that pod's IP, and only to those.
		c.Apply(t, ns, `
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl-waypoint, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wl-deny-private}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wl-waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/private"]}}]
`)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+10*time.Second)
		defer cancel()
		if out, err := c.Kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Programmed", "--timeout=180s", "gateway/wl-waypoint"); err != nil {
			t.Fatalf("wl-waypoint not Programmed: %v\n%s", err, out)
		}
		pod := firstPod(t, c, ns, "app=echo,version=v1")
		ipOut, err := c.Kubectl(ctx, "", "-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.podIP}")
		if err != nil {
			t.Fatalf("pod IP: %v %s", err, ipOut)
		}
		podURL := func(path string) string { return "http://" + strings.TrimSpace(string(ipOut)) + ":8080" + path }
		if r := echoOne(c, ns, client, podURL("/private")); r.code != 200 {
			t.Fatalf("before the label: /private to the pod IP: want 200, have %d (%v)", r.code, r.err)
		}
		label := func(v string) {
			t.Helper()
			if out, err := c.Kubectl(context.Background(), "", "-n", ns, "label", "--overwrite", "pod", pod, "istio.io/use-waypoint"+v); err != nil {
				t.Fatalf("label: %v %s", err, out)
			}
		}
		label("=wl-waypoint")
		start := time.Now()
		eventually(t, "/private to the pod IP denied by the workload waypoint", time.Minute, func() bool { return echoOne(c, ns, client, podURL("/private")).code == 403 })
		t.Logf("workload waypoint in effect %s after the pod label", time.Since(start).Round(100*time.Millisecond))
		for path, want := range map[string]int{"/private": 403, "/": 200, "/public": 200} {
			if r := echoOne(c, ns, client, podURL(path)); r.code != want || (want == 200 && echoVersion(r.hostname) != "v1") {
				t.Errorf("%s to the pod IP: want %d from v1, have %d from %q (%v)", path, want, r.code, r.hostname, r.err)
			}
		}
		// Through its Service, the Service's own waypoint (the namespace's)
		// takes the request and sends it straight to the pod: the workload
		// waypoint's policy is not in that path.
		if r := echoOne(c, ns, client, url("echo-v1", "/private")); r.code != 200 {
			t.Errorf("/private through Service echo-v1: want 200, have %d (%v)", r.code, r.err)
		}
		label("-")
		eventually(t, "/private to the pod IP allowed once the label is gone", time.Minute, func() bool { return echoOne(c, ns, client, podURL("/private")).code == 200 })
	})

	t.Run("waypoint pod deleted under load", func(t *testing.T) {
		type sample struct {
			at time.Time
			ok bool
		}
		var (
			mu      sync.Mutex
			samples []sample
		)
		// Three senders, each one request per kubectl exec, so that a
		// request completes every 100-300 ms.
		stop := make(chan struct{})
		done := make(chan struct{})
		var senders sync.WaitGroup
		for range 3 {
			senders.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := echoRequests(c, ns, client, url("restart", "/"), 1, 2*time.Second)[0]
					mu.Lock()
					samples = append(samples, sample{time.Now(), r.code == 200})
					mu.Unlock()
				}
			})
		}
		go func() { senders.Wait(); close(done) }()
		time.Sleep(3 * time.Second)
		deleted := time.Now()
		if out, err := c.Kubectl(context.Background(), "", "-n", ns, "delete", "pod", "-l", "gateway.networking.k8s.io/gateway-name=waypoint", "--wait=false"); err != nil {
			close(stop)
			<-done
			t.Fatalf("delete waypoint pod: %v %s", err, out)
		}
		// Recovered: 5 successes in a row after the deletion.
		var recovered time.Time
		var failures, total int
		deadline := deleted.Add(90 * time.Second)
		for time.Now().Before(deadline) && recovered.IsZero() {
			time.Sleep(200 * time.Millisecond)
			mu.Lock()
			failures, total = 0, 0
			run := 0
			for _, s := range samples {
				if s.at.Before(deleted) {
					continue
				}
				total++
				if !s.ok {
					failures++
					run = 0
					continue
				}
				if run++; run == 5 && failures > 0 && recovered.IsZero() {
					recovered = s.at
				}
			}
			// No failure at all over 10 s: the replacement never hurt.
			if failures == 0 && total >= 5 && time.Since(deleted) > 10*time.Second {
				recovered = deleted
			}
			mu.Unlock()
		}
		close(stop)
		<-done
		if recovered.IsZero() {
			t.Fatalf("requests through the waypoint did not recover within 90s of deleting its pod (%d of %d failed)", failures, total)
		}
		var lastFail time.Time
		mu.Lock()
		for _, s := range samples {
			if !s.ok && s.at.After(deleted) {
				lastFail = s.at
			}
		}
		mu.Unlock()
		outage := time.Duration(0)
		if !lastFail.IsZero() {
			outage = lastFail.Sub(deleted)
		}
		t.Logf("waypoint pod deleted: %d of %d requests failed; last failure %s after the delete; requests succeed again (5 in a row) %s after it",
			failures, total, outage.Round(100*time.Millisecond), recovered.Sub(deleted).Round(100*time.Millisecond))
		if recovered.Sub(deleted) > 30*time.Second {
			t.Errorf("requests took %s to recover, want seconds", recovered.Sub(deleted).Round(time.Second))
		}
		c.WaitForDeployment(t, ns, "waypoint", 2*time.Minute)
	})

	t.Run("invalid routes", func(t *testing.T) {
		c.Apply(t, ns, `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex}
spec:
  parentRefs: [{group: "", kind: Service, name: bad-regex, port: 80}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/bad[regex"}}]
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-backend}
spec:
  parentRefs: [{group: "", kind: Service, name: bad-backend, port: 80}]
  rules:
  - backendRefs: [{name: does-not-exist, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zero-weights}
spec:
  parentRefs: [{group: "", kind: Service, name: zero-weights, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 0}
    - {name: echo-v2, port: 80, weight: 0}
`)
		// istiod-lite/gamma's reasons (docs/waypoint.md, "Backends and status").
		waitRouteCondition(t, c, ns, "bad-regex", "bad-regex", "Accepted", "False", "UnsupportedValue")
		waitRouteCondition(t, c, ns, "bad-backend", "bad-backend", "Accepted", "True", "Accepted")
		waitRouteCondition(t, c, ns, "bad-backend", "bad-backend", "ResolvedRefs", "False", "BackendNotFound")
		waitRouteCondition(t, c, ns, "zero-weights", "zero-weights", "Accepted", "True", "Accepted")
		waitRouteCondition(t, c, ns, "zero-weights", "zero-weights", "ResolvedRefs", "True", "ResolvedRefs")

		eventually(t, "the missing backend answering 500", time.Minute, func() bool { return echoOne(c, ns, client, url("bad-backend", "/")).code == 500 })
		eventually(t, "all-zero weights answering 500", time.Minute, func() bool { return echoOne(c, ns, client, url("zero-weights", "/")).code == 500 })
		// The other routes are unaffected.
		for i, r := range echoRequests(c, ns, client, url("headers", "/"), 10, 10*time.Second, "x-version:v2") {
			if r.code != 200 || echoVersion(r.hostname) != "v2" {
				t.Errorf("headers route after the invalid ones, request %d: want 200 from v2, have %d from %q (%v)", i, r.code, r.hostname, r.err)
				break
			}
		}
		if r := echoOne(c, ns, client, url("canary", "/"), "x-probe:v2"); r.code != 200 || echoVersion(r.hostname) != "v2" {
			t.Errorf("canary route after the invalid ones: want 200 from v2, have %d from %q (%v)", r.code, r.hostname, r.err)
		}
	})
}
