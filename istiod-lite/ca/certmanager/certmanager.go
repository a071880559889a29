// Package certmanager is a signing backend for istiod-lite's mesh CA that
// has cert-manager sign workload certificates: each CSR (already parsed and
// validated by pkg/ca, and authorized by the CA service) becomes a
// cert-manager.io/v1 CertificateRequest for a configured Issuer or
// ClusterIssuer; the signer waits for cert-manager to sign, deny or fail it,
// checks what came back, and deletes the request.
//
// RBAC for istiod-lite: create, get, watch, delete on
// certificaterequests.cert-manager.io in Config.Namespace (and list for
// DeleteStale). Approval is
// cert-manager's business: its built-in approver approves requests for
// cert-manager.io issuers; an external approver (approver-policy) may deny.
package certmanager

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cmtyped "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/typed/certmanager/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	caservice "github.com/ambit-mesh/ambit/istiod-lite/ca"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// Issuer kinds and the default group of an issuer reference.
const (
	KindIssuer        = "Issuer"
	KindClusterIssuer = "ClusterIssuer"
	DefaultGroup      = "cert-manager.io"
)

// Defaults.
const (
	DefaultNamespace = "istio-system"
	DefaultTimeout   = 20 * time.Second
	// deleteTimeout bounds deleting a finished request, which happens even
	// when the caller's context has ended.
	deleteTimeout = 10 * time.Second
)

// Labels and annotations on the CertificateRequests the signer creates.
const (
	ManagedByLabel     = "app.kubernetes.io/managed-by"
	ManagedByValue     = "istiod-lite"
	IdentityAnnotation = "ambit.io/workload-identity"
)

// Errors, wrapped (test with errors.Is) so callers can answer the right
// status; each also matches the CA service's class (istiod-lite/ca
// ErrSign*), which picks the gRPC code. Each carries cert-manager's reason
// and message.
var (
	// ErrDenied: an approver denied the request (condition Denied=True).
	// Class ErrSignDenied: PermissionDenied.
	ErrDenied error = &classError{"certificate request denied", caservice.ErrSignDenied}
	// ErrFailed: the issuer failed the request (Ready=False reason Failed,
	// InvalidRequest=True), the request vanished, or what it returned is
	// not a usable certificate for the CSR. Class ErrSignFailed:
	// FailedPrecondition.
	ErrFailed error = &classError{"certificate request failed", caservice.ErrSignFailed}
	// ErrTimeout: no outcome within Config.Timeout (issuer missing or not
	// ready, cert-manager not running, request not approved). Class
	// ErrSignUnavailable: Unavailable.
	ErrTimeout error = &classError{"certificate request not signed in time", caservice.ErrSignUnavailable}
	// ErrUnavailable: the apiserver could not be reached or refused us.
	// Class ErrSignUnavailable.
	ErrUnavailable error = &classError{"certificate request: apiserver unavailable", caservice.ErrSignUnavailable}
	// ErrInvalid: the TTL asked for is out of range. Class ErrSignInvalid:
	// InvalidArgument.
	ErrInvalid error = &classError{"invalid certificate request", caservice.ErrSignInvalid}
)

// classError is a sentinel error that also matches its class.
type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }

// Signer implements the CA service's signing backend.
var _ caservice.Signer = (*Signer)(nil)

// Config selects the issuer and tunes requests. istiod-lite's flags fill it.
type Config struct {
	// IssuerKind is KindIssuer (in Namespace) or KindClusterIssuer (or an
	// external issuer's kind); default KindIssuer.
	IssuerKind string
	// IssuerName is required.
	IssuerName string
	// IssuerGroup is the issuer's API group; default DefaultGroup.
	IssuerGroup string
	// Namespace holds the CertificateRequests (and a namespaced Issuer);
	// default DefaultNamespace.
	Namespace string
	// Timeout bounds one request, from creation to a signed certificate;
	// default DefaultTimeout. The caller's context may end it earlier.
	Timeout time.Duration
	// DefaultTTL is asked for when the caller asks for none; default
	// ca.DefaultWorkloadTTL. MaxTTL is the longest accepted; default
	// ca.DefaultMaxTTL. The issuer may shorten either.
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// RootsPEM are the trust anchors when the issuer reports no CA
	// (status.ca empty, as some external issuers do). When the issuer
	// reports one, that is used and RootsPEM is ignored.
	RootsPEM []byte
	Log      *slog.Logger
}

