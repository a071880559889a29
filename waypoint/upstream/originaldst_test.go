package upstream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
	"github.com/ambit-mesh/ambit/waypoint/config"
)

var (
	podID   = identity.Identity{TrustDomain: "cluster.local", Namespace: "x", ServiceAccount: "y"}
	otherID = identity.Identity{TrustDomain: "cluster.local", Namespace: "x", ServiceAccount: "z"}
)

// encap is an original-destination cluster's configuration and endpoint.
func encap(dests map[netip.Addr]config.Destination) (*config.Cluster, []config.Endpoint) {
	return &config.Cluster{Name: "encap", ServiceName: "encap", ConnectTimeout: 5 * time.Second, HealthyPanicThreshold: 50, MaxRetries: 3,
		Destinations: dests}, []config.Endpoint{{OriginalDst: true, HBONE: true, Weight: 1}}
}

func updateEncap(m *Manager, dests map[netip.Addr]config.Destination) {
	cfg, eps := encap(dests)
	cfg.Static = eps
	m.Update(&config.Snapshot{Clusters: map[string]*config.Cluster{"encap": cfg}})
}

func TestOriginalDstPickFor(t *testing.T) {
	m := NewManager(Options{})
	pod, pod6 := netip.MustParseAddr("10.244.1.8"), netip.MustParseAddr("fd00::8")
	updateEncap(m, map[netip.Addr]config.Destination{
		pod:  {Identity: podID, Workload: "echo", Namespace: "x"},
		pod6: {Identity: otherID, Workload: "echo6", Namespace: "x"},
	})
	c := m.Cluster("encap")
	target := netip.AddrPortFrom(pod, 8080)
	h, err := c.PickFor(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.Address() != target || !h.HBONE() || h.Identity() != podID || h.Workload != "echo" || h.Namespace != "x" {
		t.Errorf("host: %s hbone=%v %s %s/%s", h.Address(), h.HBONE(), h.Identity(), h.Namespace, h.Workload)
	}
	// The same host for every stream to the target (an IPv4-mapped target
	// too), whatever the previous hosts; another port is another host.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(pod.As16()), 8080)
	for _, tgt := range []netip.AddrPort{target, mapped} {
		if again, err := c.PickFor(tgt, []*Host{h}); err != nil || again != h {
			t.Errorf("%s: %p %v, want the cached host %p", tgt, again, err, h)
		}
	}
	other, err := c.PickFor(netip.AddrPortFrom(pod, 9090), nil)
	if err != nil || other == h || other.Address().Port() != 9090 {
		t.Errorf("other port: %v %v", other, err)
	}
	if h6, err := c.PickFor(netip.MustParseAddrPort("[fd00::8]:80"), nil); err != nil || h6.Identity() != otherID || h6.Workload != "echo6" {
		t.Errorf("IPv6 destination: %v %v", h6, err)
	}
	if n := len(c.Hosts()); n != 3 {
		t.Errorf("%d hosts listed, want the 3 targets used", n)
	}
	// Never an address the configuration does not name.
	for _, tgt := range []string{"10.244.1.9:8080", "127.0.0.1:80", "[fd00::9]:80"} {
		if _, err := c.PickFor(netip.MustParseAddrPort(tgt), nil); !errors.Is(err, ErrUnknownDestination) || !errors.Is(err, ErrNoHealthyHost) ||
			!strings.Contains(err.Error(), tgt) {
			t.Errorf("%s: %v, want ErrUnknownDestination", tgt, err)
		}
	}
	// Without a target there is nothing to pick.
	if _, err := c.Pick(nil); !errors.Is(err, ErrNoHealthyHost) || !strings.Contains(err.Error(), "original destination") {
		t.Errorf("Pick without a target: %v", err)
	}
	// Ordinary clusters ignore the target.
	mm, _ := manager(t, &config.Cluster{}, endpoints(2))
	if h, err := mm.Cluster("c").PickFor(target, nil); err != nil || h.Address().Addr() == pod {
		t.Errorf("PickFor on an ordinary cluster: %v %v", h, err)
	}

	// An update keeping the destination keeps the host and its state; a
	// changed identity is a new host; a removed destination is refused.
	h.Report(GatewayFailure)
	updateEncap(m, map[netip.Addr]config.Destination{pod: {Identity: podID, Workload: "echo", Namespace: "x"}, pod6: {Identity: podID, Workload: "echo6", Namespace: "x"}})
	if again, _ := c.PickFor(target, nil); again != h {
		t.Error("host lost across an update that keeps its destination")
	}
	if h6, _ := c.PickFor(netip.MustParseAddrPort("[fd00::8]:80"), nil); h6 == nil || h6.Identity() != podID {
		t.Errorf("identity change: %v", h6)
	}
	updateEncap(m, map[netip.Addr]config.Destination{pod6: {Identity: podID, Workload: "echo6", Namespace: "x"}})
	if _, err := c.PickFor(target, nil); !errors.Is(err, ErrUnknownDestination) {
		t.Errorf("removed destination: %v", err)
	}
	if n := len(c.Hosts()); n != 1 {
		t.Errorf("%d hosts cached after the update, want 1", n)
	}
	// Removing the cluster releases everything.
	m.Update(&config.Snapshot{})
	if n := len(c.Hosts()); n != 0 {
		t.Errorf("%d hosts after the cluster was removed", n)
	}
}

func TestOriginalDstCacheBounded(t *testing.T) {
	m := NewManager(Options{})
	pod := netip.MustParseAddr("10.244.1.8")
	updateEncap(m, map[netip.Addr]config.Destination{pod: {Identity: podID}})
	c := m.Cluster("encap")
	busy, err := c.PickFor(netip.AddrPortFrom(pod, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	end := busy.Begin()
	defer end()
	for port := 2; port <= maxOriginalDstHosts+1; port++ {
		if _, err := c.PickFor(netip.AddrPortFrom(pod, uint16(port)), nil); err != nil {
			t.Fatal(err)
		}
	}
	hosts := c.Hosts()
	if len(hosts) > maxOriginalDstHosts {
		t.Fatalf("%d hosts cached, bound %d", len(hosts), maxOriginalDstHosts)
	}
	if again, _ := c.PickFor(netip.AddrPortFrom(pod, 1), nil); again != busy {
		t.Error("a host with a request in flight was released")
	}
}

// TestOriginalDstConnections dials through a real HBONE server: the host
// reaches its target with the destination's identity, and an update
// removing the destination closes the host's idle connections.
func TestOriginalDstConnections(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := mtls.NewBundle("cluster.local", authority.Roots())
	if err != nil {
		t.Fatal(err)
	}
	source := func(id identity.Identity) *workloadcert.Source {
		src := workloadcert.NewSource(id, authority, workloadcert.Options{TTL: time.Hour, Logger: log})
		if err := src.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
		return src
	}
	// The destination node's ztunnel, proving podID.
	var targets atomic.Value
	zt := hbone.NewServer(mtls.ServerConfig(source(podID), bundle), hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) error {
		targets.Store(req.Target)
		up, err := net.Dial("tcp", req.Target.String())
		if err != nil {
			return hbone.Errorf(503, "%v", err)
		}
		defer up.Close()
		c, err := req.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		_, _, _ = hbone.Proxy(c, up)
		return nil
	}), hbone.ServerOptions{Logger: log})
	ztLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = zt.Serve(ztLn) }()
	t.Cleanup(zt.Close)
	// The pod's application, counting closed connections.
	var closed atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "pod") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				closed.Add(1)
			}
		}}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(appLn) }()
	t.Cleanup(func() { _ = app.Close() })

	client := hbone.NewClient(bundle, hbone.ClientOptions{Logger: log, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if !strings.HasSuffix(addr, ":15008") {
			return nil, errors.New("not an HBONE address: " + addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, ztLn.Addr().String())
	}})
	t.Cleanup(client.Close)
	m := NewManager(Options{HBONE: client, Source: source(identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "waypoint"}), Log: log})
	t.Cleanup(m.Close)
	target := netip.MustParseAddrPort(appLn.Addr().String())
	updateEncap(m, map[netip.Addr]config.Destination{target.Addr(): {Identity: podID, Workload: "app", Namespace: "x"}})
	c := m.Cluster("encap")
	get := func(h *Host) error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+h.Address().String()+"/", nil)
		resp, err := h.Transport(false).RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "pod" {
			return errors.New("unexpected body " + string(body))
		}
		return nil
	}
	h, err := c.PickFor(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := get(h); err != nil {
		t.Fatal(err)
	}
	if got, _ := targets.Load().(netip.AddrPort); got != target {
		t.Errorf("CONNECT authority %s, want the target %s", got, target)
	}
	if closed.Load() != 0 {
		t.Fatal("connection closed before the update")
	}

	// A destination whose identity the node cannot prove is not reached.
	updateEncap(m, map[netip.Addr]config.Destination{target.Addr(): {Identity: otherID, Workload: "app", Namespace: "x"}})
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the replaced host's idle connection was not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wrong, err := c.PickFor(target, nil)
	if err != nil || wrong == h {
		t.Fatalf("after the identity change: %v %v", wrong, err)
	}
	var ce *ConnectError
	if err := get(wrong); !errors.As(err, &ce) {
		t.Errorf("wrong identity: %v, want a connect error", err)
	}

	// Back to the right identity, then the destination goes away.
	updateEncap(m, map[netip.Addr]config.Destination{target.Addr(): {Identity: podID}})
	h, err = c.PickFor(target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := get(h); err != nil {
		t.Fatal(err)
	}
	before := closed.Load()
	updateEncap(m, nil)
	deadline = time.Now().Add(5 * time.Second)
	for closed.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("the removed destination's idle connection was not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.PickFor(target, nil); !errors.Is(err, ErrUnknownDestination) {
		t.Errorf("removed destination: %v", err)
	}
}

// TestOriginalDstConcurrentUpdate: no host survives in the cache for a
// destination an update removed, however PickFor and Update interleave.
func TestOriginalDstConcurrentUpdate(t *testing.T) {
	m := NewManager(Options{})
	pod := netip.MustParseAddr("10.244.1.8")
	with := map[netip.Addr]config.Destination{pod: {Identity: podID}}
	updateEncap(m, with)
	c := m.Cluster("encap")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for port := uint16(1); ; port++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = c.PickFor(netip.AddrPortFrom(pod, port%64), nil)
		}
	}()
	for i := range 200 {
		if i%2 == 0 {
			updateEncap(m, nil)
		} else {
			updateEncap(m, with)
		}
	}
	updateEncap(m, nil)
	close(stop)
	<-done
	if hs := c.Hosts(); len(hs) != 0 {
		t.Errorf("%d hosts cached for a removed destination", len(hs))
	}
}
