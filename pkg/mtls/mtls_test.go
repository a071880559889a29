package mtls_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

var (
	serverID = identity.Identity{TrustDomain: "cluster.local", Namespace: "prod", ServiceAccount: "server"}
	clientID = identity.Identity{TrustDomain: "cluster.local", Namespace: "dev", ServiceAccount: "client"}
)

func newCA(t testing.TB, opts ca.Options) *ca.CA {
	t.Helper()
	c, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issue gets a real certificate for id from authority.
func issue(t testing.TB, authority *ca.CA, id identity.Identity, ttl time.Duration) *tls.Certificate {
	t.Helper()
	key, err := workloadcert.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := workloadcert.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	issued, err := authority.Sign(csr, ttl)
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: issued.Leaf}
	for _, c := range issued.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

func static(c *tls.Certificate) mtls.StaticCert { return mtls.StaticCert{Cert: c} }

func newBundle(t testing.TB, authority *ca.CA) *mtls.Bundle {
	t.Helper()
	b, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type result struct {
	state tls.ConnectionState
	err   error
}

// server accepts connections on loopback with cfg until the test ends. For
// each, it completes the handshake, reports the result and, on success,
// writes "ok" so the client learns whether the server accepted it.
func server(t *testing.T, cfg *tls.Config) (addr string, results <-chan result) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan result, 16)
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := conn.(*tls.Conn)
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			err = tc.Handshake()
			if err == nil {
				_, err = tc.Write([]byte("ok"))
			}
			ch <- result{tc.ConnectionState(), err}
			_ = tc.Close()
		}
	}()
	return ln.Addr().String(), ch
}

// dial connects with cfg and reads the server's "ok". It returns the client
// state, the server's result, and the client error (handshake or the
// server's alert).
func dial(t *testing.T, addr string, results <-chan result, cfg *tls.Config) (tls.ConnectionState, result, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	var state tls.ConnectionState
	if err == nil {
		state = conn.ConnectionState()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2)
		if _, err = io.ReadFull(conn, buf); err == nil && string(buf) != "ok" {
			err = errors.New("unexpected server reply")
		}
		_ = conn.Close()
	}
	select {
	case r := <-results:
		return state, r, err
	case <-time.After(5 * time.Second):
		t.Fatal("server reported nothing")
		return state, result{}, err
	}
}

func TestHandshakeSameCA(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))

	for _, expected := range []identity.Identity{serverID, {}} {
		cs, sr, err := dial(t, addr, results, mtls.ClientConfig(static(issue(t, authority, clientID, 0)), bundle, expected))
		if err != nil || sr.err != nil {
			t.Fatalf("expected %q: client err %v, server err %v", expected, err, sr.err)
		}
		if cs.Version != tls.VersionTLS13 || sr.state.Version != tls.VersionTLS13 {
			t.Fatalf("version %x/%x, want TLS 1.3", cs.Version, sr.state.Version)
		}
		if cs.NegotiatedProtocol != mtls.ALPN || sr.state.NegotiatedProtocol != mtls.ALPN {
			t.Fatalf("ALPN %q/%q, want %q", cs.NegotiatedProtocol, sr.state.NegotiatedProtocol, mtls.ALPN)
		}
		got, err := mtls.PeerIdentity(sr.state)
		if err != nil || got != clientID {
			t.Fatalf("server sees client as %s, %v; want %s", got, err, clientID)
		}
		got, err = mtls.PeerIdentity(cs)
		if err != nil || got != serverID {
			t.Fatalf("client sees server as %s, %v; want %s", got, err, serverID)
		}
	}
}

