// Package workloadcert is the workload side of the mesh CA: key generation,
// CSRs, and a certificate source that renews at half-life.
package workloadcert

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// NewKey generates an ECDSA P-256 key, the mesh's default key type.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// NewCSR returns a PEM CSR for id signed by key, carrying id as its only SAN.
func NewCSR(key *ecdsa.PrivateKey, id identity.Identity) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Signer turns a CSR into a certificate chain, leaf first: the local CA, or a
// client of istiod-lite's CA service.
type Signer interface {
	SignCSR(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error)
}

// Options tune a Source.
type Options struct {
	TTL        time.Duration // requested lifetime; zero lets the CA decide
	MinBackoff time.Duration // first retry delay after a failed renewal; default 1s
	MaxBackoff time.Duration // cap on retry delay; default 1m
	Logger     *slog.Logger
}

// Source holds the current certificate for one identity and renews it at
// half-life. TLS configs read it per handshake, so established connections
// keep the certificate they started with while new ones get the fresh one.
type Source struct {
	id     identity.Identity
	signer Signer
	opts   Options
	log    *slog.Logger

	cur     atomic.Pointer[tls.Certificate]
	readyMu sync.Once
	ready   chan struct{}
}

// NewSource returns a Source for id; call Run to fetch and keep it fresh.
func NewSource(id identity.Identity, signer Signer, opts Options) *Source {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(time.Minute, opts.MinBackoff)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Source{id: id, signer: signer, opts: opts, log: log.With("identity", id.String()), ready: make(chan struct{})}
}

// Identity is the identity this source serves.
func (s *Source) Identity() identity.Identity { return s.id }

// TLSCertificate returns the current certificate (implements mtls.CertSource).
func (s *Source) TLSCertificate() (*tls.Certificate, error) {
	c := s.cur.Load()
	if c == nil {
		return nil, fmt.Errorf("no certificate yet for %s", s.id)
	}
	return c, nil
}

// Ready is closed once the first certificate is in place.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Renew fetches a fresh key pair and certificate now and installs it.
func (s *Source) Renew(ctx context.Context) error {
	key, err := NewKey()
	if err != nil {
		return err
	}
	csr, err := NewCSR(key, s.id)
	if err != nil {
		return err
	}
	chain, err := s.signer.SignCSR(ctx, csr, s.opts.TTL)
	if err != nil {
		return fmt.Errorf("sign CSR for %s: %w", s.id, err)
	}
	if len(chain) == 0 {
		return fmt.Errorf("sign CSR for %s: CA returned no certificate", s.id)
	}
	leaf := chain[0]
	if got, err := identity.FromURIs(leaf.URIs); err != nil || got != s.id {
		return fmt.Errorf("CA returned a certificate for %v, asked for %s (%v)", got, s.id, err)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return errors.New("CA returned a certificate for a different key")
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	s.cur.Store(tc)
	s.readyMu.Do(func() { close(s.ready) })
	s.log.Info("workload certificate installed", "serial", leaf.SerialNumber.Text(16), "notAfter", leaf.NotAfter)
	return nil
}

// Run fetches a certificate and renews it at half of its remaining lifetime
// until ctx is done, retrying failures with exponential backoff.
func (s *Source) Run(ctx context.Context) error {
	backoff := s.opts.MinBackoff
	for {
		var wait time.Duration
		if err := s.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("certificate renewal failed; retrying", "err", err, "retryIn", backoff)
			wait = backoff
			backoff = min(2*backoff, s.opts.MaxBackoff)
		} else {
			backoff = s.opts.MinBackoff
			wait = renewDelay(s.cur.Load().Leaf, time.Now())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// renewDelay is half the time left on leaf as of now. Counting from receipt
// rather than NotBefore keeps CA backdating from shortening the interval.
func renewDelay(leaf *x509.Certificate, now time.Time) time.Duration {
	start := now
	if leaf.NotBefore.After(start) {
		start = leaf.NotBefore
	}
	return max(leaf.NotAfter.Sub(start)/2, 0)
}
