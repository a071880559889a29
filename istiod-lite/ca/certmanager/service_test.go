package certmanager_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	caservice "github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/istiod-lite/ca/certmanager"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// serveCA runs istiod-lite's CA gRPC service with signer behind it, on
// loopback with TLS, and returns a client. builtin parses CSRs (trust
// domain) and issues the serving certificate.
func serveCA(t *testing.T, builtin *ca.CA, signer caservice.Signer) pb.IstioCertificateServiceClient {
	t.Helper()
	svc, err := caservice.NewService(caservice.Options{
		CA:            builtin,
		Signer:        signer,
		Authenticator: auth.New(suite.env.Client.AuthenticationV1()),
		Pods:          caservice.APIPodLookup{Pods: suite.env.Client.CoreV1()},
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := caservice.ServingTLSConfig(builtin, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)))
	svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	roots := x509.NewCertPool()
	for _, r := range builtin.Roots() {
		roots.AddCert(r)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

func csrPEM(t *testing.T, id string) (string, *ecdsa.PrivateKey) {
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
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

func createCert(client pb.IstioCertificateServiceClient, token, csr string, validity int64) (*pb.IstioCertificateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	return client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: validity})
}

// A workload asks istiod-lite's CA service for its certificate; cert-manager
// signs it with a CA Issuer. The response is leaf then cert-manager's CA,
// the leaf verifies to that CA and carries the workload's SPIFFE ID, and
// the built-in root signs nothing.
func TestCAServiceWithCertManager(t *testing.T) {
	env := suite.env
	authority := caIssuer(t, approvedNS, "mesh-ca-svc")
	builtin, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	signer := newSigner(t, certmanager.Config{IssuerName: "mesh-ca-svc", Namespace: approvedNS, Timeout: 5 * time.Second})
	client := serveCA(t, builtin, signer)

	apps := env.Namespace(t, "apps-")
	pod := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "web-1", Node: "node-a", ServiceAccount: "web"})
	token := env.Token(t, apps, "web", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: pod})
	id := "spiffe://cluster.local/ns/" + apps + "/sa/web"

	csr, key := csrPEM(t, id)
	start := time.Now()
	resp, err := createCert(client, token, csr, 3600)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	t.Logf("CreateCertificate through cert-manager took %s", time.Since(start).Round(time.Millisecond))
	chain := resp.GetCertChain()
	if len(chain) != 2 {
		t.Fatalf("cert chain has %d elements, want leaf and cert-manager's CA", len(chain))
	}
	if chain[1] != string(authority.certPEM) {
		t.Errorf("last element is not cert-manager's CA:\n%s", chain[1])
	}
	certs, err := pemutil.ParseCertificates([]byte(chain[0]))
	if err != nil || len(certs) != 1 {
		t.Fatalf("leaf: %v", err)
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("leaf URIs %v, want [%s]", leaf.URIs, id)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("leaf is not for the CSR's key")
	}
	pool := x509.NewCertPool()
	pool.AddCert(authority.cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify to cert-manager's CA: %v", err)
	}
	builtinPool := x509.NewCertPool()
	for _, r := range builtin.Roots() {
		builtinPool.AddCert(r)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: builtinPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Error("leaf verifies to the built-in root: the built-in CA signed it")
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour-time.Minute || life > time.Hour+6*time.Minute {
		t.Errorf("validity 3600s gave a %s certificate", life)
	}
	expectNoRequestsLeft(t, approvedNS)

	// The CA service validates and authorizes before cert-manager sees
	// anything: no CertificateRequest is created for these.
	w, err := suite.cm.CertmanagerV1().CertificateRequests(approvedNS).Watch(ctxFor(t, 30*time.Second), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	otherTD, _ := csrPEM(t, "spiffe://other.domain/ns/"+apps+"/sa/web")
	_, err = createCert(client, token, otherTD, 3600)
	expectCode(t, "other trust domain", err, codes.InvalidArgument, "trust domain")
	someoneElse, _ := csrPEM(t, "spiffe://cluster.local/ns/"+apps+"/sa/db")
	_, err = createCert(client, token, someoneElse, 3600)
	expectCode(t, "another identity", err, codes.PermissionDenied, "own identity")
	_, err = createCert(client, "garbage", csr, 3600)
	expectCode(t, "bad token", err, codes.Unauthenticated, "")
	_, err = createCert(client, token, csr, 100*24*3600)
	expectCode(t, "validity above the maximum", err, codes.InvalidArgument, "maximum")
	// A request that does reach cert-manager marks the end of the events to look at.
	marker, _ := csrPEM(t, id)
	if _, err := createCert(client, token, marker, 3600); err != nil {
		t.Fatalf("marker request: %v", err)
	}
	added := 0
	for ev := range w.ResultChan() {
		if ev.Type != watch.Added {
			continue
		}
		added++
		if cr, ok := ev.Object.(*cmapi.CertificateRequest); ok && cr.Annotations[certmanager.IdentityAnnotation] == id {
			break
		}
	}
	w.Stop()
	if added != 1 {
		t.Errorf("%d CertificateRequests created for 4 refused requests and 1 good one, want 1", added)
	}
}

// cert-manager's refusals reach the workload as gRPC codes: denied →
// PermissionDenied, failed → FailedPrecondition, no issuer → Unavailable.
func TestCAServiceCertManagerErrors(t *testing.T) {
	env := suite.env
	builtin, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	apps := env.Namespace(t, "apps-")
	pod := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "web-1", Node: "node-a", ServiceAccount: "web"})
	token := env.Token(t, apps, "web", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: pod})
	id := "spiffe://cluster.local/ns/" + apps + "/sa/web"

	// Denied by the (test's) approver in policyNS.
	caIssuer(t, policyNS, "mesh-ca-deny")
	stop := runApprover(t, ctxFor(t, 30*time.Second), func(*cmapi.CertificateRequest) (cmapi.CertificateRequestConditionType, string) {
		return cmapi.CertificateRequestConditionDenied, "no certificates for " + apps
	})
	defer stop()
	denying := serveCA(t, builtin, newSigner(t, certmanager.Config{IssuerName: "mesh-ca-deny", Namespace: policyNS, Timeout: 10 * time.Second}))
	csr, _ := csrPEM(t, id)
	_, err = createCert(denying, token, csr, 3600)
	expectCode(t, "denied", err, codes.PermissionDenied, "no certificates for "+apps)
	expectNoRequestsLeft(t, policyNS)

	// Failed by the issuer: a self-signed issuer needs a key annotation.
	ctx := ctxFor(t, 30*time.Second)
	self := &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: approvedNS, Name: "self-svc"},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
	}
	if _, err := suite.cm.CertmanagerV1().Issuers(approvedNS).Create(ctx, self, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitIssuerReady(t, ctx, approvedNS, "self-svc")
	failing := serveCA(t, builtin, newSigner(t, certmanager.Config{IssuerName: "self-svc", Namespace: approvedNS, Timeout: 10 * time.Second}))
	_, err = createCert(failing, token, csr, 3600)
	expectCode(t, "failed", err, codes.FailedPrecondition, "private-key-secret-name")
	expectNoRequestsLeft(t, approvedNS)

	// Missing issuer: Unavailable after the signer's timeout.
	missing := serveCA(t, builtin, newSigner(t, certmanager.Config{IssuerName: "absent", Namespace: approvedNS, Timeout: 2 * time.Second}))
	_, err = createCert(missing, token, csr, 3600)
	expectCode(t, "missing issuer", err, codes.Unavailable, "not signed in time")
	expectNoRequestsLeft(t, approvedNS)
}

func expectCode(t *testing.T, what string, err error, want codes.Code, msgPart string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code %s (%v), want %s", what, got, err, want)
		return
	}
	if msgPart != "" && !strings.Contains(status.Convert(err).Message(), msgPart) {
		t.Errorf("%s: message %q does not mention %q", what, status.Convert(err).Message(), msgPart)
	}
}
