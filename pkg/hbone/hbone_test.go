//lint:file-ignore SA1019 the test drives x/net/http2's ClientConn directly, as the client does.

package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/internal/testnet"
	"github.com/ambit-mesh/ambit/pkg/internal/testpki"
	"github.com/ambit-mesh/ambit/pkg/mtls"
)

// forwardHandler is what a ztunnel does with an inbound stream: dial the
// target, answer 503 if that fails, then proxy both ways.
func forwardHandler() Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) error {
		var d net.Dialer
		target, err := d.DialContext(ctx, "tcp", req.Target.String())
		if err != nil {
			return Errorf(http.StatusServiceUnavailable, "dial %s: %v", req.Target, err)
		}
		defer target.Close()
		stream, err := req.Accept()
		if err != nil {
			return err
		}
		_, _, err = Proxy(stream, target)
		return err
	})
}

// startServer serves HBONE on a loopback port with a certificate for
// ns/server-sa and returns its address and identity.
func startServer(t testing.TB, pki *testpki.PKI, h Handler) (*Server, netip.AddrPort, identity.Identity) {
	t.Helper()
	return startServerWith(t, pki, h, ServerOptions{})
}

func startServerWith(t testing.TB, pki *testpki.PKI, h Handler, opts ServerOptions) (*Server, netip.AddrPort, identity.Identity) {
	t.Helper()
	src := pki.Source(t, "ns", "server-sa")
	srv := NewServer(mtls.ServerConfig(src, pki.Bundle), h, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Close)
	return srv, netip.MustParseAddrPort(ln.Addr().String()), src.Identity()
}

func newClient(t testing.TB, pki *testpki.PKI, opts ClientOptions) *Client {
	t.Helper()
	c := NewClient(pki.Bundle, opts)
	t.Cleanup(c.Close)
	return c
}

func dialCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// roundTrip sends msg, half-closes, and returns everything read until EOF.
func roundTrip(t testing.TB, c Conn, msg string) string {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(got)
}

func TestRoundTrip100MBChecksum(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{})
	conn, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()

	const total = 100 << 20
	sent := sha256.New()
	writeErr := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 256<<10)
		for left := total; left > 0; left -= len(buf) {
			chunk := buf[:min(len(buf), left)]
			for i := range chunk {
				chunk[i] = byte(rng.Uint32())
			}
			sent.Write(chunk)
			if _, err := conn.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- conn.CloseWrite()
	}()
	received := sha256.New()
	n, err := io.Copy(received, conn)
	if err != nil {
		t.Fatalf("read after %d bytes: %v", n, err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != total {
		t.Fatalf("received %d bytes, sent %d", n, total)
	}
	if !bytes.Equal(sent.Sum(nil), received.Sum(nil)) {
		t.Fatal("checksum of echoed data differs from what was sent")
	}
}

func TestConcurrentStreamsShareOneConnection(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	var remotes sync.Map
	var connsSeen atomic.Int32
	fwd := forwardHandler()
	_, proxy, serverID := startServer(t, pki, HandlerFunc(func(ctx context.Context, req *Request) error {
		if _, loaded := remotes.LoadOrStore(req.RemoteAddr.String(), true); !loaded {
			connsSeen.Add(1)
		}
		return fwd.ServeHBONE(ctx, req)
	}))
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{})
	src := pki.Source(t, "ns", "client-sa")

	const streams = 200
	// All streams are opened before any is closed, so they are concurrent.
	conns := make([]Conn, streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(dialCtx(t), DialRequest{Source: src, Proxy: proxy, Target: echo, Expected: serverID})
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	if st := client.Stats(); st.Connections != 1 || st.ActiveStreams != streams {
		t.Fatalf("pool holds %d connections with %d streams, want 1 with %d", st.Connections, st.ActiveStreams, streams)
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			msg := strings.Repeat(string(rune('a'+i%26)), 1000+i)
			if got := roundTrip(t, c, msg); got != msg {
				t.Errorf("stream %d echoed %d bytes, want %d", i, len(got), len(msg))
			}
		}()
	}
	wg.Wait()
	if n := connsSeen.Load(); n != 1 {
		t.Fatalf("server saw %d TLS connections for %d streams, want 1", n, streams)
	}
}

func TestHalfCloseClientFirst(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	// A request/response protocol delimited by FIN: read all, then answer.
	target := testnet.StartTCP(t, func(c *net.TCPConn) {
		req, _ := io.ReadAll(c)
		_, _ = io.WriteString(c, "got "+string(req))
		_ = c.CloseWrite()
	})
	client := newClient(t, pki, ClientOptions{})
	conn, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: target, Expected: serverID})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if got := roundTrip(t, conn, "question"); got != "got question" {
		t.Fatalf("response %q, want %q", got, "got question")
	}
}

