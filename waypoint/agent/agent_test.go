package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// grpcHealth is the gRPC backend's health service (tests flip statuses).
var grpcHealth = health.NewServer()

func startGRPC(t testing.TB) netip.AddrPort {
	g := grpc.NewServer()
	hs := grpcHealth
	hs.SetServingStatus("echo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return netip.MustParseAddrPort(ln.Addr().String())
}

type result struct {
	code   int
	header http.Header
	body   string
	echo   echoReply
}

func (m *mesh) do(t testing.TB, c *http.Client, host, path string, hdr http.Header) result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+host+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := result{code: resp.StatusCode, header: resp.Header, body: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		_ = json.Unmarshal(b, &r.echo)
	}
	return r
}

func TestRouting(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	r := m.do(t, c, echoHost, "/hello?x=1", nil)
	if r.code != 200 || r.echo.Backend != "v1" || r.echo.Path != "/hello?x=1" || r.echo.Host != echoHost {
		t.Fatalf("GET /hello: %+v", r)
	}
	if _, ok := m.zt.peers.Load(waypointID.String()); !ok {
		t.Error("the backend's ztunnel did not see the waypoint's identity")
	}
	if r := m.do(t, c, vip+":80", "/v2only", nil); r.code != 200 || r.echo.Backend != "v2" {
		t.Errorf("GET /v2only (exact path, socket_address endpoint): %+v", r)
	}
	if r := m.do(t, c, echoHost, "/any", http.Header{"X-Version": {"v2"}}); r.echo.Backend != "v2" {
		t.Errorf("header match: %+v", r)
	}
	if r := m.do(t, c, "unknown.example", "/", nil); r.code != 404 {
		t.Errorf("unknown host: %d, want 404", r.code)
	}
	if r := m.do(t, c, echoHost, "/redirect", nil); r.code != 301 || r.header.Get("Location") != "http://example.com/new" {
		t.Errorf("redirect: %d %q", r.code, r.header.Get("Location"))
	}
	if r := m.do(t, c, echoHost, "/direct", nil); r.code != 418 || r.body != "teapot" {
		t.Errorf("direct response: %d %q", r.code, r.body)
	}
	if r := m.do(t, c, echoHost, "/invalid-backend", nil); r.code != 500 {
		t.Errorf("gamma-invalid-backend: %d, want 500", r.code)
	}
	// h2c through the same chain.
	if r := m.do(t, m.httpClient(80, true), echoHost, "/h2", nil); r.code != 200 || r.echo.Proto != "HTTP/2.0" {
		t.Errorf("h2c: %+v", r)
	}
}

func TestHeaderMutation(t *testing.T) {
	m := startMesh(t)
	r := m.do(t, m.httpClient(80, false), echoHost, "/mut", http.Header{"X-Remove-Me": {"1"}, "X-Keep": {"k"}})
	if r.code != 200 || r.echo.Header.Get("X-Added") != "yes" || r.echo.Header.Get("X-Remove-Me") != "" || r.echo.Header.Get("X-Keep") != "k" {
		t.Fatalf("request mutations: %+v", r.echo.Header)
	}
	if r.header.Get("X-Resp") != "r" {
		t.Errorf("response mutation missing: %v", r.header)
	}
}

func TestWeightedSplit(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	counts := map[string]int{}
	const n = 200
	for range n {
		counts[m.do(t, c, echoHost, "/split", nil).echo.Backend]++
	}
	for _, b := range []string{"v1", "v2"} {
		if counts[b] < n*3/10 || counts[b] > n*7/10 {
			t.Errorf("50/50 split: %v", counts)
		}
	}
}

func TestTimeout(t *testing.T) {
	m := startMesh(t)
	start := time.Now()
	r := m.do(t, m.httpClient(80, false), echoHost, "/timeout", nil)
	took := time.Since(start)
	if r.code != 504 || r.body != "upstream request timeout" {
		t.Fatalf("timeout: %d %q", r.code, r.body)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("timeout took %v, want about 300ms", took)
	}
}

