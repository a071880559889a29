// Package testpki gives tests a real mesh CA, its trust bundle, and workload
// certificate sources minted from it.
package testpki

import (
	"context"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// PKI is a self-signed mesh CA and the bundle that trusts it.
type PKI struct {
	CA     *ca.CA
	Bundle *mtls.Bundle
}

// New creates a fresh CA with opts.
func New(t testing.TB, opts ca.Options) *PKI {
	t.Helper()
	authority, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	bundle, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	return &PKI{CA: authority, Bundle: bundle}
}

// Source returns a source holding a certificate for ns/sa in the CA's trust domain.
func (p *PKI) Source(t testing.TB, ns, sa string) *workloadcert.Source {
	t.Helper()
	id, err := identity.New(p.CA.TrustDomain(), ns, sa)
	if err != nil {
		t.Fatalf("identity: %v", err)
	}
	return SourceFrom(t, id, p.CA, 0)
}

// SourceFrom returns a source holding a certificate for id signed by signer with ttl.
func SourceFrom(t testing.TB, id identity.Identity, signer workloadcert.Signer, ttl time.Duration) *workloadcert.Source {
	t.Helper()
	src := workloadcert.NewSource(id, signer, workloadcert.Options{TTL: ttl})
	if err := src.Renew(context.Background()); err != nil {
		t.Fatalf("issue certificate for %s: %v", id, err)
	}
	return src
}