func TestHalfCloseServerFirst(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	// The server speaks first and closes its side; the client keeps sending.
	late := make(chan string, 1)
	target := testnet.StartTCP(t, func(c *net.TCPConn) {
		_, _ = io.WriteString(c, "banner")
		_ = c.CloseWrite()
		rest, _ := io.ReadAll(c)
		late <- string(rest)
	})
	client := newClient(t, pki, ClientOptions{})
	conn, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: target, Expected: serverID})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	banner, err := io.ReadAll(conn)
	if err != nil || string(banner) != "banner" {
		t.Fatalf("read banner: %q, %v", banner, err)
	}
	// The server's FIN arrived; our direction must still be open.
	if _, err := io.WriteString(conn, "sent after the server's FIN"); err != nil {
		t.Fatalf("write after server half-close: %v", err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	select {
	case got := <-late:
		if got != "sent after the server's FIN" {
			t.Fatalf("server received %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server never received the client's data and FIN")
	}
}

func TestServerRefusalsResetOnlyTheStream(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	allowed := identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "client-sa"}
	fwd := forwardHandler()
	_, proxy, serverID := startServer(t, pki, HandlerFunc(func(ctx context.Context, req *Request) error {
		if req.Peer != allowed && req.Header.Get("X-Test-Deny") == "" {
			return Errorf(http.StatusForbidden, "%s is not allowed", req.Peer)
		}
		if req.Header.Get("X-Test-Deny") != "" {
			return Errorf(http.StatusForbidden, "denied by test header")
		}
		return fwd.ServeHBONE(ctx, req)
	}))
	echo := testnet.StartEcho(t)
	closedPort := func() netip.AddrPort {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(ln.Addr().String())
		ln.Close()
		return ap
	}()
	client := newClient(t, pki, ClientOptions{})
	src := pki.Source(t, "ns", "client-sa")
	base := DialRequest{Source: src, Proxy: proxy, Target: echo, Expected: serverID}

	// A long-lived stream that must survive every refusal below.
	keeper, err := client.Dial(dialCtx(t), base)
	if err != nil {
		t.Fatalf("dial keeper: %v", err)
	}
	defer keeper.Close()

	cases := []struct {
		name string
		mod  func(*DialRequest)
		want int
	}{
		{"unreachable target", func(r *DialRequest) { r.Target = closedPort }, http.StatusServiceUnavailable},
		{"policy denies", func(r *DialRequest) { r.Header = http.Header{"X-Test-Deny": {"1"}} }, http.StatusForbidden},
	}
	for _, tc := range cases {
		req := base
		tc.mod(&req)
		_, err := client.Dial(dialCtx(t), req)
		var se *StatusError
		if !errors.As(err, &se) || se.Code != tc.want {
			t.Fatalf("%s: got %v, want status %d", tc.name, err, tc.want)
		}
	}
	// Another identity, same server: refused with 403 on its own connection.
	other := pki.Source(t, "ns", "intruder")
	_, err = client.Dial(dialCtx(t), DialRequest{Source: other, Proxy: proxy, Target: echo, Expected: serverID})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Reason, "intruder") {
		t.Fatalf("intruder: got %v, want 403 naming the identity", err)
	}
	// The refusals were streams on the keeper's connection: it still works,
	// and so does a new stream on that connection.
	if got := roundTrip(t, keeper, "still here"); got != "still here" {
		t.Fatalf("keeper stream echoed %q", got)
	}
	fresh, err := client.Dial(dialCtx(t), base)
	if err != nil {
		t.Fatalf("dial after refusals: %v", err)
	}
	defer fresh.Close()
	if got := roundTrip(t, fresh, "fresh"); got != "fresh" {
		t.Fatalf("fresh stream echoed %q", got)
	}
	if st := client.Stats(); st.Connections != 2 {
		t.Fatalf("pool has %d connections, want 2 (one per source identity)", st.Connections)
	}
}

