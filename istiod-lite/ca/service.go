// Package ca is istiod-lite's mesh CA service: Istio's certificate service
// (istio.io/api security/v1alpha1 IstioCertificateService.CreateCertificate)
// on top of pkg/ca, so both ambit's and Istio's ztunnel can get workload
// certificates from it. Callers authenticate with a Kubernetes
// ServiceAccount token (istiod-lite/auth). A node agent (ztunnel) may get the
// identity of any pod running on its own node; every other caller only its
// own identity.
//
// The package also keeps the root in a Kubernetes Secret (root.go) and
// publishes the root certificate to every namespace (publisher.go).
package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/auth"
	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// ImpersonatedIdentityKey is the request metadata field in which a node
// agent names the identity it asks a certificate for (Istio's
// security.ImpersonatedIdentity; ztunnel sets it on every request).
const ImpersonatedIdentityKey = "ImpersonatedIdentity"

// DefaultInstallNamespace is where istiod-lite, ztunnel and the root Secret live.
const DefaultInstallNamespace = "istio-system"

// ServiceAccountRef names a ServiceAccount.
type ServiceAccountRef struct {
	Namespace string
	Name      string
}

func (r ServiceAccountRef) String() string { return r.Namespace + "/" + r.Name }

// DefaultNodeAgents is ztunnel's ServiceAccount in the install namespace.
var DefaultNodeAgents = []ServiceAccountRef{{Namespace: DefaultInstallNamespace, Name: "ztunnel"}}

// Authenticator authenticates a gRPC caller; *auth.Authenticator is one.
// Errors are gRPC status errors.
type Authenticator interface {
	AuthenticateGRPC(ctx context.Context) (*auth.Caller, error)
}

// PodLookup answers node authorization: does a pod with ServiceAccount
// ns/sa run (is not terminated) on node?
type PodLookup interface {
	PodOnNode(ctx context.Context, node, ns, sa string) (bool, error)
}

// Signer signs a CSR that the service has parsed (pkg/ca's ParseCSR:
// signature, key type, one SPIFFE URI SAN in the trust domain) and
// authorized. CASigner (the built-in CA) is one; istiod-lite/ca/certmanager
// has cert-manager sign.
//
// Sign returns the chain, leaf first, without the root(s), and the roots it
// verifies to. ttl zero asks for the signer's default. Errors wrapping
// ErrSignInvalid, ErrSignDenied, ErrSignFailed or ErrSignUnavailable choose
// the gRPC status the caller gets; any other error is Internal.
type Signer interface {
	Sign(ctx context.Context, csr *ca.CSR, ttl time.Duration) (chain, roots []*x509.Certificate, err error)
}

// Signer error classes (see Signer).
var (
	// ErrSignInvalid: the request cannot be signed as asked (TTL out of
	// range): InvalidArgument.
	ErrSignInvalid = errors.New("invalid certificate request")
	// ErrSignDenied: an approval policy refused the request: PermissionDenied.
	ErrSignDenied = errors.New("certificate request denied")
	// ErrSignFailed: the signer failed the request, or what it returned is
	// unusable: FailedPrecondition.
	ErrSignFailed = errors.New("certificate request failed")
	// ErrSignUnavailable: the signer did not answer in time or could not be
	// reached: Unavailable.
	ErrSignUnavailable = errors.New("signer unavailable")
)

// CASigner signs with the built-in CA.
type CASigner struct{ CA *ca.CA }

// Sign issues csr with the CA. The CA refuses only out-of-range TTLs
// (ErrSignInvalid when a TTL was asked for); anything else is internal.
func (s CASigner) Sign(_ context.Context, csr *ca.CSR, ttl time.Duration) (chain, roots []*x509.Certificate, err error) {
	issued, err := s.CA.Issue(csr, ttl)
	if err != nil {
		if ttl != 0 {
			return nil, nil, fmt.Errorf("%w: %w", ErrSignInvalid, err)
		}
		return nil, nil, err
	}
	return issued.Chain, s.CA.Roots(), nil
}

