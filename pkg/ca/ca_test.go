package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

const testID = "spiffe://cluster.local/ns/default/sa/web"

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrPEM builds a real, correctly signed CSR from tmpl.
func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func goodCSR(t testing.TB, id string) []byte {
	return csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, id)}})
}

func newCA(t testing.TB, opts ca.Options) *ca.CA {
	t.Helper()
	c, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatalf("NewSelfSigned: %v", err)
	}
	return c
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// verify checks leaf against roots the way a peer would, for one usage.
func verify(leaf *x509.Certificate, intermediates []*x509.Certificate, roots []*x509.Certificate, usage x509.ExtKeyUsage) error {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool(roots...), Intermediates: pool(intermediates...), KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestIssueDefaults(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	if c.TrustDomain() != identity.DefaultTrustDomain {
		t.Fatalf("TrustDomain() = %q, want %q", c.TrustDomain(), identity.DefaultTrustDomain)
	}
	issued, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	leaf := issued.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != testID {
		t.Fatalf("leaf URIs = %v, want exactly [%s]", leaf.URIs, testID)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Fatalf("leaf carries extra SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if ttl := time.Until(leaf.NotAfter); ttl < 24*time.Hour-time.Minute || ttl > 24*time.Hour+time.Minute {
		t.Fatalf("leaf lifetime from now = %s, want ~24h", ttl)
	}
	if !leaf.NotBefore.Before(time.Now()) {
		t.Fatalf("NotBefore %s is not in the past", leaf.NotBefore)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Fatalf("leaf IsCA=%v BasicConstraintsValid=%v, want a non-CA with basic constraints", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Fatal("leaf may sign certificates")
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verify(leaf, nil, c.Roots(), usage); err != nil {
			t.Fatalf("verify for usage %v: %v", usage, err)
		}
	}
	// The chain leaves the root out; for a self-signed CA that is just the leaf.
	if len(issued.Chain) != 1 || !issued.Chain[0].Equal(leaf) {
		t.Fatalf("chain has %d certificates, want [leaf]", len(issued.Chain))
	}
	certs, err := pemutil.ParseCertificates(issued.PEM())
	if err != nil || len(certs) != 1 || !certs[0].Equal(leaf) {
		t.Fatalf("Issued.PEM() does not decode to the chain: %v", err)
	}
	// Serial numbers are random and distinct.
	again, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	if again.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("two certificates share a serial number")
	}
	if leaf.SerialNumber.Sign() <= 0 {
		t.Fatalf("serial %v not positive", leaf.SerialNumber)
	}
}

func TestIssueUsesCSRKeyAndParsedIdentity(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	key := ecKey(t)
	csr, err := c.ParseCSR(csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, testID)}}))
	if err != nil {
		t.Fatalf("ParseCSR: %v", err)
	}
	if csr.Identity != (identity.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}) {
		t.Fatalf("CSR identity = %+v", csr.Identity)
	}
	issued, err := c.Issue(csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(issued.Leaf.PublicKey) {
		t.Fatal("leaf is not for the CSR's key")
	}
	if _, err := c.Issue(nil, 0); err == nil {
		t.Fatal("Issue(nil) succeeded")
	}
	if _, err := c.Issue(&ca.CSR{Identity: csr.Identity}, 0); err == nil {
		t.Fatal("Issue of a CSR not from ParseCSR succeeded")
	}
}

func TestCSRRawAndPublicKey(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	key := ecKey(t)
	pemCSR := csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, testID)}})
	csr, err := c.ParseCSR(pemCSR)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemCSR)
	raw := csr.Raw()
	if !bytes.Equal(raw, block.Bytes) {
		t.Fatal("Raw is not the CSR's DER")
	}
	raw[0] ^= 0xff // a copy: changing it leaves the CSR alone
	if !bytes.Equal(csr.Raw(), block.Bytes) {
		t.Fatal("Raw shares memory with the CSR")
	}
	if !key.PublicKey.Equal(csr.PublicKey()) {
		t.Fatal("PublicKey is not the CSR's key")
	}
	var zero *ca.CSR
	if zero.Raw() != nil || zero.PublicKey() != nil || (&ca.CSR{}).Raw() != nil {
		t.Fatal("nil or unparsed CSR has a Raw or PublicKey")
	}
}

