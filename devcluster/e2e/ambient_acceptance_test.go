//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

// TestAmbientAcceptance is the ztunnel issue's acceptance list on the real
// cluster, on one shared set of namespaces:
//
//   - mesh  (ambient): echo-a on node 1, echo-b on node 2 (Istio's echo,
//     HTTP 8080 and 8081, TCP echo 9090, ServiceAccount echo), client and
//     other (toolbox, ServiceAccounts client and other) on node 1;
//   - mesh2 (ambient): client (ServiceAccount client) on node 1;
//   - plain (not in the mesh): the same echo-a, echo-b and client;
//   - flip  (not in the mesh at first): echo on node 2, client on node 1.
//
// Where a test needs a connection it controls (long-lived streams, garbage,
// tight polling), the test process opens the socket inside the client pod's
// network namespace, which is exactly what a process in the pod does: the
// pod's own capture rules apply to it. Packets are captured with an
// AF_PACKET socket inside a node's network namespace.
func TestAmbientAcceptance(t *testing.T) {
	c := devkube.Get(t)
	installAmbient(t, c)
	e := setupAcceptance(t, c)

	t.Run("mTLS on the wire", e.testWire)
	t.Run("identity", e.testIdentity)
	t.Run("L4 AuthorizationPolicy", e.testAuthorization)
	t.Run("namespace flipped with connections in flight", e.testFlip)
	t.Run("garbage on 15008 and 15006", e.testGarbage)
	t.Run("ztunnel pod deleted", e.testZtunnelRestart)
	t.Run("istiod-lite down", e.testIstiodDown)
}

// ---------------------------------------------------------------------------
// Setup

type accEnv struct {
	c                        *devkube.Cluster
	node                     [2]string         // node 1 (clients, echo-a), node 2 (echo-b)
	nodeNet                  [2]netns.NsHandle // their network namespaces
	mesh, mesh2, plain, flip string
}

// accPod is a running pod with its network namespace.
type accPod struct {
	ns, name, node string
	ip             netip.Addr
	net            netns.NsHandle
}

func (p accPod) String() string { return p.ns + "/" + p.name }

func accEcho(name, node string) string {
	return fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      serviceAccountName: echo
      nodeSelector: {kubernetes.io/hostname: %[2]s}
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0
        imagePullPolicy: IfNotPresent
        args: [--port=8080, --port=8081, --tcp=9090]
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: http-alt, port: 8081, targetPort: 8081}
  - {name: tcp, port: 9090, targetPort: 9090}
`, name, node)
}

func accToolbox(name, node, sa string) string {
	return fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      serviceAccountName: %[3]s
      nodeSelector: {kubernetes.io/hostname: %[2]s}
      terminationGracePeriodSeconds: 1
      containers:
      - {name: client, image: ambit/toolbox:dev, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
`, name, node, sa)
}

