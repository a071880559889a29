package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// DefaultServingDNSNames are the names ztunnel and istio-agent dial the
// control plane by (Istio's istiod Service).
var DefaultServingDNSNames = []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "istiod-lite.istio-system.svc", "istiod-lite.istio-system.svc.cluster.local"}

// servingTTL is the serving certificate's lifetime; it is renewed at half.
const servingTTL = 24 * time.Hour

// ServingCertificate issues a TLS server certificate for dnsNames signed by
// the mesh CA's signing key, for the gRPC (CA and xDS) listeners, which
// clients verify against the published root. The chain is the leaf plus
// the signing certificate when that is not the root itself.
func ServingCertificate(authority *ca.CA, dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	signers, err := pemutil.ParseCertificates(authority.CertPEM())
	if err != nil || len(signers) != 1 {
		return nil, fmt.Errorf("serving certificate: CA certificate: %v", err)
	}
	signer := signers[0]
	signerKey, err := pemutil.ParsePrivateKey(authority.KeyPEM())
	if err != nil {
		return nil, fmt.Errorf("serving certificate: CA key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serving certificate: serial: %w", err)
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(signer.NotAfter) {
		notAfter = signer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: parse: %w", err)
	}
	chain := [][]byte{der}
	if signer.CheckSignatureFrom(signer) != nil {
		chain = append(chain, signer.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// ServingTLSConfig returns a TLS configuration for the control plane's gRPC
// listeners whose certificate, for dnsNames (default
// DefaultServingDNSNames), is issued by the mesh CA and renewed at half its
// life. Clients authenticate with ServiceAccount tokens, not certificates.
func ServingTLSConfig(authority *ca.CA, dnsNames []string) (*tls.Config, error) {
	if len(dnsNames) == 0 {
		dnsNames = DefaultServingDNSNames
	}
	var (
		mu   sync.Mutex
		cert *tls.Certificate
	)
	get := func() (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if cert != nil {
			half := cert.Leaf.NotBefore.Add(cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore) / 2)
			if time.Now().Before(half) {
				return cert, nil
			}
		}
		c, err := ServingCertificate(authority, dnsNames, servingTTL)
		if err != nil {
			if cert != nil && time.Now().Before(cert.Leaf.NotAfter) {
				return cert, nil // keep serving the valid one
			}
			return nil, err
		}
		cert = c
		return cert, nil
	}
	if _, err := get(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get() },
	}, nil
}