func TestSignAcceptsDERAndKeyTypes(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"P-256": ecKey(t), "P-384": p384, "RSA-2048": rsa2048} {
		pemCSR := csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, testID)}})
		block, _ := pem.Decode(pemCSR)
		if _, err := c.Sign(block.Bytes, 0); err != nil {
			t.Errorf("%s: Sign(DER): %v", name, err)
		}
		if _, err := c.SignCSR(t.Context(), pemCSR, 0); err != nil {
			t.Errorf("%s: SignCSR(PEM): %v", name, err)
		}
	}
	// The legacy PEM type is accepted too.
	block, _ := pem.Decode(goodCSR(t, testID))
	legacy := pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: block.Bytes})
	if _, err := c.Sign(legacy, 0); err != nil {
		t.Errorf("NEW CERTIFICATE REQUEST: %v", err)
	}
}

func TestTTL(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	within := func(t *testing.T, got, want time.Duration) {
		t.Helper()
		if got < want-time.Minute || got > want+time.Minute {
			t.Fatalf("lifetime %s, want ~%s", got, want)
		}
	}
	issued, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	within(t, time.Until(issued.Leaf.NotAfter), time.Hour)

	issued, err = c.Sign(goodCSR(t, testID), 90*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	within(t, time.Until(issued.Leaf.NotAfter), 90*time.Minute)

	issued, err = c.Sign(goodCSR(t, testID), 2*time.Hour)
	if err != nil {
		t.Fatalf("TTL equal to MaxTTL: %v", err)
	}
	within(t, time.Until(issued.Leaf.NotAfter), 2*time.Hour)

	if _, err := c.Sign(goodCSR(t, testID), 2*time.Hour+time.Second); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("TTL above MaxTTL: err = %v, want refusal", err)
	}
	if _, err := c.Sign(goodCSR(t, testID), -time.Second); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("negative TTL: err = %v, want refusal", err)
	}

	// Default MaxTTL is 90 days.
	d := newCA(t, ca.Options{})
	if _, err := d.Sign(goodCSR(t, testID), ca.DefaultMaxTTL); err != nil {
		t.Fatalf("TTL = DefaultMaxTTL: %v", err)
	}
	if _, err := d.Sign(goodCSR(t, testID), ca.DefaultMaxTTL+time.Hour); err == nil {
		t.Fatal("TTL above DefaultMaxTTL accepted")
	}

	// A DefaultTTL above MaxTTL raises MaxTTL rather than making every default request fail.
	e := newCA(t, ca.Options{DefaultTTL: 3 * time.Hour, MaxTTL: time.Hour})
	issued, err = e.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	within(t, time.Until(issued.Leaf.NotAfter), 3*time.Hour)
}