const accServiceAccounts = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: other}
`

func setupAcceptance(t *testing.T, c *devkube.Cluster) *accEnv {
	t.Helper()
	ctx := context.Background()
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) < 2 {
		t.Fatalf("the acceptance tests need 2 nodes, the cluster has %d", len(nodes.Items))
	}
	sort.Slice(nodes.Items, func(i, j int) bool { return nodes.Items[i].Name < nodes.Items[j].Name })
	e := &accEnv{c: c}
	for i := range 2 {
		n := nodes.Items[i]
		e.node[i] = n.Name
		var ip netip.Addr
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ip, _ = netip.ParseAddr(a.Address)
			}
		}
		e.nodeNet[i] = nodeNetns(t, n.Name, ip)
	}
	e.mesh = c.Namespace(t, "acc-mesh-")
	e.mesh2 = c.Namespace(t, "acc-mesh2-")
	e.plain = c.Namespace(t, "acc-plain-")
	e.flip = c.Namespace(t, "acc-flip-")
	for _, ns := range []string{e.mesh, e.mesh2} {
		if out, err := c.Kubectl(ctx, "", "label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
			t.Fatalf("label %s: %v %s", ns, err, out)
		}
	}
	n1, n2 := e.node[0], e.node[1]
	c.Apply(t, e.mesh, accServiceAccounts+"---"+accEcho("echo-a", n1)+"---"+accEcho("echo-b", n2)+"---"+
		accToolbox("client", n1, "client")+"---"+accToolbox("other", n1, "other"))
	c.Apply(t, e.mesh2, accServiceAccounts+"---"+accToolbox("client", n1, "client"))
	c.Apply(t, e.plain, accServiceAccounts+"---"+accEcho("echo-a", n1)+"---"+accEcho("echo-b", n2)+"---"+accToolbox("client", n1, "client"))
	c.Apply(t, e.flip, accServiceAccounts+"---"+accEcho("echo", n2)+"---"+accToolbox("client", n1, "client"))
	for ns, deps := range map[string][]string{
		e.mesh:  {"echo-a", "echo-b", "client", "other"},
		e.mesh2: {"client"},
		e.plain: {"echo-a", "echo-b", "client"},
		e.flip:  {"echo", "client"},
	} {
		for _, d := range deps {
			c.WaitForDeployment(t, ns, d, 3*time.Minute)
		}
	}
	// The echo servers have no readiness probe (TestAmbientMesh covers
	// probes under STRICT): wait until each answers through the mesh, or
	// directly.
	for _, ns := range []string{e.mesh, e.plain} {
		cl := e.pod(t, ns, "client")
		for _, app := range []string{"echo-a", "echo-b"} {
			u := "http://" + e.pod(t, ns, app).ip.String() + ":8080/"
			eventually(t, cl.String()+" reaching "+u, time.Minute, func() bool { return httpCode(cl, u) == 200 })
		}
	}
	fc := e.pod(t, e.flip, "client")
	fu := "http://" + e.pod(t, e.flip, "echo").ip.String() + ":8080/"
	eventually(t, fc.String()+" reaching "+fu, time.Minute, func() bool { return httpCode(fc, fu) == 200 })
	return e
}

// pod returns the running pod of Deployment app in ns, with its network
// namespace.
func (e *accEnv) pod(t *testing.T, ns, app string) accPod {
	t.Helper()
	list, err := e.c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			t.Fatal(err)
		}
		return accPod{ns: ns, name: p.Name, node: p.Spec.NodeName, ip: ip, net: podNetns(t, ip)}
	}
	t.Fatalf("no running pod of %s/%s", ns, app)
	return accPod{}
}

func (e *accEnv) clusterIP(t *testing.T, ns, svc string) string {
	t.Helper()
	s, err := e.c.Client.CoreV1().Services(ns).Get(context.Background(), svc, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec.ClusterIP
}

// ---------------------------------------------------------------------------
// Network namespaces

// inNetns runs fn on an OS thread that has entered ns; the thread goes back
// to its own namespace afterwards (or is discarded by the runtime if it
// cannot). Sockets created by fn stay in ns.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func netnsHasAddr(h netns.NsHandle, ip netip.Addr) bool {
	found := false
	_ = inNetns(h, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if pfx, err := netip.ParsePrefix(a.String()); err == nil && pfx.Addr() == ip {
				found = true
			}
		}
		return nil
	})
	return found
}

// nodeNetns opens the devcluster node's network namespace (one of the
// named namespaces in /run/netns) by the node's address.
func nodeNetns(t *testing.T, node string, ip netip.Addr) netns.NsHandle {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		t.Fatalf("node %s: %v (the acceptance tests run as root on the devcluster machine)", node, err)
	}
	for _, ent := range entries {
		h, err := netns.GetFromPath(filepath.Join("/run/netns", ent.Name()))
		if err != nil {
			continue
		}
		if netnsHasAddr(h, ip) {
			t.Cleanup(func() { h.Close() })
			return h
		}
		h.Close()
	}
	t.Fatalf("no network namespace in /run/netns has node %s's address %s", node, ip)
	return netns.None()
}

// podNetns opens a pod's network namespace: containerd mounts each sandbox's
// namespace (nsfs) at .../netns/cni-<id>; the one holding ip is the pod's.
func podNetns(t *testing.T, ip netip.Addr) netns.NsHandle {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 || !strings.HasPrefix(post, "nsfs ") || !strings.Contains(f[4], "/netns/cni-") || seen[f[4]] {
			continue
		}
		seen[f[4]] = true
		h, err := netns.GetFromPath(f[4])
		if err != nil {
			continue
		}
		if netnsHasAddr(h, ip) {
			t.Cleanup(func() { h.Close() })
			return h
		}
		h.Close()
	}
	t.Fatalf("no pod network namespace holds %s", ip)
	return netns.None()
}

// dialFrom connects from inside a pod (or node) network namespace.
func dialFrom(ctx context.Context, h netns.NsHandle, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(h, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// httpGet sends one GET on a new connection from inside pod p.
func httpGet(p accPod, u string) (int, string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialFrom(ctx, p.net, addr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// httpCode is httpGet's status, 0 when the connection failed.
func httpCode(p accPod, u string) int {
	code, _, err := httpGet(p, u)
	if err != nil {
		return 0
	}
	return code
}

// lineConn is a long-lived connection to echo-advanced's TCP echo port.
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialEcho(t *testing.T, p accPod, addr string) *lineConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialFrom(ctx, p.net, addr)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", p, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

// roundTrip sends msg as a line and waits for the echo server to send it
// back (the server's first answer is preceded by its request fields).
func (l *lineConn) roundTrip(msg string) error {
	_ = l.c.SetDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = l.c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(l.c, msg+"\n"); err != nil {
		return err
	}
	for {
		line, err := l.r.ReadString('\n')
		if strings.TrimSuffix(line, "\n") == msg {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// ---------------------------------------------------------------------------
// Packet capture

type capFrame struct {
	ifindex int
	data    []byte
}

// wireCapture records every frame of every interface but lo in one network
// namespace, through an AF_PACKET socket opened in it.
type wireCapture struct {
	fd      int
	ifnames map[int]string
	stop    atomic.Bool
	done    chan struct{}
	frames  []capFrame
	err     error
}

func startCapture(t *testing.T, h netns.NsHandle) *wireCapture {
	t.Helper()
	w := &wireCapture{fd: -1, ifnames: map[int]string{}, done: make(chan struct{})}
	err := inNetns(h, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		w.fd = fd
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, i := range ifs {
			w.ifnames[i.Index] = i.Name
		}
		return nil
	})
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(w.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(w.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(w.fd)
		t.Fatal(err)
	}
	go w.loop()
	return w
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (w *wireCapture) loop() {
	defer close(w.done)
	buf := make([]byte, 256<<10)
	for !w.stop.Load() {
		n, from, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			w.err = err
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || w.ifnames[ll.Ifindex] == "lo" {
			continue
		}
		w.frames = append(w.frames, capFrame{ifindex: ll.Ifindex, data: bytes.Clone(buf[:n])})
	}
}

// finish stops the capture and returns its report.
func (w *wireCapture) finish(t *testing.T, marker []byte) *wireReport {
	t.Helper()
	w.stop.Store(true)
	<-w.done
	unix.Close(w.fd)
	if w.err != nil {
		t.Fatalf("capture: %v", w.err)
	}
	r := &wireReport{frames: len(w.frames), markerIfaces: map[string]int{}, flows: map[flowKey]*flowData{}}
	for _, f := range w.frames {
		ifname := w.ifnames[f.ifindex]
		if ifname == "" {
			ifname = "if" + strconv.Itoa(f.ifindex)
		}
		if bytes.Contains(f.data, marker) {
			r.markerIfaces[ifname]++
		}
		src, dst, seq, payload, ok := parseTCP(f.data)
		if !ok {
			continue
		}
		k := flowKey{ifname, src, dst}
		fd := r.flows[k]
		if fd == nil {
			fd = &flowData{}
			r.flows[k] = fd
		}
		fd.packets++
		fd.add(seq, payload)
	}
	for k, fd := range r.flows {
		if bytes.Contains(fd.payload, marker) {
			r.markerFlows = append(r.markerFlows, k)
		}
	}
	return r
}

// parseTCP reads an Ethernet frame carrying IPv4 TCP.
func parseTCP(b []byte) (src, dst netip.AddrPort, seq uint32, payload []byte, ok bool) {
	if len(b) < 14+20 || binary.BigEndian.Uint16(b[12:14]) != 0x0800 {
		return
	}
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl+20 || ip[9] != 6 {
		return
	}
	if tot := int(binary.BigEndian.Uint16(ip[2:4])); tot >= ihl && tot <= len(ip) {
		ip = ip[:tot]
	}
	tcp := ip[ihl:]
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || len(tcp) < doff {
		return
	}
	s, _ := netip.AddrFromSlice(ip[12:16])
	d, _ := netip.AddrFromSlice(ip[16:20])
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:2])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(tcp[2:4])),
		binary.BigEndian.Uint32(tcp[4:8]), tcp[doff:], true
}

type flowKey struct {
	ifname   string
	src, dst netip.AddrPort
}

func (k flowKey) String() string { return fmt.Sprintf("%s %s->%s", k.ifname, k.src, k.dst) }

// flowData is one direction of a TCP connection on one interface, its
// payload in sequence order (retransmitted bytes dropped; gap set when a
// segment was missed).
type flowData struct {
	packets int
	payload []byte
	started bool
	next    uint32
	gap     bool
}

func (f *flowData) add(seq uint32, p []byte) {
	if len(p) == 0 {
		return
	}
	end := seq + uint32(len(p))
	switch d := int32(f.next - seq); {
	case !f.started:
		f.started = true
	case d > 0: // already seen, in part or whole: a retransmission
		if int(d) >= len(p) {
			return
		}
		p = p[d:]
	case d < 0:
		f.gap = true
	}
	f.payload = append(f.payload, p...)
	f.next = end
}

type wireReport struct {
	frames       int
	markerIfaces map[string]int // frames holding the marker, by interface
	markerFlows  []flowKey      // TCP flows whose reassembled payload holds it
	flows        map[flowKey]*flowData
}

// tlsRecords reports whether payload is a sequence of TLS 1.2/1.3 records
// (the last one may be cut off by the end of the capture).
func tlsRecords(payload []byte) bool {
	if len(payload) == 0 {
		return false
	}
	for len(payload) >= 5 {
		typ, vers, n := payload[0], binary.BigEndian.Uint16(payload[1:3]), int(binary.BigEndian.Uint16(payload[3:5]))
		if typ < 20 || typ > 23 || (vers != 0x0303 && vers != 0x0301) || n > 16384+2048 {
			return false
		}
		payload = payload[min(5+n, len(payload)):]
	}
	return len(payload) == 0
}

// tlsFlowsTo counts the flows from src to dst (and back) whose payload is
// nothing but TLS records, and those with a payload (flows the capture
// missed a segment of are left out).
func (r *wireReport) tlsFlowsTo(src netip.Addr, dst netip.AddrPort) (tlsFlows, flows int) {
	for k, fd := range r.flows {
		if len(fd.payload) == 0 || fd.gap || !(k.src.Addr() == src && k.dst == dst || k.src == dst && k.dst.Addr() == src) {
			continue
		}
		flows++
		if tlsRecords(fd.payload) {
			tlsFlows++
		}
	}
	return tlsFlows, flows
}

// payloadTo sums the payload bytes of flows from src to dst (any port when
// dst's port is 0), and lists the interfaces they were seen on.
func (r *wireReport) payloadTo(src netip.Addr, dst netip.AddrPort) (int, []string) {
	n := 0
	var ifs []string
	for k, fd := range r.flows {
		if k.src.Addr() == src && k.dst.Addr() == dst.Addr() && (dst.Port() == 0 || k.dst.Port() == dst.Port()) && len(fd.payload) > 0 {
			n += len(fd.payload)
			if !slices.Contains(ifs, k.ifname) {
				ifs = append(ifs, k.ifname)
			}
		}
	}
	sort.Strings(ifs)
	return n, ifs
}

func newMarker() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "ambit-marker-" + hex.EncodeToString(b)
}

// markedRequest captures node h's traffic while pod p POSTs a unique
// marker (in a header and the body) to u with curl, and returns the
// marker and the capture.
func (e *accEnv) markedRequest(t *testing.T, h netns.NsHandle, p accPod, u string) (string, *wireReport) {
	t.Helper()
	marker := newMarker()
	w := startCapture(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	out, err := e.c.Exec(ctx, p.ns, p.name, "", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
		"-H", "X-Ambit-Marker: "+marker, "--data-binary", "body-"+marker, u)
	cancel()
	time.Sleep(300 * time.Millisecond) // the connection's last segments
	r := w.finish(t, []byte(marker))
	if code := strings.TrimSpace(out); err != nil || code != "200" {
		t.Fatalf("%s: curl %s: %q %v", p, u, code, err)
	}
	return marker, r
}

// ---------------------------------------------------------------------------
// 1. mTLS on the wire

func (e *accEnv) testWire(t *testing.T) {
	type target struct {
		name  string
		app   string
		same  bool // server on the client's node
		svc   bool
		port  uint16
		inEth bool
	}
	targets := []target{
		{"same node, pod IP", "echo-a", true, false, 8080, false},
		{"same node, Service", "echo-a", true, true, 80, false},
		{"cross node, pod IP", "echo-b", false, false, 8080, true},
		{"cross node, Service", "echo-b", false, true, 80, true},
	}
	for _, ns := range []string{e.mesh, e.plain} {
		ambient := ns == e.mesh
		cl := e.pod(t, ns, "client")
		for _, tg := range targets {
			mode := "ambient"
			if !ambient {
				mode = "not in the mesh"
			}
			t.Run(mode+", "+tg.name, func(t *testing.T) {
				srv := e.pod(t, ns, tg.app)
				dstIP := srv.ip.String()
				if tg.svc {
					dstIP = e.clusterIP(t, ns, tg.app)
				}
				u := fmt.Sprintf("http://%s:%d/", dstIP, tg.port)
				// Capture on the client's node: it holds the client's veth,
				// cni0 and, for the cross-node pair, eth0 towards node 2.
				_, r := e.markedRequest(t, e.nodeNet[0], cl, u)
				appBytes, appIfs := r.payloadTo(cl.ip, netip.AddrPortFrom(srv.ip, 8080))
				vip, _ := netip.ParseAddr(dstIP)
				vipBytes, _ := r.payloadTo(cl.ip, netip.AddrPortFrom(vip, tg.port))
				hboneBytes, hboneIfs := r.payloadTo(cl.ip, netip.AddrPortFrom(srv.ip, 15008))
				t.Logf("%s -> %s: %d frames captured on %s; payload client->app port %d B %v, client->%s:%d %d B, client->15008 %d B %v; marker in frames on %v, in flows %v",
					cl, u, r.frames, e.node[0], appBytes, appIfs, dstIP, tg.port, vipBytes, hboneBytes, hboneIfs, r.markerIfaces, r.markerFlows)
				if ambient {
					if len(r.markerIfaces) != 0 || len(r.markerFlows) != 0 {
						t.Errorf("the marker crossed the wire in plain text: frames on %v, flows %v", r.markerIfaces, r.markerFlows)
					}
					if hboneBytes == 0 {
						t.Errorf("no HBONE traffic from %s to %s:15008 captured", cl.ip, srv.ip)
					}
					// What does cross is TLS records, both ways.
					if tlsFlows, flows := r.tlsFlowsTo(cl.ip, netip.AddrPortFrom(srv.ip, 15008)); tlsFlows != flows || flows == 0 {
						t.Errorf("of %d captured HBONE flows (both directions, every interface), %d are TLS records only", flows, tlsFlows)
					} else {
						t.Logf("all %d captured HBONE flows (both directions, every interface) are TLS records only", flows)
					}
					if tg.inEth && !slices.Contains(hboneIfs, "eth0") {
						t.Errorf("cross-node HBONE traffic not seen on eth0 (seen on %v)", hboneIfs)
					}
					if appBytes != 0 || (tg.svc && vipBytes != 0) {
						t.Errorf("plain-text traffic to the application port left the pod (%d B to %s:8080, %d B to %s:%d)", appBytes, srv.ip, vipBytes, dstIP, tg.port)
					}
					return
				}
				// Not in the mesh: the same capture must see the marker,
				// which proves it sees the pods' traffic at all.
				if len(r.markerFlows) == 0 {
					t.Fatalf("the capture did not see the marker of a plain-text request (it sees nothing?)")
				}
				if hboneBytes != 0 {
					t.Errorf("%d B to port 15008 from a pod outside the mesh", hboneBytes)
				}
				if tg.inEth && r.markerIfaces["eth0"] == 0 {
					t.Errorf("the cross-node plain-text request was not seen on eth0 (marker on %v)", r.markerIfaces)
				}
			})
		}
	}
}

// ---------------------------------------------------------------------------
// 2. Identity

type promSeries struct {
	pod, node string
	name      string
	labels    map[string]string
	value     float64
}

var (
	promLineRE  = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} ([0-9.eE+-]+)$`)
	promLabelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// ztunnelSeries scrapes every ztunnel's /metrics (through the apiserver's
