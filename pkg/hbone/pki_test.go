package hbone

import (
	"context"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// testPKI is a real mesh CA with helpers to mint workload certificates.
type testPKI struct {
	t      testing.TB
	ca     *ca.CA
	bundle *mtls.Bundle
}

func newTestPKI(t testing.TB, opts ca.Options) *testPKI {
	t.Helper()
	authority, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	bundle, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatalf("bundle: %v", err)
	}
	return &testPKI{t: t, ca: authority, bundle: bundle}
}

func (p *testPKI) source(ns, sa string) *workloadcert.Source {
	p.t.Helper()
	id, err := identity.New(p.ca.TrustDomain(), ns, sa)
	if err != nil {
		p.t.Fatalf("identity: %v", err)
	}
	return p.sourceWithSigner(id, p.ca, 0)
}

func (p *testPKI) sourceWithSigner(id identity.Identity, signer workloadcert.Signer, ttl time.Duration) *workloadcert.Source {
	p.t.Helper()
	src := workloadcert.NewSource(id, signer, workloadcert.Options{TTL: ttl})
	if err := src.Renew(context.Background()); err != nil {
		p.t.Fatalf("issue certificate for %s: %v", id, err)
	}
	return src
}
