//go:build linux

package capture_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// env is a pod namespace (with the ztunnel's three listeners and an
// application on :8080 and 127.0.0.1:8081) and a peer namespace (a server on
// :9090 and TCP :53), joined by a veth. Every accepted connection is reported
// on acc labelled with the listener that took it.
type env struct {
	*netnstest.Pair
	acc *netnstest.Acceptor
	cfg capture.Config
}

func newEnv(t *testing.T, apply bool) *env {
	t.Helper()
	p := netnstest.NewPair(t, 1)
	netnstest.DumpRuleset(t, p.NS)
	e := &env{Pair: p, acc: netnstest.NewAcceptor(t), cfg: capture.DefaultConfig()}
	ctx := context.Background()

	lns, err := inpod.ListenAll(ctx, p.NS, inpod.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	e.acc.Watch("outbound", lns.Outbound)
	e.acc.Watch("inbound", lns.Inbound)
	e.acc.Watch("hbone", lns.HBONE)
	e.listen(t, p.NS, "app", ":8080")
	e.listen(t, p.NS, "app-loopback", "127.0.0.1:8081")
	e.listen(t, p.PeerNS, "peer", ":9090")
	e.listen(t, p.PeerNS, "peer-dns-tcp", ":53")
	if apply {
		if err := capture.Apply(p.NS, e.cfg); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) listen(t *testing.T, ns *podns.NS, name, addr string) {
	t.Helper()
	ln, err := inpod.Listen(context.Background(), ns, addr, inpod.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.acc.Watch(name, ln)
}

// dial connects from inside ns with no mark (as an application would).
func dial(t *testing.T, ns *podns.NS, addr netip.AddrPort) net.Conn {
	t.Helper()
	return dialMarked(t, ns, addr, 0)
}

func dialMarked(t *testing.T, ns *podns.NS, addr netip.AddrPort, mark uint32) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&inpod.Dialer{NS: ns, Mark: mark}).DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func remoteAddr(c net.Conn) netip.Addr {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
}

func TestOutboundRedirectedWithOriginalDst(t *testing.T) {
	e := newEnv(t, true)
	for _, dst := range []netip.AddrPort{ap(e.PeerIP4, 9090), ap(e.PeerIP6, 9090)} {
		c := dial(t, e.NS, dst)
		got := e.acc.Expect(t, "outbound")
		od, err := inpod.OriginalDst(got)
		if err != nil {
			t.Fatal(err)
		}
		if od != dst {
			t.Errorf("original destination %s, want %s", od, dst)
		}
		if ra := remoteAddr(got); ra != e.IP4 && ra != e.IP6 {
			t.Errorf("outbound listener sees source %s, want the pod's address", ra)
		}
		netnstest.Echo(got)
		if s, err := netnstest.RoundTrip(c, "hello"); err != nil || s != "hello" {
			t.Fatalf("round trip through the outbound listener: %q, %v", s, err)
		}
	}
}

func TestInboundDivertedWithOriginalDst(t *testing.T) {
	e := newEnv(t, true)
	for _, dst := range []netip.AddrPort{ap(e.IP4, 8080), ap(e.IP6, 8080)} {
		dial(t, e.PeerNS, dst)
		got := e.acc.Expect(t, "inbound")
		od, err := inpod.TProxyDst(got)
		if err != nil {
			t.Fatal(err)
		}
		if od != dst {
			t.Errorf("original destination %s, want %s", od, dst)
		}
		if ra := remoteAddr(got); ra != e.PeerIP4 && ra != e.PeerIP6 {
			t.Errorf("inbound listener sees source %s, want the peer's address", ra)
		}
	}
}

func TestHBONEPortNotDiverted(t *testing.T) {
	e := newEnv(t, true)
	dial(t, e.PeerNS, ap(e.IP4, capture.HBONEPort))
	got := e.acc.Expect(t, "hbone")
	if la := got.LocalAddr().(*net.TCPAddr).Port; la != int(capture.HBONEPort) {
		t.Errorf("local port %d", la)
	}
}

func TestLoopbackNotRedirected(t *testing.T) {
	e := newEnv(t, true)
	dial(t, e.NS, netip.MustParseAddrPort("127.0.0.1:8081"))
	e.acc.Expect(t, "app-loopback")
	// The pod's own address is routed over lo as well.
	dial(t, e.NS, ap(e.IP4, 8080))
	e.acc.Expect(t, "app")
}

func TestMarkedTrafficNotRedirected(t *testing.T) {
	e := newEnv(t, true)
	for _, dst := range []netip.AddrPort{ap(e.PeerIP4, 9090), ap(e.PeerIP6, 9090)} {
		c := dialMarked(t, e.NS, dst, capture.Mark)
		got := e.acc.Expect(t, "peer")
		if ra := remoteAddr(got); ra != e.IP4 && ra != e.IP6 {
			t.Errorf("peer sees source %s, want the pod's address", ra)
		}
		netnstest.Echo(got)
		if s, err := netnstest.RoundTrip(c, "marked"); err != nil || s != "marked" {
			t.Fatalf("round trip: %q, %v", s, err)
		}
	}
	// Only the bits under the mask count: other bits may be set by the CNI.
	dialMarked(t, e.NS, ap(e.PeerIP4, 9090), capture.Mark|0x10000)
	e.acc.Expect(t, "peer")
}

func TestDNSNotRedirected(t *testing.T) {
	e := newEnv(t, true)
	// UDP 53: a query from the pod reaches the peer's server and the answer
	// comes back.
	var srv net.PacketConn
	err := e.PeerNS.Do(func() error {
		var err error
		srv, err = net.ListenPacket("udp", ":53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(append([]byte("answer:"), buf[:n]...), from)
		}
	}()
	var cl net.Conn
	err = e.NS.Do(func() error {
		var err error
		cl, err = net.Dial("udp", ap(e.PeerIP4, 53).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	if err := cl.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := cl.Read(buf)
	if err != nil || string(buf[:n]) != "answer:query" {
		t.Fatalf("udp dns round trip: %q, %v", buf[:n], err)
	}
	// TCP 53 is left alone too.
	dial(t, e.NS, ap(e.PeerIP4, 53))
	e.acc.Expect(t, "peer-dns-tcp")
}

// TestTransparentDeliveryPreservesSource plays the ztunnel's inbound path: a
// peer connects to the pod's application port, the connection lands on the
// inbound listener, and the ztunnel connects to the application from the
// peer's own address; the application sees the peer's address and bytes flow
// both ways (the replies find their way back to the ztunnel's socket).
func TestTransparentDeliveryPreservesSource(t *testing.T) {
	e := newEnv(t, true)
	for _, dst := range []netip.AddrPort{ap(e.IP4, 8080), ap(e.IP6, 8080)} {
		client := dial(t, e.PeerNS, dst)
		in := e.acc.Expect(t, "inbound")
		odst, err := inpod.TProxyDst(in)
		if err != nil {
			t.Fatal(err)
		}
		src := remoteAddr(in)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		up, err := (&inpod.Dialer{NS: e.NS, Mark: capture.Mark}).DialTransparent(ctx, src, odst)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = up.Close() })
		if la := up.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); la != src {
			t.Errorf("transparent socket bound to %s, want %s", la, src)
		}
		app := e.acc.Expect(t, "app")
		if ra := remoteAddr(app); ra != src {
			t.Errorf("application sees source %s, want the original client %s", ra, src)
		}
		netnstest.Echo(app)
		proxy(in, up)
		if s, err := netnstest.RoundTrip(client, "through the ztunnel"); err != nil || s != "through the ztunnel" {
			t.Fatalf("client round trip via inbound listener and transparent dial: %q, %v", s, err)
		}
	}
}

// proxy copies a to b and b to a until either side fails.
func proxy(a, b net.Conn) {
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 4096)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go cp(a, b)
	go cp(b, a)
}

func TestExistingConnectionsKeepWorking(t *testing.T) {
	e := newEnv(t, false)
	inboundBefore := dial(t, e.PeerNS, ap(e.IP4, 8080))
	netnstest.Echo(e.acc.Expect(t, "app"))
	outboundBefore := dial(t, e.NS, ap(e.PeerIP4, 9090))
	netnstest.Echo(e.acc.Expect(t, "peer"))

	if err := capture.Apply(e.NS, e.cfg); err != nil {
		t.Fatal(err)
	}
	if s, err := netnstest.RoundTrip(inboundBefore, "still here"); err != nil || s != "still here" {
		t.Fatalf("inbound connection from before enrollment: %q, %v", s, err)
	}
	if s, err := netnstest.RoundTrip(outboundBefore, "still here"); err != nil || s != "still here" {
		t.Fatalf("outbound connection from before enrollment: %q, %v", s, err)
	}
	// New connections are captured.
	dial(t, e.PeerNS, ap(e.IP4, 8080))
	e.acc.Expect(t, "inbound")
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "outbound")
}

func TestRemoveRestoresDirectConnectivity(t *testing.T) {
	e := newEnv(t, true)
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "outbound")

	if err := capture.Remove(e.NS, e.cfg); err != nil {
		t.Fatal(err)
	}
	st, err := capture.Check(e.NS, e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Present() || st.Current {
		t.Fatalf("after Remove: %+v", st)
	}
	if !hasProblem(st, "rule fwmark") || !hasProblem(st, "route local default") {
		t.Errorf("after Remove, routing entries should be reported missing: %q", st.Problems)
	}
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "peer")
	dial(t, e.NS, ap(e.PeerIP6, 9090))
	e.acc.Expect(t, "peer")
	dial(t, e.PeerNS, ap(e.IP4, 8080))
	e.acc.Expect(t, "app")

	// Removing again, or from a namespace never enrolled, is not an error.
	if err := capture.Remove(e.NS, e.cfg); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if err := capture.Remove(e.PeerNS, e.cfg); err != nil {
		t.Fatalf("Remove where nothing was applied: %v", err)
	}
}