// ParseIssuerRef parses a flag value "Kind/name" or "Kind.group/name"
// (ClusterIssuer/mesh-ca, Issuer/mesh-ca, AWSPCAClusterIssuer.awspca.cert-manager.io/pca)
// into cfg's issuer fields.
func ParseIssuerRef(s string, cfg *Config) error {
	kindGroup, name, ok := strings.Cut(s, "/")
	if !ok || kindGroup == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("issuer reference %q: want Kind/name or Kind.group/name (e.g. ClusterIssuer/mesh-ca)", s)
	}
	kind, group, hasGroup := strings.Cut(kindGroup, ".")
	if kind == "" || (hasGroup && group == "") {
		return fmt.Errorf("issuer reference %q: empty kind or group", s)
	}
	cfg.IssuerKind, cfg.IssuerName, cfg.IssuerGroup = kind, name, group
	return nil
}

func (c *Config) setDefaults() {
	if c.IssuerKind == "" {
		c.IssuerKind = KindIssuer
	}
	if c.IssuerGroup == "" {
		c.IssuerGroup = DefaultGroup
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = ca.DefaultWorkloadTTL
	}
	if c.MaxTTL <= 0 {
		c.MaxTTL = ca.DefaultMaxTTL
	}
	if c.DefaultTTL > c.MaxTTL {
		c.MaxTTL = c.DefaultTTL
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// Signer signs parsed workload CSRs through cert-manager.
type Signer struct {
	cfg      Config
	requests cmtyped.CertificateRequestsGetter
	roots    []*x509.Certificate // from cfg.RootsPEM
}

// NewForConfig is New with a cert-manager clientset built on rc.
func NewForConfig(rc *rest.Config, cfg Config) (*Signer, error) {
	client, err := cmclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cert-manager signer: client: %w", err)
	}
	return New(client.CertmanagerV1(), cfg)
}

// New validates cfg and returns a Signer that creates CertificateRequests
// through client (cert-manager's clientset's CertmanagerV1()).
func New(client cmtyped.CertificateRequestsGetter, cfg Config) (*Signer, error) {
	if client == nil {
		return nil, errors.New("cert-manager signer: no client")
	}
	if cfg.IssuerName == "" {
		return nil, errors.New("cert-manager signer: no issuer name")
	}
	cfg.setDefaults()
	s := &Signer{cfg: cfg, requests: client}
	if len(bytes.TrimSpace(cfg.RootsPEM)) > 0 {
		roots, err := pemutil.ParseCertificates(cfg.RootsPEM)
		if err != nil {
			return nil, fmt.Errorf("cert-manager signer: roots: %w", err)
		}
		if len(roots) == 0 {
			return nil, errors.New("cert-manager signer: roots: no certificate in RootsPEM")
		}
		s.roots = roots
	}
	return s, nil
}

// Config returns the configuration in effect (defaults filled in).
func (s *Signer) Config() Config { return s.cfg }

// IssuerRef is the reference put on every request.
func (s *Signer) IssuerRef() cmmeta.IssuerReference {
	return cmmeta.IssuerReference{Name: s.cfg.IssuerName, Kind: s.cfg.IssuerKind, Group: s.cfg.IssuerGroup}
}

func (s *Signer) String() string {
	return fmt.Sprintf("cert-manager %s.%s/%s (requests in %s)", s.cfg.IssuerKind, s.cfg.IssuerGroup, s.cfg.IssuerName, s.cfg.Namespace)
}

// Sign has cert-manager sign csr for ttl (Config.DefaultTTL when zero). It
// returns the chain, leaf first, without the root(s), and the roots: the
// issuer's CA (status.ca), else Config.RootsPEM. The CertificateRequest is
// deleted before Sign returns, whatever the outcome.
func (s *Signer) Sign(ctx context.Context, csr *ca.CSR, ttl time.Duration) (chain, roots []*x509.Certificate, err error) {
	if csr == nil || csr.Raw() == nil {
		return nil, nil, errors.New("cert-manager signer: nil CSR; use ca.ParseCSR")
	}
	switch {
	case ttl < 0:
		return nil, nil, fmt.Errorf("%w: negative TTL %s", ErrInvalid, ttl)
	case ttl == 0:
		ttl = s.cfg.DefaultTTL
	case ttl > s.cfg.MaxTTL:
		return nil, nil, fmt.Errorf("%w: requested TTL %s exceeds the maximum %s", ErrInvalid, ttl, s.cfg.MaxTTL)
	}
	id := csr.Identity.String()
	crs := s.requests.CertificateRequests(s.cfg.Namespace)
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "istiod-lite-",
			Namespace:    s.cfg.Namespace,
			Labels:       map[string]string{ManagedByLabel: ManagedByValue},
			Annotations:  map[string]string{IdentityAnnotation: id},
		},
		Spec: cmapi.CertificateRequestSpec{
			Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw()}),
			IssuerRef: s.IssuerRef(),
			Duration:  &metav1.Duration{Duration: ttl},
			IsCA:      false,
			Usages: []cmapi.KeyUsage{
				cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment,
				cmapi.UsageClientAuth, cmapi.UsageServerAuth,
			},
		},
	}
	created, err := crs.Create(ctx, cr, metav1.CreateOptions{})
	if err != nil {
		return nil, nil, s.apiError(ctx, "create CertificateRequest", err)
	}
	where := s.cfg.Namespace + "/" + created.Name
	log := s.cfg.Log.With("certificaterequest", where, "identity", id)
	defer s.delete(ctx, crs, created, log)

	wctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	done, err := s.wait(wctx, crs, created)
	if err != nil {
		if ctx.Err() != nil {
			// The caller gave up (its deadline or cancellation).
			return nil, nil, fmt.Errorf("CertificateRequest %s for %s: %w", where, id, ctx.Err())
		}
		return nil, nil, fmt.Errorf("CertificateRequest %s for %s (issuer %s): %w", where, id, s.issuerString(), err)
	}
	chain, roots, err = s.check(csr, done)
	if err != nil {
		return nil, nil, fmt.Errorf("CertificateRequest %s for %s (issuer %s): %w", where, id, s.issuerString(), err)
	}
	log.Debug("certificate signed by cert-manager", "notAfter", chain[0].NotAfter)
	return chain, roots, nil
}

