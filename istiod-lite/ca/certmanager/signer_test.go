package certmanager_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ambit-mesh/ambit/istiod-lite/ca/certmanager"
	"github.com/ambit-mesh/ambit/pkg/ca"
)

// parsedCSR makes a workload CSR for id and parses it with pkg/ca, as the
// CA service does before any backend sees it.
func parsedCSR(t *testing.T, id string) (*ca.CSR, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	// Only the parser is used; the built-in CA signs nothing here.
	parser, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := parser.ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return csr, key
}

func newSigner(t *testing.T, cfg certmanager.Config) *certmanager.Signer {
	t.Helper()
	s, err := certmanager.NewForConfig(suite.env.RESTConfig(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// expectSigned checks a result: leaf for key and id, verifying to
// authority, which is the one root.
func expectSigned(t *testing.T, chain, roots []*x509.Certificate, err error, key *ecdsa.PrivateKey, id string, authority *testCA) *x509.Certificate {
	t.Helper()
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(chain) != 1 {
		t.Errorf("chain has %d certificates, want the leaf only (the CA signs directly; the root travels in roots)", len(chain))
	}
	if len(roots) != 1 || !roots[0].Equal(authority.cert) {
		t.Fatalf("roots %d, want exactly the issuer's CA", len(roots))
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("leaf is not for the CSR's key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("leaf URIs %v, want [%s]", leaf.URIs, id)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Errorf("leaf key usage %b lacks digital signature", leaf.KeyUsage)
	}
	pool := x509.NewCertPool()
	pool.AddCert(authority.cert)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("leaf does not verify to the cert-manager CA for usage %v: %v", u, err)
		}
	}
	return leaf
}

func TestSignWithIssuer(t *testing.T) {
	authority := caIssuer(t, approvedNS, "mesh-ca")
	s := newSigner(t, certmanager.Config{IssuerName: "mesh-ca", Namespace: approvedNS, Timeout: 20 * time.Second})
	id := "spiffe://cluster.local/ns/apps/sa/web"

	csr, key := parsedCSR(t, id)
	start := time.Now()
	chain, roots, err := s.Sign(ctxFor(t, 30*time.Second), csr, time.Hour)
	took := time.Since(start)
	leaf := expectSigned(t, chain, roots, err, key, id, authority)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour-time.Minute || life > time.Hour+6*time.Minute {
		t.Errorf("TTL 1h gave a %s certificate", life)
	}
	t.Logf("signed through cert-manager in %s", took.Round(time.Millisecond))
	expectNoRequestsLeft(t, approvedNS)

	// No TTL: the configured default (24h), not cert-manager's 90 days.
	csr, key = parsedCSR(t, id)
	chain, roots, err = s.Sign(ctxFor(t, 30*time.Second), csr, 0)
	leaf = expectSigned(t, chain, roots, err, key, id, authority)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 24*time.Hour-time.Minute || life > 24*time.Hour+6*time.Minute {
		t.Errorf("default TTL gave a %s certificate, want 24h", life)
	}
	expectNoRequestsLeft(t, approvedNS)

	// Out-of-range TTLs never reach the apiserver.
	for _, ttl := range []time.Duration{-time.Second, 91 * 24 * time.Hour} {
		if _, _, err := s.Sign(ctxFor(t, 5*time.Second), csr, ttl); !errors.Is(err, certmanager.ErrInvalid) {
			t.Errorf("TTL %s: %v, want ErrInvalid", ttl, err)
		}
	}
	if _, _, err := s.Sign(ctxFor(t, 5*time.Second), nil, 0); err == nil {
		t.Error("nil CSR accepted")
	}
}

func TestSignWithClusterIssuer(t *testing.T) {
	authority := caIssuer(t, "", "mesh-cluster-ca")
	s := newSigner(t, certmanager.Config{IssuerKind: certmanager.KindClusterIssuer, IssuerName: "mesh-cluster-ca", Namespace: approvedNS})
	id := "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
	csr, key := parsedCSR(t, id)
	chain, roots, err := s.Sign(ctxFor(t, 30*time.Second), csr, 2*time.Hour)
	expectSigned(t, chain, roots, err, key, id, authority)
	expectNoRequestsLeft(t, approvedNS)
}

// A reference to an issuer that does not exist: cert-manager approves the
// request and leaves it pending; the signer gives up after its timeout with
// an error that says so, and deletes the request.
func TestMissingIssuerTimesOut(t *testing.T) {
	s := newSigner(t, certmanager.Config{IssuerKind: certmanager.KindClusterIssuer, IssuerName: "no-such-issuer", Namespace: approvedNS, Timeout: 3 * time.Second})
	csr, _ := parsedCSR(t, "spiffe://cluster.local/ns/apps/sa/web")
	start := time.Now()
	_, _, err := s.Sign(ctxFor(t, 30*time.Second), csr, time.Hour)
	took := time.Since(start)
	if !errors.Is(err, certmanager.ErrTimeout) {
		t.Fatalf("missing issuer: %v, want ErrTimeout", err)
	}
	if took < 3*time.Second || took > 10*time.Second {
		t.Errorf("gave up after %s, want about the 3s timeout", took)
	}
	msg := err.Error()
	for _, want := range []string{"ClusterIssuer.cert-manager.io/no-such-issuer", "last state:"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	t.Logf("error: %v", err)
	expectNoRequestsLeft(t, approvedNS)

	// The caller's own deadline ends the wait first: a context error.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _, err = s.Sign(ctx, csr, time.Hour)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, certmanager.ErrTimeout) {
		t.Errorf("caller deadline: %v, want context.DeadlineExceeded", err)
	}
	expectNoRequestsLeft(t, approvedNS)
}

// A self-signed issuer needs the request to name its private key's Secret;
// cert-manager fails a request that does not: ErrFailed with its message.
func TestIssuerFailure(t *testing.T) {
	ctx := ctxFor(t, 30*time.Second)
	iss := &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: approvedNS, Name: "self"},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
	}
	if _, err := suite.cm.CertmanagerV1().Issuers(approvedNS).Create(ctx, iss, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIssuerReady(t, ctx, approvedNS, "self")
	s := newSigner(t, certmanager.Config{IssuerName: "self", Namespace: approvedNS, Timeout: 20 * time.Second})
	csr, _ := parsedCSR(t, "spiffe://cluster.local/ns/apps/sa/web")
	_, _, err := s.Sign(ctx, csr, time.Hour)
	if !errors.Is(err, certmanager.ErrFailed) {
		t.Fatalf("self-signed issuer without key annotation: %v, want ErrFailed", err)
	}
	if !strings.Contains(err.Error(), "cert-manager.io/private-key-secret-name") {
		t.Errorf("error %q does not carry cert-manager's reason (missing annotation)", err)
	}
	t.Logf("error: %v", err)
	expectNoRequestsLeft(t, approvedNS)
}

// In policyNS cert-manager's approver does not run; an external approver
// (here the test) decides. A denial comes back as ErrDenied carrying the
// approver's reason and message, and the request is deleted.
func TestDeniedByApprover(t *testing.T) {
	caIssuer(t, policyNS, "mesh-ca")
	s := newSigner(t, certmanager.Config{IssuerName: "mesh-ca", Namespace: policyNS, Timeout: 20 * time.Second})
	ctx := ctxFor(t, 30*time.Second)
	stop := runApprover(t, ctx, func(cr *cmapi.CertificateRequest) (cmapi.CertificateRequestConditionType, string) {
		if strings.HasSuffix(cr.Annotations[certmanager.IdentityAnnotation], "/sa/untrusted") {
			return cmapi.CertificateRequestConditionDenied, "service account untrusted may not get certificates"
		}
		return cmapi.CertificateRequestConditionApproved, "policy allows"
	})
	defer stop()

	csr, _ := parsedCSR(t, "spiffe://cluster.local/ns/apps/sa/untrusted")
	_, _, err := s.Sign(ctx, csr, time.Hour)
	if !errors.Is(err, certmanager.ErrDenied) {
		t.Fatalf("denied request: %v, want ErrDenied", err)
	}
	for _, want := range []string{"policy.ambit.test", "may not get certificates"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Logf("error: %v", err)
	expectNoRequestsLeft(t, policyNS)

	// The same issuer signs what the approver approves.
	csr, key := parsedCSR(t, "spiffe://cluster.local/ns/apps/sa/trusted")
	chain, roots, err := s.Sign(ctx, csr, time.Hour)
	if err != nil {
		t.Fatalf("approved request: %v", err)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) || len(roots) != 1 {
		t.Error("approved request: wrong leaf or roots")
	}
	expectNoRequestsLeft(t, policyNS)
}

// runApprover approves or denies every new CertificateRequest in policyNS
// as decide says, through the status subresource, as approver-policy does.
func runApprover(t *testing.T, ctx context.Context, decide func(*cmapi.CertificateRequest) (cmapi.CertificateRequestConditionType, string)) (stop func()) {
	t.Helper()
	crs := suite.cm.CertmanagerV1().CertificateRequests(policyNS)
	w, err := crs.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			cr, ok := ev.Object.(*cmapi.CertificateRequest)
			if !ok || ev.Type != watch.Added {
				continue
			}
			typ, msg := decide(cr)
			cr = cr.DeepCopy()
			now := metav1.Now()
			cr.Status.Conditions = append(cr.Status.Conditions, cmapi.CertificateRequestCondition{
				Type: typ, Status: cmmeta.ConditionTrue, Reason: "policy.ambit.test", Message: msg, LastTransitionTime: &now,
			})
			if _, err := crs.UpdateStatus(ctx, cr, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
				t.Errorf("approver: update %s: %v", cr.Name, err)
			}
		}
	}()
	return func() { w.Stop(); <-done }
}