func hasProblem(st capture.Status, sub string) bool {
	for _, p := range st.Problems {
		if strings.Contains(p, sub) {
			return true
		}
	}
	return false
}

func TestApplyIdempotentAndCheck(t *testing.T) {
	e := newEnv(t, false)
	st, err := capture.Check(e.NS, e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Present() || st.Current {
		t.Fatalf("before Apply: %+v", st)
	}
	for i := range 3 {
		if err := capture.Apply(e.NS, e.cfg); err != nil {
			t.Fatalf("Apply #%d: %v", i+1, err)
		}
		st, err := capture.Check(e.NS, e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Present() || !st.Current || len(st.Problems) != 0 {
			t.Fatalf("after Apply #%d: %+v", i+1, st)
		}
	}
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "outbound")

	// Rules written for another configuration are present but not current;
	// applying the new one replaces them.
	other := e.cfg
	other.ExcludeAddrs = []netip.Addr{netip.MustParseAddr("169.254.7.127"), netip.MustParseAddr("fd00::7:127")}
	st, err = capture.Check(e.NS, other)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Present() || st.Current {
		t.Fatalf("check against another config: %+v", st)
	}
	if err := capture.Apply(e.NS, other); err != nil {
		t.Fatal(err)
	}
	if st, err = capture.Check(e.NS, other); err != nil || !st.Current {
		t.Fatalf("after applying the other config: %+v, %v", st, err)
	}
	if st, err = capture.Check(e.NS, e.cfg); err != nil || st.Current {
		t.Fatalf("the first config should now be stale: %+v, %v", st, err)
	}
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "outbound")
}