func (s *Signer) issuerString() string {
	return s.cfg.IssuerKind + "." + s.cfg.IssuerGroup + "/" + s.cfg.IssuerName
}

// delete removes the request; it runs even when ctx has ended.
func (s *Signer) delete(ctx context.Context, crs cmtyped.CertificateRequestInterface, cr *cmapi.CertificateRequest, log *slog.Logger) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	err := crs.Delete(dctx, cr.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cr.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Warn("could not delete CertificateRequest; it stays until deleted by hand", "error", err)
	}
}

// DeleteStale deletes the CertificateRequests this signer's kind left in
// Config.Namespace (label ManagedByLabel=ManagedByValue) that are older than
// olderThan: requests a crashed or restarted istiod-lite created and never
// deleted. Call it at startup with olderThan above Config.Timeout, so that
// another replica's requests in flight are left alone. It needs list in
// addition to the per-request verbs. It returns how many it deleted.
func (s *Signer) DeleteStale(ctx context.Context, olderThan time.Duration) (int, error) {
	crs := s.requests.CertificateRequests(s.cfg.Namespace)
	list, err := crs.List(ctx, metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + ManagedByValue})
	if err != nil {
		return 0, s.apiError(ctx, "list CertificateRequests", err)
	}
	cutoff := time.Now().Add(-olderThan)
	n := 0
	var errs []error
	for i := range list.Items {
		cr := &list.Items[i]
		if cr.DeletionTimestamp != nil || !cr.CreationTimestamp.Time.Before(cutoff) {
			continue
		}
		err := crs.Delete(ctx, cr.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cr.UID}})
		switch {
		case err == nil:
			n++
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		default:
			errs = append(errs, fmt.Errorf("delete CertificateRequest %s/%s: %w", s.cfg.Namespace, cr.Name, err))
		}
	}
	return n, errors.Join(errs...)
}