// A peer whose chain is [leaf, intermediate] verifies against the root alone,
// and a CA reloaded from its PEM keeps issuing trusted certificates.
func TestHandshakeThroughIntermediate(t *testing.T) {
	t.Parallel()
	root := newCA(t, ca.Options{})
	rootKey, err := pemutil.ParsePrivateKey(root.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	interKey, err := workloadcert.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "intermediate"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Roots()[0], interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	interKeyPEM, err := pemutil.EncodeECPrivateKey(interKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.Load(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), interKeyPEM, nil, root.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reloaded, err := ca.Load(root.CertPEM(), root.KeyPEM(), nil, root.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	serverCert := issue(t, inter, serverID, 0)
	if len(serverCert.Certificate) != 2 {
		t.Fatalf("server chain has %d certificates, want 2", len(serverCert.Certificate))
	}
	bundle := newBundle(t, root)
	addr, results := server(t, mtls.ServerConfig(static(serverCert), bundle))
	cs, sr, err := dial(t, addr, results, mtls.ClientConfig(static(issue(t, reloaded, clientID, 0)), bundle, serverID))
	if err != nil || sr.err != nil {
		t.Fatalf("client err %v, server err %v", err, sr.err)
	}
	if got, err := mtls.PeerIdentity(cs); err != nil || got != serverID {
		t.Fatalf("client sees %s, %v", got, err)
	}
	// The leaf alone, without its intermediate, does not verify.
	if _, err := bundle.VerifyPeer(serverCert.Certificate[:1]); err == nil {
		t.Fatal("leaf verified without its intermediate")
	}
}

func TestClientRefusesWrongServerIdentity(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))
	want := identity.Identity{TrustDomain: "cluster.local", Namespace: "prod", ServiceAccount: "payments"}
	_, _, err := dial(t, addr, results, mtls.ClientConfig(static(issue(t, authority, clientID, 0)), bundle, want))
	if err == nil {
		t.Fatal("client accepted a server with the wrong identity")
	}
	if !strings.Contains(err.Error(), serverID.String()) || !strings.Contains(err.Error(), want.String()) {
		t.Fatalf("error %q should name both the actual and the expected identity", err)
	}
}

func TestServerRefusesClientFromOtherCA(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	rogue := newCA(t, ca.Options{}) // same trust domain, different root
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))

	// The rogue client trusts the real root, so only the server can stop it.
	_, sr, err := dial(t, addr, results, mtls.ClientConfig(static(issue(t, rogue, clientID, 0)), bundle, serverID))
	if sr.err == nil {
		t.Fatal("server accepted a client certificate from an untrusted CA")
	}
	if !strings.Contains(sr.err.Error(), "unknown authority") {
		t.Errorf("server error %q, want unknown authority", sr.err)
	}
	if err == nil {
		t.Error("client saw no error although the server rejected it")
	}

	// And a client refuses a server from the other CA.
	addr2, results2 := server(t, mtls.ServerConfig(static(issue(t, rogue, serverID, 0)), newBundle(t, rogue)))
	_, _, err = dial(t, addr2, results2, mtls.ClientConfig(static(issue(t, authority, clientID, 0)), bundle, serverID))
	if err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("client error %v, want unknown authority", err)
	}
}

func TestServerRefusesClientFromOtherTrustDomain(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	foreign := newCA(t, ca.Options{TrustDomain: "example.org"})
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))
	foreignID := identity.Identity{TrustDomain: "example.org", Namespace: "dev", ServiceAccount: "client"}
	_, sr, _ := dial(t, addr, results, mtls.ClientConfig(static(issue(t, foreign, foreignID, 0)), bundle, serverID))
	if sr.err == nil {
		t.Fatal("server accepted a client from a trust domain it has no bundle for")
	}
}

func TestServerRefusesClientWithoutCertificate(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))
	// An empty certificate makes the client send an empty Certificate message.
	_, sr, err := dial(t, addr, results, mtls.ClientConfig(static(&tls.Certificate{}), bundle, serverID))
	if sr.err == nil {
		t.Fatal("server accepted a client without a certificate")
	}
	if !strings.Contains(sr.err.Error(), "certificate") {
		t.Errorf("server error %q", sr.err)
	}
	if err == nil {
		t.Error("client saw no error")
	}
	// A source that has nothing yet aborts the client's handshake.
	_, _, err = dial(t, addr, results, mtls.ClientConfig(mtls.StaticCert{}, bundle, serverID))
	if err == nil {
		t.Fatal("client with no certificate source completed a connection")
	}
}

