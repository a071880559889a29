// Package ca is the mesh certificate authority: it holds a signing key pair
// (a self-signed root or an intermediate under an external root) and signs
// workload CSRs into short-lived certificates carrying exactly one SPIFFE ID.
package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// Defaults follow Istio's: 24h workload certificates, 10-year self-signed root.
const (
	DefaultWorkloadTTL = 24 * time.Hour
	DefaultMaxTTL      = 90 * 24 * time.Hour
	DefaultRootTTL     = 10 * 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so peers with slightly slow clocks accept
	// a freshly issued certificate.
	clockSkew = time.Minute
)

// Options tune issuance.
type Options struct {
	TrustDomain string        // defaults to identity.DefaultTrustDomain
	DefaultTTL  time.Duration // TTL when a request asks for none; default 24h
	MaxTTL      time.Duration // longest TTL a request may ask for; default 90 days
	Now         func() time.Time
}

func (o *Options) setDefaults() {
	if o.TrustDomain == "" {
		o.TrustDomain = identity.DefaultTrustDomain
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = DefaultWorkloadTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.DefaultTTL > o.MaxTTL {
		o.MaxTTL = o.DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// CA signs workload certificates.
type CA struct {
	opts   Options
	cert   *x509.Certificate   // the signing certificate
	key    crypto.Signer       // its private key
	chain  []*x509.Certificate // signing cert first, then intermediates, up to (not including) the root
	roots  []*x509.Certificate // trust anchors workloads verify against
	keyPEM []byte
}

// NewSelfSigned creates a CA with a fresh ECDSA P-256 self-signed root whose
// name constraints confine it to the trust domain.
func NewSelfSigned(opts Options) (*CA, error) {
	opts.setDefaults()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := opts.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{opts.TrustDomain}, CommonName: "ambit mesh root CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(DefaultRootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		PermittedURIDomains:   []string{opts.TrustDomain},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse root: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode root key: %w", err)
	}
	return &CA{
		opts: opts, cert: cert, key: key,
		chain:  []*x509.Certificate{cert},
		roots:  []*x509.Certificate{cert},
		keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Load builds a CA from PEM: the signing certificate, its private key, the
// intermediates between it and the root (may be empty), and the root(s). For
// a self-signed root, certPEM and rootsPEM are the same certificate.
func Load(certPEM, keyPEM, intermediatesPEM, rootsPEM []byte, opts Options) (*CA, error) {
	opts.setDefaults()
	certs, err := pemutil.ParseCertificates(certPEM)
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("CA certificate: want exactly one PEM certificate (%v)", err)
	}
	cert := certs[0]
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("CA certificate is not a CA (needs basicConstraints CA:true and keyCertSign)")
	}
	key, err := pemutil.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	intermediates, err := pemutil.ParseCertificates(intermediatesPEM)
	if err != nil {
		return nil, fmt.Errorf("intermediates: %w", err)
	}
	roots, err := pemutil.ParseCertificates(rootsPEM)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("roots: want at least one PEM certificate (%v)", err)
	}
	// The signing certificate must chain to the roots, or workloads would
	// receive certificates nobody can verify.
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range intermediates {
		interPool.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: opts.Now()}); err != nil {
		return nil, fmt.Errorf("CA certificate does not chain to the roots: %w", err)
	}
	chain := []*x509.Certificate{cert}
	for _, c := range intermediates {
		if !c.Equal(cert) {
			chain = append(chain, c)
		}
	}
	if len(chain) > 0 && isSelfSigned(chain[len(chain)-1]) && len(chain) > 1 {
		chain = chain[:len(chain)-1] // never ship the root inside the chain
	}
	return &CA{opts: opts, cert: cert, key: key, chain: chain, roots: roots, keyPEM: keyPEM}, nil
}

// TrustDomain is the trust domain this CA issues for.
func (c *CA) TrustDomain() string { return c.opts.TrustDomain }

// Roots returns the trust anchors workloads verify peers against.
func (c *CA) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), c.roots...) }

// RootsPEM returns Roots PEM-encoded, as published to workloads.
func (c *CA) RootsPEM() []byte { return pemutil.EncodeCertificates(c.roots) }