// DeleteStale removes requests left by a crashed istiod-lite (labelled as
// ours and old enough) and nothing else.
func TestDeleteStale(t *testing.T) {
	ns := suite.env.Namespace(t, "stale-")
	ctx := ctxFor(t, 30*time.Second)
	csr, _ := parsedCSR(t, "spiffe://cluster.local/ns/apps/sa/web")
	mk := func(name string, labels map[string]string) {
		cr := &cmapi.CertificateRequest{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec: cmapi.CertificateRequestSpec{
				Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw()}),
				IssuerRef: cmmeta.IssuerReference{Name: "absent"},
			},
		}
		if _, err := suite.cm.CertmanagerV1().CertificateRequests(ns).Create(ctx, cr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("ours-1", map[string]string{certmanager.ManagedByLabel: certmanager.ManagedByValue})
	mk("ours-2", map[string]string{certmanager.ManagedByLabel: certmanager.ManagedByValue})
	mk("someone-elses", nil)
	s := newSigner(t, certmanager.Config{IssuerName: "absent", Namespace: ns})

	// Too young: kept (another replica may be waiting for them).
	if n, err := s.DeleteStale(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("DeleteStale(1h) = %d, %v; want 0", n, err)
	}
	time.Sleep(1100 * time.Millisecond) // creation timestamps have 1s resolution
	n, err := s.DeleteStale(ctx, time.Second)
	if err != nil || n != 2 {
		t.Fatalf("DeleteStale(1s) = %d, %v; want 2", n, err)
	}
	list, err := suite.cm.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "someone-elses" {
		t.Errorf("left after DeleteStale: %d requests, want only someone-elses", len(list.Items))
	}
}

