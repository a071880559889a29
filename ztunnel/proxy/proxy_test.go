package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

func testLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// cert is a fixed workload certificate.
type cert struct {
	mtls.StaticCert
	id identity.Identity
}

func (c cert) Identity() identity.Identity { return c.id }

type mesh struct {
	authority *ca.CA
	bundle    *mtls.Bundle
}

func newMesh(t *testing.T) *mesh {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{authority: authority, bundle: bundle}
}

func (m *mesh) cert(t *testing.T, ns, sa string) cert {
	id, err := identity.New(m.authority.TrustDomain(), ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	key, err := workloadcert.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := workloadcert.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := m.authority.Sign(csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: issued.Leaf}
	for _, c := range issued.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return cert{StaticCert: mtls.StaticCert{Cert: tc}, id: id}
}

// enroll captures ns's traffic and opens the listeners, as ztunnel does.
func enroll(t *testing.T, ns *podns.NS, name string, ip netip.Addr, c cert) *Pod {
	t.Helper()
	if err := capture.Apply(ns, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = capture.Remove(ns, capture.DefaultConfig()) })
	ls, err := inpod.ListenAll(context.Background(), ns, inpod.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &Pod{UID: name, Namespace: "default", Name: name, IPs: []netip.Addr{ip}, Cert: c,
		Dialer: &inpod.Dialer{NS: ns, Mark: capture.Mark, Timeout: 5 * time.Second}, Listeners: ls}
}

// routes is a static Router.
type routes map[netip.AddrPort]Route

func (r routes) Route(_ *Pod, dst netip.AddrPort) (Route, error) {
	if rt, ok := r[dst]; ok {
		return rt, nil
	}
	return Route{Target: dst}, nil // passthrough
}

// policy allows what allow says and records what it saw.
type policy struct {
	mu    sync.Mutex
	seen  []Inbound
	allow func(Inbound) bool
}

func (p *policy) Authorize(in Inbound) (bool, string) {
	p.mu.Lock()
	p.seen = append(p.seen, in)
	p.mu.Unlock()
	if p.allow(in) {
		return true, "allowed"
	}
	return false, "test policy"
}

func (p *policy) last() Inbound {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) == 0 {
		return Inbound{}
	}
	return p.seen[len(p.seen)-1]
}

// app listens inside ns and reports each client's address, then echoes.
func app(t *testing.T, ns *podns.NS, addr string) <-chan netip.AddrPort {
	t.Helper()
	ln, err := inpod.Listen(context.Background(), ns, addr, inpod.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	peers := make(chan netip.AddrPort, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peers <- addrPort(c.RemoteAddr())
			wg.Go(func() { netnstest.Echo(c) })
		}
	})
	return peers
}

type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) add(ev Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }

func (e *events) find(dir string) (Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := len(e.all) - 1; i >= 0; i-- {
		if e.all[i].Direction == dir {
			return e.all[i], true
		}
	}
	return Event{}, false
}

func (e *events) has(match func(Event) bool) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.all {
		if match(ev) {
			return true
		}
	}
	return false
}

func dialFrom(t *testing.T, ns *podns.NS, dst netip.AddrPort) (net.Conn, error) {
	t.Helper()
	d := &inpod.Dialer{NS: ns, Timeout: 5 * time.Second} // no mark: captured like the app's own traffic
	return d.DialContext(context.Background(), "tcp", dst.String())
}

func expectClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("hello"))
	buf := make([]byte, 5)
	n, err := io.ReadFull(c, buf)
	if err == nil {
		t.Errorf("%s: connection carried data (%q)", what, buf[:n])
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("%s: connection neither carried data nor closed", what)
	}
}

