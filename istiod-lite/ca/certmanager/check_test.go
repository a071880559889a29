package certmanager

// Unit tests of the decisions on a CertificateRequest's status: which
// conditions end the wait, and which returned certificates are refused.
// The cluster tests (package certmanager_test) cover the real controller.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

func cond(t cmapi.CertificateRequestConditionType, s cmmeta.ConditionStatus, reason string) cmapi.CertificateRequestCondition {
	return cmapi.CertificateRequestCondition{Type: t, Status: s, Reason: reason, Message: "msg-" + reason}
}

func TestOutcome(t *testing.T) {
	now := metav1.Now()
	for _, tc := range []struct {
		name   string
		status cmapi.CertificateRequestStatus
		done   bool
		err    error
	}{
		{"fresh", cmapi.CertificateRequestStatus{}, false, nil},
		{"approved, pending", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "cert-manager.io"),
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonPending)}}, false, nil},
		{"ready without certificate yet", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued)}}, false, nil},
		{"issued", cmapi.CertificateRequestStatus{Certificate: []byte("x"), Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued)}}, true, nil},
		{"denied", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "policy")}}, true, ErrDenied},
		{"ready=false denied", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonDenied)}}, true, ErrDenied},
		{"invalid", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionInvalidRequest, cmmeta.ConditionTrue, "BadCSR")}}, true, ErrFailed},
		{"failed", cmapi.CertificateRequestStatus{Conditions: []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonFailed)}}, true, ErrFailed},
		{"failure time only", cmapi.CertificateRequestStatus{FailureTime: &now}, true, ErrFailed},
	} {
		done, err := outcome(&cmapi.CertificateRequest{Status: tc.status})
		if done != tc.done || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("%s: done=%v err=%v, want done=%v err=%v", tc.name, done, err, tc.done, tc.err)
		}
	}
	if done, _ := outcome(nil); done {
		t.Error("nil request has an outcome")
	}
}

type pair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func mkCert(t *testing.T, tmpl *x509.Certificate, parent *pair, pub *ecdsa.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	signer, signerCert := parent.key, parent.cert
	if signerCert == nil {
		signerCert = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCheck(t *testing.T) {
	const id = "spiffe://cluster.local/ns/a/sa/b"
	u, _ := url.Parse(id)
	other, _ := url.Parse("spiffe://cluster.local/ns/a/sa/other")

	rootKey := newKey(t)
	root := &pair{key: rootKey}
	root.cert = mkCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, root, &rootKey.PublicKey)
	interKey := newKey(t)
	inter := &pair{key: interKey, cert: mkCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "inter"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, root, &interKey.PublicKey)}
	strangerKey := newKey(t)
	stranger := &pair{key: strangerKey}
	stranger.cert = mkCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "stranger"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, stranger, &strangerKey.PublicKey)

	wkey := newKey(t)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, wkey)
	if err != nil {
		t.Fatal(err)
	}
	parser, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := parser.ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := func() *x509.Certificate {
		return &x509.Certificate{URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	}
	good := mkCert(t, leafTmpl(), inter, &wkey.PublicKey)
	enc := func(cs ...*x509.Certificate) []byte { return pemutil.EncodeCertificates(cs) }

	s := &Signer{} // check only reads the configured roots
	// Leaf, intermediate and root in status.certificate, root in status.ca:
	// the root is dropped from the chain.
	chain, roots, err := s.check(csr, &cmapi.CertificateRequest{Status: cmapi.CertificateRequestStatus{Certificate: enc(good, inter.cert, root.cert), CA: enc(root.cert)}})
	if err != nil {
		t.Fatalf("good chain: %v", err)
	}
	if len(chain) != 2 || !chain[0].Equal(good) || !chain[1].Equal(inter.cert) || len(roots) != 1 || !roots[0].Equal(root.cert) {
		t.Errorf("good chain: got %d certs, %d roots", len(chain), len(roots))
	}
	// No status.ca: the configured roots are used, or refused when none.
	if _, _, err := s.check(csr, &cmapi.CertificateRequest{Status: cmapi.CertificateRequestStatus{Certificate: enc(good, inter.cert)}}); !errors.Is(err, ErrFailed) {
		t.Errorf("no CA and no configured roots: %v", err)
	}
	withRoots := &Signer{roots: []*x509.Certificate{root.cert}}
	if _, roots, err := withRoots.check(csr, &cmapi.CertificateRequest{Status: cmapi.CertificateRequestStatus{Certificate: enc(good, inter.cert)}}); err != nil || len(roots) != 1 || !roots[0].Equal(root.cert) {
		t.Errorf("configured roots: %v", err)
	}

	wrongKey := mkCert(t, leafTmpl(), inter, &newKey(t).PublicKey)
	wrongID := leafTmpl()
	wrongID.URIs = []*url.URL{other}
	extraDNS := leafTmpl()
	extraDNS.DNSNames = []string{"web.example"}
	caLeaf := leafTmpl()
	caLeaf.IsCA, caLeaf.BasicConstraintsValid = true, true
	serverOnly := leafTmpl()
	serverOnly.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for name, st := range map[string]cmapi.CertificateRequestStatus{
		"garbage certificate":  {Certificate: []byte("garbage"), CA: enc(root.cert)},
		"garbage CA":           {Certificate: enc(good, inter.cert), CA: []byte("garbage")},
		"another key":          {Certificate: enc(wrongKey, inter.cert), CA: enc(root.cert)},
		"another identity":     {Certificate: enc(mkCert(t, wrongID, inter, &wkey.PublicKey), inter.cert), CA: enc(root.cert)},
		"extra DNS SAN":        {Certificate: enc(mkCert(t, extraDNS, inter, &wkey.PublicKey), inter.cert), CA: enc(root.cert)},
		"CA certificate":       {Certificate: enc(mkCert(t, caLeaf, inter, &wkey.PublicKey), inter.cert), CA: enc(root.cert)},
		"server auth only":     {Certificate: enc(mkCert(t, serverOnly, inter, &wkey.PublicKey), inter.cert), CA: enc(root.cert)},
		"missing intermediate": {Certificate: enc(good), CA: enc(root.cert)},
		"CA is someone else's": {Certificate: enc(good, inter.cert), CA: enc(stranger.cert)},
		"signed by a stranger": {Certificate: enc(mkCert(t, leafTmpl(), stranger, &wkey.PublicKey)), CA: enc(root.cert)},
	} {
		if _, _, err := s.check(csr, &cmapi.CertificateRequest{Status: st}); !errors.Is(err, ErrFailed) {
			t.Errorf("%s: %v, want ErrFailed", name, err)
		}
	}
}
