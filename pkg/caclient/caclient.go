// Package caclient requests workload certificates from istiod-lite's CA
// (Istio's IstioCertificateService.CreateCertificate). ztunnel asks for the
// identities of the pods on its node; the waypoint asks for its own.
package caclient

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// ImpersonatedIdentityKey names, in the request metadata, the identity the
// caller asks for (as Istio's ztunnel sends it). The CA checks it against
// the CSR's SAN.
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// Client signs CSRs through the CA service on conn, whose per-RPC
// credentials carry the caller's token.
type Client struct {
	client pb.IstioCertificateServiceClient
	// Timeout bounds one request; default 30s.
	Timeout time.Duration
}

// New returns a client of the CA service on conn.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{client: pb.NewIstioCertificateServiceClient(conn), Timeout: 30 * time.Second}
}

// Signer returns a workloadcert.Signer asking for id's certificates.
func (c *Client) Signer(id identity.Identity) workloadcert.Signer {
	return signerFor{c: c, id: id}
}

// signerFor binds the requested identity to each request.
type signerFor struct {
	c  *Client
	id identity.Identity
}

// SignCSR implements workloadcert.Signer.
func (s signerFor) SignCSR(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: s.id.String()})
	if err != nil {
		return nil, fmt.Errorf("request metadata: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.c.Timeout)
	defer cancel()
	resp, err := s.c.client.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(csrPEM), ValidityDuration: int64(ttl / time.Second), Metadata: md,
	})
	if err != nil {
		return nil, fmt.Errorf("CreateCertificate for %s: %w", s.id, err)
	}
	chain := resp.GetCertChain()
	if len(chain) < 2 {
		return nil, fmt.Errorf("CreateCertificate for %s: %d certificates in the answer, want leaf and root", s.id, len(chain))
	}
	// The last element is the root; the rest is leaf first.
	var certs []*x509.Certificate
	for i, p := range chain[:len(chain)-1] {
		cs, err := pemutil.ParseCertificates([]byte(p))
		if err != nil || len(cs) == 0 {
			return nil, fmt.Errorf("CreateCertificate for %s: element %d: %v", s.id, i, err)
		}
		certs = append(certs, cs...)
	}
	return certs, nil
}