func TestExpiredCertificates(t *testing.T) {
	t.Parallel()
	// A CA whose clock is two days behind issues 24h certificates that have
	// already expired; its root (10 years) is valid now.
	past := newCA(t, ca.Options{Now: func() time.Time { return time.Now().Add(-48 * time.Hour) }})
	bundle := newBundle(t, past)
	expiredClient := issue(t, past, clientID, 0)
	expiredServer := issue(t, past, serverID, 0)
	goodServer := issue(t, past, serverID, 72*time.Hour) // ends 24h from now
	goodClient := issue(t, past, clientID, 72*time.Hour)
	if !expiredClient.Leaf.NotAfter.Before(time.Now()) || !goodServer.Leaf.NotAfter.After(time.Now()) {
		t.Fatal("test setup: validity periods are not as intended")
	}

	addr, results := server(t, mtls.ServerConfig(static(goodServer), bundle))
	// Control: a valid client from the same CA is accepted.
	if _, sr, err := dial(t, addr, results, mtls.ClientConfig(static(goodClient), bundle, serverID)); err != nil || sr.err != nil {
		t.Fatalf("valid client: %v / %v", err, sr.err)
	}
	_, sr, _ := dial(t, addr, results, mtls.ClientConfig(static(expiredClient), bundle, serverID))
	if sr.err == nil || !strings.Contains(sr.err.Error(), "expired") {
		t.Fatalf("server error %v, want expired", sr.err)
	}

	addr2, results2 := server(t, mtls.ServerConfig(static(expiredServer), bundle))
	_, _, err := dial(t, addr2, results2, mtls.ClientConfig(static(goodClient), bundle, serverID))
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("client error %v, want expired", err)
	}
}

func TestServerRefusesTLS12(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	bundle := newBundle(t, authority)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, authority, serverID, 0)), bundle))
	cfg := mtls.ClientConfig(static(issue(t, authority, clientID, 0)), bundle, serverID)
	cfg.MinVersion = tls.VersionTLS12
	cfg.MaxVersion = tls.VersionTLS12
	_, sr, err := dial(t, addr, results, cfg)
	if err == nil || sr.err == nil {
		t.Fatalf("TLS 1.2 client: client err %v, server err %v; want both to fail", err, sr.err)
	}
	if !strings.Contains(sr.err.Error(), "version") {
		t.Errorf("server error %q, want a protocol version error", sr.err)
	}
}

