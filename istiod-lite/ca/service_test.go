package ca

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
	"os"
	"strings"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return quietLog()
}

// mesh is a CA service served over gRPC+TLS on loopback, backed by the
// shared apiserver, with its own install namespace.
type mesh struct {
	env       *kubetest.Env
	installNS string
	authority *ca.CA
	client    pb.IstioCertificateServiceClient
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	env := kubetest.Shared(t)
	installNS := env.Namespace(t, "sys-")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	authority, _, err := LoadOrCreateRoot(ctx, env.Client.CoreV1(), RootOptions{Namespace: installNS, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	return &mesh{env: env, installNS: installNS, authority: authority, client: serve(t, env, installNS, authority)}
}

// serve runs a CA service for authority and returns a client of it.
func serve(t *testing.T, env *kubetest.Env, installNS string, authority *ca.CA) pb.IstioCertificateServiceClient {
	t.Helper()
	svc, err := NewService(Options{
		CA:            authority,
		Authenticator: auth.New(env.Client.AuthenticationV1()),
		Pods:          APIPodLookup{Pods: env.Client.CoreV1()},
		NodeAgents:    []ServiceAccountRef{{Namespace: installNS, Name: "ztunnel"}},
		Log:           testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := ServingTLSConfig(authority, nil)
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
	for _, r := range authority.Roots() {
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

func csrFor(t *testing.T, uris ...string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

type request struct {
	token        string
	csrID        string // identity in the CSR's SAN
	impersonated string // ImpersonatedIdentity metadata, if any
	validity     int64
	csr          string // overrides csrID
}

func (m *mesh) call(t *testing.T, r request) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if r.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.token)
	}
	req := &pb.IstioCertificateRequest{Csr: r.csr, ValidityDuration: r.validity}
	if req.Csr == "" {
		req.Csr = csrFor(t, r.csrID)
	}
	if r.impersonated != "" {
		md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: r.impersonated})
		if err != nil {
			t.Fatal(err)
		}
		req.Metadata = md
	}
	return m.client.CreateCertificate(ctx, req)
}

// expectIssued checks the response is leaf..root for id and verifies under
// the CA's roots; it returns the leaf.
func (m *mesh) expectIssued(t *testing.T, resp *pb.IstioCertificateResponse, err error, id string) *x509.Certificate {
	t.Helper()
	if err != nil {
		t.Fatalf("request for %s: %v", id, err)
	}
	chain := resp.GetCertChain()
	if len(chain) < 2 {
		t.Fatalf("cert chain has %d elements, want leaf and root", len(chain))
	}
	if got, want := chain[len(chain)-1], string(m.authority.RootsPEM()); got != want {
		t.Errorf("last chain element is not the root")
	}
	certs, err := pemutil.ParseCertificates([]byte(chain[0]))
	if err != nil || len(certs) != 1 {
		t.Fatalf("leaf: %v", err)
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("leaf SANs %v, want %s", leaf.URIs, id)
	}
	verifyUnder(t, leaf, m.authority.Roots())
	return leaf
}

func verifyUnder(t *testing.T, leaf *x509.Certificate, roots []*x509.Certificate) {
	t.Helper()
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not verify under the roots: %v", err)
	}
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

func TestZtunnelNodeAuthorization(t *testing.T) {
	m := newMesh(t)
	env := m.env
	apps := env.Namespace(t, "apps-")
	zt := env.RunningPod(t, kubetest.PodOptions{Namespace: m.installNS, Name: "ztunnel-a", Node: "node-a", ServiceAccount: "ztunnel"})
	env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "web-1", Node: "node-a", ServiceAccount: "web"})
	env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "db-1", Node: "node-b", ServiceAccount: "db"})
	done := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "job-1", Node: "node-a", ServiceAccount: "job"})
	done.Status.Phase = corev1.PodSucceeded
	if _, err := env.Client.CoreV1().Pods(apps).UpdateStatus(context.Background(), done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	token := env.Token(t, m.installNS, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: zt})

	web, db := spiffe(apps, "web"), spiffe(apps, "db")
	resp, err := m.call(t, request{token: token, csrID: web, impersonated: web})
	m.expectIssued(t, resp, err, web)
	// Our own ztunnel may leave the metadata out: the CSR names the identity.
	resp, err = m.call(t, request{token: token, csrID: web})
	m.expectIssued(t, resp, err, web)
	// Its own identity.
	own := spiffe(m.installNS, "ztunnel")
	resp, err = m.call(t, request{token: token, csrID: own, impersonated: own})
	m.expectIssued(t, resp, err, own)

	_, err = m.call(t, request{token: token, csrID: db, impersonated: db})
	expectCode(t, "pod on another node", err, codes.PermissionDenied, "node-a")
	_, err = m.call(t, request{token: token, csrID: spiffe(apps, "job"), impersonated: spiffe(apps, "job")})
	expectCode(t, "terminated pod on the node", err, codes.PermissionDenied, "no running pod")
	_, err = m.call(t, request{token: token, csrID: spiffe(apps, "nobody")})
	expectCode(t, "service account without pods", err, codes.PermissionDenied, "")
	_, err = m.call(t, request{token: token, csrID: db, impersonated: web})
	expectCode(t, "CSR SAN differs from ImpersonatedIdentity", err, codes.InvalidArgument, "does not match")
	_, err = m.call(t, request{token: token, csrID: web, impersonated: "spiffe://cluster.local/garbage"})
	expectCode(t, "malformed ImpersonatedIdentity", err, codes.InvalidArgument, ImpersonatedIdentityKey)

	// A ztunnel token not bound to its pod carries no node: refused.
	unbound := env.Token(t, m.installNS, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}})
	_, err = m.call(t, request{token: unbound, csrID: web, impersonated: web})
	expectCode(t, "unbound ztunnel token", err, codes.PermissionDenied, "not bound")

	// Forged and garbage tokens, no token, wrong audience.
	forged := env.ForgeToken(t, m.installNS, "ztunnel", []string{auth.DefaultAudience}, zt)
	_, err = m.call(t, request{token: forged, csrID: web, impersonated: web})
	expectCode(t, "forged token", err, codes.Unauthenticated, "")
	_, err = m.call(t, request{token: "garbage", csrID: web})
	expectCode(t, "garbage token", err, codes.Unauthenticated, "")
	_, err = m.call(t, request{csrID: web})
	expectCode(t, "no token", err, codes.Unauthenticated, "authorization")
	apiAud := env.Token(t, m.installNS, "ztunnel", kubetest.TokenOptions{Pod: zt})
	_, err = m.call(t, request{token: apiAud, csrID: web})
	expectCode(t, "token for another audience", err, codes.Unauthenticated, "")

	// A ServiceAccount named ztunnel outside the install namespace is no node agent.
	fake := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "ztunnel-fake", Node: "node-a", ServiceAccount: "ztunnel"})
	fakeToken := env.Token(t, apps, "ztunnel", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: fake})
	_, err = m.call(t, request{token: fakeToken, csrID: web, impersonated: web})
	expectCode(t, "ztunnel-named SA in another namespace", err, codes.PermissionDenied, "own identity")
}