func TestStreamIdleTimeout(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	start := time.Now()
	r := m.do(t, c, echoHost, "/idle", nil)
	if r.code != 408 || r.body != "stream timeout" {
		t.Fatalf("idle request: %d %q, want 408", r.code, r.body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("idle timeout took %v, want about 250ms", took)
	}
	// A response that keeps flowing is not idle, whatever its length.
	if r := m.do(t, c, echoHost, "/drip", nil); r.code != 200 || !strings.Contains(r.body, "chunk 5") {
		t.Errorf("streaming response: %d %q", r.code, r.body)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	m := startMesh(t)
	var n atomic.Int64
	m.flaky.serve = func(w http.ResponseWriter, r *http.Request) bool {
		if n.Add(1) <= 2 {
			w.WriteHeader(503)
			return true
		}
		return false
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+echoHost+"/retry", strings.NewReader("payload"))
	resp, err := m.httpClient(80, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e echoReply
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != 200 || e.Body != "payload" {
		t.Fatalf("retry: %d %+v", resp.StatusCode, e)
	}
	if got := m.flaky.hits.Load(); got != 3 {
		t.Errorf("flaky backend saw %d attempts, want 3", got)
	}
}

func TestPerTryTimeoutRetried(t *testing.T) {
	m := startMesh(t)
	var n atomic.Int64
	m.flaky.serve = func(w http.ResponseWriter, r *http.Request) bool {
		if n.Add(1) == 1 {
			select { // the first try hangs past the per-try timeout
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
			return true
		}
		return false
	}
	for _, path := range []string{"/pertry", "/ptidle"} { // per_try_timeout, per_try_idle_timeout
		n.Store(0)
		start := time.Now()
		r := m.do(t, m.httpClient(80, false), echoHost, path, nil)
		if r.code != 200 || r.echo.Backend != "flaky" {
			t.Fatalf("%s: timeout then retry: %d %q", path, r.code, r.body)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("%s took %v: the 150ms per-try limit did not cut the first try", path, took)
		}
	}
}

func TestConnectFailureRetriedOnAnotherHost(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	for i := range 10 {
		if r := m.do(t, c, echoHost, "/connfail", nil); r.code != 200 || r.echo.Backend != "v2" {
			t.Fatalf("request %d: %d %q", i, r.code, r.body)
		}
	}
}

func TestMirror(t *testing.T) {
	m := startMesh(t)
	req, _ := http.NewRequest(http.MethodPost, "http://"+echoHost+"/mirror", strings.NewReader("mirrored body"))
	resp, err := m.httpClient(80, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "v1" {
		t.Fatalf("main response: %d from %q", resp.StatusCode, resp.Header.Get("X-Backend"))
	}
	select {
	case r := <-m.mirror.seen:
		if r.Host != echoHost+"-shadow" {
			t.Errorf("mirror host %q, want %s-shadow", r.Host, echoHost)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mirror backend got nothing")
	}
}

func TestHTTPRBAC(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	push := func(filters ...*hcmv3.HttpFilter) {
		m.cp.set(t, resourcev3.ListenerType, "main_internal", mainInternal(t, listenerOpts{httpRBAC: filters}))
	}
	waitCode := func(path string, want int) result {
		t.Helper()
		var r result
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if r = m.do(t, c, echoHost, path, nil); r.code == want {
				return r
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s: %d %q, want %d", path, r.code, r.body, want)
		return r
	}
	deny := httpRBAC(t, rbacv3.RBAC_DENY, map[string]*rbacv3.Policy{"ns[ns]-policy[deny-admin]-rule[0]": {
		Permissions: []*rbacv3.Permission{pathPermission("/admin")}, Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}}})
	allowClient := httpRBAC(t, rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{"ns[ns]-policy[allow]-rule[0]": {
		Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{principalExact(clientID.String())}}})
	push(deny, allowClient)
	if r := waitCode("/admin/x", 403); r.body != "RBAC: access denied" {
		t.Errorf("deny body %q", r.body)
	}
	// Neither escapes nor dot segments get past the deny.
	waitCode("/%61dmin/x", 403)
	waitCode("/ok/../admin", 403)
	waitCode("/ok", 200)

	// ALLOW for another principal only: the client is denied.
	push(httpRBAC(t, rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{"ns[ns]-policy[other]-rule[0]": {
		Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{principalExact("spiffe://cluster.local/ns/other/sa/x")}}}))
	waitCode("/ok", 403)
	// ALLOW by the client's namespace.
	push(httpRBAC(t, rbacv3.RBAC_ALLOW, map[string]*rbacv3.Policy{"ns[ns]-policy[byns]-rule[0]": {
		Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{principalNamespace("client-ns")}}}))
	waitCode("/ok", 200)
	// AUDIT (LOG) matching everything does not block.
	push(httpRBAC(t, rbacv3.RBAC_LOG, map[string]*rbacv3.Policy{"ns[ns]-policy[audit]-rule[0]": {
		Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}}}))
	time.Sleep(200 * time.Millisecond)
	waitCode("/admin", 200)
}

func TestTCPPassthroughAndNetworkRBAC(t *testing.T) {
	m := startMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.dial(ctx, 9000)
	if err != nil {
		t.Fatal(err)
	}
	expectEcho(t, conn, "hello over the tcp chain", "TCP chain")
	conn.Close()

	m.cp.set(t, resourcev3.ListenerType, "main_internal", mainInternal(t, listenerOpts{tcpRBAC: []*rbacv3.RBAC{{Action: rbacv3.RBAC_DENY,
		Policies: map[string]*rbacv3.Policy{"ns[ns]-policy[deny-client]-rule[0]": {Permissions: []*rbacv3.Permission{anyPermission()},
			Principals: []*rbacv3.Principal{principalNamespace("client-ns")}}}}}}))
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := m.dial(ctx, 9000)
		if err != nil {
			if !strings.Contains(err.Error(), "403") {
				t.Fatalf("denied connection: %v, want a 403 refusal", err)
			}
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("network RBAC deny never applied")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTCPMaxConnectAttempts(t *testing.T) {
	m := startMesh(t)
	// A cluster without outlier detection (so the dead host stays in
	// rotation): a closed port and the v2 HTTP backend.
	const deadTCP = "outbound|9000||dead-tcp.ns.svc.cluster.local"
	c := edsCluster(deadTCP, nil)
	c.OutlierDetection = nil
	c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	m.cp.set(t, resourcev3.ClusterType, deadTCP, c)
	m.cp.set(t, resourcev3.EndpointType, deadTCP, cla(deadTCP, socketEndpoint(closedPort(t), "dead"), socketEndpoint(m.v2.addr, "echo-v2")))
	l := mainInternal(t, listenerOpts{})
	tp := &tcpproxyv3.TcpProxy{StatPrefix: "tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: deadTCP}, MaxConnectAttempts: wrapperspb.UInt32(2)}
	l.FilterChains[1].Filters[len(l.FilterChains[1].Filters)-1].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, tp)}
	m.cp.set(t, resourcev3.ListenerType, "main_internal", l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	get := func() error {
		conn, err := m.dial(ctx, 9000)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "GET /tcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		if resp.Header.Get("X-Backend") != "v2" {
			return fmt.Errorf("answered by %q", resp.Header.Get("X-Backend"))
		}
		return nil
	}
	// Wait for the new chain (the old one goes to an echo server).
	deadline := time.Now().Add(5 * time.Second)
	for get() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the new tcp_proxy never applied")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Round robin alternates: every other connection first tries the
	// closed port, and the second attempt saves it.
	for i := range 10 {
		if err := get(); err != nil {
			t.Fatalf("connection %d with max_connect_attempts 2: %v", i, err)
		}
	}
}

func TestProtocolDetection(t *testing.T) {
	m := startMesh(t)
	if r := m.do(t, m.httpClient(7000, false), echoHost, "/h1", nil); r.code != 200 || r.echo.Proto != "HTTP/1.1" {
		t.Errorf("HTTP/1.1 on the auto port: %+v", r)
	}
	if r := m.do(t, m.httpClient(7000, true), echoHost, "/h2c", nil); r.code != 200 || r.echo.Proto != "HTTP/2.0" {
		t.Errorf("h2c on the auto port: %+v", r)
	}
	// Opaque bytes go to the TCP chain (an echo server).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.dial(ctx, 7000)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	expectEcho(t, conn, "\x00\x01 not http at all\r\n", "opaque TCP on the auto port")
	// gRPC rides h2c.
	cc, err := grpc.NewClient("passthrough:///"+echoHost+":50051", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.dial(ctx, 50051) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var trailer metadata.MD
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"}, grpc.Trailer(&trailer))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health check through the waypoint: %v %v", resp, err)
	}
	// Server streaming: each message is flushed through as it comes.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	grpcHealth.SetServingStatus("watched", healthpb.HealthCheckResponse_SERVING)
	stream, err := healthpb.NewHealthClient(cc).Watch(wctx, &healthpb.HealthCheckRequest{Service: "watched"})
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := stream.Recv(); err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first streamed message: %v %v", msg, err)
	}
	grpcHealth.SetServingStatus("watched", healthpb.HealthCheckResponse_NOT_SERVING)
	if msg, err := stream.Recv(); err != nil || msg.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("second streamed message: %v %v", msg, err)
	}
	wcancel()
	// gRPC on the auto-detected port too (h2c detected, then a grpc route).
	cc7000, err := grpc.NewClient("passthrough:///"+echoHost+":7000", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.dial(ctx, 7000) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc7000.Close()
	if resp, err := healthpb.NewHealthClient(cc7000).Check(ctx, &healthpb.HealthCheckRequest{Service: "echo"}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC on the auto port: %v %v", resp, err)
	}
	// A gRPC error status travels in trailers.
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"})
	if err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("gRPC NotFound through the waypoint: %v", err)
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	m := startMesh(t)
	m.v1.serve = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/ws" {
			return false
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return true
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw) // echo frames
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	upgradeOnce := func() (string, net.Conn) {
		conn, err := m.dial(ctx, 80)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: "+echoHost+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status, conn
	}
	// Not configured on the HCM: refused, as Envoy does.
	status, conn := upgradeOnce()
	conn.Close()
	if !strings.HasPrefix(status, "403") {
		t.Fatalf("upgrade without upgrade_configs: %s, want 403", status)
	}
	m.cp.set(t, resourcev3.ListenerType, "main_internal", mainInternal(t, listenerOpts{websocket: true}))
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, conn = upgradeOnce()
		if strings.HasPrefix(status, "101") {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("upgrade: %s, want 101", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "frame-1"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("frame-1"))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "frame-1" {
		t.Fatalf("echo over the upgraded connection: %q %v", got, err)
	}
}

func TestNACKKeepsOldRoutes(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	if r := m.do(t, c, echoHost, "/", nil); r.code != 200 {
		t.Fatalf("before: %d", r.code)
	}
	bad := mainRoutes()
	bad.GetVirtualHosts()[0].GetRoutes()[len(bad.GetVirtualHosts()[0].GetRoutes())-1].GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{
		PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x"}}}}
	bad.GetVirtualHosts()[0].Routes = bad.GetVirtualHosts()[0].Routes[len(bad.GetVirtualHosts()[0].Routes)-1:]
	before := m.cp.nackCount()
	m.cp.set(t, resourcev3.RouteType, routeName, bad)
	deadline := time.Now().Add(5 * time.Second)
	for m.cp.nackCount() == before {
		if time.Now().After(deadline) {
			t.Fatal("no NACK for an unsupported route field")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(m.cp.lastNack(), "hash_policy") {
		t.Errorf("NACK message %q does not name the field", m.cp.lastNack())
	}
	// The old table still serves: /direct exists only there.
	if r := m.do(t, c, echoHost, "/direct", nil); r.code != 418 {
		t.Errorf("after NACK: %d, want the old table's 418", r.code)
	}
}

func TestOutlierEjection(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	for range 30 {
		m.do(t, c, echoHost, "/outlier", nil)
	}
	badBefore := m.bad.hits.Load()
	if badBefore < 3 {
		t.Fatalf("bad host got %d requests before ejection, want at least 3", badBefore)
	}
	for range 20 {
		if r := m.do(t, c, echoHost, "/outlier", nil); r.code != 200 {
			t.Fatalf("request after ejection: %d", r.code)
		}
	}
	if got := m.bad.hits.Load(); got != badBefore {
		t.Errorf("ejected host got %d more requests", got-badBefore)
	}
	// The admin view shows the ejection.
	resp, err := http.Get("http://" + m.adminAddr.String() + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dump configDump
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range dump.Clusters {
		for _, h := range c.Hosts {
			if c.Name == clusterOut && h.Address == m.bad.addr.String() {
				found = h.Ejected && h.HBONE && h.Identity == backendID.String()
			}
		}
	}
	if !found || !dump.XDS.Synced || dump.Certificate == nil || dump.Identity != waypointID.String() || len(dump.Chains) == 0 {
		t.Errorf("config_dump does not show the ejected host or the state: %+v", dump)
	}
}

func TestMetricsAndTracing(t *testing.T) {
	m := startMesh(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	r := m.do(t, m.httpClient(80, false), echoHost, "/traced", http.Header{"Traceparent": {"00-" + traceID + "-00f067aa0ba902b7-01"}})
	tp := r.echo.Header.Get("Traceparent")
	if !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Errorf("backend traceparent %q: want the trace id with the waypoint's span as parent", tp)
	}
	// A TCP connection for the tcp metrics.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := m.dial(ctx, 9000)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("x"))
	_, _ = io.ReadFull(conn, make([]byte, 1))
	conn.Close()

	want := []string{
		`istio_requests_total{`,
		`reporter="waypoint"`,
		`source_workload="client"`,
		`source_workload_namespace="client-ns"`,
		`source_principal="spiffe://cluster.local/ns/client-ns/sa/client-sa"`,
		`source_canonical_service="client"`,
		`destination_workload="echo-v1"`,
		`destination_workload_namespace="ns"`,
		`destination_principal="spiffe://cluster.local/ns/ns/sa/backend"`,
		`destination_service="echo.ns.svc.cluster.local"`,
		`destination_service_name="echo"`,
		`destination_service_namespace="ns"`,
		`request_protocol="http"`,
		`response_code="200"`,
		`response_flags="-"`,
		`connection_security_policy="mutual_tls"`,
		`istio_request_duration_milliseconds_bucket{`,
		`istio_tcp_connections_opened_total{`,
		`istio_tcp_connections_closed_total{`,
		`istio_tcp_sent_bytes_total{`,
		`istio_tcp_received_bytes_total{`,
	}
	m.waitMetrics(t, "", want)
}

// waitMetrics waits (5 s at most) for /metrics lines containing filter to
// contain every string of want.
func (m *mesh) waitMetrics(t testing.TB, filter string, want []string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + m.monAddr.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lines := grepLines(string(b), filter)
		var missing []string
		for _, w := range want {
			if !strings.Contains(lines, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics with %q missing %v in:\n%s", filter, missing, grepLines(string(b), "istio_"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestControlPlaneTLSAndToken runs the waypoint as its Deployment does:
// istiod-lite's address verified by the mesh root file, the projected
// token on the CA request and on the xDS stream.
func TestControlPlaneTLSAndToken(t *testing.T) {
	m := startMeshWith(t, true)
	if r := m.do(t, m.httpClient(80, false), echoHost, "/", nil); r.code != 200 || r.echo.Backend != "v1" {
		t.Fatalf("request: %+v", r)
	}
	for _, method := range []string{
		"/istio.v1.auth.IstioCertificateService/CreateCertificate",
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
	} {
		if _, ok := m.cp.tokens.Load(method + " Bearer test-token"); !ok {
			t.Errorf("%s without the token", method)
		}
	}
}

func TestReadyAndGracefulDrain(t *testing.T) {
	m := startMesh(t)
	if !m.ready.Load() {
		t.Fatal("not ready after start")
	}
	m.v1.serve = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/slow" {
			time.Sleep(500 * time.Millisecond)
			fmt.Fprint(w, "done")
			return true
		}
		return false
	}
	c := m.httpClient(80, false)
	got := make(chan result, 1)
	go func() { got <- m.do(t, c, echoHost, "/slow", nil) }()
	time.Sleep(150 * time.Millisecond) // the request is in flight
	m.stop()
	if m.ready.Load() {
		t.Error("still ready after shutdown")
	}
	select {
	case r := <-got:
		if r.code != 200 || r.body != "done" {
			t.Errorf("in-flight request during drain: %d %q", r.code, r.body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("in-flight request never finished")
	}
}

// BenchmarkWaypointHTTP compares a request through the whole waypoint path
// (client HBONE → waypoint → RBAC, route, least-request pick → HBONE →
// ztunnel → backend) with a direct request to the same backend.
func BenchmarkWaypointHTTP(b *testing.B) {
	m := startMesh(b)
	run := func(b *testing.B, c *http.Client, url string) {
		for b.Loop() {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		run(b, &http.Client{Transport: &http.Transport{}}, "http://"+m.v1.addr.String()+"/bench")
	})
	b.Run("waypoint", func(b *testing.B) {
		run(b, m.httpClient(80, false), "http://"+echoHost+"/bench")
	})
}

// TestNoGoroutineLeftAfterStop: once Run returns, nothing of the waypoint
// (data path, xDS, certificate, pools) keeps running.
func TestNoGoroutineLeftAfterStop(t *testing.T) {
	m := startMesh(t)
	c := m.httpClient(80, false)
	for _, p := range []string{"/", "/mirror", "/retry", "/split"} {
		m.do(t, c, echoHost, p, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn, err := m.dial(ctx, 9000); err == nil {
		_, _ = conn.Write([]byte("x"))
		_, _ = io.ReadFull(conn, make([]byte, 1))
		conn.Close()
	}
	c.CloseIdleConnections()
	m.client.Close()
	m.stop()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var left []string
		for _, g := range strings.Split(stacks, "\n\n") {
			for _, pkg := range []string{"ambit/waypoint/proxy.", "ambit/waypoint/upstream.", "ambit/waypoint/agent.Run", "ambit/pkg/xdsclient.", "ambit/pkg/workloadcert."} {
				if strings.Contains(g, pkg) {
					left = append(left, g)
					break
				}
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after stop:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStopBeforeReady: a waypoint whose control plane never answers stops
// promptly when told to, without ever turning ready.
func TestStopBeforeReady(t *testing.T) {
	dir := t.TempDir()
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, authority.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(closedPort(t).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Namespace: "ns", Name: "waypoint", Conn: conn, RootCertFile: root,
			HBONEAddr: "127.0.0.1:0", MonitoringAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Log: quietLog(), Ready: ready.Store})
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if ready.Load() {
		t.Error("ready without a control plane")
	}
}