func TestSetRootsSwapsTrust(t *testing.T) {
	t.Parallel()
	oldCA := newCA(t, ca.Options{})
	newCA := newCA(t, ca.Options{})
	bundle := newBundle(t, oldCA)
	oldClient := issue(t, oldCA, clientID, 0)
	newClient := issue(t, newCA, clientID, 0)

	// The server presents a certificate from the new CA throughout; the
	// clients use a separate bundle trusting both so only the server decides.
	both := newBundle(t, oldCA)
	if err := both.SetRoots("cluster.local", append(oldCA.Roots(), newCA.Roots()...)); err != nil {
		t.Fatal(err)
	}
	addr, results := server(t, mtls.ServerConfig(static(issue(t, newCA, serverID, 0)), bundle))

	if _, sr, _ := dial(t, addr, results, mtls.ClientConfig(static(oldClient), both, serverID)); sr.err != nil {
		t.Fatalf("before swap, old-CA client refused: %v", sr.err)
	}
	if _, sr, _ := dial(t, addr, results, mtls.ClientConfig(static(newClient), both, serverID)); sr.err == nil {
		t.Fatal("before swap, new-CA client accepted")
	}

	if err := bundle.SetRoots("cluster.local", newCA.Roots()); err != nil {
		t.Fatal(err)
	}
	// Same server config, no rebuild: trust follows the bundle.
	if _, sr, _ := dial(t, addr, results, mtls.ClientConfig(static(oldClient), both, serverID)); sr.err == nil {
		t.Fatal("after swap, old-CA client accepted")
	}
	if _, sr, err := dial(t, addr, results, mtls.ClientConfig(static(newClient), both, serverID)); err != nil || sr.err != nil {
		t.Fatalf("after swap, new-CA client refused: %v / %v", err, sr.err)
	}

	// VerifyPeer directly.
	if _, err := bundle.VerifyPeer(oldClient.Certificate); err == nil {
		t.Fatal("VerifyPeer accepted an old-CA certificate after the swap")
	}
	if id, err := bundle.VerifyPeer(newClient.Certificate); err != nil || id != clientID {
		t.Fatalf("VerifyPeer = %s, %v", id, err)
	}
}

// Session resumption skips certificate verification unless the configs
// re-check it; a client resuming a session from before a root swap must not
// get in with a certificate the new roots do not trust.
func TestSetRootsAppliesToResumedSessions(t *testing.T) {
	t.Parallel()
	oldCA := newCA(t, ca.Options{})
	newCA := newCA(t, ca.Options{})
	bundle := newBundle(t, oldCA)
	clientBundle := newBundle(t, oldCA)
	addr, results := server(t, mtls.ServerConfig(static(issue(t, oldCA, serverID, 0)), bundle))

	cfg := mtls.ClientConfig(static(issue(t, oldCA, clientID, 0)), clientBundle, serverID)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	if _, sr, err := dial(t, addr, results, cfg); err != nil || sr.err != nil {
		t.Fatalf("first connection: %v / %v", err, sr.err)
	}
	// Control: without a swap, the second connection resumes.
	cs, sr, err := dial(t, addr, results, cfg)
	if err != nil || sr.err != nil {
		t.Fatalf("second connection: %v / %v", err, sr.err)
	}
	if !cs.DidResume {
		t.Skip("session was not resumed; nothing to check")
	}
	if got, err := mtls.PeerIdentity(sr.state); err != nil || got != clientID {
		t.Fatalf("resumed session: server sees %s, %v", got, err)
	}

	if err := bundle.SetRoots("cluster.local", newCA.Roots()); err != nil {
		t.Fatal(err)
	}
	cs, sr, _ = dial(t, addr, results, cfg)
	if sr.err == nil {
		t.Fatalf("server accepted a resumed session (DidResume=%v) from a client the new roots do not trust", cs.DidResume)
	}

	// The client side re-checks too: with the client's trust swapped, it
	// must not resume into a server it no longer trusts.
	addr2, results2 := server(t, mtls.ServerConfig(static(issue(t, oldCA, serverID, 0)), newBundle(t, oldCA)))
	cfg2 := mtls.ClientConfig(static(issue(t, oldCA, clientID, 0)), clientBundle, serverID)
	cfg2.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	if _, sr, err := dial(t, addr2, results2, cfg2); err != nil || sr.err != nil {
		t.Fatalf("first connection: %v / %v", err, sr.err)
	}
	if err := clientBundle.SetRoots("cluster.local", newCA.Roots()); err != nil {
		t.Fatal(err)
	}
	cs, _, err = dial(t, addr2, results2, cfg2)
	if err == nil {
		t.Fatalf("client accepted a server (DidResume=%v) its new roots do not trust", cs.DidResume)
	}
}