func TestExcludedAddrsBypassCapture(t *testing.T) {
	e := newEnv(t, false)
	cfg := e.cfg
	cfg.ExcludeAddrs = []netip.Addr{e.PeerIP4}
	if err := capture.Apply(e.NS, cfg); err != nil {
		t.Fatal(err)
	}
	dial(t, e.PeerNS, ap(e.IP4, 8080)) // from the excluded address: straight to the app
	e.acc.Expect(t, "app")
	dial(t, e.NS, ap(e.PeerIP4, 9090)) // to it: straight to the peer
	e.acc.Expect(t, "peer")
	dial(t, e.NS, ap(e.PeerIP6, 9090)) // other addresses are still captured
	e.acc.Expect(t, "outbound")
}

func TestCheckDetectsTampering(t *testing.T) {
	e := newEnv(t, true)
	// Someone deletes one nftables rule and the IPv4 policy-routing rule.
	nft, err := nftables.New(nftables.WithNetNSFd(e.NS.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Name: capture.TableName, Family: nftables.TableFamilyINet}
	rules, err := nft.GetRules(tbl, &nftables.Chain{Name: "output-nat", Table: tbl})
	if err != nil || len(rules) == 0 {
		t.Fatalf("list rules: %d, %v", len(rules), err)
	}
	if err := nft.DelRule(rules[len(rules)-1]); err != nil {
		t.Fatal(err)
	}
	if err := nft.Flush(); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(e.NS.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ipRules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	for _, r := range ipRules {
		if r.Table == capture.RouteTable {
			if err := h.RuleDel(&r); err != nil {
				t.Fatal(err)
			}
			deleted = true
		}
	}
	if !deleted {
		t.Fatal("no ip rule for table 133 found after Apply")
	}
	// The outbound rule is gone: traffic flows directly.
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "peer")

	st, err := capture.Check(e.NS, e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Present() || st.Current || !hasProblem(st, "chain output-nat rules differ") || !hasProblem(st, "ipv4 rule fwmark") {
		t.Fatalf("tampered rules: %+v", st)
	}
	// Reconciliation: apply again.
	if err := capture.Apply(e.NS, e.cfg); err != nil {
		t.Fatal(err)
	}
	if st, err := capture.Check(e.NS, e.cfg); err != nil || !st.Current {
		t.Fatalf("after re-apply: %+v, %v", st, err)
	}
	dial(t, e.NS, ap(e.PeerIP4, 9090))
	e.acc.Expect(t, "outbound")
}

func TestNamedNamespacePath(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewNamedT(t, "ambit-capture-test")
	if err := capture.Apply(ns, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	st, err := capture.Check(ns, capture.DefaultConfig())
	if err != nil || !st.Current {
		t.Fatalf("%+v, %v", st, err)
	}
	if err := capture.Remove(ns, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidInput(t *testing.T) {
	bad := capture.DefaultConfig()
	bad.Mark = bad.ConnMark
	if err := capture.Apply(nil, capture.DefaultConfig()); err == nil {
		t.Error("Apply(nil) succeeded")
	}
	if _, err := capture.Check(nil, capture.DefaultConfig()); err == nil {
		t.Error("Check(nil) succeeded")
	}
	if err := capture.Remove(nil, capture.DefaultConfig()); err == nil {
		t.Error("Remove(nil) succeeded")
	}
	for name, mut := range map[string]func(*capture.Config){
		"same marks":      func(c *capture.Config) { c.Mark = c.ConnMark },
		"mark outside":    func(c *capture.Config) { c.Mark = 0x1000 },
		"zero port":       func(c *capture.Config) { c.InboundPort = 0 },
		"same ports":      func(c *capture.Config) { c.InboundPort = c.OutboundPort },
		"main table":      func(c *capture.Config) { c.RouteTable = 254 },
		"late priority":   func(c *capture.Config) { c.RulePriority = 32766 },
		"invalid exclude": func(c *capture.Config) { c.ExcludeAddrs = []netip.Addr{{}} },
	} {
		c := capture.DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
	if err := capture.DefaultConfig().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
}