func TestOwnIdentityOnly(t *testing.T) {
	m := newMesh(t)
	env := m.env
	apps := env.Namespace(t, "apps-")
	web := env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "web-1", Node: "node-a", ServiceAccount: "web"})
	env.RunningPod(t, kubetest.PodOptions{Namespace: apps, Name: "db-1", Node: "node-a", ServiceAccount: "db"})
	bound := env.Token(t, apps, "web", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}, Pod: web})
	unbound := env.Token(t, apps, "web", kubetest.TokenOptions{Audiences: []string{auth.DefaultAudience}})
	self := spiffe(apps, "web")

	for name, tok := range map[string]string{"bound": bound, "unbound": unbound} {
		resp, err := m.call(t, request{token: tok, csrID: self})
		m.expectIssued(t, resp, err, self)
		resp, err = m.call(t, request{token: tok, csrID: self, impersonated: self})
		m.expectIssued(t, resp, err, self)
		_, err = m.call(t, request{token: tok, csrID: spiffe(apps, "db")})
		expectCode(t, name+": another identity", err, codes.PermissionDenied, "own identity")
		_, err = m.call(t, request{token: tok, csrID: spiffe(apps, "db"), impersonated: spiffe(apps, "db")})
		expectCode(t, name+": impersonation", err, codes.PermissionDenied, "own identity")
	}

	// Requested validity is honoured.
	resp, err := m.call(t, request{token: bound, csrID: self, validity: 3600})
	leaf := m.expectIssued(t, resp, err, self)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour || life > time.Hour+2*time.Minute {
		t.Errorf("validity 3600s gave a %s certificate", life)
	}
	// Bad CSRs.
	_, err = m.call(t, request{token: bound, csrID: "spiffe://other.domain/ns/" + apps + "/sa/web"})
	expectCode(t, "other trust domain", err, codes.InvalidArgument, "trust domain")
	_, err = m.call(t, request{token: bound, csr: csrFor(t, self, spiffe(apps, "db"))})
	expectCode(t, "two SANs", err, codes.InvalidArgument, "")
	_, err = m.call(t, request{token: bound, csr: "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n"})
	expectCode(t, "garbage CSR", err, codes.InvalidArgument, "CSR")
	_, err = m.call(t, request{token: bound, csr: "x"})
	expectCode(t, "not a CSR", err, codes.InvalidArgument, "CSR")
	_, err = m.call(t, request{token: bound, csrID: self, validity: -1})
	expectCode(t, "negative validity", err, codes.InvalidArgument, "")
	_, err = m.call(t, request{token: bound, csrID: self, validity: 1 << 40})
	expectCode(t, "huge validity", err, codes.InvalidArgument, "")
}

