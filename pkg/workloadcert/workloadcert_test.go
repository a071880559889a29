package workloadcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

var (
	webID    = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	clientID = identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "client"}
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newCA(t testing.TB, opts ca.Options) *ca.CA {
	t.Helper()
	c, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runSource starts s.Run until the test ends and waits for the first certificate.
func runSource(t *testing.T, s *Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("no certificate installed within 10s")
	}
}

func current(t *testing.T, s *Source) *tls.Certificate {
	t.Helper()
	c, err := s.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitRotation polls until s holds a certificate with a serial other than old.
func waitRotation(t *testing.T, s *Source, old *big.Int) *tls.Certificate {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c := current(t, s); c.Leaf.SerialNumber.Cmp(old) != 0 {
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("certificate was not rotated within 10s")
	return nil
}

func TestNewKey(t *testing.T) {
	t.Parallel()
	k1, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if k1.Curve != elliptic.P256() {
		t.Fatalf("curve %s, want P-256", k1.Curve.Params().Name)
	}
	if k1.Equal(k2) {
		t.Fatal("two keys are equal")
	}
}

func TestNewCSR(t *testing.T) {
	t.Parallel()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := NewCSR(key, webID)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(rest) != 0 {
		t.Fatalf("not a single CERTIFICATE REQUEST PEM block: %q", csrPEM)
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if len(req.URIs) != 1 || req.URIs[0].String() != webID.String() || len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses) != 0 {
		t.Fatalf("CSR SANs: URIs %v DNS %v IP %v email %v", req.URIs, req.DNSNames, req.IPAddresses, req.EmailAddresses)
	}
	if !key.PublicKey.Equal(req.PublicKey) {
		t.Fatal("CSR is for another key")
	}

	c := newCA(t, ca.Options{})
	parsed, err := c.ParseCSR(csrPEM)
	if err != nil {
		t.Fatalf("CA refused NewCSR output: %v", err)
	}
	if parsed.Identity != webID {
		t.Fatalf("CA read identity %s, want %s", parsed.Identity, webID)
	}

	if _, err := NewCSR(key, identity.Identity{TrustDomain: "cluster.local", Namespace: "Bad", ServiceAccount: "x"}); err == nil {
		t.Fatal("NewCSR accepted an invalid identity")
	}
	if _, err := NewCSR(key, identity.Identity{}); err == nil {
		t.Fatal("NewCSR accepted the zero identity")
	}
}

func TestSourceBeforeRun(t *testing.T) {
	t.Parallel()
	s := NewSource(webID, newCA(t, ca.Options{}), Options{Logger: quietLogger()})
	if s.Identity() != webID {
		t.Fatalf("Identity() = %s", s.Identity())
	}
	if c, err := s.TLSCertificate(); err == nil || c != nil {
		t.Fatalf("TLSCertificate before Run = %v, %v; want error", c, err)
	}
	select {
	case <-s.Ready():
		t.Fatal("Ready closed before any certificate")
	default:
	}
}

func TestRunInstallsCertificate(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	s := NewSource(webID, c, Options{Logger: quietLogger()})
	runSource(t, s)

	cert := current(t, s)
	got, err := identity.FromURIs(cert.Leaf.URIs)
	if err != nil || got != webID {
		t.Fatalf("installed identity %s, %v; want %s", got, err, webID)
	}
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() || !key.PublicKey.Equal(cert.Leaf.PublicKey) {
		t.Fatalf("private key %T does not match the leaf", cert.PrivateKey)
	}
	if len(cert.Certificate) != 1 || string(cert.Certificate[0]) != string(cert.Leaf.Raw) {
		t.Fatalf("tls.Certificate chain has %d entries, want [leaf]", len(cert.Certificate))
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: rootPool(c), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(cert.Leaf.NotAfter); d < 23*time.Hour {
		t.Fatalf("lifetime %s, want the CA default 24h", d)
	}
}

func TestSourceRequestsTTL(t *testing.T) {
	t.Parallel()
	s := NewSource(webID, newCA(t, ca.Options{}), Options{TTL: 2 * time.Hour, Logger: quietLogger()})
	if err := s.Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(current(t, s).Leaf.NotAfter); d < 2*time.Hour-time.Minute || d > 2*time.Hour+time.Minute {
		t.Fatalf("lifetime %s, want 2h", d)
	}
	select {
	case <-s.Ready():
	default:
		t.Fatal("Renew did not close Ready")
	}
	// Renewing again does not panic on the already-closed Ready channel.
	if err := s.Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func rootPool(c *ca.CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range c.Roots() {
		p.AddCert(r)
	}
	return p
}

func TestRotation(t *testing.T) {
	t.Parallel()
	s := NewSource(webID, newCA(t, ca.Options{DefaultTTL: 3 * time.Second}), Options{Logger: quietLogger()})
	runSource(t, s)
	first := current(t, s)
	if d := first.Leaf.NotAfter.Sub(first.Leaf.NotBefore); d > 3*time.Second+2*time.Minute {
		t.Fatalf("test setup: lifetime %s", d)
	}
	second := waitRotation(t, s, first.Leaf.SerialNumber)
	if second.PrivateKey.(*ecdsa.PrivateKey).Equal(first.PrivateKey) {
		t.Fatal("rotation reused the private key")
	}
	if second.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(first.Leaf.PublicKey) {
		t.Fatal("rotated certificate has the same public key")
	}
	if !second.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Fatalf("rotated NotAfter %s not after %s", second.Leaf.NotAfter, first.Leaf.NotAfter)
	}
	// Renewal happens before expiry, not after.
	if time.Now().After(first.Leaf.NotAfter.Add(time.Second)) {
		t.Fatalf("rotation happened after the old certificate expired")
	}
	// The old tls.Certificate value is untouched: connections using it keep working.
	if got, err := identity.FromURIs(first.Leaf.URIs); err != nil || got != webID {
		t.Fatal("old certificate value was modified")
	}
}

// A rotation must not disturb established connections, while new handshakes
// pick up the new certificate.
func TestRotationKeepsConnections(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	bundle, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatal(err)
	}
	server := NewSource(webID, authority, Options{TTL: 3 * time.Second, Logger: quietLogger()})
	client := NewSource(clientID, authority, Options{TTL: time.Hour, Logger: quietLogger()})
	runSource(t, server)
	runSource(t, client)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", mtls.ServerConfig(server, bundle))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: close the listener, then wait for the
	// accept loop and echo goroutines (client conns are closed before either).
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { _ = ln.Close() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = conn.Close() }()
				_, _ = io.Copy(conn, conn) // echo
			}()
		}
	}()

	dial := func() *tls.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(&d, "tcp", ln.Addr().String(), mtls.ClientConfig(client, bundle, webID))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Fatalf("TLS version %x", v)
		}
		return conn
	}
	echo := func(conn *tls.Conn, msg string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(buf) != msg {
			t.Fatalf("echo %q, want %q", buf, msg)
		}
	}

	oldConn := dial()
	echo(oldConn, "before rotation")
	oldSerial := oldConn.ConnectionState().PeerCertificates[0].SerialNumber
	if cur := current(t, server).Leaf.SerialNumber; cur.Cmp(oldSerial) != 0 {
		// Rotated between dial and now; the test would be vacuous. Retry once.
		oldConn = dial()
		echo(oldConn, "before rotation")
		oldSerial = oldConn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	if id, err := mtls.PeerIdentity(oldConn.ConnectionState()); err != nil || id != webID {
		t.Fatalf("server identity %s, %v", id, err)
	}

	waitRotation(t, server, oldSerial)

	echo(oldConn, "after rotation, same connection")
	echo(oldConn, strings.Repeat("x", 64<<10)) // both directions, more than one record

	newConn := dial()
	echo(newConn, "new connection")
	newSerial := newConn.ConnectionState().PeerCertificates[0].SerialNumber
	if newSerial.Cmp(oldSerial) == 0 {
		t.Fatal("a new connection after rotation still sees the old server certificate")
	}
	echo(oldConn, "old connection still fine")
}

