// Package auth authenticates istiod-lite's gRPC callers (the CA service, the
// xDS server) by their Kubernetes ServiceAccount token, sent as gRPC metadata
// "authorization: Bearer <token>" as Istio's proxies and ztunnel send it. The
// token is validated with the TokenReview API against the configured
// audiences; the caller is its namespace and ServiceAccount, plus the pod
// and node the token is bound to when it is a pod-bound (projected or
// TokenRequest) token.
package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationclient "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

// DefaultAudience is the token audience Istio's CA and xDS server expect
// (ztunnel and istio-agent request tokens for it).
const DefaultAudience = "istio-ca"

// TokenReview user extras of pod-bound ServiceAccount tokens.
const (
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraNodeUID  = "authentication.kubernetes.io/node-uid"
)

// maxTokenLen bounds what is sent to the apiserver; real tokens are ~1 KiB.
const maxTokenLen = 16 << 10

const saPrefix = "system:serviceaccount:"

// ErrUnauthenticated wraps every refusal of a credential (missing, malformed,
// expired, wrong audience, not a ServiceAccount). Other errors mean the
// token could not be checked (apiserver unreachable).
var ErrUnauthenticated = errors.New("unauthenticated")

// Caller is an authenticated ServiceAccount.
type Caller struct {
	Username       string // system:serviceaccount:<ns>:<sa>
	Namespace      string
	ServiceAccount string
	// Set for pod-bound tokens (empty otherwise). NodeName is set when the
	// pod was bound to a node when the token was minted.
	PodName, PodUID   string
	NodeName, NodeUID string
	// Audiences the token was validated for (the intersection of the
	// token's and the configured ones).
	Audiences []string
}

// Identity is the caller's own SPIFFE identity in trustDomain.
func (c *Caller) Identity(trustDomain string) (identity.Identity, error) {
	return identity.New(trustDomain, c.Namespace, c.ServiceAccount)
}

// String names the caller for logs: ns/sa, plus pod and node when bound.
func (c *Caller) String() string {
	s := c.Namespace + "/" + c.ServiceAccount
	if c.PodName != "" {
		s += " (pod " + c.PodName
		if c.NodeName != "" {
			s += " on node " + c.NodeName
		}
		s += ")"
	}
	return s
}

// Authenticator validates ServiceAccount tokens with TokenReview.
type Authenticator struct {
	reviews   authenticationclient.TokenReviewInterface
	audiences []string
}

// New returns an authenticator that accepts tokens for any of audiences
// (default [DefaultAudience]). To also accept tokens for the apiserver's own
// audience (plain ServiceAccount tokens), list it, e.g. the cluster's issuer
// "https://kubernetes.default.svc.cluster.local". The client needs RBAC
// permission to create tokenreviews (system:auth-delegator has it).
func New(client authenticationclient.TokenReviewsGetter, audiences ...string) *Authenticator {
	if len(audiences) == 0 {
		audiences = []string{DefaultAudience}
	}
	a := &Authenticator{audiences: slices.Clone(audiences)}
	if client != nil {
		a.reviews = client.TokenReviews()
	}
	return a
}

// Audiences returns the accepted audiences.
func (a *Authenticator) Audiences() []string { return slices.Clone(a.audiences) }

// Authenticate validates token. Refusals wrap ErrUnauthenticated; other
// errors mean the apiserver could not be asked.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (*Caller, error) {
	switch {
	case token == "":
		return nil, fmt.Errorf("%w: no token", ErrUnauthenticated)
	case len(token) > maxTokenLen:
		return nil, fmt.Errorf("%w: token of %d bytes is longer than %d", ErrUnauthenticated, len(token), maxTokenLen)
	}
	if a.reviews == nil {
		return nil, errors.New("token review: authenticator has no Kubernetes client")
	}
	tr, err := a.reviews.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token review: %w", err)
	}
	return callerFromStatus(&tr.Status, a.audiences)
}

// callerFromStatus turns a TokenReview status into a Caller, refusing
// anything that is not an authenticated ServiceAccount for one of audiences.
func callerFromStatus(st *authenticationv1.TokenReviewStatus, audiences []string) (*Caller, error) {
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "token not authenticated"
		}
		return nil, fmt.Errorf("%w: %s", ErrUnauthenticated, msg)
	}
	// The apiserver only authenticates tokens for the requested audiences
	// and echoes the matching ones; insist on that rather than trust it.
	var matched []string
	for _, aud := range st.Audiences {
		if slices.Contains(audiences, aud) {
			matched = append(matched, aud)
		}
	}
	if len(matched) == 0 {
		return nil, fmt.Errorf("%w: token audiences %v do not include any of %v", ErrUnauthenticated, st.Audiences, audiences)
	}
	ns, sa, ok := splitServiceAccount(st.User.Username)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a ServiceAccount", ErrUnauthenticated, st.User.Username)
	}
	c := &Caller{Username: st.User.Username, Namespace: ns, ServiceAccount: sa, Audiences: matched}
	c.PodName = extra(st.User.Extra, ExtraPodName)
	c.PodUID = extra(st.User.Extra, ExtraPodUID)
	c.NodeName = extra(st.User.Extra, ExtraNodeName)
	c.NodeUID = extra(st.User.Extra, ExtraNodeUID)
	return c, nil
}

func splitServiceAccount(username string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(username, saPrefix)
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}

// extra returns the single value of key, or "" when absent or ambiguous.
func extra(m map[string]authenticationv1.ExtraValue, key string) string {
	if v := m[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// BearerToken returns the token from the incoming gRPC metadata
// "authorization: Bearer <token>" (the scheme is case-insensitive).
func BearerToken(ctx context.Context) (string, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return "", fmt.Errorf("%w: no gRPC metadata", ErrUnauthenticated)
	}
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		return "", fmt.Errorf("%w: no authorization metadata", ErrUnauthenticated)
	case 1:
	default:
		return "", fmt.Errorf("%w: %d authorization values, want one", ErrUnauthenticated, len(vals))
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", fmt.Errorf("%w: authorization metadata is not \"Bearer <token>\"", ErrUnauthenticated)
	}
	return strings.TrimSpace(token), nil
}

// AuthenticateGRPC authenticates the caller of a gRPC request and returns
// gRPC status errors: Unauthenticated for a bad or missing credential,
// Unavailable when the apiserver cannot be asked.
func (a *Authenticator) AuthenticateGRPC(ctx context.Context) (*Caller, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	c, err := a.Authenticate(ctx, token)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, ErrUnauthenticated):
		return nil, status.Error(codes.Unauthenticated, err.Error())
	case ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	default:
		return nil, status.Errorf(codes.Unavailable, "cannot validate token: %v", err)
	}
}
