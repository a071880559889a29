//go:build linux

package capture_test

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// probeEnv is newEnv with the peer namespace playing the node: the pod's
// default routes point at it, it forwards, and a third namespace (another
// node's pod, 10.251.<n>.2) reaches the pod through it.
type probeEnv struct {
	*env
	remote   *podns.NS
	remoteIP netip.Addr
}

func newProbeEnv(t *testing.T) *probeEnv {
	t.Helper()
	e := newEnv(t, false)
	e.cfg.ExcludeAddrs = capture.ProbeSources()
	if err := capture.Apply(e.NS, e.cfg); err != nil {
		t.Fatal(err)
	}
	pe := &probeEnv{env: e, remote: netnstest.NewT(t), remoteIP: netip.MustParseAddr("10.251.1.2")}
	nodeIP := netip.MustParseAddr("10.251.1.1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	handle := func(ns *podns.NS) *netlink.Handle {
		h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
		must(err)
		t.Cleanup(h.Close)
		return h
	}
	hp, hn, hr := handle(e.NS), handle(e.PeerNS), handle(pe.remote)
	link := func(h *netlink.Handle, name string) netlink.Link {
		l, err := h.LinkByName(name)
		must(err)
		return l
	}
	// The pod: default routes via the node.
	must(hp.RouteAdd(&netlink.Route{LinkIndex: link(hp, e.Link).Attrs().Index, Gw: e.PeerIP4.AsSlice()}))
	must(hp.RouteAdd(&netlink.Route{LinkIndex: link(hp, e.Link).Attrs().Index, Gw: e.PeerIP6.AsSlice()}))
	// node <-> remote, with forwarding on the node.
	must(hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vremote"}, PeerName: "vnode", PeerNamespace: netlink.NsFd(pe.remote.Fd())}))
	addr := func(h *netlink.Handle, name string, a netip.Addr) {
		l := link(h, name)
		must(h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
		must(h.LinkSetUp(l))
	}
	addr(hn, "vremote", nodeIP)
	addr(hr, "vnode", pe.remoteIP)
	must(hr.RouteAdd(&netlink.Route{LinkIndex: link(hr, "vnode").Attrs().Index, Gw: nodeIP.AsSlice()}))
	must(e.PeerNS.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0) }))
	return pe
}

// A connection the node opens to a captured pod reaches the application
// directly, from the probe source address; once the pod is no longer a
// target it is captured again.
func TestProbeSNATFromNodeBypassesCapture(t *testing.T) {
	e := newProbeEnv(t)
	if err := capture.ApplyProbeSNAT(e.PeerNS, []netip.Addr{e.IP4, e.IP6}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst  netip.Addr
		want netip.Addr
	}{{e.IP4, capture.ProbeSourceV4}, {e.IP6, capture.ProbeSourceV6}} {
		dial(t, e.PeerNS, ap(c.dst, 8080))
		got := e.acc.Expect(t, "app")
		if ra := remoteAddr(got); ra != c.want {
			t.Errorf("application sees %s for a node connection to %s, want %s", ra, c.dst, c.want)
		}
		netnstest.Echo(got)
	}
	// A round trip works (the reply is un-NATed on the node).
	conn := dial(t, e.PeerNS, ap(e.IP4, 8080))
	netnstest.Echo(e.acc.Expect(t, "app"))
	if s, err := netnstest.RoundTrip(conn, "probe"); err != nil || s != "probe" {
		t.Fatalf("round trip from the node: %q, %v", s, err)
	}

	if got, err := capture.ProbeTargets(e.PeerNS); err != nil || !slices.Equal(got, []netip.Addr{e.IP4, e.IP6}) {
		t.Errorf("probe targets %v (%v), want [%s %s]", got, err, e.IP4, e.IP6)
	}

	// Idempotent updates: deleting twice and adding twice are fine.
	for range 2 {
		if err := capture.DeleteProbeTargets(e.PeerNS, []netip.Addr{e.IP4}); err != nil {
			t.Fatal(err)
		}
	}
	dial(t, e.PeerNS, ap(e.IP4, 8080))
	if got := e.acc.Expect(t, "inbound"); remoteAddr(got) != e.PeerIP4 {
		t.Errorf("after the delete the inbound listener sees %s, want the node's %s", remoteAddr(got), e.PeerIP4)
	}
	for range 2 {
		if err := capture.AddProbeTargets(e.PeerNS, []netip.Addr{e.IP4}); err != nil {
			t.Fatal(err)
		}
	}
	dial(t, e.PeerNS, ap(e.IP4, 8080))
	e.acc.Expect(t, "app")

	// Removal restores capture of node connections; removing again is fine.
	for range 2 {
		if err := capture.RemoveProbeSNAT(e.PeerNS); err != nil {
			t.Fatal(err)
		}
	}
	dial(t, e.PeerNS, ap(e.IP6, 8080))
	e.acc.Expect(t, "inbound")
}

// Traffic the node forwards (another node's pod) keeps its source and is
// captured: only the node's own sockets are rewritten.
func TestProbeSNATLeavesForwardedTrafficCaptured(t *testing.T) {
	e := newProbeEnv(t)
	if err := capture.ApplyProbeSNAT(e.PeerNS, []netip.Addr{e.IP4, e.IP6}); err != nil {
		t.Fatal(err)
	}
	dial(t, e.remote, ap(e.IP4, 8080))
	got := e.acc.Expect(t, "inbound")
	if ra := remoteAddr(got); ra != e.remoteIP {
		t.Errorf("inbound listener sees %s for a forwarded connection, want the remote pod's %s", ra, e.remoteIP)
	}
}

// Applying again replaces the targets: addresses not listed are dropped.
func TestProbeSNATApplyReplacesTargets(t *testing.T) {
	e := newProbeEnv(t)
	if err := capture.ApplyProbeSNAT(e.PeerNS, []netip.Addr{e.IP4}); err != nil {
		t.Fatal(err)
	}
	if err := capture.ApplyProbeSNAT(e.PeerNS, []netip.Addr{e.IP6, {}, netip.MustParseAddr("::ffff:10.9.9.9")}); err != nil {
		t.Fatal(err)
	}
	dial(t, e.PeerNS, ap(e.IP4, 8080))
	e.acc.Expect(t, "inbound")
	dial(t, e.PeerNS, ap(e.IP6, 8080))
	e.acc.Expect(t, "app")
	if err := capture.ApplyProbeSNAT(nil, nil); err == nil {
		t.Error("ApplyProbeSNAT(nil) succeeded")
	}
}