// flakySigner fails its first n calls, then delegates to a real CA.
type flakySigner struct {
	Signer
	failures int32
	calls    atomic.Int32
}

func (f *flakySigner) SignCSR(ctx context.Context, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	if f.calls.Add(1) <= f.failures {
		return nil, errors.New("CA unavailable")
	}
	return f.Signer.SignCSR(ctx, csr, ttl)
}

func TestRunRetriesFailures(t *testing.T) {
	t.Parallel()
	signer := &flakySigner{Signer: newCA(t, ca.Options{}), failures: 3}
	s := NewSource(webID, signer, Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, Logger: quietLogger()})
	runSource(t, s)
	if n := signer.calls.Load(); n != 4 {
		t.Fatalf("signer called %d times, want 3 failures then 1 success", n)
	}
	if got, err := identity.FromURIs(current(t, s).Leaf.URIs); err != nil || got != webID {
		t.Fatalf("identity %s, %v", got, err)
	}
}

func TestRunStopsOnCancelWhileFailing(t *testing.T) {
	t.Parallel()
	signer := &flakySigner{Signer: newCA(t, ca.Options{}), failures: 1 << 30}
	s := NewSource(webID, signer, Options{MinBackoff: time.Hour, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	for signer.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel during backoff")
	}
	if _, err := s.TLSCertificate(); err == nil {
		t.Fatal("certificate installed although every signing failed")
	}
}

// badSigner returns certificates that must not be installed.
type badSigner struct {
	authority *ca.CA
	mode      string
}

func (b badSigner) SignCSR(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	switch b.mode {
	case "empty":
		return nil, nil
	case "other key":
		// Correct identity, but for a key the source does not hold.
		key, err := NewKey()
		if err != nil {
			return nil, err
		}
		block, _ := pem.Decode(csrPEM)
		req, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, err
		}
		id, err := identity.FromURIs(req.URIs)
		if err != nil {
			return nil, err
		}
		csr, err := NewCSR(key, id)
		if err != nil {
			return nil, err
		}
		return b.authority.SignCSR(ctx, csr, ttl)
	case "other identity", "two URIs":
		// Right key, wrong identity: sign directly with the CA key.
		block, _ := pem.Decode(csrPEM)
		req, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, err
		}
		caKey, err := pemutil.ParsePrivateKey(b.authority.KeyPEM())
		if err != nil {
			return nil, err
		}
		uris := []*url.URL{clientID.URL()}
		if b.mode == "two URIs" {
			uris = append(uris, req.URIs...)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(7),
			NotBefore:    time.Now().Add(-time.Minute),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			URIs:         uris,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, b.authority.Roots()[0], req.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		return []*x509.Certificate{leaf}, nil
	}
	return nil, errors.New("unknown mode")
}

