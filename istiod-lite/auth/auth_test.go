package auth

import (
	"context"
	"errors"
	"os"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }

func TestSplitServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		in     string
		ns, sa string
		ok     bool
	}{
		{"system:serviceaccount:default:web", "default", "web", true},
		{"system:serviceaccount:istio-system:ztunnel", "istio-system", "ztunnel", true},
		{"system:serviceaccount:default", "", "", false},
		{"system:serviceaccount::web", "", "", false},
		{"system:serviceaccount:default:", "", "", false},
		{"system:serviceaccount:a:b:c", "", "", false},
		{"system:node:n1", "", "", false},
		{"admin", "", "", false},
		{"", "", "", false},
	} {
		ns, sa, ok := splitServiceAccount(tc.in)
		if ns != tc.ns || sa != tc.sa || ok != tc.ok {
			t.Errorf("splitServiceAccount(%q) = %q, %q, %v; want %q, %q, %v", tc.in, ns, sa, ok, tc.ns, tc.sa, tc.ok)
		}
	}
}

func TestCallerFromStatus(t *testing.T) {
	auds := []string{"istio-ca"}
	ok := authenticationv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{"istio-ca"},
		User: authenticationv1.UserInfo{
			Username: "system:serviceaccount:istio-system:ztunnel",
			Extra: map[string]authenticationv1.ExtraValue{
				ExtraPodName: {"ztunnel-abc"}, ExtraPodUID: {"u1"}, ExtraNodeName: {"n1"}, ExtraNodeUID: {"u2"},
			},
		},
	}
	c, err := callerFromStatus(&ok, auds)
	if err != nil {
		t.Fatal(err)
	}
	want := Caller{Username: ok.User.Username, Namespace: "istio-system", ServiceAccount: "ztunnel", PodName: "ztunnel-abc", PodUID: "u1", NodeName: "n1", NodeUID: "u2"}
	if c.Namespace != want.Namespace || c.ServiceAccount != want.ServiceAccount || c.PodName != want.PodName || c.PodUID != want.PodUID || c.NodeName != want.NodeName || c.NodeUID != want.NodeUID {
		t.Errorf("caller %+v, want %+v", c, want)
	}
	if got := c.String(); got != "istio-system/ztunnel (pod ztunnel-abc on node n1)" {
		t.Errorf("String() = %q", got)
	}
	id, err := c.Identity("cluster.local")
	if err != nil || id.String() != "spiffe://cluster.local/ns/istio-system/sa/ztunnel" {
		t.Errorf("Identity = %v, %v", id, err)
	}

	bad := []authenticationv1.TokenReviewStatus{
		{Authenticated: false, Error: "invalid bearer token"},
		{Authenticated: true, Audiences: []string{"other"}, User: ok.User},
		{Authenticated: true, Audiences: nil, User: ok.User},
		{Authenticated: true, Audiences: auds, User: authenticationv1.UserInfo{Username: "system:node:n1"}},
	}
	for i, st := range bad {
		if _, err := callerFromStatus(&st, auds); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("case %d: err = %v, want ErrUnauthenticated", i, err)
		}
	}
	// Ambiguous extras are ignored rather than picked from.
	amb := ok
	amb.User.Extra = map[string]authenticationv1.ExtraValue{ExtraNodeName: {"n1", "n2"}}
	if c, err := callerFromStatus(&amb, auds); err != nil || c.NodeName != "" {
		t.Errorf("ambiguous node extra: caller %+v, err %v", c, err)
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		md    metadata.MD
		token string
	}{
		{metadata.Pairs("authorization", "Bearer abc"), "abc"},
		{metadata.Pairs("authorization", "bearer  abc "), "abc"},
		{metadata.Pairs("authorization", "Basic abc"), ""},
		{metadata.Pairs("authorization", "Bearer "), ""},
		{metadata.Pairs("authorization", "abc"), ""},
		{metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), ""},
		{metadata.Pairs("other", "x"), ""},
		{nil, ""},
	} {
		ctx := context.Background()
		if tc.md != nil {
			ctx = metadata.NewIncomingContext(ctx, tc.md)
		}
		got, err := BearerToken(ctx)
		if got != tc.token || (tc.token == "") != (err != nil) {
			t.Errorf("BearerToken(%v) = %q, %v; want %q", tc.md, got, err, tc.token)
		}
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("BearerToken(%v): error %v is not ErrUnauthenticated", tc.md, err)
		}
	}
}

func grpcCtx(token string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
}

func TestAuthenticateAgainstAPIServer(t *testing.T) {
	env := kubetest.Shared(t)
	ns := env.Namespace(t, "auth-")
	pod := env.RunningPod(t, kubetest.PodOptions{Namespace: ns, Name: "ztunnel-1", Node: "auth-node-1", ServiceAccount: "ztunnel"})
	a := New(env.Client.AuthenticationV1())

	bound := env.Token(t, ns, "ztunnel", kubetest.TokenOptions{Audiences: []string{DefaultAudience}, Pod: pod})
	c, err := a.AuthenticateGRPC(grpcCtx(bound))
	if err != nil {
		t.Fatalf("bound token: %v", err)
	}
	if c.Namespace != ns || c.ServiceAccount != "ztunnel" || c.PodName != "ztunnel-1" || c.PodUID != string(pod.UID) || c.NodeName != "auth-node-1" || c.NodeUID == "" {
		t.Errorf("caller %+v", c)
	}

	unbound := env.Token(t, ns, "ztunnel", kubetest.TokenOptions{Audiences: []string{DefaultAudience}})
	c, err = a.Authenticate(context.Background(), unbound)
	if err != nil || c.PodName != "" || c.NodeName != "" || c.ServiceAccount != "ztunnel" {
		t.Errorf("unbound token: caller %+v, err %v", c, err)
	}

	// The apiserver's own audience is refused unless configured.
	apiAud := env.Token(t, ns, "ztunnel", kubetest.TokenOptions{})
	if _, err := a.AuthenticateGRPC(grpcCtx(apiAud)); status.Code(err) != codes.Unauthenticated {
		t.Errorf("token for the apiserver audience: %v, want Unauthenticated", err)
	}
	both := New(env.Client.AuthenticationV1(), DefaultAudience, env.APIAudiences[0])
	if c, err := both.AuthenticateGRPC(grpcCtx(apiAud)); err != nil || c.Audiences[0] != env.APIAudiences[0] {
		t.Errorf("token for the apiserver audience with it configured: %+v, %v", c, err)
	}

	for name, tok := range map[string]string{
		"forged":  env.ForgeToken(t, ns, "ztunnel", []string{DefaultAudience}, pod),
		"garbage": "not.a.jwt",
	} {
		if _, err := a.AuthenticateGRPC(grpcCtx(tok)); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s token: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := a.AuthenticateGRPC(context.Background()); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no metadata: %v, want Unauthenticated", err)
	}
}