// apiError wraps an apiserver error: the caller's context ending stays a
// context error; anything else is ErrUnavailable.
func (s *Signer) apiError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("cert-manager signer: %s in %s: %w", what, s.cfg.Namespace, ctx.Err())
	}
	return fmt.Errorf("cert-manager signer: %s in %s: %w: %w", what, s.cfg.Namespace, ErrUnavailable, err)
}

// wait watches cr until it has an outcome. A watch that breaks is resumed
// from the last seen resourceVersion, or after re-reading the object when
// that version expired.
func (s *Signer) wait(ctx context.Context, crs cmtyped.CertificateRequestInterface, cr *cmapi.CertificateRequest) (*cmapi.CertificateRequest, error) {
	last, rv := cr, cr.ResourceVersion
	var apiErr error // the last apiserver error, for the timeout's message
	stuck := func(cause error) error {
		err := timeoutError(last, cause)
		if apiErr != nil {
			err = fmt.Errorf("%w; last apiserver error: %v", err, apiErr)
		}
		return err
	}
	sel := fields.OneTermEqualSelector("metadata.name", cr.Name).String()
	for {
		if done, err := outcome(last); done {
			return last, err
		}
		if rv == "" {
			fresh, err := crs.Get(ctx, cr.Name, metav1.GetOptions{})
			switch {
			case err == nil:
				last, rv = fresh, fresh.ResourceVersion
				continue
			case apierrors.IsNotFound(err):
				return nil, fmt.Errorf("%w: deleted while waiting for it", ErrFailed)
			}
			apiErr = err
			if err := pause(ctx); err != nil {
				return nil, stuck(err)
			}
			continue
		}
		w, err := crs.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				rv = ""
			} else {
				apiErr = err
			}
			if err := pause(ctx); err != nil {
				return nil, stuck(err)
			}
			continue
		}
		seen, next, err := s.consume(ctx, w, rv, last)
		w.Stop()
		if err != nil {
			return nil, err
		}
		last, rv = seen, next
	}
}

// pause waits a little before retrying the apiserver, or returns ctx's error.
func pause(ctx context.Context) error {
	t := time.NewTimer(200 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// consume reads one watch until the request has an outcome, the watch
// reports an error, or it ends. It returns the latest object and the
// resourceVersion to resume from ("" to re-read the object first).
func (s *Signer) consume(ctx context.Context, w watch.Interface, rv string, last *cmapi.CertificateRequest) (*cmapi.CertificateRequest, string, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, rv, timeoutError(last, ctx.Err())
		case ev, ok := <-w.ResultChan():
			if !ok {
				return last, rv, nil
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				cr, ok := ev.Object.(*cmapi.CertificateRequest)
				if !ok {
					continue
				}
				last, rv = cr, cr.ResourceVersion
				if done, _ := outcome(cr); done {
					return last, rv, nil
				}
			case watch.Deleted:
				return nil, rv, fmt.Errorf("%w: deleted while waiting for it", ErrFailed)
			case watch.Bookmark:
				if cr, ok := ev.Object.(*cmapi.CertificateRequest); ok {
					rv = cr.ResourceVersion
				}
			case watch.Error:
				err := apierrors.FromObject(ev.Object)
				if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
					return last, "", nil
				}
				s.cfg.Log.Debug("CertificateRequest watch error; resuming", "error", err)
				return last, rv, nil
			}
		}
	}
}

