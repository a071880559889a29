package caclient

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

type caServer struct {
	pb.UnimplementedIstioCertificateServiceServer
	authority *ca.CA
	asked     string
	short     bool
}

func (s *caServer) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	s.asked = req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue()
	issued, err := s.authority.Sign([]byte(req.GetCsr()), time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		return nil, err
	}
	chain := []string{string(pemutil.EncodeCertificates([]*x509.Certificate{issued.Chain[0]}))}
	if !s.short {
		chain = append(chain, string(s.authority.RootsPEM()))
	}
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}

func TestSignerGetsTheIdentityItAsksFor(t *testing.T) {
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
	defer g.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	id := identity.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "waypoint"}
	key, err := workloadcert.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := workloadcert.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	signer := New(conn).Signer(id)
	certs, err := signer.SignCSR(context.Background(), csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if srv.asked != id.String() {
		t.Errorf("request asked for %q, want %s", srv.asked, id)
	}
	got, err := identity.FromURIs(certs[0].URIs)
	if err != nil || got != id || len(certs) != 1 {
		t.Errorf("leaf identity %v (%v), %d certificates (the root is not part of the chain)", got, err, len(certs))
	}
	srv.short = true
	if _, err := signer.SignCSR(context.Background(), csr, time.Hour); err == nil || !strings.Contains(err.Error(), "want leaf and root") {
		t.Errorf("an answer without the root: %v", err)
	}
}