func TestBundle(t *testing.T) {
	t.Parallel()
	a := newCA(t, ca.Options{})
	b := newCA(t, ca.Options{TrustDomain: "example.org"})
	if _, err := mtls.NewBundle("cluster.local", nil); err == nil {
		t.Fatal("NewBundle with no roots succeeded")
	}
	if _, err := mtls.NewBundle("Not A Domain", a.Roots()); err == nil {
		t.Fatal("NewBundle with an invalid trust domain succeeded")
	}
	var empty mtls.Bundle
	if _, err := empty.VerifyPeer(issue(t, a, clientID, 0).Certificate); err == nil {
		t.Fatal("empty bundle verified a certificate")
	}

	bundle := newBundle(t, a)
	if err := bundle.SetRoots("example.org", b.Roots()); err != nil {
		t.Fatal(err)
	}
	exampleID := identity.Identity{TrustDomain: "example.org", Namespace: "x", ServiceAccount: "y"}
	// Both trust domains are trusted, each by its own root only.
	if id, err := bundle.VerifyPeer(issue(t, a, clientID, 0).Certificate); err != nil || id != clientID {
		t.Fatalf("cluster.local peer: %s, %v", id, err)
	}
	if id, err := bundle.VerifyPeer(issue(t, b, exampleID, 0).Certificate); err != nil || id != exampleID {
		t.Fatalf("example.org peer: %s, %v", id, err)
	}
	// Replacing example.org's roots leaves cluster.local's alone.
	if err := bundle.SetRoots("example.org", a.Roots()); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.VerifyPeer(issue(t, b, exampleID, 0).Certificate); err == nil {
		t.Fatal("example.org peer accepted after its roots were replaced")
	}
	if _, err := bundle.VerifyPeer(issue(t, a, clientID, 0).Certificate); err != nil {
		t.Fatalf("cluster.local peer refused after example.org swap: %v", err)
	}
	if err := bundle.SetRoots("cluster.local", nil); err == nil {
		t.Fatal("SetRoots with no roots succeeded")
	}
	if _, err := bundle.VerifyPeer(issue(t, a, clientID, 0).Certificate); err != nil {
		t.Fatalf("failed SetRoots changed the bundle: %v", err)
	}

	// Malformed input.
	if _, err := bundle.VerifyPeer(nil); err == nil {
		t.Fatal("VerifyPeer(nil) succeeded")
	}
	if _, err := bundle.VerifyPeer([][]byte{[]byte("garbage")}); err == nil {
		t.Fatal("VerifyPeer(garbage) succeeded")
	}
	// A CA certificate is not a workload identity.
	if _, err := bundle.VerifyPeer([][]byte{a.Roots()[0].Raw}); err == nil {
		t.Fatal("VerifyPeer accepted the root itself")
	}
}

func TestPeerIdentityAndStaticCert(t *testing.T) {
	t.Parallel()
	if _, err := mtls.PeerIdentity(tls.ConnectionState{}); err == nil {
		t.Fatal("PeerIdentity with no certificates succeeded")
	}
	a := newCA(t, ca.Options{})
	leaf := issue(t, a, clientID, 0).Leaf
	if id, err := mtls.PeerIdentity(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}); err != nil || id != clientID {
		t.Fatalf("PeerIdentity = %s, %v", id, err)
	}
	if _, err := (mtls.StaticCert{}).TLSCertificate(); err == nil {
		t.Fatal("empty StaticCert returned a certificate")
	}
}

func TestLoadRoots(t *testing.T) {
	authority := newCA(t, ca.Options{})
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "root.pem"), filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(good, authority.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	roots, err := mtls.LoadRoots(good)
	if err != nil || len(roots) != 1 || !roots[0].Equal(authority.Roots()[0]) {
		t.Fatalf("LoadRoots(good) = %d roots, %v", len(roots), err)
	}
	for _, p := range []string{empty, filepath.Join(dir, "missing.pem")} {
		if _, err := mtls.LoadRoots(p); err == nil {
			t.Errorf("LoadRoots(%s) succeeded", filepath.Base(p))
		}
	}
}