func TestOptionsNow(t *testing.T) {
	t.Parallel()
	past := time.Now().Add(-72 * time.Hour).Truncate(time.Second)
	c := newCA(t, ca.Options{Now: func() time.Time { return past }})
	issued, err := c.Sign(goodCSR(t, testID), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.Leaf.NotAfter.Equal(past.Add(time.Hour)) || !issued.Leaf.NotBefore.Equal(past.Add(-time.Minute)) {
		t.Fatalf("validity [%s, %s], want [%s, %s]", issued.Leaf.NotBefore, issued.Leaf.NotAfter, past.Add(-time.Minute), past.Add(time.Hour))
	}
	if err := verify(issued.Leaf, nil, c.Roots(), x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("expired leaf verified")
	}
}

// A certificate never outlives the certificate that signed it.
func TestNeverOutlivesCA(t *testing.T) {
	t.Parallel()
	// A root created 10 years minus 1h ago expires in an hour.
	old := newCA(t, ca.Options{Now: func() time.Time { return time.Now().Add(-ca.DefaultRootTTL + time.Hour) }})
	c, err := ca.Load(old.CertPEM(), old.KeyPEM(), nil, old.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	root := c.Roots()[0]
	if time.Until(root.NotAfter) > 2*time.Hour {
		t.Fatalf("test setup: root expires in %s", time.Until(root.NotAfter))
	}
	issued, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	if issued.Leaf.NotAfter.After(root.NotAfter) {
		t.Fatalf("leaf NotAfter %s is after the CA's %s", issued.Leaf.NotAfter, root.NotAfter)
	}
	if !issued.Leaf.NotAfter.Equal(root.NotAfter) {
		t.Fatalf("leaf NotAfter %s, want clamped to CA NotAfter %s", issued.Leaf.NotAfter, root.NotAfter)
	}
	if err := verify(issued.Leaf, nil, c.Roots(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
}

func TestParseCSRRefusals(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	id := mustURL(t, testID)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tampered := func() []byte {
		block, _ := pem.Decode(goodCSR(t, testID))
		der := bytes.Clone(block.Bytes)
		der[len(der)-1] ^= 0x01 // last byte of the signature value
		if _, err := x509.ParseCertificateRequest(der); err != nil {
			t.Fatalf("test setup: tampered CSR no longer parses: %v", err)
		}
		return der
	}()
	tamperedSubject := func() []byte {
		// Change the identity after signing: same length, so the DER stays well-formed.
		block, _ := pem.Decode(goodCSR(t, "spiffe://cluster.local/ns/default/sa/aaa"))
		der := bytes.Replace(block.Bytes, []byte("/sa/aaa"), []byte("/sa/bbb"), 1)
		req, err := x509.ParseCertificateRequest(der)
		if err != nil || req.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/bbb" {
			t.Fatalf("test setup: %v %v", err, req)
		}
		return der
	}()

	tests := []struct {
		name    string
		csr     []byte
		wantErr string
	}{
		{"extra DNS SAN", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{id}, DNSNames: []string{"web.default.svc"}}), "DNS/email/IP"},
		{"IP SAN", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{id}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), "DNS/email/IP"},
		{"email SAN", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{id}, EmailAddresses: []string{"a@b.c"}}), "DNS/email/IP"},
		{"only DNS SAN", csrPEM(t, ecKey(t), &x509.CertificateRequest{DNSNames: []string{"web"}}), "DNS/email/IP"},
		{"two URI SANs", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{id, mustURL(t, "spiffe://cluster.local/ns/default/sa/admin")}}), "exactly one URI SAN"},
		{"non-SPIFFE URI", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "https://cluster.local/ns/default/sa/web")}}), "scheme"},
		{"malformed SPIFFE ID", csrPEM(t, ecKey(t), &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://cluster.local/ns/default/sa/web/extra")}}), "path"},
		{"zero SANs", csrPEM(t, ecKey(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}}), "exactly one URI SAN"},
		{"other trust domain", goodCSR(t, "spiffe://evil.example/ns/default/sa/web"), "outside trust domain"},
		{"sub trust domain", goodCSR(t, "spiffe://sub.cluster.local/ns/default/sa/web"), "outside trust domain"},
		{"tampered signature", tampered, "bad signature"},
		{"identity changed after signing", tamperedSubject, "bad signature"},
		{"RSA-1024", csrPEM(t, rsa1024, &x509.CertificateRequest{URIs: []*url.URL{id}}), "1024 bits"},
		{"ECDSA P-224", csrPEM(t, p224, &x509.CertificateRequest{URIs: []*url.URL{id}}), "P-224"},
		{"Ed25519", csrPEM(t, ed, &x509.CertificateRequest{URIs: []*url.URL{id}}), "ed25519"},
		{"garbage", []byte("\x30\x82\x01\x00garbage bytes"), "CSR"},
		{"empty", nil, "CSR"},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: func() []byte { b, _ := pem.Decode(goodCSR(t, testID)); return b.Bytes }()}), `unexpected PEM block "CERTIFICATE"`},
		{"private key PEM", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "unexpected PEM block"},
		{"PEM with garbage body", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte("not DER")}), "CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			csr, err := c.ParseCSR(tt.csr)
			if err == nil {
				t.Fatalf("ParseCSR accepted it: identity %s", csr.Identity)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
			if issued, err := c.Sign(tt.csr, 0); err == nil {
				t.Fatalf("Sign issued %v", issued.Leaf.URIs)
			}
			if chain, err := c.SignCSR(t.Context(), tt.csr, 0); err == nil || chain != nil {
				t.Fatalf("SignCSR = %d certs, %v", len(chain), err)
			}
		})
	}
}