// Two enrolled pods: A's connection to B's application crosses the mesh as
// HBONE with both identities, B's policy sees A's identity, and B's
// application sees A's own IP.
func TestPodToPodOverHBONE(t *testing.T) {
	netnstest.RequireRoot(t)
	m := newMesh(t)
	pair := netnstest.NewPair(t, 61)
	certA, certB := m.cert(t, "default", "client"), m.cert(t, "default", "server")
	podA := enroll(t, pair.NS, "a", pair.IP4, certA)
	podB := enroll(t, pair.PeerNS, "b", pair.PeerIP4, certB)
	appB := app(t, pair.PeerNS, "0.0.0.0:8080")

	dstB := netip.AddrPortFrom(pair.PeerIP4, 8080)
	router := routes{dstB: {HBONE: true, Proxy: netip.AddrPortFrom(pair.PeerIP4, 15008), Target: dstB, Identity: certB.id}}
	pol := &policy{allow: func(in Inbound) bool { return in.Peer == certA.id }}
	var evs events
	p, err := New(Options{Bundle: m.bundle, Router: router, Authz: pol, Log: testLog(), Observe: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range []*Pod{podA, podB} {
		s, err := p.Serve(pod)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
	}

	c, err := dialFrom(t, pair.NS, dstB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := netnstest.RoundTrip(c, "through the mesh"); err != nil || got != "through the mesh" {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	if src := <-appB; src.Addr() != pair.IP4 {
		t.Errorf("B's application saw source %s, want A's IP %s", src, pair.IP4)
	}
	if in := pol.last(); in.Peer != certA.id || !in.MTLS || in.Dest != dstB || in.Source.Addr() != pair.IP4 {
		t.Errorf("B's policy saw %+v", in)
	}
	c.Close()

	// B's policy now refuses A: the connection is closed without data and
	// the application never sees it.
	pol.mu.Lock()
	pol.allow = func(Inbound) bool { return false }
	pol.mu.Unlock()
	c2, err := dialFrom(t, pair.NS, dstB)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	expectClosed(t, c2, "denied connection")
	select {
	case src := <-appB:
		t.Errorf("denied connection reached the application from %s", src)
	case <-time.After(200 * time.Millisecond):
	}
	deadline := time.Now().Add(5 * time.Second)
	for !evs.has(func(ev Event) bool { return ev.Direction == "outbound" && ev.Denied && ev.MTLS }) {
		if time.Now().After(deadline) {
			t.Fatalf("no outbound event says the connection was denied: %+v", evs.all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An outbound connection to a destination the mesh does not capture goes
// out as plain TCP (passthrough); a plaintext connection into an enrolled
// pod reaches it through 15006 only when policy allows plaintext.
func TestPassthroughAndPlaintextInbound(t *testing.T) {
	netnstest.RequireRoot(t)
	m := newMesh(t)
	pair := netnstest.NewPair(t, 62)
	certA := m.cert(t, "default", "client")
	podA := enroll(t, pair.NS, "a", pair.IP4, certA)
	appA := app(t, pair.NS, "0.0.0.0:8080")
	outside := app(t, pair.PeerNS, "0.0.0.0:9090") // not enrolled

	permissive := true
	var mu sync.Mutex
	pol := &policy{allow: func(in Inbound) bool { mu.Lock(); defer mu.Unlock(); return in.MTLS || permissive }}
	var evs events
	p, err := New(Options{Bundle: m.bundle, Router: routes{}, Authz: pol, Log: testLog(), Observe: evs.add})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Serve(podA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)

	// Passthrough: A to the outside peer.
	c, err := dialFrom(t, pair.NS, netip.AddrPortFrom(pair.PeerIP4, 9090))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := netnstest.RoundTrip(c, "plain"); err != nil || got != "plain" {
		t.Fatalf("passthrough round trip: %q, %v", got, err)
	}
	c.Close()
	if src := <-outside; src.Addr() != pair.IP4 {
		t.Errorf("outside peer saw %s, want A's IP", src)
	}
	time.Sleep(50 * time.Millisecond)
	if ev, ok := evs.find("outbound"); !ok || !ev.Passthrough || ev.MTLS {
		t.Errorf("passthrough event: %+v", ev)
	}

	// Plaintext into A (PERMISSIVE): delivered with the peer's IP.
	c, err = dialFrom(t, pair.PeerNS, netip.AddrPortFrom(pair.IP4, 8080))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := netnstest.RoundTrip(c, "plaintext in"); err != nil || got != "plaintext in" {
		t.Fatalf("plaintext round trip: %q, %v", got, err)
	}
	c.Close()
	if src := <-appA; src.Addr() != pair.PeerIP4 {
		t.Errorf("A's application saw %s, want the peer's IP %s", src, pair.PeerIP4)
	}
	if in := pol.last(); in.MTLS || !in.Peer.IsZero() {
		t.Errorf("plaintext connection presented as %+v", in)
	}

	// STRICT: refused, never reaches the application.
	mu.Lock()
	permissive = false
	mu.Unlock()
	c, err = dialFrom(t, pair.PeerNS, netip.AddrPortFrom(pair.IP4, 8080))
	if err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c, "plaintext under STRICT")
	c.Close()
	select {
	case src := <-appA:
		t.Errorf("refused plaintext reached the application from %s", src)
	case <-time.After(200 * time.Millisecond):
	}
}

// Stop closes the pod's listeners and live connections.
func TestStopClosesEverything(t *testing.T) {
	netnstest.RequireRoot(t)
	m := newMesh(t)
	pair := netnstest.NewPair(t, 63)
	podA := enroll(t, pair.NS, "a", pair.IP4, m.cert(t, "default", "client"))
	app(t, pair.PeerNS, "0.0.0.0:9090")
	p, err := New(Options{Bundle: m.bundle, Router: routes{}, Authz: &policy{allow: func(Inbound) bool { return true }}, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Serve(podA)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialFrom(t, pair.NS, netip.AddrPortFrom(pair.PeerIP4, 9090))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := netnstest.RoundTrip(c, "x"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Stop")
	}
}

// Drain refuses new connections at once, lets running ones finish, and
// returns when they have.
func TestDrainLetsConnectionsFinish(t *testing.T) {
	netnstest.RequireRoot(t)
	m := newMesh(t)
	pair := netnstest.NewPair(t, 64)
	podA := enroll(t, pair.NS, "a", pair.IP4, m.cert(t, "default", "client"))
	app(t, pair.PeerNS, "0.0.0.0:9090")
	p, err := New(Options{Bundle: m.bundle, Router: routes{}, Authz: &policy{allow: func(Inbound) bool { return true }}, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Serve(podA)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(pair.PeerIP4, 9090)
	c, err := dialFrom(t, pair.NS, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := netnstest.RoundTrip(c, "before"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	drained := make(chan struct{})
	go func() { s.Drain(ctx); close(drained) }()

	// New connections are refused (captured, and nothing listens).
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc, err := dialFrom(t, pair.NS, dst)
		if err != nil {
			break
		}
		_ = nc.SetReadDeadline(time.Now().Add(time.Second))
		_, werr := nc.Write([]byte("x"))
		_, rerr := nc.Read(make([]byte, 1))
		nc.Close()
		if werr != nil || rerr != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new connections still carried during drain")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The running one still works, and Drain waits for it.
	if got, err := netnstest.RoundTrip(c, "during"); err != nil || got != "during" {
		t.Fatalf("running connection during drain: %q %v", got, err)
	}
	select {
	case <-drained:
		t.Fatal("Drain returned with a connection still running")
	case <-time.After(200 * time.Millisecond):
	}
	c.Close()
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return after the last connection ended")
	}
	if ctx.Err() != nil {
		t.Error("Drain waited for its deadline instead of the connection")
	}
}