func TestRenewRejectsBadCertificates(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	for mode, wantErr := range map[string]string{
		"empty":          "no certificate",
		"other key":      "different key",
		"other identity": "asked for " + webID.String(),
		"two URIs":       "exactly one URI SAN",
	} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			s := NewSource(webID, badSigner{authority: authority, mode: mode}, Options{Logger: quietLogger()})
			err := s.Renew(t.Context())
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("Renew = %v, want error mentioning %q", err, wantErr)
			}
			if _, err := s.TLSCertificate(); err == nil {
				t.Fatal("bad certificate installed")
			}
			select {
			case <-s.Ready():
				t.Fatal("Ready closed")
			default:
			}
		})
	}
}

// A bad renewal keeps the previous, good certificate in place.
func TestRenewFailureKeepsCurrent(t *testing.T) {
	t.Parallel()
	authority := newCA(t, ca.Options{})
	signer := &switchSigner{}
	signer.s.Store(&signerBox{authority})
	s := NewSource(webID, signer, Options{Logger: quietLogger()})
	if err := s.Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
	good := current(t, s)
	signer.s.Store(&signerBox{badSigner{authority: authority, mode: "other identity"}})
	if err := s.Renew(t.Context()); err == nil {
		t.Fatal("bad renewal succeeded")
	}
	if current(t, s) != good {
		t.Fatal("failed renewal replaced the current certificate")
	}
}

type signerBox struct{ Signer }

type switchSigner struct{ s atomic.Pointer[signerBox] }

func (w *switchSigner) SignCSR(ctx context.Context, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	return w.s.Load().SignCSR(ctx, csr, ttl)
}

func TestRenewDelay(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	leaf := func(notBefore, notAfter time.Time) *x509.Certificate {
		return &x509.Certificate{NotBefore: notBefore, NotAfter: notAfter}
	}
	tests := []struct {
		name string
		leaf *x509.Certificate
		want time.Duration
	}{
		{"fresh 24h, backdated 1m", leaf(now.Add(-time.Minute), now.Add(24*time.Hour)), 12 * time.Hour},
		{"not backdated", leaf(now, now.Add(2*time.Hour)), time.Hour},
		{"half used", leaf(now.Add(-12*time.Hour), now.Add(12*time.Hour)), 6 * time.Hour},
		{"short-lived", leaf(now.Add(-time.Minute), now.Add(3*time.Second)), 1500 * time.Millisecond},
		{"NotBefore in the future", leaf(now.Add(time.Hour), now.Add(3*time.Hour)), time.Hour},
		{"expires now", leaf(now.Add(-time.Hour), now), 0},
		{"already expired", leaf(now.Add(-2*time.Hour), now.Add(-time.Hour)), 0},
	}
	for _, tt := range tests {
		if got := renewDelay(tt.leaf, now); got != tt.want {
			t.Errorf("%s: renewDelay = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestNewSourceBackoffDefaults(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in                   Options
		wantMin, wantMaxBack time.Duration
	}{
		{Options{}, time.Second, time.Minute},
		{Options{MinBackoff: 5 * time.Second}, 5 * time.Second, time.Minute},
		{Options{MinBackoff: 2 * time.Minute}, 2 * time.Minute, 2 * time.Minute},
		{Options{MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}, time.Millisecond, 10 * time.Millisecond},
		{Options{MinBackoff: time.Second, MaxBackoff: time.Millisecond}, time.Second, time.Minute},
	} {
		s := NewSource(webID, nil, tt.in)
		if s.opts.MinBackoff != tt.wantMin || s.opts.MaxBackoff != tt.wantMaxBack {
			t.Errorf("NewSource(%+v): backoff [%s, %s], want [%s, %s]", tt.in, s.opts.MinBackoff, s.opts.MaxBackoff, tt.wantMin, tt.wantMaxBack)
		}
	}
}