// rawConnect sends one CONNECT with a chosen :authority using the x/net
// transport directly, to exercise what our own client refuses to send.
func rawConnect(t *testing.T, pki *testpki.PKI, proxy netip.AddrPort, serverID identity.Identity, authority, method string) int {
	t.Helper()
	src := pki.Source(t, "ns", "client-sa")
	tc, err := tls.Dial("tcp", proxy.String(), mtls.ClientConfig(src, pki.Bundle, serverID))
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	defer tc.Close()
	client := NewClient(pki.Bundle, ClientOptions{})
	defer client.Close()
	cc, err := client.t.NewClientConn(tc)
	if err != nil {
		t.Fatalf("client conn: %v", err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(method, "https://"+authority+"/", pr)
	req.Host = authority
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("round trip %s %s: %v", method, authority, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestBadRequestsGetStatus(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	for _, tc := range []struct {
		authority, method string
		want              int
	}{
		{"example.com:80", http.MethodConnect, http.StatusBadRequest},
		{"127.0.0.1:0", http.MethodConnect, http.StatusBadRequest},
		{"127.0.0.1:1", http.MethodGet, http.StatusMethodNotAllowed},
	} {
		if got := rawConnect(t, pki, proxy, serverID, tc.authority, tc.method); got != tc.want {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.authority, got, tc.want)
		}
	}
}

func TestWrongClientIdentityRefused(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	// Same trust domain and names, but a CA the server does not trust.
	rogue := testpki.New(t, ca.Options{})
	client := NewClient(pki.Bundle, ClientOptions{})
	defer client.Close()
	_, err := client.Dial(dialCtx(t), DialRequest{Source: rogue.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err == nil {
		t.Fatal("server accepted a client certificate from an untrusted CA")
	}
	// A trusted client is unaffected.
	good, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err != nil {
		t.Fatalf("trusted client refused: %v", err)
	}
	defer good.Close()
	if got := roundTrip(t, good, "ok"); got != "ok" {
		t.Fatalf("echo %q", got)
	}
}

func TestWrongServerIdentityRefusedByClient(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, _ := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{})
	want := identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "someone-else"}
	_, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: want})
	if err == nil || !strings.Contains(err.Error(), want.String()) {
		t.Fatalf("dial to a server with the wrong identity: %v, want an error naming %s", err, want)
	}
	if st := client.Stats(); st.Connections != 0 {
		t.Fatalf("refused connection was pooled: %+v", st)
	}
}

func TestExpiredCertificateRefused(t *testing.T) {
	// A root made three hours ago, so a CA clock two hours back can still sign.
	pki := testpki.New(t, ca.Options{Now: func() time.Time { return time.Now().Add(-3 * time.Hour) }})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	// Same root, but a clock two hours behind: its one-hour leaf has expired.
	past, err := ca.Load(pki.CA.CertPEM(), pki.CA.KeyPEM(), nil, pki.CA.RootsPEM(), ca.Options{Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
	if err != nil {
		t.Fatalf("load CA: %v", err)
	}
	id := identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "client-sa"}
	expired := testpki.SourceFrom(t, id, past, time.Hour)
	client := newClient(t, pki, ClientOptions{})
	_, err = client.Dial(dialCtx(t), DialRequest{Source: expired, Proxy: proxy, Target: echo, Expected: serverID})
	if err == nil {
		t.Fatal("server accepted an expired client certificate")
	}

	// And the client refuses a server presenting an expired certificate.
	expiredServer := testpki.SourceFrom(t, identity.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "server-sa"}, past, time.Hour)
	srv := NewServer(mtls.ServerConfig(expiredServer, pki.Bundle), forwardHandler(), ServerOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	_, err = client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: netip.MustParseAddrPort(ln.Addr().String()), Target: echo})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("client accepted an expired server certificate: %v", err)
	}
}

func TestGarbageRefusedWithoutDisturbingStreams(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{})
	keeper, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer keeper.Close()
	// Half the payload before the garbage, half after.
	if _, err := io.WriteString(keeper, "before-"); err != nil {
		t.Fatal(err)
	}

	garbage := map[string]func(net.Conn) error{
		"plain HTTP/1": func(c net.Conn) error {
			_, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			return err
		},
		"random bytes": func(c net.Conn) error {
			b := make([]byte, 4096)
			for i := range b {
				b[i] = byte(rand.Uint32())
			}
			_, err := c.Write(b)
			return err
		},
		"TLS without client certificate": func(c net.Conn) error {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
			if err := tc.Handshake(); err != nil {
				return nil // refused during the handshake: fine
			}
			// TLS 1.3 clients learn of the refusal on their first read.
			_, err := io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
			if err != nil {
				return nil
			}
			if _, err := tc.Read(make([]byte, 1)); err == nil {
				return errors.New("server accepted a TLS client without a certificate")
			}
			return nil
		},
		"TLS with h2 but HTTP/1 inside": func(c net.Conn) error {
			src := pki.Source(t, "ns", "client-sa")
			tc := tls.Client(c, mtls.ClientConfig(src, pki.Bundle, serverID))
			if err := tc.Handshake(); err != nil {
				return err
			}
			_, err := io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			if err != nil {
				return err
			}
			_ = tc.SetReadDeadline(time.Now().Add(15 * time.Second))
			if _, err := io.ReadAll(tc); err != nil && !errors.Is(err, io.EOF) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return errors.New("server kept an HTTP/1 speaker open")
				}
			}
			return nil
		},
	}
	for name, send := range garbage {
		c, err := net.Dial("tcp", proxy.String())
		if err != nil {
			t.Fatalf("%s: dial: %v", name, err)
		}
		if err := send(c); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		// The server must close the connection rather than serve it.
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err = io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: server left the connection open", name)
		}
		c.Close()
	}
	if _, err := io.WriteString(keeper, "after"); err != nil {
		t.Fatalf("keeper write after garbage: %v", err)
	}
	if err := keeper.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(keeper)
	if err != nil || string(got) != "before-after" {
		t.Fatalf("keeper stream after garbage: %q, %v", got, err)
	}
}

