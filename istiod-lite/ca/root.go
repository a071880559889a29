package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// Istio's names for the self-signed root's Secret, so an istiod-lite and an
// Istio installation read the same root.
const (
	RootSecretName = "istio-ca-secret"
	CACertKey      = "ca-cert.pem"
	CAKeyKey       = "ca-key.pem"
	// RootSecretType is the Secret type Istio gives istio-ca-secret.
	RootSecretType corev1.SecretType = "istio.io/ca-root"
)

// RootOptions configure LoadOrCreateRoot.
type RootOptions struct {
	Namespace  string     // default DefaultInstallNamespace
	SecretName string     // default RootSecretName
	CA         ca.Options // trust domain and TTLs of the resulting CA
	Log        *slog.Logger
}

// LoadOrCreateRoot returns the mesh CA whose self-signed root is kept in the
// Secret: the existing one when the Secret exists, otherwise a fresh root
// written with create-if-absent semantics. When several replicas start at
// once, exactly one create wins and every replica loads the winner's root.
// A Secret that exists but cannot be used is an error: it is never
// overwritten, since replacing the root invalidates every workload
// certificate. Transient apiserver errors are retried until ctx ends.
// created reports whether this call wrote the Secret.
//
// RBAC: get and create on secrets in the namespace.
func LoadOrCreateRoot(ctx context.Context, client corev1client.SecretsGetter, opts RootOptions) (authority *ca.CA, created bool, err error) {
	if opts.Namespace == "" {
		opts.Namespace = DefaultInstallNamespace
	}
	if opts.SecretName == "" {
		opts.SecretName = RootSecretName
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	secrets := client.Secrets(opts.Namespace)
	where := opts.Namespace + "/" + opts.SecretName

	backoff := wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 1 << 30, Cap: 10 * time.Second}
	for {
		authority, created, err = loadOrCreateOnce(ctx, secrets, where, opts)
		if err == nil || !retriable(err) {
			return authority, created, err
		}
		d := backoff.Step()
		opts.Log.Warn("root CA secret: retrying", "secret", where, "error", err, "in", d)
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("root CA secret %s: %w (last error: %v)", where, ctx.Err(), err)
		case <-time.After(d):
		}
	}
}

// permanentError marks an error retrying cannot fix (a corrupt Secret).
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func retriable(err error) bool {
	var p permanentError
	return !errors.As(err, &p)
}

func loadOrCreateOnce(ctx context.Context, secrets corev1client.SecretInterface, where string, opts RootOptions) (*ca.CA, bool, error) {
	s, err := secrets.Get(ctx, opts.SecretName, metav1.GetOptions{})
	switch {
	case err == nil:
		authority, err := rootFromSecret(s, opts.CA)
		if err != nil {
			return nil, false, permanentError{fmt.Errorf("root CA secret %s exists but is unusable (fix or delete it; deleting it replaces the root and invalidates every workload certificate): %w", where, err)}
		}
		opts.Log.Info("root CA loaded", "secret", where, "expires", authority.Roots()[0].NotAfter)
		return authority, false, nil
	case !apierrors.IsNotFound(err):
		if isForbidden(err) {
			return nil, false, permanentError{fmt.Errorf("read root CA secret %s: %w", where, err)}
		}
		return nil, false, fmt.Errorf("read root CA secret %s: %w", where, err)
	}

	authority, err := ca.NewSelfSigned(opts.CA)
	if err != nil {
		return nil, false, permanentError{fmt.Errorf("generate root CA: %w", err)}
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: opts.SecretName, Namespace: opts.Namespace},
		Type:       RootSecretType,
		Data: map[string][]byte{
			CACertKey: authority.CertPEM(),
			CAKeyKey:  authority.KeyPEM(),
		},
	}
	_, err = secrets.Create(ctx, secret, metav1.CreateOptions{})
	switch {
	case err == nil:
		opts.Log.Info("root CA created", "secret", where, "trustDomain", authority.TrustDomain(), "expires", authority.Roots()[0].NotAfter)
		return authority, true, nil
	case apierrors.IsAlreadyExists(err):
		// Another replica won the race: use its root.
		opts.Log.Info("root CA secret created concurrently by another instance; loading it", "secret", where)
		return loadOrCreateOnce(ctx, secrets, where, opts)
	case isForbidden(err):
		return nil, false, permanentError{fmt.Errorf("create root CA secret %s: %w", where, err)}
	default:
		return nil, false, fmt.Errorf("create root CA secret %s: %w", where, err)
	}
}

func isForbidden(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsInvalid(err)
}

// rootFromSecret loads the self-signed root CA from the Secret's data and
// checks it can issue for the configured trust domain.
func rootFromSecret(s *corev1.Secret, opts ca.Options) (*ca.CA, error) {
	certPEM, keyPEM := s.Data[CACertKey], s.Data[CAKeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("want non-empty %s and %s", CACertKey, CAKeyKey)
	}
	certs, err := pemutil.ParseCertificates(certPEM)
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("%s: want exactly one PEM certificate (%v)", CACertKey, err)
	}
	authority, err := ca.Load(certPEM, keyPEM, nil, certPEM, opts)
	if err != nil {
		return nil, err
	}
	// A root name-constrained to another trust domain would sign
	// certificates no verifier accepts.
	if uris := certs[0].PermittedURIDomains; len(uris) > 0 && !slices.Contains(uris, authority.TrustDomain()) {
		return nil, fmt.Errorf("root is constrained to trust domains %v, not the configured %q", uris, authority.TrustDomain())
	}
	if now := time.Now(); now.After(certs[0].NotAfter) {
		return nil, fmt.Errorf("root expired at %s", certs[0].NotAfter.UTC().Format(time.RFC3339))
	}
	return authority, nil
}