// pod proxy) and returns the series named name.
func (e *accEnv) ztunnelSeries(t *testing.T, name string) []promSeries {
	t.Helper()
	pods, err := e.c.Client.CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=ztunnel"})
	if err != nil {
		t.Fatal(err)
	}
	var out []promSeries
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		raw, err := e.c.Client.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces/istio-system/pods/" + p.Name + ":15020/proxy/metrics").DoRaw(ctx)
		cancel()
		if err != nil {
			t.Fatalf("ztunnel %s metrics: %v", p.Name, err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			m := promLineRE.FindStringSubmatch(line)
			if m == nil || m[1] != name {
				continue
			}
			s := promSeries{pod: p.Name, node: p.Spec.NodeName, name: m[1], labels: map[string]string{}}
			for _, l := range promLabelRE.FindAllStringSubmatch(m[2], -1) {
				s.labels[l[1]] = l[2]
			}
			s.value, _ = strconv.ParseFloat(m[3], 64)
			out = append(out, s)
		}
	}
	return out
}

func sumSeries(ss []promSeries, match func(promSeries) bool) float64 {
	var n float64
	for _, s := range ss {
		if match(s) {
			n += s.value
		}
	}
	return n
}

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func (e *accEnv) testIdentity(t *testing.T) {
	cl := e.pod(t, e.mesh, "client")
	srvA, srvB := e.pod(t, e.mesh, "echo-a"), e.pod(t, e.mesh, "echo-b")
	src, dst := spiffe(e.mesh, "client"), spiffe(e.mesh, "echo")
	opened := "istio_tcp_connections_opened_total"
	count := func(ss []promSeries, reporter, node, svc string) float64 {
		return sumSeries(ss, func(s promSeries) bool {
			return s.node == node && s.labels["reporter"] == reporter && s.labels["connection_security_policy"] == "mutual_tls" &&
				s.labels["source_principal"] == src && s.labels["destination_principal"] == dst &&
				(svc == "" || strings.HasPrefix(s.labels["destination_service"], svc))
		})
	}
	svcB := e.mesh + "/echo-b."
	before := e.ztunnelSeries(t, opened)

	ipRE := regexp.MustCompile(`(?m)^IP=(\S+)$`)
	for _, u := range []string{
		"http://" + srvB.ip.String() + ":8080/",
		"http://" + e.clusterIP(t, e.mesh, "echo-b") + "/",
		"http://" + srvA.ip.String() + ":8080/",
		"http://" + e.clusterIP(t, e.mesh, "echo-a") + "/",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := e.c.Exec(ctx, cl.ns, cl.name, "", "curl", "-s", "-m", "5", u)
		cancel()
		m := ipRE.FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("curl %s: %v\n%s", u, err, out)
		}
		if m[1] != cl.ip.String() {
			t.Errorf("%s saw the client as %s, want the client pod's IP %s", u, m[1], cl.ip)
		} else {
			t.Logf("%s saw the client's own IP %s", u, m[1])
		}
	}

	// ztunnel counts a connection when it ends: give the last ones a moment.
	checks := []struct {
		what           string
		reporter, node string
		svc            string
		min            float64
	}{
		{"echo-b's ztunnel (destination)", "destination", e.node[1], "", 2},
		{"the client's ztunnel (source)", "source", e.node[0], "", 4},
		{"the client's ztunnel (source, Service echo-b)", "source", e.node[0], svcB, 1},
		{"echo-a's ztunnel (destination, same node)", "destination", e.node[0], "", 2},
	}
	var after []promSeries
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = e.ztunnelSeries(t, opened)
		short := false
		for _, chk := range checks {
			short = short || count(after, chk.reporter, chk.node, chk.svc)-count(before, chk.reporter, chk.node, chk.svc) < chk.min
		}
		if !short || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, chk := range checks {
		d := count(after, chk.reporter, chk.node, chk.svc) - count(before, chk.reporter, chk.node, chk.svc)
		t.Logf("%s: %v new mTLS connections with source_principal=%s destination_principal=%s", chk.what, d, src, dst)
		if d < chk.min {
			t.Errorf("%s counted %v new connections with source_principal=%q destination_principal=%q, want at least %v",
				chk.what, d, src, dst, chk.min)
		}
	}
}