func TestNewAndParseIssuerRef(t *testing.T) {
	if _, err := certmanager.New(nil, certmanager.Config{IssuerName: "x"}); err == nil {
		t.Error("nil client accepted")
	}
	if _, err := certmanager.New(suite.cm.CertmanagerV1(), certmanager.Config{}); err == nil {
		t.Error("no issuer name accepted")
	}
	if _, err := certmanager.New(suite.cm.CertmanagerV1(), certmanager.Config{IssuerName: "x", RootsPEM: []byte("garbage")}); err == nil {
		t.Error("garbage RootsPEM accepted")
	}
	s, err := certmanager.New(suite.cm.CertmanagerV1(), certmanager.Config{IssuerName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.Config()
	if cfg.IssuerKind != "Issuer" || cfg.IssuerGroup != "cert-manager.io" || cfg.Namespace != "istio-system" || cfg.Timeout <= 0 || cfg.DefaultTTL != ca.DefaultWorkloadTTL {
		t.Errorf("defaults: %+v", cfg)
	}

	for in, want := range map[string][3]string{
		"ClusterIssuer/mesh-ca": {"ClusterIssuer", "mesh-ca", ""},
		"Issuer/x":              {"Issuer", "x", ""},
		"AWSPCAClusterIssuer.awspca.cert-manager.io/pca": {"AWSPCAClusterIssuer", "pca", "awspca.cert-manager.io"},
	} {
		var c certmanager.Config
		if err := certmanager.ParseIssuerRef(in, &c); err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got := [3]string{c.IssuerKind, c.IssuerName, c.IssuerGroup}; got != want {
			t.Errorf("%s: %v, want %v", in, got, want)
		}
	}
	for _, bad := range []string{"", "mesh-ca", "/x", "Issuer/", "Issuer/a/b", ".g/x", "Issuer./x"} {
		var c certmanager.Config
		if err := certmanager.ParseIssuerRef(bad, &c); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The controller binary (tools/certmanager) and this package must use the
// same cert-manager release: the CRDs and the controllers come from one, the
// API types from the other.
func TestToolsModuleVersionMatches(t *testing.T) {
	main, err := requiredVersion(repoRoot())
	if err != nil {
		t.Fatal(err)
	}
	if main != suite.module {
		t.Errorf("tools/certmanager pins cert-manager %s, the main module %s: keep them equal", suite.module, main)
	}
}