// outcome decides whether cr is finished: signed (nil error), denied,
// invalid or failed.
func outcome(cr *cmapi.CertificateRequest) (bool, error) {
	if cr == nil {
		return false, nil
	}
	if c := condition(cr, cmapi.CertificateRequestConditionDenied); c != nil && c.Status == cmmeta.ConditionTrue {
		return true, fmt.Errorf("%w by %s: %s", ErrDenied, orUnknown(c.Reason), c.Message)
	}
	if c := condition(cr, cmapi.CertificateRequestConditionInvalidRequest); c != nil && c.Status == cmmeta.ConditionTrue {
		return true, fmt.Errorf("%w: invalid request (%s): %s", ErrFailed, orUnknown(c.Reason), c.Message)
	}
	if c := condition(cr, cmapi.CertificateRequestConditionReady); c != nil {
		switch {
		case c.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
			return true, nil
		case c.Reason == cmapi.CertificateRequestReasonFailed:
			return true, fmt.Errorf("%w: %s", ErrFailed, c.Message)
		case c.Reason == cmapi.CertificateRequestReasonDenied:
			return true, fmt.Errorf("%w: %s", ErrDenied, c.Message)
		}
	}
	if cr.Status.FailureTime != nil {
		return true, fmt.Errorf("%w at %s", ErrFailed, cr.Status.FailureTime.UTC().Format(time.RFC3339))
	}
	return false, nil
}

func condition(cr *cmapi.CertificateRequest, t cmapi.CertificateRequestConditionType) *cmapi.CertificateRequestCondition {
	for i := range cr.Status.Conditions {
		if cr.Status.Conditions[i].Type == t {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// timeoutError says where the request was stuck.
func timeoutError(last *cmapi.CertificateRequest, cause error) error {
	state := "no status yet (is cert-manager running?)"
	if last != nil && len(last.Status.Conditions) > 0 {
		var parts []string
		for _, c := range last.Status.Conditions {
			p := string(c.Type) + "=" + string(c.Status)
			if c.Reason != "" {
				p += " " + c.Reason
			}
			if c.Message != "" {
				p += ": " + c.Message
			}
			parts = append(parts, p)
		}
		state = strings.Join(parts, "; ")
	}
	if last != nil && condition(last, cmapi.CertificateRequestConditionApproved) == nil {
		state += " (not approved)"
	}
	return fmt.Errorf("%w (%v); last state: %s", ErrTimeout, cause, state)
}

// check parses and verifies what cert-manager returned: a chain whose leaf
// certifies the CSR's key for exactly its SPIFFE identity, with client and
// server authentication, verifying to the roots.
func (s *Signer) check(csr *ca.CSR, cr *cmapi.CertificateRequest) (chain, roots []*x509.Certificate, err error) {
	certs, err := pemutil.ParseCertificates(cr.Status.Certificate)
	if err != nil || len(certs) == 0 {
		return nil, nil, fmt.Errorf("%w: status.certificate holds no certificate (%v)", ErrFailed, err)
	}
	leaf := certs[0]
	if len(bytes.TrimSpace(cr.Status.CA)) > 0 {
		roots, err = pemutil.ParseCertificates(cr.Status.CA)
		if err != nil || len(roots) == 0 {
			return nil, nil, fmt.Errorf("%w: status.ca holds no certificate (%v)", ErrFailed, err)
		}
	} else if len(s.roots) > 0 {
		roots = s.roots
	} else {
		return nil, nil, fmt.Errorf("%w: the issuer reported no CA (status.ca empty) and no root bundle is configured", ErrFailed)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := leaf.PublicKey.(equaler); !ok || !pub.Equal(csr.PublicKey()) {
		return nil, nil, fmt.Errorf("%w: the certificate is not for the CSR's key", ErrFailed)
	}
	want := csr.Identity.URL().String()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0 {
		return nil, nil, fmt.Errorf("%w: the certificate's SANs (URIs %v, DNS %v, IPs %v, emails %v) are not exactly %s",
			ErrFailed, leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, want)
	}
	if leaf.IsCA {
		return nil, nil, fmt.Errorf("%w: the issuer returned a CA certificate", ErrFailed)
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	chain = []*x509.Certificate{leaf}
	for _, c := range certs[1:] {
		if isRoot(c, roots) {
			continue // the response carries the roots separately
		}
		interPool.AddCert(c)
		chain = append(chain, c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, nil, fmt.Errorf("%w: the certificate does not verify to the issuer's CA: %w", ErrFailed, err)
		}
	}
	return chain, roots, nil
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if c.Equal(r) {
			return true
		}
	}
	return false
}
