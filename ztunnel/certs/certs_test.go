package certs

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// caServer answers CreateCertificate with a real pkg/ca CA and records the
// requests (the authorization side is istiod-lite/ca's, tested there).
type caServer struct {
	pb.UnimplementedIstioCertificateServiceServer
	authority *ca.CA
	mu        sync.Mutex
	requests  []string // impersonated identities
	refuse    bool
}

func (s *caServer) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	s.mu.Lock()
	s.requests = append(s.requests, req.GetMetadata().GetFields()[caclient.ImpersonatedIdentityKey].GetStringValue())
	refuse := s.refuse
	s.mu.Unlock()
	if refuse {
		return nil, status.Error(codes.PermissionDenied, "no")
	}
	issued, err := s.authority.Sign([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var chain []string
	for _, c := range issued.Chain {
		chain = append(chain, string(pemutil.EncodeCertificates([]*x509.Certificate{c})))
	}
	chain = append(chain, string(s.authority.RootsPEM()))
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func (s *caServer) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.requests) }

func startCA(t *testing.T) (*caServer, *caclient.Client) {
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := &caServer{authority: authority}
	g := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(g, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, caclient.New(conn)
}

func TestAcquireSharesAndReleaseDrops(t *testing.T) {
	srv, client := startCA(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, client, time.Hour, slog.New(slog.DiscardHandler))
	id := mustID(t, "apps", "web")

	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	src, err := m.Acquire(actx, id)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := src.TLSCertificate()
	if err != nil || cert.Leaf == nil || len(cert.Leaf.URIs) != 1 || cert.Leaf.URIs[0].String() != id.String() {
		t.Fatalf("certificate: %v %v", cert, err)
	}
	if life := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore); life > time.Hour+2*time.Minute {
		t.Errorf("asked for 1h, got %s", life)
	}
	if _, err := m.Acquire(actx, id); err != nil { // a second pod, same identity
		t.Fatal(err)
	}
	if cs := m.Certificates(); len(cs) != 1 || cs[0].Identity != id.String() || cs[0].Pods != 2 || cs[0].Pending || !cs[0].NotAfter.Equal(cert.Leaf.NotAfter) {
		t.Errorf("certificates view: %+v", cs)
	}
	if n := srv.count(); n != 1 {
		t.Errorf("two pods of one identity made %d requests, want 1", n)
	}
	if got := srv.requests[0]; got != id.String() {
		t.Errorf("ImpersonatedIdentity %q, want %s", got, id)
	}
	m.Release(id)
	if len(m.Identities()) != 1 {
		t.Fatal("released with a pod left")
	}
	m.Release(id)
	if len(m.Identities()) != 0 {
		t.Fatal("certificate kept after the last pod left")
	}
	m.Release(id) // extra release is harmless
}

func TestAcquireFailsWhenRefused(t *testing.T) {
	srv, client := startCA(t)
	srv.refuse = true
	m := NewManager(context.Background(), client, 0, slog.New(slog.DiscardHandler))
	id := mustID(t, "apps", "db")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := m.Acquire(ctx, id); err == nil {
		t.Fatal("Acquire succeeded although the CA refuses")
	}
	if len(m.Identities()) != 0 {
		t.Error("a failed Acquire left its identity held")
	}
}

func mustID(t *testing.T, ns, sa string) identity.Identity {
	id, err := identity.New("cluster.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