// CertPEM and KeyPEM return the signing key pair, for persisting a generated root.
func (c *CA) CertPEM() []byte { return pemutil.EncodeCertificates([]*x509.Certificate{c.cert}) }
func (c *CA) KeyPEM() []byte  { return append([]byte(nil), c.keyPEM...) }

// CSR is a certificate request that passed validation.
type CSR struct {
	Identity identity.Identity
	request  *x509.CertificateRequest
}

// Raw returns the CSR's DER encoding as received, for signing backends that
// forward the request to another CA (cert-manager).
func (c *CSR) Raw() []byte {
	if c == nil || c.request == nil {
		return nil
	}
	return append([]byte(nil), c.request.Raw...)
}

// PublicKey returns the public key the certificate will certify.
func (c *CSR) PublicKey() crypto.PublicKey {
	if c == nil || c.request == nil {
		return nil
	}
	return c.request.PublicKey
}

// ParseCSR validates a PEM or DER CSR: a good signature, an accepted key
// type, and exactly one SAN, a SPIFFE URI in this CA's trust domain. Callers
// authorize csr.Identity before calling Issue.
func (c *CA) ParseCSR(data []byte) (*CSR, error) {
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("CSR: unexpected PEM block %q", block.Type)
		}
		der = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: bad signature: %w", err)
	}
	if err := checkKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if n := len(req.DNSNames) + len(req.EmailAddresses) + len(req.IPAddresses); n > 0 {
		return nil, fmt.Errorf("CSR: carries %d DNS/email/IP SANs; only one SPIFFE URI SAN is allowed", n)
	}
	id, err := identity.FromURIs(req.URIs)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	if id.TrustDomain != c.opts.TrustDomain {
		return nil, fmt.Errorf("CSR: identity %s is outside trust domain %q", id, c.opts.TrustDomain)
	}
	return &CSR{Identity: id, request: req}, nil
}

// Issued is a signed workload certificate and the chain that goes with it.
type Issued struct {
	Leaf  *x509.Certificate
	Chain []*x509.Certificate // leaf first, then the CA chain, without the root
}

// PEM returns the chain PEM-encoded, leaf first.
func (i *Issued) PEM() []byte { return pemutil.EncodeCertificates(i.Chain) }

// Issue signs csr for ttl (DefaultTTL when zero). A ttl above MaxTTL is
// refused; a certificate never outlives the CA certificate.
func (c *CA) Issue(csr *CSR, ttl time.Duration) (*Issued, error) {
	if csr == nil || csr.request == nil {
		return nil, errors.New("issue: nil CSR; use ParseCSR")
	}
	switch {
	case ttl < 0:
		return nil, fmt.Errorf("issue: negative TTL %s", ttl)
	case ttl == 0:
		ttl = c.opts.DefaultTTL
	case ttl > c.opts.MaxTTL:
		return nil, fmt.Errorf("issue: requested TTL %s exceeds the maximum %s", ttl, c.opts.MaxTTL)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{csr.Identity.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.request.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue: sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue: parse: %w", err)
	}
	chain := append([]*x509.Certificate{leaf}, c.chain...)
	if len(chain) > 1 && isSelfSigned(chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	return &Issued{Leaf: leaf, Chain: chain}, nil
}

// Sign is ParseCSR followed by Issue, for callers that authorize nothing
// beyond the trust domain (tests, local tools).
func (c *CA) Sign(csrPEMOrDER []byte, ttl time.Duration) (*Issued, error) {
	csr, err := c.ParseCSR(csrPEMOrDER)
	if err != nil {
		return nil, err
	}
	return c.Issue(csr, ttl)
}

// checkKey accepts the key types Istio's CA accepts: ECDSA P-256/P-384 and
// RSA of 2048 to 4096 bits.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return fmt.Errorf("RSA key of %d bits not accepted (want 2048 to 4096)", n)
		}
	default:
		return fmt.Errorf("key type %T not accepted (want ECDSA P-256/P-384 or RSA)", pub)
	}
	return nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

// SignCSR implements workloadcert.Signer for a CA in the same process.
func (c *CA) SignCSR(_ context.Context, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	issued, err := c.Sign(csrPEM, ttl)
	if err != nil {
		return nil, err
	}
	return issued.Chain, nil
}