func TestOtherTrustDomainCA(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{TrustDomain: "example.org"})
	if _, err := c.Sign(goodCSR(t, testID), 0); err == nil {
		t.Fatal("example.org CA signed a cluster.local identity")
	}
	issued, err := c.Sign(goodCSR(t, "spiffe://example.org/ns/a/sa/b"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(issued.Leaf, nil, c.Roots(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
}

// forge signs a leaf with the CA's own key directly, bypassing ParseCSR, to
// show that the root's name constraints confine it to its trust domain.
func forge(t *testing.T, c *ca.CA, uri string) *x509.Certificate {
	t.Helper()
	key, err := pemutil.ParsePrivateKey(c.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	parent := c.Roots()[0]
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{mustURL(t, uri)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, ecKey(t).Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func TestNameConstraints(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{})
	root := c.Roots()[0]
	if len(root.PermittedURIDomains) != 1 || root.PermittedURIDomains[0] != "cluster.local" {
		t.Fatalf("root PermittedURIDomains = %v", root.PermittedURIDomains)
	}
	// Control: a forged leaf inside the trust domain does verify, so the
	// failures below are due to the constraint and not the forging.
	if err := verify(forge(t, c, testID), nil, c.Roots(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatalf("in-domain forged leaf: %v", err)
	}
	for _, uri := range []string{
		"spiffe://evil.example/ns/default/sa/web",
		"spiffe://cluster.local.evil/ns/default/sa/web",
		"spiffe://evilcluster.local/ns/default/sa/web",
		// Not asserted: Go applies URI constraints like DNS ones, so
		// "cluster.local" also permits sub.cluster.local (a distinct trust
		// domain, which SPIFFE verifiers look up in its own bundle).
	} {
		err := verify(forge(t, c, uri), nil, c.Roots(), x509.ExtKeyUsageServerAuth)
		var inv x509.CertificateInvalidError
		if !errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName {
			t.Errorf("%s: verify error = %v, want CANotAuthorizedForThisName", uri, err)
		}
	}
}

func TestRootProperties(t *testing.T) {
	t.Parallel()
	c := newCA(t, ca.Options{TrustDomain: "example.org"})
	roots := c.Roots()
	if len(roots) != 1 {
		t.Fatalf("%d roots", len(roots))
	}
	r := roots[0]
	if !r.IsCA || r.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatal("root is not a CA")
	}
	if k, ok := r.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("root key %T, want ECDSA P-256", r.PublicKey)
	}
	if err := r.CheckSignatureFrom(r); err != nil {
		t.Fatalf("root is not self-signed: %v", err)
	}
	if d := time.Until(r.NotAfter); d < ca.DefaultRootTTL-time.Hour || d > ca.DefaultRootTTL+time.Hour {
		t.Fatalf("root lifetime %s", d)
	}
	// Roots() is a copy.
	roots[0] = nil
	if c.Roots()[0] == nil {
		t.Fatal("Roots() exposes internal slice")
	}
	// PEM accessors agree with each other.
	fromPEM, err := pemutil.ParseCertificates(c.RootsPEM())
	if err != nil || len(fromPEM) != 1 || !fromPEM[0].Equal(r) {
		t.Fatalf("RootsPEM: %v", err)
	}
	if !bytes.Equal(c.CertPEM(), c.RootsPEM()) {
		t.Fatal("self-signed CA: CertPEM != RootsPEM")
	}
	key, err := pemutil.ParsePrivateKey(c.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(r.PublicKey) {
		t.Fatal("KeyPEM does not match the root")
	}
	kp := c.KeyPEM()
	kp[0] = 'X'
	if c.KeyPEM()[0] == 'X' {
		t.Fatal("KeyPEM() exposes internal buffer")
	}
	// Two CAs get different roots.
	if other := newCA(t, ca.Options{TrustDomain: "example.org"}); other.Roots()[0].Equal(r) {
		t.Fatal("two NewSelfSigned calls produced the same root")
	}
}

// Restarting with the persisted PEM keeps the root: new certificates verify
// under the roots published before the restart.
func TestLoadRoundTrip(t *testing.T) {
	t.Parallel()
	orig := newCA(t, ca.Options{})
	loaded, err := ca.Load(orig.CertPEM(), orig.KeyPEM(), nil, orig.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(loaded.RootsPEM(), orig.RootsPEM()) || !bytes.Equal(loaded.CertPEM(), orig.CertPEM()) {
		t.Fatal("loaded CA publishes different roots")
	}
	issued, err := loaded.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(issued.Chain) != 1 {
		t.Fatalf("chain has %d certs, want the leaf only (never the root)", len(issued.Chain))
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verify(issued.Leaf, nil, orig.Roots(), usage); err != nil {
			t.Fatalf("leaf from reloaded CA does not verify under the original roots: %v", err)
		}
	}
	// Passing the root again as an "intermediate" must not put it in the chain.
	loaded2, err := ca.Load(orig.CertPEM(), orig.KeyPEM(), orig.CertPEM(), orig.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if issued, err := loaded2.Sign(goodCSR(t, testID), 0); err != nil || len(issued.Chain) != 1 {
		t.Fatalf("chain = %v, %v; want the leaf only", issued, err)
	}
}

// intermediate creates a CA certificate for key signed by parent/parentKey.
func intermediate(t *testing.T, parent *x509.Certificate, parentKey crypto.Signer, key crypto.Signer, notAfter time.Time, mutate func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "ambit intermediate"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if mutate != nil {
		mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := pemutil.EncodeECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadIntermediate(t *testing.T) {
	t.Parallel()
	root := newCA(t, ca.Options{})
	rootKey, err := pemutil.ParsePrivateKey(root.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	interKey := ecKey(t)
	inter := intermediate(t, root.Roots()[0], rootKey, interKey, time.Now().Add(365*24*time.Hour), nil)
	interPEM := pemutil.EncodeCertificates([]*x509.Certificate{inter})

	c, err := ca.Load(interPEM, keyPEM(t, interKey), nil, root.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatalf("Load intermediate: %v", err)
	}
	if !bytes.Equal(c.RootsPEM(), root.RootsPEM()) {
		t.Fatal("intermediate CA does not publish the root as its trust anchor")
	}
	issued, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(issued.Chain) != 2 || !issued.Chain[0].Equal(issued.Leaf) || !issued.Chain[1].Equal(inter) {
		t.Fatalf("chain has %d certs, want [leaf, intermediate]", len(issued.Chain))
	}
	if err := issued.Leaf.CheckSignatureFrom(inter); err != nil {
		t.Fatalf("leaf not signed by the intermediate: %v", err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verify(issued.Leaf, issued.Chain[1:], root.Roots(), usage); err != nil {
			t.Fatalf("leaf does not verify to the root through the chain: %v", err)
		}
	}
	// Without the intermediate, the leaf alone does not verify: the chain is needed.
	if err := verify(issued.Leaf, nil, root.Roots(), x509.ExtKeyUsageServerAuth); err == nil {
		t.Fatal("leaf verified without its intermediate")
	}
	// The root's name constraints still apply below the intermediate.
	if _, err := c.Sign(goodCSR(t, "spiffe://evil.example/ns/a/sa/b"), 0); err == nil {
		t.Fatal("intermediate signed another trust domain")
	}

	// Passing the root in the intermediates bundle does not ship it in the chain.
	c2, err := ca.Load(interPEM, keyPEM(t, interKey), root.RootsPEM(), root.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if issued, err := c2.Sign(goodCSR(t, testID), 0); err != nil || len(issued.Chain) != 2 {
		t.Fatalf("chain = %v, %v; want [leaf, intermediate]", issued, err)
	}
}

func TestLoadIntermediateClampsLifetime(t *testing.T) {
	t.Parallel()
	root := newCA(t, ca.Options{})
	rootKey, err := pemutil.ParsePrivateKey(root.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	interKey := ecKey(t)
	inter := intermediate(t, root.Roots()[0], rootKey, interKey, time.Now().Add(2*time.Hour), nil)
	c, err := ca.Load(pemutil.EncodeCertificates([]*x509.Certificate{inter}), keyPEM(t, interKey), nil, root.RootsPEM(), ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := c.Sign(goodCSR(t, testID), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.Leaf.NotAfter.Equal(inter.NotAfter) {
		t.Fatalf("leaf NotAfter %s, want the intermediate's %s", issued.Leaf.NotAfter, inter.NotAfter)
	}
}

func TestLoadRefusals(t *testing.T) {
	t.Parallel()
	root := newCA(t, ca.Options{})
	rootKey, err := pemutil.ParsePrivateKey(root.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	other := newCA(t, ca.Options{})
	otherKey, err := pemutil.ParsePrivateKey(other.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	interKey := ecKey(t)
	year := time.Now().Add(365 * 24 * time.Hour)

	// An intermediate signed by another root does not chain to ours.
	foreign := intermediate(t, other.Roots()[0], otherKey, interKey, year, nil)
	// A certificate signed by our root that is not a CA.
	notCA := intermediate(t, root.Roots()[0], rootKey, interKey, year, func(c *x509.Certificate) {
		c.IsCA = false
		c.KeyUsage = x509.KeyUsageDigitalSignature
	})
	// A CA that may not sign certificates.
	noCertSign := intermediate(t, root.Roots()[0], rootKey, interKey, year, func(c *x509.Certificate) {
		c.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign
	})
	enc := func(c ...*x509.Certificate) []byte { return pemutil.EncodeCertificates(c) }

	tests := []struct {
		name                       string
		cert, key, inters, rootPEM []byte
		wantErr                    string
	}{
		{"mismatched key", root.CertPEM(), other.KeyPEM(), nil, root.RootsPEM(), "does not match"},
		{"intermediate with wrong key", enc(intermediate(t, root.Roots()[0], rootKey, interKey, year, nil)), root.KeyPEM(), nil, root.RootsPEM(), "does not match"},
		{"not a CA", enc(notCA), keyPEM(t, interKey), nil, root.RootsPEM(), "not a CA"},
		{"no keyCertSign", enc(noCertSign), keyPEM(t, interKey), nil, root.RootsPEM(), "not a CA"},
		{"intermediate does not chain", enc(foreign), keyPEM(t, interKey), nil, root.RootsPEM(), "does not chain"},
		{"self-signed root against other roots", root.CertPEM(), root.KeyPEM(), nil, other.RootsPEM(), "does not chain"},
		{"no roots", root.CertPEM(), root.KeyPEM(), nil, nil, "roots"},
		{"garbage roots", root.CertPEM(), root.KeyPEM(), nil, []byte("garbage"), "roots"},
		{"key in roots", root.CertPEM(), root.KeyPEM(), nil, root.KeyPEM(), "roots"},
		{"no cert", nil, root.KeyPEM(), nil, root.RootsPEM(), "CA certificate"},
		{"two certs", append(root.CertPEM(), other.CertPEM()...), root.KeyPEM(), nil, root.RootsPEM(), "exactly one"},
		{"key as cert", root.KeyPEM(), root.KeyPEM(), nil, root.RootsPEM(), "CA certificate"},
		{"no key", root.CertPEM(), nil, nil, root.RootsPEM(), "CA key"},
		{"cert as key", root.CertPEM(), root.CertPEM(), nil, root.RootsPEM(), "CA key"},
		{"garbage intermediates", root.CertPEM(), root.KeyPEM(), []byte("-----BEGIN X-----\nAAAA\n-----END X-----\n"), root.RootsPEM(), "intermediates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := ca.Load(tt.cert, tt.key, tt.inters, tt.rootPEM, ca.Options{})
			if err == nil {
				t.Fatalf("Load succeeded (trust domain %s)", c.TrustDomain())
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}