func TestIdleConnectionClosedAndBrokenConnectionEvicted(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	srv, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{IdleTimeout: 300 * time.Millisecond})
	src := pki.Source(t, "ns", "client-sa")
	req := DialRequest{Source: src, Proxy: proxy, Target: echo, Expected: serverID}

	c, err := client.Dial(dialCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, "x"); got != "x" {
		t.Fatalf("echo %q", got)
	}
	c.Close()
	waitFor(t, "idle connection to close", func() bool { return client.Stats().Connections == 0 })

	// Break the connection under the pool: the server drops every connection.
	c, err = client.Dial(dialCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.mu.Lock()
	for sc := range srv.conns {
		_ = sc.conn.NetConn().Close()
	}
	srv.mu.Unlock()
	waitFor(t, "broken connection to be noticed", func() bool { return client.Stats().Connections == 0 })
	c, err = client.Dial(dialCtx(t), req)
	if err != nil {
		t.Fatalf("dial after the pooled connection broke: %v", err)
	}
	defer c.Close()
	if got := roundTrip(t, c, "again"); got != "again" {
		t.Fatalf("echo %q", got)
	}
}

func TestShutdownDrainsInFlightStreams(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	srv, proxy, serverID := startServer(t, pki, forwardHandler())
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{})
	c, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	// Shutdown waits for the open stream, which still works.
	select {
	case err := <-done:
		t.Fatalf("shutdown returned with a stream in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if got := roundTrip(t, c, "drain"); got != "drain" {
		t.Fatalf("in-flight stream during shutdown echoed %q", got)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not finish after the last stream ended")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServerClosesIdleConnections(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	_, proxy, serverID := startServerWith(t, pki, forwardHandler(), ServerOptions{IdleTimeout: 300 * time.Millisecond})
	echo := testnet.StartEcho(t)
	client := newClient(t, pki, ClientOptions{IdleTimeout: time.Hour})
	c, err := client.Dial(dialCtx(t), DialRequest{Source: pki.Source(t, "ns", "client-sa"), Proxy: proxy, Target: echo, Expected: serverID})
	if err != nil {
		t.Fatal(err)
	}
	// While a stream is open the connection is not idle, however long it lasts.
	time.Sleep(600 * time.Millisecond)
	if got := roundTrip(t, c, "busy"); got != "busy" {
		t.Fatalf("stream open past the idle timeout echoed %q", got)
	}
	c.Close()
	waitFor(t, "server to close the idle connection", func() bool { return client.Stats().Connections == 0 })
}

// A peer that opens a stream, grants a huge window and then stops reading
// must not pin the server's writer forever.
func TestServerWriteTimeoutDropsStalledPeer(t *testing.T) {
	pki := testpki.New(t, ca.Options{})
	writeErr := make(chan error, 1)
	_, proxy, serverID := startServerWith(t, pki, HandlerFunc(func(_ context.Context, req *Request) error {
		s, err := req.Accept()
		if err != nil {
			return err
		}
		chunk := make([]byte, 1<<20)
		for {
			if _, err := s.Write(chunk); err != nil {
				writeErr <- err
				return nil
			}
		}
	}), ServerOptions{WriteTimeout: 300 * time.Millisecond})

	src := pki.Source(t, "ns", "client-sa")
	tc, err := tls.Dial("tcp", proxy.String(), mtls.ClientConfig(src, pki.Bundle, serverID))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(tc, tc)
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.0.0.1:80"}} {
		_ = enc.WriteField(f)
	}
	steps := []error{
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}),
		fr.WriteWindowUpdate(0, 1<<31-1-65535),
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.Bytes(), EndHeaders: true}),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Never read again.
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("write to a stalled peer ended without an error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server kept writing to a peer that stopped reading")
	}
}