// Options configure a Service.
type Options struct {
	// CA parses and validates CSRs (its trust domain) and, unless Signer
	// is set, signs them; required.
	CA *ca.CA
	// Signer signs authorized CSRs; default CASigner{CA}.
	Signer        Signer
	Authenticator Authenticator // required
	// Pods answers node authorization; required (APIPodLookup asks the
	// apiserver; an informer-backed lookup can replace it).
	Pods PodLookup
	// NodeAgents are the ServiceAccounts allowed to request the identities
	// of pods on their own node; default DefaultNodeAgents.
	NodeAgents []ServiceAccountRef
	Log        *slog.Logger
	// Meter, when set, records requests by outcome.
	Meter metric.Meter
}

// Service implements IstioCertificateService.
type Service struct {
	pb.UnimplementedIstioCertificateServiceServer
	opts     Options
	requests metric.Int64Counter
}

// NewService validates opts and returns the service.
func NewService(opts Options) (*Service, error) {
	switch {
	case opts.CA == nil:
		return nil, errors.New("ca service: no CA")
	case opts.Authenticator == nil:
		return nil, errors.New("ca service: no authenticator")
	case opts.Pods == nil:
		return nil, errors.New("ca service: no pod lookup")
	}
	if opts.Signer == nil {
		opts.Signer = CASigner{CA: opts.CA}
	}
	if len(opts.NodeAgents) == 0 {
		opts.NodeAgents = DefaultNodeAgents
	}
	opts.NodeAgents = slices.Clone(opts.NodeAgents)
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Service{opts: opts}
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("citadel_server_csr",
			metric.WithDescription("Certificate signing requests handled by the mesh CA, by outcome."))
		if err != nil {
			return nil, fmt.Errorf("ca service: metric: %w", err)
		}
		s.requests = c
	}
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	pb.RegisterIstioCertificateServiceServer(r, s)
}

// CreateCertificate authenticates the caller, validates the CSR, authorizes
// the identity it asks for, and signs it. The response is Istio's: the
// leaf, then the intermediates, then the root, each PEM-encoded.
func (s *Service) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	resp, caller, id, err := s.create(ctx, req)
	outcome := "success"
	if err != nil {
		outcome = outcomeOf(status.Code(err))
		attrs := []any{"outcome", outcome, "error", status.Convert(err).Message()}
		if caller != nil {
			attrs = append(attrs, "caller", caller.String())
		}
		if !id.IsZero() {
			attrs = append(attrs, "identity", id.String())
		}
		s.opts.Log.Warn("certificate request refused", attrs...)
	} else {
		s.opts.Log.Debug("certificate issued", "caller", caller.String(), "identity", id.String())
	}
	if s.requests != nil {
		s.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", outcome)))
	}
	return resp, err
}

func outcomeOf(c codes.Code) string {
	switch c {
	case codes.Unauthenticated:
		return "unauthenticated"
	case codes.PermissionDenied:
		return "permission_denied"
	case codes.InvalidArgument:
		return "invalid_argument"
	case codes.FailedPrecondition:
		return "failed_precondition"
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return "unavailable"
	default:
		return "error"
	}
}

func (s *Service) create(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, *auth.Caller, identity.Identity, error) {
	caller, err := s.opts.Authenticator.AuthenticateGRPC(ctx)
	if err != nil {
		return nil, nil, identity.Identity{}, err
	}
	csr, err := s.opts.CA.ParseCSR([]byte(req.GetCsr()))
	if err != nil {
		return nil, caller, identity.Identity{}, status.Error(codes.InvalidArgument, err.Error())
	}
	id := csr.Identity
	if v, ok := req.GetMetadata().GetFields()[ImpersonatedIdentityKey]; ok {
		imp, err := identity.Parse(v.GetStringValue())
		if err != nil {
			return nil, caller, id, status.Errorf(codes.InvalidArgument, "metadata %s: %v", ImpersonatedIdentityKey, err)
		}
		if imp != id {
			return nil, caller, id, status.Errorf(codes.InvalidArgument, "CSR identity %s does not match the requested %s %s", id, ImpersonatedIdentityKey, imp)
		}
	}
	if err := s.authorize(ctx, caller, id); err != nil {
		return nil, caller, id, err
	}
	secs := req.GetValidityDuration()
	if secs < 0 || secs > int64(math.MaxInt64/time.Second) {
		return nil, caller, id, status.Errorf(codes.InvalidArgument, "validity_duration %d s out of range", secs)
	}
	chain, roots, err := s.opts.Signer.Sign(ctx, csr, time.Duration(secs)*time.Second)
	if err != nil {
		return nil, caller, id, signError(ctx, err)
	}
	if len(chain) == 0 || len(roots) == 0 {
		return nil, caller, id, status.Errorf(codes.Internal, "sign: signer returned %d certificates and %d roots", len(chain), len(roots))
	}
	return &pb.IstioCertificateResponse{CertChain: responseChain(chain, roots)}, caller, id, nil
}