func TestNewServiceValidates(t *testing.T) {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewService(Options{}); err == nil {
		t.Error("no CA accepted")
	}
	if _, err := NewService(Options{CA: authority}); err == nil {
		t.Error("no authenticator accepted")
	}
	if _, err := NewService(Options{CA: authority, Authenticator: auth.New(nil)}); err == nil {
		t.Error("no pod lookup accepted")
	}
}

func TestResponseChainOrder(t *testing.T) {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := identity.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "b"}
	issued, err := authority.Sign([]byte(csrFor(t, id.String())), 0)
	if err != nil {
		t.Fatal(err)
	}
	out := responseChain(issued.Chain, authority.Roots())
	if len(out) != 2 || !strings.Contains(out[0], "BEGIN CERTIFICATE") || out[1] != string(authority.RootsPEM()) {
		t.Fatalf("chain %q: want leaf then root", out)
	}
}

func TestPodCounts(t *testing.T) {
	p := &corev1.Pod{Spec: corev1.PodSpec{NodeName: "n", ServiceAccountName: "sa"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	if !podCounts(p, "n", "sa") {
		t.Error("running pod does not count")
	}
	p.Status.Phase = corev1.PodPending // bound, starting: needs its certificate
	if !podCounts(p, "n", "sa") {
		t.Error("pending pod bound to the node does not count")
	}
	for _, ph := range []corev1.PodPhase{corev1.PodSucceeded, corev1.PodFailed} {
		p.Status.Phase = ph
		if podCounts(p, "n", "sa") {
			t.Errorf("%s pod counts", ph)
		}
	}
	p.Status.Phase = corev1.PodRunning
	if podCounts(p, "other", "sa") || podCounts(p, "n", "other") {
		t.Error("pod counts for another node or service account")
	}
}