// ---------------------------------------------------------------------------
// 3. L4 AuthorizationPolicy

// applyTimed applies a manifest in ns and returns when kubectl returned.
func (e *accEnv) applyTimed(t *testing.T, ns, manifest string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := e.c.Kubectl(ctx, manifest, "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	return time.Now()
}

func (e *accEnv) deleteTimed(t *testing.T, ns, kind, name string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := e.c.Kubectl(ctx, "", "-n", ns, "delete", kind, name); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	return time.Now()
}

// policyDeadline is the requirement: a policy change is in force
// for new connections within 2 s of the apply returning.
const policyDeadline = 2 * time.Second

// observeWithin polls cond (a new connection each time) from start and
// fails the test when it does not hold within the policy deadline; it
// returns the measured delay.
func observeWithin(t *testing.T, what string, start time.Time, cond func() bool) time.Duration {
	t.Helper()
	for {
		ok := cond()
		d := time.Since(start)
		if ok {
			t.Logf("%s: observed %v after the change was applied", what, d.Round(time.Millisecond))
			if d > policyDeadline {
				t.Errorf("%s took %v, more than %v", what, d.Round(time.Millisecond), policyDeadline)
			}
			return d
		}
		if d > 15*time.Second {
			t.Fatalf("%s: not observed %v after the change was applied", what, d.Round(time.Millisecond))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// deniedInbound counts the inbound connections to the mesh namespace that
// node's ztunnel refused by policy.
func (e *accEnv) deniedInbound(t *testing.T, node string) float64 {
	t.Helper()
	return sumSeries(e.ztunnelSeries(t, "istio_tcp_connections_opened_total"), func(s promSeries) bool {
		return s.node == node && s.labels["reporter"] == "destination" && s.labels["response_flags"] == "DENY" &&
			s.labels["destination_workload_namespace"] == e.mesh
	})
}

func (e *accEnv) testAuthorization(t *testing.T) {
	client, other := e.pod(t, e.mesh, "client"), e.pod(t, e.mesh, "other")
	client2 := e.pod(t, e.mesh2, "client")
	outsider := e.pod(t, e.plain, "client") // plain text, no identity
	echoA, echoB := e.pod(t, e.mesh, "echo-a"), e.pod(t, e.mesh, "echo-b")
	bURL := "http://" + echoB.ip.String() + ":8080/"
	bAltURL := "http://" + echoB.ip.String() + ":8081/"
	aURL := "http://" + echoA.ip.String() + ":8080/"
	type conn struct {
		from accPod
		url  string
	}
	ok := func(c conn) bool { return httpCode(c.from, c.url) == 200 }
	describe := func(cs []conn) string {
		var parts []string
		for _, c := range cs {
			parts = append(parts, c.from.String()+" -> "+c.url)
		}
		return strings.Join(parts, ", ")
	}
	var delays []time.Duration
	for _, tc := range []struct {
		name, policy string
		allowed      []conn // must succeed under the policy
		denied       []conn // must fail under the policy, succeed without it
	}{
		{
			name: "ALLOW by principal",
			policy: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-policy}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/` + e.mesh + `/sa/client"]}
`,
			allowed: []conn{{client, bURL}},
			denied:  []conn{{other, bURL}, {outsider, bURL}},
		},
		{
			name: "ALLOW by namespace",
			policy: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-policy}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: ["` + e.mesh + `"]}
`,
			allowed: []conn{{client, bURL}, {other, bURL}},
			denied:  []conn{{client2, bURL}, {outsider, bURL}},
		},
		{
			name: "DENY by port",
			policy: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-policy}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: DENY
  rules:
  - to:
    - operation: {ports: ["8081"]}
`,
			allowed: []conn{{client, bURL}},
			denied:  []conn{{client, bAltURL}, {outsider, bAltURL}},
		},
		{
			name: "allow nothing (ALLOW without rules)",
			policy: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-policy}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: ALLOW
`,
			allowed: []conn{{client, aURL}, {outsider, aURL}},
			denied:  []conn{{client, bURL}, {other, bURL}, {outsider, bURL}},
		},
		{
			name: "deny all (DENY with an empty rule)",
			policy: `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-policy}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: DENY
  rules:
  - {}
`,
			allowed: []conn{{client, aURL}, {outsider, aURL}},
			denied:  []conn{{client, bURL}, {other, bURL}, {outsider, bURL}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range append(slices.Clone(tc.allowed), tc.denied...) {
				if !ok(c) {
					t.Fatalf("before the policy: %s -> %s fails", c.from, c.url)
				}
			}
			deniedBefore := e.deniedInbound(t, e.node[1])
			start := e.applyTimed(t, e.mesh, tc.policy)
			deleted := false
			t.Cleanup(func() {
				if !deleted {
					_, _ = e.c.Kubectl(context.Background(), "", "-n", e.mesh, "delete", "authorizationpolicy", "acc-policy", "--ignore-not-found")
				}
			})
			delays = append(delays, observeWithin(t, tc.name+": "+describe(tc.denied)+" refused", start,
				func() bool { return !slices.ContainsFunc(tc.denied, ok) }))
			for i := range 3 {
				for _, c := range tc.allowed {
					if !ok(c) {
						t.Errorf("under the policy (try %d): %s -> %s fails, want it allowed", i, c.from, c.url)
					}
				}
				for _, c := range tc.denied {
					if ok(c) {
						t.Errorf("under the policy (try %d): %s -> %s succeeds, want it refused", i, c.from, c.url)
					}
				}
			}
			// The refusals are policy decisions of echo-b's ztunnel, not a
			// broken data path.
			if n, want := e.deniedInbound(t, e.node[1])-deniedBefore, float64(3*len(tc.denied)); n < want {
				t.Errorf("echo-b's ztunnel counted %v connections refused by policy (response_flags=DENY), want at least %v", n, want)
			}
			start = e.deleteTimed(t, e.mesh, "authorizationpolicy", "acc-policy")
			deleted = true
			delays = append(delays, observeWithin(t, tc.name+" deleted: "+describe(tc.denied)+" allowed again", start,
				func() bool { return !slices.ContainsFunc(tc.denied, func(c conn) bool { return !ok(c) }) }))
		})
	}
	if len(delays) > 0 {
		slices.Sort(delays)
		t.Logf("policy change -> in force for new connections: %d changes, min %v, median %v, max %v (limit %v)",
			len(delays), delays[0].Round(time.Millisecond), delays[len(delays)/2].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond), policyDeadline)
	}
}

// ---------------------------------------------------------------------------
// 4. Namespace label flipped with connections in flight

func (e *accEnv) testFlip(t *testing.T) {
	ctx := context.Background()
	cl, srv := e.pod(t, e.flip, "client"), e.pod(t, e.flip, "echo")
	tcpAddr := srv.ip.String() + ":9090"
	u := "http://" + srv.ip.String() + ":8080/"

	// Opened before the namespace joins the mesh: a direct TCP connection.
	early := dialEcho(t, cl, tcpAddr)
	if err := early.roundTrip("before-join"); err != nil {
		t.Fatalf("long-lived connection before joining: %v", err)
	}
	before := meshConnections(t, e.c, e.flip)

	if out, err := e.c.Kubectl(ctx, "", "label", "namespace", e.flip, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() {
		_, _ = e.c.Kubectl(context.Background(), "", "label", "namespace", e.flip, "istio.io/dataplane-mode-")
	})
	joined := time.Now()
	eventually(t, "new connections captured (mTLS counted by ztunnel)", time.Minute, func() bool {
		return httpCode(cl, u) == 200 && meshConnections(t, e.c, e.flip) > before
	})
	t.Logf("new connections captured %v after the label was set", time.Since(joined).Round(100*time.Millisecond))
	for i := range 5 {
		if err := early.roundTrip(fmt.Sprintf("after-join-%d", i)); err != nil {
			t.Fatalf("the connection opened before the namespace joined broke after the flip: %v", err)
		}
	}
	_, r := e.markedRequest(t, e.nodeNet[0], cl, u)
	if len(r.markerFlows) != 0 || len(r.markerIfaces) != 0 {
		t.Errorf("after joining, a new request's marker crossed the wire in plain text (%v %v)", r.markerIfaces, r.markerFlows)
	}
	if n, _ := r.payloadTo(cl.ip, netip.AddrPortFrom(srv.ip, 15008)); n == 0 {
		t.Errorf("after joining, no HBONE traffic from %s to %s:15008 captured", cl.ip, srv.ip)
	}
	// A connection through the mesh, opened while the namespace is ambient.
	meshed := dialEcho(t, cl, tcpAddr)
	if err := meshed.roundTrip("meshed"); err != nil {
		t.Fatalf("long-lived connection through the mesh: %v", err)
	}

	if out, err := e.c.Kubectl(ctx, "", "label", "namespace", e.flip, "istio.io/dataplane-mode-"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	left := time.Now()
	var settled int
	eventually(t, "the pods released (new connections no longer counted as mTLS)", time.Minute, func() bool {
		if httpCode(cl, u) != 200 {
			return false
		}
		n := meshConnections(t, e.c, e.flip)
		if n == settled {
			return true
		}
		settled = n
		return false
	})
	t.Logf("pods released %v after the label was removed", time.Since(left).Round(100*time.Millisecond))
	for i := range 3 {
		if code := httpCode(cl, u); code != 200 {
			t.Errorf("after leaving (try %d): status %d", i, code)
		}
	}
	if n := meshConnections(t, e.c, e.flip); n != settled {
		t.Errorf("connections after leaving still counted as mTLS (%d -> %d)", settled, n)
	}
	_, r = e.markedRequest(t, e.nodeNet[0], cl, u)
	if len(r.markerFlows) == 0 {
		t.Errorf("after leaving, a new request's marker is not seen on the wire: traffic is not plain text (or not captured)")
	}
	for i := range 3 {
		if err := early.roundTrip(fmt.Sprintf("after-leave-%d", i)); err != nil {
			t.Fatalf("the connection opened before the namespace joined broke after it left: %v", err)
		}
	}
	// What happens to a connection carried by the mesh when its pods leave
	// is a drain policy (Istio drains it too); report it, do not require it.
	if err := meshed.roundTrip("meshed-after-leave"); err != nil {
		t.Logf("the connection opened through the mesh ended when the pods left it: %v", err)
	} else {
		t.Logf("the connection opened through the mesh still works after the pods left it")
	}
}

// ---------------------------------------------------------------------------
// 6. Garbage on 15008 and 15006

// garbageOutcome reads what a server sends back to one piece of garbage,
// until it closes the connection (or the deadline passes).
type garbageOutcome struct {
	what   string
	reply  []byte
	closed bool // the server closed or reset the connection
	took   time.Duration
	err    error
}

func sendGarbage(p accPod, addr, what string, payload []byte) garbageOutcome {
	o := garbageOutcome{what: what}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := dialFrom(ctx, p.net, addr)
	cancel()
	if err != nil {
		o.err = err
		return o
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(payload); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		o.err = err
		return o
	}
	o.reply, err = io.ReadAll(c)
	o.took = time.Since(start)
	var ne net.Error
	switch {
	case err == nil, errors.Is(err, syscall.ECONNRESET):
		o.closed = true
	case errors.As(err, &ne) && ne.Timeout():
	default:
		o.err = err
	}
	return o
}

// tlsNoCert does a TLS handshake without a client certificate (offering
// h2, as an HBONE client does), then tries to open a tunnel with an
// HTTP/2 CONNECT to target over that connection.
func tlsNoCert(p accPod, addr, target string) (handshake error, afterHandshake error, connect error) {
	dial := func(ctx context.Context) (*tls.Conn, error) {
		c, err := dialFrom(ctx, p.net, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	tc, err := dial(ctx)
	if err != nil {
		return err, nil, nil
	}
	_ = tc.SetReadDeadline(time.Now().Add(12 * time.Second))
	_, afterHandshake = tc.Read(make([]byte, 1))
	tc.Close()

	protos := new(http.Protocols)
	protos.SetHTTP2(true)
	tr := &http.Transport{
		Protocols: protos,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
	}
	defer tr.CloseIdleConnections()
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: target}, Host: target, Header: http.Header{}}
	req = req.WithContext(ctx)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		return nil, afterHandshake, fmt.Errorf("CONNECT answered %s", resp.Status)
	}
	return nil, afterHandshake, err
}

func (e *accEnv) testGarbage(t *testing.T) {
	outsider := e.pod(t, e.plain, "client")
	client := e.pod(t, e.mesh, "client")
	echoB := e.pod(t, e.mesh, "echo-b")
	appURL := "http://" + echoB.ip.String() + ":8080/"

	// STRICT on echo-b: plain text to its application ports lands on 15006
	// and must be closed.
	start := e.applyTimed(t, e.mesh, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: acc-strict}
spec:
  selector: {matchLabels: {app: echo-b}}
  mtls: {mode: STRICT}
`)
	t.Cleanup(func() {
		_, _ = e.c.Kubectl(context.Background(), "", "-n", e.mesh, "delete", "peerauthentication", "acc-strict", "--ignore-not-found")
	})
	eventually(t, "plain text to echo-b refused under STRICT", 30*time.Second, func() bool { return httpCode(outsider, appURL) == 0 })
	t.Logf("STRICT in force %v after the apply", time.Since(start).Round(time.Millisecond))

	// An mTLS stream running through all of it: 4 KiB lines echoed back
	// over one connection through both ztunnels.
	stream := dialEcho(t, client, echoB.ip.String()+":9090")
	if err := stream.roundTrip("stream-start"); err != nil {
		t.Fatalf("mTLS stream: %v", err)
	}
	var (
		rounds   atomic.Int64
		streamWG sync.WaitGroup
		stop     atomic.Bool
		sErr     error
	)
	pad := strings.Repeat("x", 4096)
	streamWG.Go(func() {
		for i := 0; !stop.Load(); i++ {
			if err := stream.roundTrip(fmt.Sprintf("stream-%d-%s", i, pad)); err != nil {
				sErr = fmt.Errorf("round %d: %w", i, err)
				return
			}
			rounds.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	})

	hello := clientHello(t)
	random := make([]byte, 20<<10) // longer than any TLS record it could announce
	_, _ = rand.Read(random)
	hbone := echoB.ip.String() + ":15008"
	app := echoB.ip.String() + ":8080"
	garbage := []struct {
		addr, what string
		payload    []byte
	}{
		{hbone, "random bytes to 15008", random},
		{hbone, "HTTP/1 GET to 15008", []byte("GET / HTTP/1.1\r\nHost: " + hbone + "\r\n\r\n")},
		{hbone, "HTTP/1 CONNECT to 15008", []byte("CONNECT " + app + " HTTP/1.1\r\nHost: " + app + "\r\n\r\n")},
		{hbone, "HTTP/2 preface in clear to 15008", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")},
		{app, "random bytes to 8080 (15006)", random},
		{app, "HTTP/1 GET to 8080 (15006)", []byte("GET / HTTP/1.1\r\nHost: " + app + "\r\n\r\n")},
		{app, "TLS ClientHello to 8080 (15006)", hello},
	}
	var wg sync.WaitGroup
	results := make([]garbageOutcome, 0, 10*len(garbage)+6)
	var mu sync.Mutex
	for range 10 {
		for _, g := range garbage {
			wg.Go(func() {
				o := sendGarbage(outsider, g.addr, g.what, g.payload)
				mu.Lock()
				results = append(results, o)
				mu.Unlock()
			})
		}
	}
	// Stalled peers: half a ClientHello, or nothing at all. The server must
	// give up on them (its handshake timeout) while the stream goes on.
	for _, g := range []struct {
		what    string
		payload []byte
	}{
		{"half a ClientHello to 15008, then silence", hello[:len(hello)/2]},
		{"nothing to 15008", nil},
	} {
		for range 3 {
			wg.Go(func() {
				o := sendGarbage(outsider, hbone, g.what, g.payload)
				mu.Lock()
				results = append(results, o)
				mu.Unlock()
			})
		}
	}
	var tlsResults [5][3]error
	for i := range tlsResults {
		wg.Go(func() {
			h, a, c := tlsNoCert(outsider, hbone, app)
			tlsResults[i] = [3]error{h, a, c}
		})
	}
	wg.Wait()

	slowest := map[string]time.Duration{}
	for _, o := range results {
		slowest[o.what] = max(slowest[o.what], o.took)
		switch {
		case o.err != nil:
			// Refusing the TCP connection outright would also be a refusal,
			// but ztunnel listens on both ports: anything else is a surprise.
			t.Errorf("%s: %v", o.what, o.err)
		case !o.closed:
			t.Errorf("%s: the connection was not closed within %v (reply %q)", o.what, o.took.Round(time.Millisecond), o.reply)
		case bytes.Contains(o.reply, []byte("HTTP/")) || bytes.Contains(o.reply, []byte("ServicePort=")):
			t.Errorf("%s: got an answer: %q", o.what, o.reply)
		}
	}
	for what, d := range slowest {
		t.Logf("%s: closed by the server, slowest after %v", what, d.Round(time.Millisecond))
	}
	for i, r := range tlsResults {
		h, a, cn := r[0], r[1], r[2]
		switch {
		case h != nil:
			t.Logf("TLS without a client certificate to 15008 (%d): handshake refused: %v", i, h)
		case a == nil:
			t.Errorf("TLS without a client certificate to 15008 (%d): the server sent data after the handshake", i)
		case cn == nil:
			t.Errorf("TLS without a client certificate to 15008 (%d): CONNECT %s opened a tunnel", i, app)
		default:
			if i == 0 {
				t.Logf("TLS without a client certificate to 15008: after the handshake the server says %q; HTTP/2 CONNECT: %v", a, cn)
			}
		}
	}

	// The stream kept going through it all, and still works.
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	streamWG.Wait()
	if sErr != nil {
		t.Fatalf("the mTLS stream broke during the garbage: %v", sErr)
	}
	if err := stream.roundTrip("stream-end"); err != nil {
		t.Fatalf("the mTLS stream broke during the garbage: %v", err)
	}
	t.Logf("mTLS stream: %d round trips of 4 KiB during the garbage", rounds.Load())
	if rounds.Load() == 0 {
		t.Errorf("the mTLS stream made no progress during the garbage")
	}
	if code := httpCode(client, appURL); code != 200 {
		t.Errorf("a new mTLS connection after the garbage: status %d", code)
	}
	e.deleteTimed(t, e.mesh, "peerauthentication", "acc-strict")
	eventually(t, "plain text accepted again", 30*time.Second, func() bool { return httpCode(outsider, appURL) == 200 })
}

// clientHello is the first flight of a TLS client, recorded from crypto/tls
// over a pipe.
func clientHello(t *testing.T) []byte {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		_ = tls.Client(b, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}).Handshake()
		b.Close()
	}()
	buf := make([]byte, 16<<10)
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := a.Read(buf)
	if err != nil || n < 5 || buf[0] != 0x16 {
		t.Fatalf("recording a ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

// ---------------------------------------------------------------------------
// 5. Faults

func (e *accEnv) ztunnelOn(t *testing.T, node string) *corev1.Pod {
	t.Helper()
	pods, err := e.c.Client.CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=ztunnel", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil {
			return p
		}
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (e *accEnv) testZtunnelRestart(t *testing.T) {
	ctx := context.Background()
	client := e.pod(t, e.mesh, "client")
	echoA, echoB := e.pod(t, e.mesh, "echo-a"), e.pod(t, e.mesh, "echo-b")
	u := "http://" + echoB.ip.String() + ":8080/"
	// echo-b's pod as a client too: its outbound connections go through the
	// same ztunnel.
	outURL := "http://" + echoA.ip.String() + ":8080/"
	if code := httpCode(client, u); code != 200 {
		t.Fatalf("before: %s -> %s: %d", client, u, code)
	}
	if code := httpCode(echoB, outURL); code != 200 {
		t.Fatalf("before: %s -> %s: %d", echoB, outURL, code)
	}
	old := e.ztunnelOn(t, e.node[1])
	if old == nil {
		t.Fatalf("no ztunnel on %s", e.node[1])
	}
	if err := e.c.Client.CoreV1().Pods("istio-system").Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	t.Logf("deleted %s on %s", old.Name, e.node[1])
	var fresh *corev1.Pod
	var failures int
	const bound = 60 * time.Second
	eventually(t, "a new ztunnel on "+e.node[1]+" and new connections to echo-b succeeding", bound, func() bool {
		p := e.ztunnelOn(t, e.node[1])
		if p == nil || p.UID == old.UID || !podReady(p) {
			if httpCode(client, u) != 200 {
				failures++
			}
			return false
		}
		fresh = p
		return httpCode(client, u) == 200 && httpCode(echoB, outURL) == 200
	})
	t.Logf("%s replaced by %s; new connections to and from echo-b succeed again %v after the deletion (%d failed while it was away)",
		old.Name, fresh.Name, time.Since(deleted).Round(100*time.Millisecond), failures)
	for i := range 3 {
		if code := httpCode(client, u); code != 200 {
			t.Errorf("after the restart (try %d): %s -> %s: %d", i, client, u, code)
		}
		if code := httpCode(echoB, outURL); code != 200 {
			t.Errorf("after the restart (try %d): %s -> %s: %d", i, echoB, outURL, code)
		}
	}
	// And they are carried by the new ztunnel over mTLS, not around it.
	var in, out float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		ss := e.ztunnelSeries(t, "istio_tcp_connections_opened_total")
		in = sumSeries(ss, func(s promSeries) bool {
			return s.pod == fresh.Name && s.labels["reporter"] == "destination" && s.labels["connection_security_policy"] == "mutual_tls" &&
				s.labels["source_principal"] == spiffe(e.mesh, "client") && s.labels["destination_principal"] == spiffe(e.mesh, "echo")
		})
		out = sumSeries(ss, func(s promSeries) bool {
			return s.pod == fresh.Name && s.labels["reporter"] == "source" && s.labels["connection_security_policy"] == "mutual_tls" &&
				s.labels["source_principal"] == spiffe(e.mesh, "echo") && s.labels["destination_workload_namespace"] == e.mesh
		})
		if (in >= 4 && out >= 4) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the new ztunnel %s counted %v inbound and %v outbound mTLS connections of echo-b", fresh.Name, in, out)
	if in < 4 || out < 4 {
		t.Errorf("the new ztunnel %s counted %v inbound and %v outbound mTLS connections of echo-b, want at least 4 each", fresh.Name, in, out)
	}
}

func (e *accEnv) testIstiodDown(t *testing.T) {
	ctx := context.Background()
	client, other := e.pod(t, e.mesh, "client"), e.pod(t, e.mesh, "other")
	echoA, echoB := e.pod(t, e.mesh, "echo-a"), e.pod(t, e.mesh, "echo-b")
	bURL := "http://" + echoB.ip.String() + ":8080/"
	aURL := "http://" + echoA.ip.String() + ":8080/"
	svcURL := "http://" + e.clusterIP(t, e.mesh, "echo-b") + "/"

	// A policy in force before the control plane goes away.
	e.applyTimed(t, e.mesh, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: acc-deny-other}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/`+e.mesh+`/sa/other"]}
`)
	t.Cleanup(func() {
		_, _ = e.c.Kubectl(context.Background(), "", "-n", e.mesh, "delete", "authorizationpolicy", "acc-deny-other", "--ignore-not-found")
	})
	eventually(t, "other denied", 30*time.Second, func() bool { return httpCode(other, bURL) == 0 })

	dep, err := e.c.Client.AppsV1().Deployments("istio-system").Get(ctx, "istiod-lite", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	replicas := int32(1)
	if dep.Spec.Replicas != nil && *dep.Spec.Replicas > 0 {
		replicas = *dep.Spec.Replicas
	}
	restore := func() {
		if out, err := e.c.Kubectl(context.Background(), "", "-n", "istio-system", "scale", "deployment/istiod-lite", "--replicas="+strconv.Itoa(int(replicas))); err != nil {
			t.Errorf("scaling istiod-lite back: %v %s", err, out)
		}
		e.c.WaitForDeployment(t, "istio-system", "istiod-lite", 3*time.Minute)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			restore()
		}
	})
	if out, err := e.c.Kubectl(ctx, "", "-n", "istio-system", "scale", "deployment/istiod-lite", "--replicas=0"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	eventually(t, "no istiod-lite pod left", time.Minute, func() bool {
		pods, err := e.c.Client.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: labelsOf(dep.Spec.Selector.MatchLabels)})
		return err == nil && len(pods.Items) == 0
	})
	down := time.Now()
	t.Logf("istiod-lite scaled to 0 (was %d)", replicas)

	// For a while without a control plane: the data path keeps its state.
	for i := 0; i == 0 || time.Since(down) < 5*time.Second; i++ {
		for _, u := range []string{bURL, aURL, svcURL} {
			if code := httpCode(client, u); code != 200 {
				t.Errorf("istiod-lite down %v: %s -> %s: %d", time.Since(down).Round(time.Second), client, u, code)
			}
		}
		if code := httpCode(other, bURL); code != 0 {
			t.Errorf("istiod-lite down %v: the DENY policy no longer applies (other -> echo-b: %d)", time.Since(down).Round(time.Second), code)
		}
		if code := httpCode(other, aURL); code != 200 {
			t.Errorf("istiod-lite down %v: other -> echo-a: %d", time.Since(down).Round(time.Second), code)
		}
		time.Sleep(500 * time.Millisecond)
	}

	restore()
	restored = true
	t.Logf("istiod-lite back %v after it went down", time.Since(down).Round(100*time.Millisecond))
	// The control plane is back and pushing: removing the policy reaches
	// the ztunnels again.
	e.deleteTimed(t, e.mesh, "authorizationpolicy", "acc-deny-other")
	back := time.Now()
	eventually(t, "the deletion of the DENY policy pushed after istiod-lite's return", time.Minute, func() bool { return httpCode(other, bURL) == 200 })
	t.Logf("policy deletion in force %v after it was made", time.Since(back).Round(100*time.Millisecond))
}

func labelsOf(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
