// Package mtls builds the mutual-TLS configurations ambit proxies use: TLS 1.3
// only, peers identified by the single SPIFFE URI SAN of a certificate that
// chains to the mesh trust bundle.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// ALPN is the application protocol HBONE negotiates.
const ALPN = "h2"

// CertSource yields the certificate to present in a handshake. Rotating
// sources return the newest; connections keep the one they shook hands with.
type CertSource interface {
	TLSCertificate() (*tls.Certificate, error)
}

// StaticCert is a CertSource that never rotates.
type StaticCert struct{ Cert *tls.Certificate }

// TLSCertificate implements CertSource.
func (s StaticCert) TLSCertificate() (*tls.Certificate, error) {
	if s.Cert == nil {
		return nil, errors.New("no certificate")
	}
	return s.Cert, nil
}

// Bundle is the set of trust anchors per trust domain. It can be swapped at
// run time (root rotation) without rebuilding TLS configurations.
type Bundle struct {
	set atomic.Pointer[x509bundle.Set]
}

// LoadRoots reads the mesh root certificate(s), PEM, from path; a file
// without a certificate is an error.
func LoadRoots(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh root: %w", err)
	}
	roots, err := pemutil.ParseCertificates(data)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("mesh root %s: no certificate (%v)", path, err)
	}
	return roots, nil
}

// NewBundle returns a bundle trusting roots for trustDomain.
func NewBundle(trustDomain string, roots []*x509.Certificate) (*Bundle, error) {
	b := &Bundle{}
	if err := b.SetRoots(trustDomain, roots); err != nil {
		return nil, err
	}
	return b, nil
}

// SetRoots replaces the anchors of trustDomain.
func (b *Bundle) SetRoots(trustDomain string, roots []*x509.Certificate) error {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	if len(roots) == 0 {
		return fmt.Errorf("trust bundle for %q: no roots", trustDomain)
	}
	next := x509bundle.NewSet()
	if cur := b.set.Load(); cur != nil {
		for _, other := range cur.Bundles() {
			if other.TrustDomain() != td {
				next.Add(other)
			}
		}
	}
	next.Add(x509bundle.FromX509Authorities(td, roots))
	b.set.Store(next)
	return nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (b *Bundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	set := b.set.Load()
	if set == nil {
		return nil, errors.New("trust bundle is empty")
	}
	return set.GetX509BundleForTrustDomain(td)
}

// VerifyPeer verifies a peer's certificate chain (leaf first, as TLS presents
// it) against the bundle and returns the peer's identity.
func (b *Bundle) VerifyPeer(rawCerts [][]byte) (identity.Identity, error) {
	if len(rawCerts) == 0 {
		return identity.Identity{}, errors.New("peer presented no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for i, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return identity.Identity{}, fmt.Errorf("peer certificate %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	sid, _, err := x509svid.Verify(certs, b)
	if err != nil {
		return identity.Identity{}, fmt.Errorf("peer certificate rejected: %w", err)
	}
	return identity.FromSPIFFEID(sid)
}

// PeerIdentity returns the identity of an established connection's peer. The
// chain was verified during the handshake by the configs of this package.
func PeerIdentity(cs tls.ConnectionState) (identity.Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return identity.Identity{}, errors.New("peer presented no certificate")
	}
	return identity.FromURIs(cs.PeerCertificates[0].URIs)
}

// ServerConfig accepts TLS 1.3 clients whose certificate chains to the bundle.
// Which identities may do what is decided per request by the caller.
func ServerConfig(src CertSource, bundle *Bundle) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		ClientAuth: tls.RequireAnyClientCert, // verified below against the SPIFFE bundle
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return src.TLSCertificate()
		},
		// VerifyConnection, unlike VerifyPeerCertificate, also runs on
		// resumed sessions, so a root swap applies to them too.
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := bundle.VerifyPeer(rawCerts(cs))
			return err
		},
	}
}

// ClientConfig presents src's certificate and accepts only a server whose
// certificate chains to the bundle and names expected. A zero expected
// accepts any identity in the bundle.
func ClientConfig(src CertSource, bundle *Bundle, expected identity.Identity) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// Hostname verification does not apply to SPIFFE identities; the chain
		// and the identity are checked in VerifyConnection.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.TLSCertificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := bundle.VerifyPeer(rawCerts(cs))
			if err != nil {
				return err
			}
			if !expected.IsZero() && got != expected {
				return fmt.Errorf("server identity %s, expected %s", got, expected)
			}
			return nil
		},
	}
}

// rawCerts returns the peer's chain as presented, for VerifyPeer.
func rawCerts(cs tls.ConnectionState) [][]byte {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return raw
}