// signError maps a Signer's error to the status the caller gets.
func signError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, ErrSignInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrSignDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrSignFailed):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrSignUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	default:
		return status.Errorf(codes.Internal, "sign: %v", err)
	}
}

// responseChain is the leaf, the intermediates, then the root(s), one PEM
// certificate per element, as Istio's CA answers (ztunnel takes the last
// element as the root).
func responseChain(chain, roots []*x509.Certificate) []string {
	out := make([]string, 0, len(chain)+len(roots))
	for _, c := range chain {
		out = append(out, string(pemutil.EncodeCertificates([]*x509.Certificate{c})))
	}
	for _, r := range roots {
		out = append(out, string(pemutil.EncodeCertificates([]*x509.Certificate{r})))
	}
	return out
}

// authorize decides whether caller may get a certificate for id (already in
// the CA's trust domain). Errors are gRPC status errors.
func (s *Service) authorize(ctx context.Context, caller *auth.Caller, id identity.Identity) error {
	if caller.Namespace == id.Namespace && caller.ServiceAccount == id.ServiceAccount {
		return nil // its own identity
	}
	if !s.isNodeAgent(caller) {
		return status.Errorf(codes.PermissionDenied, "caller %s may only request its own identity spiffe://%s/ns/%s/sa/%s, not %s",
			caller, id.TrustDomain, caller.Namespace, caller.ServiceAccount, id)
	}
	if caller.NodeName == "" {
		return status.Errorf(codes.PermissionDenied, "node agent %s presented a token not bound to a pod on a node; it may only request identities of pods on its node, so it needs a pod-bound token (projected volume or TokenRequest with boundObjectRef)", caller)
	}
	ok, err := s.opts.Pods.PodOnNode(ctx, caller.NodeName, id.Namespace, id.ServiceAccount)
	if err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "node authorization: %v", err)
	}
	if !ok {
		return status.Errorf(codes.PermissionDenied, "node agent %s may not request %s: no running pod with service account %s/%s on node %s",
			caller, id, id.Namespace, id.ServiceAccount, caller.NodeName)
	}
	return nil
}

func (s *Service) isNodeAgent(c *auth.Caller) bool {
	for _, a := range s.opts.NodeAgents {
		if a.Namespace == c.Namespace && a.Name == c.ServiceAccount {
			return true
		}
	}
	return false
}

// APIPodLookup answers PodOnNode by listing pods in the apiserver with
// field selectors (served from the apiserver's watch cache). One request
// per node-agent certificate request: certificates are requested once per
// workload identity per node and renewed every few hours.
type APIPodLookup struct {
	Pods corev1client.PodsGetter
}

// PodOnNode reports whether a pod with ServiceAccount ns/sa that has not
// terminated is bound to node.
func (l APIPodLookup) PodOnNode(ctx context.Context, node, ns, sa string) (bool, error) {
	sel := fields.AndSelectors(
		fields.OneTermEqualSelector("spec.nodeName", node),
		fields.OneTermEqualSelector("spec.serviceAccountName", sa),
	)
	list, err := l.Pods.Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return false, fmt.Errorf("list pods of %s/%s on node %s: %w", ns, sa, node, err)
	}
	for i := range list.Items {
		if podCounts(&list.Items[i], node, sa) {
			return true, nil
		}
	}
	return false, nil
}

// podCounts re-checks what the field selector asked (cheap, and it keeps a
// misbehaving server from widening authorization) and skips terminated pods.
func podCounts(p *corev1.Pod, node, sa string) bool {
	return p.Spec.NodeName == node && p.Spec.ServiceAccountName == sa &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}
